"""WebFones in: the upstream client, body parsing, the per-account poller and key budgets."""
