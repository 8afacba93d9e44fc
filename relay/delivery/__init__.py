"""Webhooks out: the per-subscriber claimer and workers, the results writer, the sender and
the lean HTTP/1.1 client it uses."""
