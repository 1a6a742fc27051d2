"""Dynamic batching for blocks that implement ``on_batch(entries) -> outputs``.

Tasks (each already through ``on_preprocess``, holding its concurrency slot) queue here
from every link and unary call of the instance; batch workers (``maxConcurrentBatches``,
default 1) take them in arrival order and call ``on_batch`` once per batch. Each task
gets back its own item's output: an exception object in an item's place fails that task
alone; an ``on_batch`` that raises fails every task of its batch with that error.

Settings (``BatchSettings.parse``; from the block document's ``initSettings.batching``
and/or the block's ``parameters.batching``, the latter winning key by key):

- ``mode``: ``"adaptive"`` (default): a task that arrives at an idle instance runs at
  once, alone; tasks that arrive while a batch runs queue, and the next batch takes
  them, waiting (as the link's linger does) until it is full or its oldest task has
  waited ``maxQueueDelayMs`` since it arrived: under load batches fill up without a
  busy model spinning on small ones, and an idle instance never waits. ``"delay"``:
  every batch waits until ``maxBatchSize`` tasks (or the largest preferred size) are
  queued, or until its oldest task has waited ``maxQueueDelayMs`` (Triton's dynamic
  batcher), idle or not. ``"off"``: one task at a time through ``on_data`` (through
  ``on_batch`` with batches of one when the block has no ``on_data``).
- ``maxBatchSize`` (default 32, 1..4096), ``maxQueueDelayMs`` (default 5; 0: a free
  worker takes what is queued at once), ``preferredBatchSizes`` (optional: a batch
  formed from n queued tasks takes the largest preferred size <= n, the rest wait for
  the next batch), ``maxConcurrentBatches`` (default 1, 1..64).

Tasks whose deadline passed are dropped before a batch forms (TaskExpired); cancelled
ones (their caller gave up) are skipped. Metrics: batch sizes and queue delays
(histograms), items, batches, and items/s (``stats()``).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

from ..errors import AiosFastError, TaskExpired
from ..service.metrics import Histogram
from ..settings import Batching, decode_part

__all__ = ["SIZE_BUCKETS", "BatchSettings", "Batcher"]

SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)


class BatchSettings:
    """Checked batching settings (``parse``: one-line AiosFastError on a bad value)."""

    __slots__ = ("delay", "max_batches", "max_size", "mode", "preferred")

    def __init__(self, mode: str = "adaptive", max_size: int = 32, delay: float = 0.005,
                 preferred: tuple[int, ...] = (), max_batches: int = 1) -> None:  # fmt: skip
        self.mode = mode
        self.max_size = max_size
        self.delay = delay  # seconds
        self.preferred = preferred
        self.max_batches = max_batches

    @classmethod
    def parse(cls, *layers: dict | None) -> BatchSettings:
        """Settings from dicts of the document's keys, later layers winning key by key,
        checked by the settings contract (``aios_fast.settings.Batching``)."""
        merged: dict = {}
        for layer in layers:
            if layer is None:
                continue
            if not isinstance(layer, dict):
                raise AiosFastError(f"batching settings must be a JSON object, not {layer!r}")
            merged.update(layer)
        b = decode_part(merged, Batching, "batching")
        return cls(b.mode, b.maxBatchSize, float(b.maxQueueDelayMs) / 1000.0,
                   tuple(sorted(set(b.preferredBatchSizes))), b.maxConcurrentBatches)  # fmt: skip

    def as_dict(self) -> dict:
        return {"mode": self.mode, "maxBatchSize": self.max_size,
                "maxQueueDelayMs": self.delay * 1000.0,
                "preferredBatchSizes": list(self.preferred),
                "maxConcurrentBatches": self.max_batches}  # fmt: skip


class _Item:
    __slots__ = ("busy", "deadline", "entry", "future", "owner", "queued", "queued_at")

    def __init__(self, entry, deadline, owner, future, queued_at, busy) -> None:
        self.queued = True  # in the queue (not in a batch, not dropped)
        self.busy = busy  # a batch was running when it came: it may wait for company
        self.entry = entry
        self.deadline = deadline
        self.owner = owner
        self.future = future
        self.queued_at = queued_at


class Batcher:
    """Queues entries and runs them through ``run_batch(entries) -> outputs`` in batches.
    ``submit(entry)`` returns the entry's own output (or raises its error)."""

    def __init__(self, run_batch: Callable[[list], Awaitable[list]],
                 settings: BatchSettings) -> None:  # fmt: skip
        self.run_batch = run_batch
        self.settings = settings
        self._queue: deque[_Item] = deque()
        self._waiting: dict[asyncio.Task, int] = {}  # owners of queued items
        # (bound to the loop at first use: Python >= 3.10; _start makes them anew)
        self._wake = asyncio.Event()
        self._forming = asyncio.Lock()  # one worker at a time forms a batch
        self._need = 1  # queued items that wake a waiting worker early
        self._workers: list[asyncio.Task] = []
        self.running = 0  # batches in on_batch now
        self.batches = self.items = self.expired = 0
        self.sizes = Histogram(SIZE_BUCKETS)
        self.delays = Histogram()  # seconds each item queued
        self._rate_mark = (time.monotonic(), 0)
        self.items_per_s = 0.0

    # ------------------------------------------------------------------ callers

    async def submit(self, entry, deadline: float | None = None,
                     owner: asyncio.Task | None = None) -> Any:  # fmt: skip
        """The output for ``entry`` once its batch ran. ``deadline`` (the loop's clock):
        dropped with TaskExpired if no batch took it by then; ``owner``: the task that
        counts as waiting (``holds``) while the entry is queued."""
        loop = asyncio.get_running_loop()
        if not self._workers:
            self._start()
        owner = owner or asyncio.current_task()
        assert owner is not None  # submitted from a task
        item = _Item(entry, deadline, owner, loop.create_future(), loop.time(), self.running > 0)
        self._queue.append(item)
        self._waiting[owner] = self._waiting.get(owner, 0) + 1
        if len(self._queue) >= self._need:
            self._wake.set()
        try:
            return await item.future  # cancelled with its caller: the batcher skips it
        finally:
            self._dequeued(item)

    def holds(self, task: asyncio.Task) -> bool:
        """Whether ``task`` has an entry queued (not yet in a batch)."""
        return task in self._waiting

    @property
    def queued(self) -> int:
        return len(self._queue)

    def _dequeued(self, item: _Item) -> None:
        """The item left the queue (into a batch, dropped, or its caller gave up)."""
        if not item.queued:
            return
        item.queued = False
        n = self._waiting.get(item.owner, 0) - 1
        if n > 0:
            self._waiting[item.owner] = n
        else:
            self._waiting.pop(item.owner, None)

    # ------------------------------------------------------------------ workers

    def _start(self) -> None:
        self._wake = asyncio.Event()
        self._forming = asyncio.Lock()
        self._workers = [asyncio.ensure_future(self._work())
                         for _ in range(self.settings.max_batches)]  # fmt: skip

    async def close(self) -> None:
        for worker in self._workers:
            worker.cancel()
        if self._workers:
            await asyncio.gather(*self._workers, return_exceptions=True)
        self._workers = []
        while self._queue:
            item = self._queue.popleft()
            if not item.future.done():
                item.future.cancel()

    def _prune(self, now: float) -> None:
        """Drop cancelled items and fail the expired ones (before a batch forms)."""
        if not self._queue:
            return
        if all(not item.future.done() and (item.deadline is None or now < item.deadline)
               for item in self._queue):  # fmt: skip
            return  # the common case: nothing to drop
        keep: deque[_Item] = deque()
        for item in self._queue:
            if item.future.done():
                self._dequeued(item)
                continue
            if item.deadline is not None and now >= item.deadline:
                self._dequeued(item)
                self.expired += 1
                item.future.set_exception(
                    TaskExpired("its deadline passed while it waited for a batch")
                )
                continue
            keep.append(item)
        self._queue = keep

    async def _wait(self, timeout: float | None, need: int) -> None:
        """Until ``need`` items are queued, a batch ends, or ``timeout`` seconds."""
        self._need = need
        self._wake.clear()
        if len(self._queue) >= need:
            return
        handle = None
        if timeout is not None:
            handle = asyncio.get_running_loop().call_later(max(timeout, 0.0), self._wake.set)
        try:
            await self._wake.wait()
        finally:
            if handle is not None:
                handle.cancel()
            self._need = 1

    async def _next_batch(self) -> list[_Item]:
        s = self.settings
        loop = asyncio.get_running_loop()
        full = max(s.preferred) if s.preferred else s.max_size
        while True:
            self._prune(loop.time())
            if not self._queue:
                # Woken by the first task's submit: the rest of its link message, whose
                # tasks were scheduled before this wake-up, have queued by the time it runs.
                await self._wait(None, 1)
                continue
            if len(self._queue) < full and s.delay > 0:
                # adaptive: only tasks that came while a batch ran wait (never an idle one)
                if s.mode == "delay" or self._queue[0].busy or self.running > 0:
                    left = self._queue[0].queued_at + s.delay - loop.time()
                    if left > 0:
                        await self._wait(left, full)
                        self._prune(loop.time())
                        if not self._queue:
                            continue
            n = min(len(self._queue), s.max_size)
            for p in reversed(s.preferred):
                if p <= n:
                    n = p
                    break
            now = loop.time()
            batch = [self._queue.popleft() for _ in range(n)]
            for item in batch:
                self._dequeued(item)
                self.delays.observe(now - item.queued_at)
            return batch

    async def _work(self) -> None:
        while True:
            # One worker waits for tasks and forms the next batch, the others queue for
            # the turn: a lone task wakes one worker, not all of them (each wake-up is a
            # turn of the event loop in its way), and the wait's settings are its alone.
            async with self._forming:
                batch = await self._next_batch()
            self.running += 1
            self.batches += 1
            self.items += len(batch)
            self.sizes.observe(len(batch))
            try:
                outputs = await self.run_batch([item.entry for item in batch])
                if not isinstance(outputs, (list, tuple)):
                    raise AiosFastError(f"on_batch must return a list (one output per "
                                        f"entry), not {type(outputs).__name__}")  # fmt: skip
                if len(outputs) != len(batch):
                    raise AiosFastError(
                        f"on_batch returned {len(outputs)} outputs for {len(batch)} entries "
                        "(one per entry expected)"
                    )
            except asyncio.CancelledError:
                for item in batch:
                    if not item.future.done():
                        item.future.cancel()
                raise
            except Exception as exc:
                for item in batch:
                    if not item.future.done():
                        item.future.set_exception(exc.with_traceback(None))
            else:
                for item, out in zip(batch, outputs, strict=True):
                    if item.future.done():  # its caller gave up meanwhile
                        continue
                    if isinstance(out, BaseException):
                        item.future.set_exception(out)
                    else:
                        item.future.set_result(out)
            finally:
                self.running -= 1
                if self._queue:
                    self._wake.set()  # a worker lingering for company may go now

    # ------------------------------------------------------------------ metrics

    def stats(self) -> dict:
        """Readings for /stats (and so executors' policies): call about once a second."""
        now = time.monotonic()
        then, items = self._rate_mark
        if now - then >= 0.5:
            self.items_per_s = (self.items - items) / (now - then)
            self._rate_mark = (now, self.items)
        count = self.delays.count
        return {
            "settings": self.settings.as_dict(),
            "batches": self.batches,
            "items": self.items,
            "expired": self.expired,
            "queued": len(self._queue),
            "running": self.running,
            "items_per_s": round(self.items_per_s, 1),
            "mean_batch_size": round(self.items / self.batches, 2) if self.batches else None,
            "mean_queue_delay_s": self.delays.sum / count if count else None,
            "batch_size": _buckets(self.sizes),
            "queue_delay_s": _buckets(self.delays),
        }


def _buckets(hist: Histogram) -> dict:
    """Cumulative counts by upper bound ("le"), as Prometheus shows them."""
    return dict(hist.buckets())
