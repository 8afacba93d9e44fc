"""The admin/health HTTP surface's settings: where it listens, its token, the Host names it
serves, its connection limits and the dashboard's sign-in limit."""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import (
    AfterValidator,
    Field,
    SecretStr,
    model_validator,
)

from relay.config.base import Name, _is_ip, _is_loopback, _Problems, _Section
from relay.config.durations import PositiveDuration

_LISTEN = re.compile(r"(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]*):(?P<port>[0-9]{1,5})")


class SignInLimitSettings(_Section):
    """How many failed dashboard sign-ins are allowed (``relay/ops/signin.py``): ``failures`` in
    a row per client address, then one more per ``every``; likewise from everyone at once."""

    failures: int = Field(default=5, ge=1, le=1000)
    every: PositiveDuration = 12.0
    global_failures: int = Field(default=20, ge=1, le=100_000)
    global_every: PositiveDuration = 3.0


class AdminSettings(_Section):
    """The optional admin/health HTTP surface."""

    listen: Annotated[str, AfterValidator(_check_listen)] | None = None
    token: SecretStr | None = None
    # Host names (besides IP literals and localhost) the admin API answers to: a browser sends
    # the name it resolved, and refusing other names defeats DNS rebinding.
    allowed_hosts: list[Name] = Field(default_factory=list)
    max_connections: int = Field(default=64, ge=1, le=10000)
    idle_timeout: PositiveDuration = 15.0  # a connection with no complete request is closed
    sign_in_limit: SignInLimitSettings = Field(default_factory=SignInLimitSettings)

    @model_validator(mode="after")
    def _token_unless_loopback(self) -> AdminSettings:
        if self.token is not None and not self.token.get_secret_value().strip():
            raise _Problems([(("token",), "must not be empty")])
        address = self.address()
        if address is not None and self.token is None and not _is_loopback(address[0]):
            raise _Problems([(("token",), "required when listen is not a loopback address")])
        return self

    def address(self) -> tuple[str, int] | None:
        """``(host, port)`` to bind, or None when the admin surface is off ("" = all hosts)."""
        return None if self.listen is None else _split_listen(self.listen)


def _check_listen(listen: str) -> str:
    _split_listen(listen)
    return listen


def _split_listen(listen: str) -> tuple[str, int]:
    match = _LISTEN.fullmatch(listen)
    host = match["host"].strip("[]") if match else ""
    if match is None or int(match["port"]) > 65535 or (":" in host and not _is_ip(host)):
        raise ValueError("must be host:port, e.g. 127.0.0.1:8080 or [::1]:8080")
    return host, int(match["port"])
