"""Pure types and policy: no I/O, no configuration classes.

Records and deliveries (``models``), the error hierarchy (``errors``), signing, the webhook
envelope, retry policy, poll windows and bucket arithmetic. Everything here is a function of its
inputs, with ``now`` passed in, and imports nothing else from the relay.
"""
