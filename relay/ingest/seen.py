"""The rids one account's poller knows to be stored already, so that a re-read builds no body for
them.

Every poll re-reads the recent window behind the cursor (and a sweep the whole look-back), so
in a busy account most records of most answers were stored by an earlier poll. The store
de-duplicates them either way, in the ingest transaction; but by then each has been turned into
a webhook body (the envelope, orjson) and carried to the store thread, only to be dropped there
(about 60 µs a record on a loaded machine, for all 20,000 records of the window every 5 s).

What is known: the valid rids of the last successful poll's answer, each stored by a committed
ingest of this poller (new or a duplicate) or skipped because it was already known. So the set
is rebuilt from every answer and forgets a rid once the window no longer reaches it; a rid it
does not hold goes the store's way as before (a record written late, a sweep reading further
back than the last poll did, the first poll after a start). It is only ever an optimisation:
exactly-once still rests on the store's ``seen`` table. Known rids are skipped only while that
table still holds them: its prune forgets rids ``lookback`` plus an hour behind the cursor, far
behind any window a poll reads.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterable


class KnownRids:
    """Rids stored by earlier polls of one account (see the module); not thread-safe."""

    def __init__(self) -> None:
        self._known: frozenset[int] = frozenset()
        # The last good poll's rids, 8 bytes each (a set of ints takes ~70); made a set when
        # the next poll first asks, after the answer that produced them is gone.
        self._pending: array[int] | None = None
        self._collecting = array("q")

    def __contains__(self, rid: int) -> bool:
        if self._pending is not None:
            self._known, self._pending = frozenset(self._pending), None
        return rid in self._known

    def __len__(self) -> int:
        return len(self._known) if self._pending is None else len(self._pending)

    def begin(self) -> None:
        """A poll starts: what it stores is collected (what it skips, too) until :meth:`done`."""
        self._collecting = array("q")

    def stored(self, rids: Iterable[int]) -> None:
        """These rids are in the store now (a committed ingest, or known and skipped)."""
        self._collecting.extend(rids)

    def done(self) -> None:
        """The poll succeeded: its answer's rids are what is known from now on."""
        self._pending, self._collecting = self._collecting, array("q")
        self._known = frozenset()
