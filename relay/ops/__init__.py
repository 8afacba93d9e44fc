"""What operators touch: the admin API, logging and the typed status model."""
