"""A small HTTP/1.1 client (keep-alive pools, llhttp parsing, capped answers), shared by the way
out (webhook POSTs, :mod:`relay.delivery`) and the way in (the WebFones GET, :mod:`relay.ingest`),
which may not import each other. It imports only :mod:`relay.core`."""
