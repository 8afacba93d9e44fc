"""The built-in simulated WebFones, a verifying receiver and the ``relay demo`` command."""
