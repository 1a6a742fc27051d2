"""The instance's side of an instance link (``aios_fast.wire`` describes the wire):
acknowledge every task on arrival, run it, reply with its result or error as it ends.
Replies go out in batches; an ACK whose task's result is in the same batch is dropped
(a result implies acceptance)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

from ..service.batch_writer import BatchWriter
from ..wire import ACK, ERROR, RESULT, decode_tasks, encode_replies

__all__ = ["LinkServer", "describe"]


def describe(exc: BaseException) -> str:
    """How a task's failure is told to its caller: the exception's type and message."""
    return f"{type(exc).__name__}: {exc}"


class LinkServer:
    """Serves executors' streams for one instance. ``run_task(frame)`` runs one task;
    ``counters.completed`` / ``.failed`` count the outcomes."""

    def __init__(self, run_task: Callable[[bytes], Awaitable[bytes]], counters) -> None:
        self.run_task = run_task
        self.counters = counters

    async def serve(self, requests: AsyncIterator[bytes], context) -> AsyncIterator[bytes]:
        """One executor's stream: ``requests`` are task batches, the yielded messages
        reply batches (the gRPC stream-stream handler)."""
        writer = BatchWriter()
        pending: set[asyncio.Task] = set()
        counters = self.counters

        async def work(task_id: int, frame: bytes) -> None:
            try:
                writer.put((task_id, RESULT, await self.run_task(frame)))
                counters.completed += 1
            except Exception as exc:  # reported to the executor, never dropped
                counters.failed += 1
                writer.put((task_id, ERROR, describe(exc).encode()))

        async def read() -> None:
            try:
                async for message in requests:
                    for task_id, frame in decode_tasks(message):
                        writer.put((task_id, ACK, b""))
                        t = asyncio.ensure_future(work(task_id, frame))
                        pending.add(t)
                        t.add_done_callback(pending.discard)
            finally:
                if pending:
                    await asyncio.gather(*pending, return_exceptions=True)
                writer.close()

        reader = asyncio.ensure_future(read())
        try:
            while (batch := await writer.next_batch()) is not None:
                yield encode_replies(_drop_answered_acks(batch))
        finally:
            reader.cancel()


def _drop_answered_acks(batch: list) -> list:
    """A result implies acceptance: drop ACKs whose task's result is in the same batch."""
    done = {item[0] for item in batch if item[1] != ACK}
    if not done:
        return batch
    return [item for item in batch if item[1] != ACK or item[0] not in done]
