"""``relay run`` takes what start-up made out of the garbage collector's reach once it runs."""

from __future__ import annotations

import asyncio
import gc
from types import SimpleNamespace
from typing import Any

from relay.runtime.runner import freeze_gc
from tests.helpers import GENEROUS


async def test_start_up_objects_are_frozen_once_the_relay_runs() -> None:
    started = asyncio.Event()
    supervisor: Any = SimpleNamespace(started=started)
    gc.unfreeze()
    try:
        freeze_gc(supervisor)
        await asyncio.sleep(0)
        assert gc.get_freeze_count() == 0, "nothing is frozen before the relay runs"
        started.set()

        async def frozen() -> None:
            while gc.get_freeze_count() == 0:
                await asyncio.sleep(0)

        await asyncio.wait_for(frozen(), GENEROUS)
    finally:
        gc.unfreeze()
