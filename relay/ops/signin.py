"""A brute-force limit on the dashboard's sign-in: failed attempts fill a small leaky bucket per
client address and one shared by everyone; while either is full, sign-in answers 429 with
``Retry-After`` before the token is even compared (a limited client learns nothing).

Only failures are charged, so an operator who types the token right is never slowed down by
their own sign-ins. The global bucket is what stops an attacker with many addresses; while it is
full nobody can sign in to the dashboard, but the API with the bearer token keeps working. Time
comes from a clock passed in (monotonic by default), so tests move it instead of sleeping.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from relay.core.budget import bucket_spend

PER_ADDRESS = (5, 12.0)  # failures in a row, then one more every 12 s (5 a minute)
GLOBAL = (20, 3.0)  # failures from everyone, then one more every 3 s (20 a minute)
MAX_ADDRESSES = 4096  # addresses remembered; the least recently failing is forgotten first


@dataclass(slots=True)
class _Bucket:
    capacity: float
    rate: float  # failures drained per second
    level: float = 0.0
    at: float = 0.0

    def wait(self, now: float) -> float:
        """Seconds until one more failure fits (0: it fits now); charges nothing."""
        return bucket_spend(self.level, self.at, now, self.capacity, self.rate)[2]

    def charge(self, now: float) -> None:
        """Count one failure (over capacity it is capped: the bucket only stays full)."""
        drained = max(0.0, self.level - self.rate * max(0.0, now - self.at))
        self.level, self.at = min(self.capacity, drained + 1), max(self.at, now)

    def empty(self, now: float) -> bool:
        return self.level - self.rate * max(0.0, now - self.at) <= 0


class SignInLimiter:
    """Per-address and global buckets of failed sign-ins."""

    def __init__(
        self,
        *,
        per_address: tuple[int, float] = PER_ADDRESS,
        overall: tuple[int, float] = GLOBAL,
        max_addresses: int = MAX_ADDRESSES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._per_address = per_address
        self._global = self._bucket(overall)
        self._addresses: OrderedDict[str, _Bucket] = OrderedDict()
        self._max = max_addresses
        self._clock = clock

    @staticmethod
    def _bucket(spec: tuple[int, float]) -> _Bucket:
        burst, every = spec
        return _Bucket(capacity=float(burst), rate=1.0 / every)

    def retry_after(self, address: str) -> int:
        """Whole seconds the client at ``address`` must wait before trying (0: go ahead)."""
        now = self._clock()
        bucket = self._addresses.get(address)
        waits = [self._global.wait(now), 0.0 if bucket is None else bucket.wait(now)]
        return math.ceil(max(waits))

    def failed(self, address: str) -> bool:
        """Count a failed sign-in from ``address``; True when that made it (or everyone)
        limited, for one log line per episode rather than one per attempt."""
        now = self._clock()
        bucket = self._addresses.pop(address, None) or self._bucket(self._per_address)
        self._addresses[address] = bucket  # most recently failing last
        bucket.charge(now)
        self._global.charge(now)
        self._forget(now)
        return bucket.wait(now) > 0 or self._global.wait(now) > 0

    def _forget(self, now: float) -> None:
        # Drained buckets hold nothing worth keeping; beyond the cap the oldest go (the global
        # bucket still counts what an attacker with many addresses does).
        while self._addresses:
            oldest, bucket = next(iter(self._addresses.items()))
            if not (bucket.empty(now) or len(self._addresses) > self._max):
                break
            del self._addresses[oldest]

    def __len__(self) -> int:
        return len(self._addresses)
