"""webfones-relay: WebFones call-log records delivered as signed, durable webhooks."""

__version__ = "0.1.0"

# Sent on every upstream request and every webhook, so either side can tell who is calling.
USER_AGENT = f"webfones-relay/{__version__} (+https://github.com/webfones-relay)"
