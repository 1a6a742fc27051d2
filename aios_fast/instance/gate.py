"""The concurrency gate: at most ``max_concurrency`` tasks in the block's hooks at once;
the others wait their turn, or give up when their caller's deadline passes first."""

from __future__ import annotations

import asyncio

from ..errors import TaskExpired

__all__ = ["ConcurrencyGate"]


class ConcurrencyGate:
    """Slots for running tasks. ``waiting`` counts tasks queued for a slot, ``running``
    those holding one (``enter``/``leave`` around the hooks), ``expired`` those whose
    deadline passed while they waited."""

    def __init__(self, max_concurrency: int) -> None:
        self._sem = asyncio.Semaphore(max_concurrency)
        self._queued: set[asyncio.Task] = set()
        self.waiting = 0
        self.running = 0
        self.expired = 0

    async def acquire(self, deadline: float | None, task: asyncio.Task | None) -> None:
        """Wait for a slot (until ``deadline``, the loop's clock: TaskExpired after it).
        ``task`` is the waiting task, for ``holds``."""
        self.waiting += 1
        if task is not None:
            self._queued.add(task)
        try:
            if deadline is None or not self._sem.locked():  # (a free slot: no wait, no timer)
                await self._sem.acquire()
                return
            left = deadline - asyncio.get_running_loop().time()
            try:
                await asyncio.wait_for(self._sem.acquire(), max(left, 0.0))
            except asyncio.TimeoutError:
                self.expired += 1
                raise TaskExpired("its deadline passed while it waited to run") from None
        finally:
            self.waiting -= 1
            if task is not None:
                self._queued.discard(task)

    def enter(self) -> None:
        """A task that holds a slot starts running."""
        self.running += 1

    def release(self) -> None:
        """A running task ended: its slot is free."""
        self.running -= 1
        self._sem.release()

    def holds(self, task: asyncio.Task) -> bool:
        """Whether ``task`` waits for a slot."""
        return task in self._queued
