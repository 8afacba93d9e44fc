"""The one place that builds and owns everything: wiring, the supervisor and the process runner."""
