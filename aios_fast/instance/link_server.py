"""The instance's side of an instance link (``aios_fast.wire`` describes the wire):
acknowledge every task on arrival, run it, reply with its result or error as it ends.
Replies go out in batches (at most ``LINK_BATCH_BYTES`` unless one result is larger);
an ACK whose task's result is in the same batch is dropped (a result implies
acceptance). A task whose caller's deadline passes before it can start is skipped
(EXPIRED); a CANCEL stops a task whose caller gave up. ``leave()`` tells every executor
the instance is leaving and gives back (REFUSED) the tasks not yet started, and those
that still arrive, to be run elsewhere; ``close()`` ends the streams once the tasks
that started have finished. A stream that breaks cancels its tasks: its executor has
already counted them lost or run them elsewhere.

Limits: the instance says its --max-message in the stream's initial metadata, and caps
the outputs it sends at what the executor said it takes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Protocol

import grpc

from ..errors import OutputTooLarge, TaskExpired, TaskTimedOut
from ..oip import InvalidTensor
from ..service.batch_writer import BatchWriter
from ..wire import (
    ACK,
    CANCEL,
    ERROR,
    EXPIRED,
    FIRE,
    INVALID,
    ITEM_OVERHEAD,
    LEAVING,
    LIMIT_HEADER,
    LINK_BATCH_BYTES,
    REFUSED,
    RESULT,
    TIMED_OUT,
    TIMEOUT_HEADER,
    TOO_LARGE,
    decode_tasks,
    encode_replies,
    max_output,
)

__all__ = ["Counters", "LinkServer", "Writer", "describe", "drop_answered_acks"]

RunTask = Callable[[bytes, float | None, int | None, float, int], Awaitable[bytes]]


def describe(exc: BaseException) -> str:
    """How a task's failure is told to its caller: the exception's type and message."""
    return f"{type(exc).__name__}: {exc}"


class Writer(Protocol):
    """Where a stream's replies go: ``put`` one, ``close`` once all are put (the gRPC
    stream's BatchWriter, or a native connection)."""

    def put(self, item, size: int = 0) -> None: ...

    def close(self) -> None: ...


class _Stream:
    """One executor's stream: its reply writer, its running tasks by id, and what the
    executor said in its handshake (output limit, task timeout)."""

    __slots__ = ("limit", "returned", "run_timeout", "running", "writer")

    def __init__(self, writer: Writer, limit: int, run_timeout: float) -> None:
        self.writer = writer
        self.limit = limit  # outputs the executor can take, as it says
        self.run_timeout = run_timeout  # the block's task timeout, as the executor says
        self.running: dict[int, asyncio.Task] = {}
        self.returned: set[int] = set()  # given back unrun (the instance is leaving)

    def reply(self, task_id: int, kind: int, payload: bytes = b"") -> None:
        self.writer.put((task_id, kind, payload), len(payload) + ITEM_OVERHEAD)


class Counters(Protocol):
    """Where a link server counts its tasks' outcomes (the instance server's books,
    ``outcomes.Outcomes``): ``fail`` counts a failure and logs the block's own errors."""

    completed: int
    failed: int
    cancelled: int

    def fail(self, exc: BaseException) -> None: ...


