"""Durable state behind one interface (:class:`Store`), with a subpackage per backend.

Only :mod:`relay.runtime.stores` picks and imports a concrete backend (from the ``state`` URL,
lazily, so a deployment needs only the driver it uses); the pipeline sees :class:`Store`.
"""

from relay.store.base import Store, StoreReader

__all__ = ["Store", "StoreReader"]
