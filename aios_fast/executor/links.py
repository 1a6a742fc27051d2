"""The executor's side of an instance link (``aios_fast.wire`` describes the wire).

Every link (``Link``) sends tasks to one instance and settles each task twice:
``accepted`` when the instance acknowledges it, then its end, reported through the one
``on_settled(task, exc)`` callback the link was made with (exactly once per task: exc
None for a result, else TaskFailed, TaskLost or TaskNotAccepted). ``InstanceLink`` keeps
a bidirectional stream open (reconnecting with backoff) and sends tasks in batches;
``UnaryLink`` makes one seeds' ``infer`` call a task. When a stream breaks, tasks not yet
acknowledged fail with TaskNotAccepted (safe to retry elsewhere) and acknowledged ones
with TaskLost (the caller must be told).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Callable
from time import perf_counter
from typing import Protocol

import grpc

from ..errors import AiosFastError
from ..service.batch_writer import BatchWriter
from ..wire import ACCEPTED, ACK, ERROR, INFER, LINK_METHOD, RESULT, decode_replies, encode_tasks

__all__ = [
    "InstanceLink",
    "Link",
    "LinkTask",
    "TaskFailed",
    "TaskLost",
    "TaskNotAccepted",
    "UnaryLink",
]

log = logging.getLogger("aios_fast.executor")
_ids = itertools.count(1)
LINGER = 0.002  # default seconds a small batch may wait under load (see BatchWriter)
BUSY_INFLIGHT = 2  # tasks in flight on a link from which it counts as loaded


class TaskNotAccepted(AiosFastError):
    """The instance never acknowledged the task: it may be retried on another instance."""


class TaskLost(AiosFastError):
    """The instance acknowledged the task, then its link broke before a result came."""


class TaskFailed(AiosFastError):
    """The instance ran the task and reported an error."""


OnState = Callable[[str, bool], None]  # (instance id, link up)


class LinkTask:
    """One task on a link. ``accepted`` resolves when the instance acknowledges it (or
    raises TaskNotAccepted); ``result`` (None for ``infer`` tasks, whose caller was
    answered at acceptance) resolves with the output packet bytes or the failure."""

    __slots__ = ("_on_settled", "accepted", "id", "instance_id", "result", "t0", "t_ack")

    def __init__(self, instance_id: str, want_result: bool, on_settled: OnSettled) -> None:
        loop = asyncio.get_running_loop()
        self.id = next(_ids)
        self.instance_id = instance_id
        self.accepted: asyncio.Future = loop.create_future()
        self.result: asyncio.Future | None = loop.create_future() if want_result else None
        self._on_settled = on_settled
        self.t0 = self.t_ack = 0.0  # perf_counter: received by the executor, acknowledged

    def ack(self) -> None:
        self.t_ack = perf_counter()
        if not self.accepted.done():
            self.accepted.set_result(None)

    def refuse(self, why: str) -> None:
        """Never acknowledged: settled with TaskNotAccepted (the caller may retry)."""
        if self.accepted.done():
            return
        exc = TaskNotAccepted(f"{self.instance_id}: {why}")
        self.accepted.set_exception(exc)
        self._on_settled(self, exc)

    def finish(self, out: bytes | None, exc: Exception | None) -> None:
        """The end of an acknowledged task: its output, or TaskFailed / TaskLost."""
        self._on_settled(self, exc)
        if self.result is not None and not self.result.done():
            if exc is None:
                self.result.set_result(out)
            else:
                self.result.set_exception(exc)


OnSettled = Callable[[LinkTask, Exception | None], None]


class Link(Protocol):
    """What the executor needs of a link to one instance."""

    instance_id: str
    target: str
    up: bool
    tasks_sent: int
    completed: int
    failed: int
    lost: int

    @property
    def inflight(self) -> int: ...

    def start(self) -> None: ...

    def submit(self, frame: bytes, want_result: bool) -> LinkTask: ...

    async def close(self) -> None: ...


class InstanceLink:
    """The stream to one instance, with its in-flight tasks."""

    def __init__(self, instance_id: str, target: str, on_state: OnState,
                 on_settled: OnSettled, linger: float = LINGER):  # fmt: skip
        self.instance_id = instance_id
        self.target = target
        self.up = False
        self.linger = linger
        self._on_state = on_state
        self._on_settled = on_settled
        self._pending: dict[int, LinkTask] = {}
        self._acked: set[int] = set()
        self._writer: BatchWriter | None = None
        self._runner: asyncio.Task | None = None
        self._closing = False
        # Counters (cheap: integer additions on the loop).
        self.tasks_sent = self.messages_sent = self.replies = self.messages_received = 0
        self.completed = self.failed = self.lost = 0

    @property
    def inflight(self) -> int:
        return len(self._pending)

    def _busy(self) -> bool:
        return len(self._pending) >= BUSY_INFLIGHT

    def start(self) -> None:
        self._runner = asyncio.ensure_future(self._run())

    def submit(self, frame: bytes, want_result: bool) -> LinkTask:
        task = LinkTask(self.instance_id, want_result, self._on_settled)
        if not self.up or self._writer is None:
            task.refuse("link is down")
            return task
        self._pending[task.id] = task
        self._writer.put((task.id, frame))
        return task

    async def _requests(self, writer: BatchWriter):
        while (batch := await writer.next_batch()) is not None:
            self.messages_sent += 1
            self.tasks_sent += len(batch)
            yield encode_tasks(batch)

    def _reply(self, task_id: int, kind: int, payload: bytes) -> None:
        task = self._pending.get(task_id)
        if task is None:
            return
        if kind == ACK:
            self._acked.add(task_id)
            task.ack()
            return
        del self._pending[task_id]
        if task_id in self._acked:
            self._acked.discard(task_id)
        else:  # a result implies acceptance
            task.ack()
        if kind == RESULT:
            self.completed += 1
            task.finish(payload, None)
        elif kind == ERROR:
            self.failed += 1
            task.finish(None, TaskFailed(f"{self.instance_id}: {payload.decode(errors='replace')}"))

    def _fail_all(self, reason: str) -> None:
        pending, self._pending = self._pending, {}
        acked, self._acked = self._acked, set()
        for task_id, task in pending.items():
            if task_id in acked:
                self.lost += 1
                task.finish(None, TaskLost(f"accepted by {self.instance_id}, then {reason}"))
            else:
                task.refuse(reason)

    def _set_up(self, up: bool) -> None:
        if self.up != up:
            self.up = up
            self._on_state(self.instance_id, up)

    async def _run(self) -> None:
        backoff = 0.05
        while not self._closing:
            channel = grpc.aio.insecure_channel(self.target)
            writer = BatchWriter(linger=self.linger, busy=self._busy)
            reason = "the link closed"
            try:
                call = channel.stream_stream(LINK_METHOD)(self._requests(writer))
                await call.wait_for_connection()
                self._writer = writer
                self._set_up(True)
                backoff = 0.05
                async for message in call:
                    replies = decode_replies(message)
                    self.messages_received += 1
                    self.replies += len(replies)
                    for task_id, kind, payload in replies:
                        self._reply(task_id, kind, payload)
                reason = "the instance ended the link"
            except asyncio.CancelledError:
                reason = "the link was closed by the executor"
                raise
            except Exception as exc:
                reason = f"the link failed ({type(exc).__name__}: {_short(exc)})"
            finally:
                self._writer = None
                writer.close()
                self._set_up(False)
                self._fail_all(reason)
                await channel.close()
            if not self._closing:
                log.warning("instance %s at %s: %s; reconnecting", self.instance_id,
                            self.target, reason)  # fmt: skip
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 1.0)

    async def close(self) -> None:
        self._closing = True
        if self._runner is not None:
            self._runner.cancel()
            try:
                await self._runner
            except asyncio.CancelledError:
                pass
        self._fail_all("the link was closed by the executor")


def _short(exc: Exception) -> str:
    if isinstance(exc, grpc.aio.AioRpcError):
        return f"{exc.code().name} {exc.details()}"
    return str(exc)


class UnaryLink:
    """An instance that only speaks the seeds' unary ``infer`` (no stream, no results).

    Each task is one ``infer`` call. ``message=true`` is the acceptance; the result, if
    any, travels by the packet's output_ptr, so result-returning callers get an empty
    output. UNAVAILABLE before an answer counts as not accepted (retried elsewhere: such
    instances get at-least-once delivery); any other failure is reported to the caller.
    """

    def __init__(self, instance_id: str, target: str, on_state: OnState,
                 on_settled: OnSettled, linger: float = 0.0):  # fmt: skip
        self.instance_id = instance_id
        self.target = target
        self.up = False
        self._on_state = on_state
        self._on_settled = on_settled
        self._channel: grpc.aio.Channel | None = None
        self._call = None
        self._pending: set[asyncio.Task] = set()
        self._watch: asyncio.Task | None = None
        self.tasks_sent = self.completed = self.failed = self.lost = 0

    @property
    def inflight(self) -> int:
        return len(self._pending)

    def start(self) -> None:
        self._channel = grpc.aio.insecure_channel(self.target)
        self._call = self._channel.unary_unary(INFER)
        self._watch = asyncio.ensure_future(self._watch_state())

    async def _watch_state(self) -> None:
        state = self._channel.get_state(try_to_connect=True)
        while True:
            # READY is up; IDLE (an idle timeout) keeps whatever it was; the rest is down.
            up = state is grpc.ChannelConnectivity.READY or (
                state is grpc.ChannelConnectivity.IDLE and self.up
            )
            if up != self.up:
                self.up = up
                self._on_state(self.instance_id, up)
            await self._channel.wait_for_state_change(state)
            state = self._channel.get_state(try_to_connect=True)

    def submit(self, frame: bytes, want_result: bool) -> LinkTask:
        task = LinkTask(self.instance_id, want_result, self._on_settled)
        self.tasks_sent += 1
        runner = asyncio.ensure_future(self._send(task, frame))
        self._pending.add(runner)
        runner.add_done_callback(self._pending.discard)
        return task

    async def _send(self, task: LinkTask, frame: bytes) -> None:
        try:
            reply = await self._call(frame)
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.UNAVAILABLE:
                task.refuse(_short(exc))
                return
            task.ack()
            self.failed += 1
            task.finish(None, TaskFailed(f"{self.instance_id}: {_short(exc)}"))
            return
        except asyncio.CancelledError:
            task.refuse("link closed")
            raise
        if reply != ACCEPTED:
            task.refuse("answered message=false")
            return
        task.ack()
        self.completed += 1
        task.finish(b"", None)

    async def close(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
        for runner in list(self._pending):
            runner.cancel()
        if self._pending:
            await asyncio.gather(*self._pending, return_exceptions=True)
        if self._channel is not None:
            await self._channel.close()