class LinkServer:
    """Serves executors' streams for one instance. ``run_task(frame, deadline)`` runs one
    task; ``outcomes`` counts the outcomes (and logs the block's errors)."""

    def __init__(self, run_task: RunTask, counters: Counters, max_message: int,
                 queued: Callable[[asyncio.Task], bool] = lambda task: False) -> None:  # fmt: skip
        self.run_task = run_task
        self.counters = counters
        self.max_output = max_output(max_message)  # this instance's own output limit
        self.queued = queued  # whether a task still waits for a slot (not started)
        self.leaving = False
        self._streams: set[_Stream] = set()
        self._limit_md = ((LIMIT_HEADER, str(max_message)),)

    @property
    def inflight(self) -> int:
        return sum(len(stream.running) for stream in self._streams)

    def leave(self) -> None:
        """Tell every executor: no new tasks; what started still finishes, what did not
        start yet is given back to run elsewhere."""
        self.leaving = True
        for stream in self._streams:
            stream.reply(0, LEAVING)
            for task_id, task in list(stream.running.items()):
                if self.queued(task):
                    stream.returned.add(task_id)
                    task.cancel()

    async def close(self, timeout: float) -> None:
        """End every stream once its tasks finished (cancelling those left after
        ``timeout`` seconds: they were taken, so their executor reports them lost)."""
        running = [t for stream in self._streams for t in stream.running.values()]
        if running:
            await asyncio.wait(running, timeout=timeout)
        for stream in self._streams:
            for t in stream.running.values():
                t.cancel()
            stream.writer.close()

    def open(self, writer: Writer, peer_limit: int | None, run_timeout: float) -> _Stream:
        """A new executor stream (either transport): ``peer_limit`` is the executor's
        --max-message, ``run_timeout`` the block's task timeout, as it said them."""
        limit = self.max_output
        if peer_limit is not None:
            limit = min(limit, max_output(peer_limit))
        stream = _Stream(writer, limit, max(run_timeout, 0.0))
        self._streams.add(stream)
        if self.leaving:
            stream.reply(0, LEAVING)
        return stream

    def on_tasks(self, stream: _Stream, items) -> None:
        """A batch the executor sent: acknowledge and start each task (or cancel one)."""
        loop = asyncio.get_running_loop()
        for task_id, kind, frame, timeout in items:
            if kind == CANCEL:
                t = stream.running.get(task_id)
                if t is not None:
                    t.cancel()
            elif self.leaving:
                stream.reply(task_id, REFUSED)
            else:
                stream.reply(task_id, ACK)
                deadline = loop.time() + timeout if timeout > 0 else None
                stream.running[task_id] = asyncio.ensure_future(
                    self._work(stream, task_id, frame, deadline, kind)
                )

    async def _work(self, stream: _Stream, task_id: int, frame: bytes,
                    deadline: float | None, kind: int) -> None:  # fmt: skip
        counters = self.counters
        try:
            output = await self.run_task(frame, deadline, None if kind == FIRE else stream.limit,
                                         stream.run_timeout, kind)  # fmt: skip
            stream.reply(task_id, RESULT, output)
            counters.completed += 1
        except asyncio.CancelledError:
            if task_id in stream.returned:
                stream.reply(task_id, REFUSED)  # never started: run it elsewhere
            else:
                counters.cancelled += 1  # its caller gave up: nobody waits for a reply
        except TaskExpired as exc:
            stream.reply(task_id, EXPIRED, str(exc).encode())
        except TaskTimedOut as exc:
            counters.fail(exc)
            stream.reply(task_id, TIMED_OUT, str(exc).encode())
        except OutputTooLarge as exc:
            counters.fail(exc)
            stream.reply(task_id, TOO_LARGE, str(exc).encode())
        except InvalidTensor as exc:  # the caller's input: INVALID_ARGUMENT
            counters.fail(exc)
            stream.reply(task_id, INVALID, str(exc).encode())
        except Exception as exc:  # reported to the executor, never dropped
            counters.fail(exc)
            stream.reply(task_id, ERROR, describe(exc).encode())
        finally:
            stream.running.pop(task_id, None)

    def broken(self, stream: _Stream) -> None:
        """The stream broke: nobody waits for its tasks (its executor has already
        counted them lost or run them elsewhere)."""
        self._streams.discard(stream)
        for task in stream.running.values():
            task.cancel()

    async def finish(self, stream: _Stream) -> None:
        """The executor closed its side: answer what is running, then end the stream."""
        if stream.running:
            await asyncio.gather(*stream.running.values(), return_exceptions=True)
        stream.writer.close()

    async def serve(self, requests: AsyncIterator[bytes], context) -> AsyncIterator[bytes]:
        """One executor's gRPC stream: ``requests`` are task batches, the yielded
        messages reply batches (the gRPC stream-stream handler)."""
        if self.leaving:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "the instance is stopping")
        await context.send_initial_metadata(self._limit_md)
        peer_limit, run_timeout = None, 0.0
        for key, value in context.invocation_metadata() or ():
            if key == LIMIT_HEADER and value.isdigit():
                peer_limit = int(value)
            elif key == TIMEOUT_HEADER:
                try:
                    run_timeout = float(value)
                except ValueError:
                    pass
        writer = BatchWriter(max_bytes=LINK_BATCH_BYTES)
        stream = self.open(writer, peer_limit, run_timeout)

        async def read() -> None:
            try:
                async for message in requests:
                    self.on_tasks(stream, decode_tasks(message))
            finally:
                await self.finish(stream)

        reader = asyncio.ensure_future(read())
        try:
            while (batch := await writer.next_batch()) is not None:
                yield encode_replies(drop_answered_acks(batch))
        finally:
            reader.cancel()
            self.broken(stream)


def drop_answered_acks(batch: list) -> list:
    """A result implies acceptance: drop ACKs whose task's result is in the same batch."""
    done = {item[0] for item in batch if item[1] != ACK}
    if not done:
        return batch
    return [item for item in batch if item[1] != ACK or item[0] not in done]
