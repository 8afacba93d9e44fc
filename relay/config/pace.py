"""A subscriber's pace settings: its rate limit (with presets by receiver host), its circuit
breaker, and its ordering. Part of :class:`~relay.config.schema.SubscriberSettings`."""

from __future__ import annotations

from typing import Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, model_validator

from relay.config.durations import PositiveDuration
from relay.core.breaker import BreakerPolicy
from relay.core.budget import default_burst


class SubscriberRateLimit(BaseModel):
    """At most ``requests`` POSTs to the subscriber in any window of ``per`` seconds, of which
    ``burst`` may go back to back (default: 5 % of ``requests``, between 1 and 10)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    requests: int = Field(ge=1)
    per: PositiveDuration = 1.0
    burst: int | None = Field(default=None, ge=1)

    @model_validator(mode="after")
    def _burst_within_requests(self) -> SubscriberRateLimit:
        if self.burst is not None and self.burst > self.requests:
            raise ValueError("burst must not exceed requests")
        return self

    @property
    def bucket_burst(self) -> int:
        """The burst actually used (the default filled in)."""
        return default_burst(self.requests) if self.burst is None else self.burst


# Receivers whose published limits we know, matched by host (and path prefix) of the URL. An
# explicit ``rate_limit`` replaces the preset; ``rate_limit: none`` turns it off.
# - Slack incoming webhooks: "1 per second per webhook", with short bursts tolerated; keep to 1.
# - Discord webhooks: 5 requests per 2 s per webhook, and 30 messages per minute per channel
#   (a webhook posts into one channel). 30/min with a burst of 5 keeps both: a leaky bucket of
#   5 draining 26 per 60.6 s admits at most 5.86 requests in any 2 s.
# - Zapier catch hooks: documented throttle of 30 requests per second per hook (then 429s).
PRESETS: tuple[tuple[str, str, SubscriberRateLimit], ...] = (
    ("hooks.slack.com", "", SubscriberRateLimit(requests=1, per=1.0, burst=1)),
    ("discord.com", "/api/webhooks", SubscriberRateLimit(requests=30, per=60.0, burst=5)),
    ("discordapp.com", "/api/webhooks", SubscriberRateLimit(requests=30, per=60.0, burst=5)),
    ("hooks.zapier.com", "", SubscriberRateLimit(requests=30, per=1.0)),
)


# ``rate_limit: none``: no limit, not even the host's preset (requests 0 never validates, so
# only this constant can carry it).
NO_LIMIT = SubscriberRateLimit.model_construct(requests=0, per=1.0, burst=None)


def rate_limit_or_none(value: object) -> object:
    """Before validation: ``none`` means :data:`NO_LIMIT`; any other string is an error that
    names what is expected (rather than pydantic's one line per union member)."""
    if isinstance(value, str):
        if value.strip().lower() == "none":
            return NO_LIMIT
        raise ValueError("must be a mapping {requests, per, burst} or none")
    return value


def preset_for(url: str) -> SubscriberRateLimit | None:
    """The preset rate limit for a receiver URL, or None when its host has none."""
    parts = urlsplit(url)
    host = (parts.hostname or "").lower().rstrip(".")
    for preset_host, prefix, limit in PRESETS:
        if (host == preset_host or host.endswith("." + preset_host)) and parts.path.startswith(
            prefix
        ):
            return limit
    return None


class CircuitSettings(BaseModel):
    """When the subscriber's circuit opens, and when a subscriber that keeps failing is
    disabled (its deliveries are kept)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    open_after: int = Field(default=5, ge=1, le=10000)
    disable_after: PositiveDuration = 5 * 86400.0

    def policy(self) -> BreakerPolicy:
        """The pure policy object (:mod:`relay.core.breaker`)."""
        return BreakerPolicy(threshold=self.open_after, disable_after=self.disable_after)


Ordering = Literal["parallel", "fifo"]
