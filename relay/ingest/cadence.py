"""When each account polls next: ``poll_interval`` seconds after its last poll, or, with
``poll_interval: auto``, in its slot of the API key's even schedule (:mod:`relay.core.cadence`).

Accounts that share an API key share one :class:`KeyCadence`, as they share its budget. The
wiring re-configures it on every reload, so a change in the interval or in how many accounts
share the key applies to the pollers already running at their next wait.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from relay.config.schema import Settings, UpstreamSettings
from relay.core.cadence import auto_interval, next_slot, phase
from relay.core.schedule import SLOT


class KeyCadence:
    """The poll schedule of the accounts on one API key."""

    def __init__(
        self, upstream: UpstreamSettings, accounts: Iterable[str], host_accounts: int = 0
    ) -> None:
        self.auto = False
        self.interval = 0.0
        self.accounts: list[str] = []
        self._phases: dict[str, float] = {}
        self.configure(upstream, accounts, host_accounts)

    def configure(
        self, upstream: UpstreamSettings, accounts: Iterable[str], host_accounts: int = 0
    ) -> None:
        """Take up the settings, the names of the accounts on this key and how many accounts
        the instance has in all (after a reload)."""
        self.accounts = sorted(set(accounts))
        poll = upstream.poll_interval
        self.auto = poll == "auto"
        if isinstance(poll, str):
            limit = upstream.rate_limit
            # Divided by every account configured on the key, not only those this instance
            # polls: on a shared store the others' instances spend the same budget.
            self.interval = auto_interval(
                limit.requests,
                limit.per,
                max(1, len(self.accounts)),
                host_accounts=host_accounts,
                host_rate=upstream.auto_max_polls_per_second,
            )
        else:
            self.interval = poll
        # Worked out once here, not per poll (a key may carry many accounts), and in whole
        # SLOTs of time: accounts of many keys whose slots fall within one wake up together,
        # in one turn of the event loop (relay.core.schedule says what that saves).
        step = SLOT / self.interval
        self._phases = {
            name: math.floor(phase(name, self.accounts) / step) * step for name in self.accounts
        }

    def first_delay(self, name: str, now: float) -> float:
        """How long ``name`` waits before its first poll: none with a fixed interval (as
        always), its slot with auto (so the accounts of a key start spread out)."""
        return self.delay(name, now) if self.auto else 0.0

    def delay(self, name: str, now: float) -> float:
        """How long ``name`` waits, after a poll that ended at ``now``, for its next one."""
        if not self.auto:
            return self.interval
        return next_slot(now, self.interval, self._phases.get(name, 0.0)) - now


def key_accounts(settings: Settings) -> dict[str, list[str]]:
    """The names of the accounts on each API key."""
    keys: dict[str, list[str]] = {}
    for account in settings.upstream.accounts:
        keys.setdefault(account.api_key.get_secret_value(), []).append(account.name)
    return keys


def intervals(settings: Settings) -> dict[str, float]:
    """The poll interval of every account (what ``auto`` works out to), by account name."""
    found: dict[str, float] = {}
    total = len(settings.upstream.accounts)
    for names in key_accounts(settings).values():
        cadence = KeyCadence(settings.upstream, names, total)
        found.update(dict.fromkeys(names, cadence.interval))
    return found
