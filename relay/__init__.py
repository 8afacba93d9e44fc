"""webfones-relay: WebFones call-log records delivered as signed, durable webhooks."""

__version__ = "0.1.0"
