"""Batches for a stream: while one message is being written the next accumulates.

Both ends of an instance link (``aios_fast.wire``) write through one of these.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

__all__ = ["BatchWriter"]


class BatchWriter:
    """Collects items into batches: while one batch is being written the next
    accumulates. Under load (``busy()`` true) a small batch waits up to ``linger``
    seconds for company: each stream message costs about as much grpc work as a unary
    call, so one message per task would give the batching away (measured: 1.1 tasks a
    message without lingering). Idle links never wait.

    A batch holds at most ``max_batch`` items and ``max_bytes`` bytes (each item's
    ``size`` as given to ``put``), except that an item larger than ``max_bytes`` goes
    alone: a stream message never grows past the largest item plus framing."""

    def __init__(self, max_batch: int = 256, linger: float = 0.0,
                 busy: Callable[[], bool] | None = None,
                 max_bytes: int = 1 << 62) -> None:  # fmt: skip
        self._items: list = []
        self._sizes: list[int] = []
        self._wake = asyncio.Event()
        self._max = max_batch
        self._max_bytes = max_bytes
        self._linger = linger
        self._busy = busy
        self.closed = False

    def put(self, item, size: int = 0) -> None:
        self._items.append(item)
        self._sizes.append(size)
        self._wake.set()

    def __len__(self) -> int:
        return len(self._items)

    async def next_batch(self) -> list | None:
        """The next batch, or None once closed and drained.

        After waking it yields to the event loop once, so the work that woke it (the rest
        of a batch being read, tasks finishing on the loop) lands in the same message."""
        while not self._items:
            if self.closed:
                return None
            self._wake.clear()
            await self._wake.wait()
        await asyncio.sleep(0)
        if self._linger and len(self._items) < self._max and self._busy and self._busy():
            await asyncio.sleep(self._linger)
        cut, total, limit = 0, 0, min(self._max, len(self._items))
        for size in self._sizes:
            if cut == limit or (cut and total + size > self._max_bytes):
                break
            total += size
            cut += 1
        batch, self._items = self._items[:cut], self._items[cut:]
        del self._sizes[:cut]
        return batch

    def close(self) -> None:
        self.closed = True
        self._wake.set()
