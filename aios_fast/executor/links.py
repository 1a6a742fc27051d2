"""The executor's side of an instance link (``aios_fast.wire`` describes the wire).

Every link (``Link``) sends tasks to one instance and settles each task twice:
acknowledged when the instance says so, then its end, reported once through the one
``on_settled(task, exc)`` callback the link was made with (the executor's books: exc
None for a result, else TaskFailed, TaskTimedOut, TaskLost, TaskNotAccepted or
TaskCancelled), then to the task's ``Waiter`` (the caller's ``TaskRun``), synchronously.
``InstanceLink`` keeps a bidirectional stream open (reconnecting with
backoff, HTTP/2 keepalive so a hung instance is noticed) and sends tasks in batches;
``UnaryLink`` makes one seeds' ``infer`` call a task. When a stream breaks, tasks not
yet acknowledged fail with TaskNotAccepted (safe to retry elsewhere) and acknowledged
ones with TaskLost (the caller must be told).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property, partial
from time import perf_counter
from typing import Any, Protocol

import grpc

from ..errors import AiosFastError
from ..logs import RateLimitedLog
from ..service.batch_writer import BatchWriter
from ..settings import InitSettings
from ..tls import TLS
from ..wire import (
    ACCEPTED,
    ACK,
    CANCEL,
    ERROR,
    EXPIRED,
    FIRE,
    INFER,
    INVALID,
    ITEM_OVERHEAD,
    LEAVING,
    LIMIT_HEADER,
    LINK_BATCH_BYTES,
    LINK_METHOD,
    RAISE_LIMIT,
    REFUSED,
    RESULT,
    TASK,
    TIMED_OUT,
    TIMEOUT_HEADER,
    TOO_LARGE,
    decode_replies,
    encode_tasks,
    link_limit,
)

__all__ = [
    "InstanceLink",
    "Link",
    "LinkSettings",
    "LinkTask",
    "OnSettled",
    "OnState",
    "TaskCancelled",
    "TaskFailed",
    "TaskLost",
    "TaskNotAccepted",
    "TaskReturned",
    "TaskTimedOut",
    "TaskTooLarge",
    "UnaryLink",
    "Waiter",
]

log = logging.getLogger("aios_fast.executor")
_ids = itertools.count(1)
BUSY_INFLIGHT = 2  # tasks in flight on a link from which it counts as loaded


class TaskNotAccepted(AiosFastError):
    """The instance never acknowledged the task: it may be retried on another instance."""


class TaskTooLarge(TaskNotAccepted):
    """The task is over the instance's message limit (RESOURCE_EXHAUSTED, not retried)."""


class TaskReturned(AiosFastError):
    """The instance took the task, then gave it back unrun (it is leaving): run it
    elsewhere."""


class TaskLost(AiosFastError):
    """The instance acknowledged the task, then its link broke before a result came."""


class TaskFailed(AiosFastError):
    """The task ended without a result; ``code`` is the gRPC status its caller gets."""

    def __init__(self, message: str, code: grpc.StatusCode = grpc.StatusCode.INTERNAL) -> None:
        super().__init__(message)
        self.code = code


class TaskTimedOut(TaskFailed):
    """The instance took longer than the block's task timeout (it was told to cancel)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, grpc.StatusCode.DEADLINE_EXCEEDED)


class TaskCancelled(AiosFastError):
    """The caller gave up (cancelled, or its deadline passed); the instance was told."""


_REPLY_CODES = {
    ERROR: grpc.StatusCode.INTERNAL,
    INVALID: grpc.StatusCode.INVALID_ARGUMENT,
    EXPIRED: grpc.StatusCode.DEADLINE_EXCEEDED,
    TOO_LARGE: grpc.StatusCode.RESOURCE_EXHAUSTED,
}


_DEFAULTS = InitSettings()  # the settings contract's defaults


@dataclass
class LinkSettings:
    linger: float = _DEFAULTS.executor.linkLinger  # seconds a small batch may wait (busy link)
    max_message: int = _DEFAULTS.maxMessageBytes  # the executor's accept limit: each task fits
    keepalive: float = _DEFAULTS.executor.linkKeepalive  # s between pings; unanswered: fails
    run_timeout: float = 0.0  # seconds an acknowledged task may run (0: no limit)
    token_metadata: tuple[tuple[str, str], ...] = ()  # sent with every call (infer token)
    tls: TLS = field(default_factory=TLS)  # links over TLS when it has a CA
    transport: str = "grpc"  # stream links: "native"/"tcp" (executor.native_link), "grpc"

    @cached_property  # sent with every unary-link call: built once
    def metadata(self) -> tuple[tuple[str, str], ...]:
        return ((LIMIT_HEADER, str(self.max_message)), (TIMEOUT_HEADER, str(self.run_timeout)),
                *self.token_metadata)  # fmt: skip

    def channel_options(self) -> list[tuple[str, int]]:
        limit = link_limit(self.max_message)
        options = [("grpc.max_send_message_length", limit),
                   ("grpc.max_receive_message_length", limit)]  # fmt: skip
        if self.keepalive > 0:
            ms = max(int(self.keepalive * 1000), 100)
            # any unanswered ping (keepalive or BDP probe) ends the transport after ms
            options += [("grpc.keepalive_time_ms", ms), ("grpc.keepalive_timeout_ms", ms),
                        ("grpc.http2.ping_timeout_ms", ms),
                        ("grpc.keepalive_permit_without_calls", 1),
                        ("grpc.http2.max_pings_without_data", 0)]  # fmt: skip
        return options


OnState = Callable[[str, bool], None]  # (instance id, available to new tasks)


class Waiter(Protocol):
    """Who hears of a task's fate (``executor.task_run.TaskRun``), called synchronously
    by its link: ``accepted`` once acknowledged, ``refused`` if never (it may be sent
    elsewhere), ``finished`` at the end of an acknowledged task. Not told when the task
    is dropped (its caller is gone)."""

    def accepted(self, task: LinkTask) -> None: ...

    def refused(self, task: LinkTask, exc: TaskNotAccepted) -> None: ...

    def finished(self, task: LinkTask, out: bytes | None, exc: Exception | None) -> None: ...


class LinkTask:
    """One task on a link. Its end is reported once to the link's ``on_settled`` (the
    executor's books) and then, if it has one, to its ``waiter`` (the caller's run):
    acknowledged (``ack``), then finished with the output packet bytes or the failure;
    or refused, never acknowledged."""

    __slots__ = ("_on_settled", "acked", "frame", "id", "instance_id", "link", "settled",
                 "t0", "t_ack", "waiter")  # fmt: skip

    def __init__(self, link: Link, on_settled: OnSettled, frame: bytes = b"",
                 waiter: Waiter | None = None) -> None:  # fmt: skip
        self.id = next(_ids)
        self.frame = frame  # kept (no copy) to run it elsewhere if it is given back
        self.link = link
        self.instance_id = link.instance_id
        self.waiter = waiter
        self._on_settled = on_settled
        self.acked = self.settled = False
        self.t0 = self.t_ack = 0.0  # perf_counter: received by the executor, acknowledged

    def ack(self) -> None:
        if self.acked or self.settled:
            return
        self.acked = True
        self.t_ack = perf_counter()
        if self.waiter is not None:
            self.waiter.accepted(self)

    def _settle(self, exc: Exception | None) -> bool:
        if self.settled:
            return False
        self.settled = True
        self._on_settled(self, exc)
        return True

    def refuse(self, why: str, kind: type[TaskNotAccepted] = TaskNotAccepted) -> None:
        """Never acknowledged: settled with TaskNotAccepted (the waiter may retry)."""
        exc = kind(f"{self.instance_id}: {why}")
        if self._settle(exc) and self.waiter is not None:
            self.waiter.refused(self, exc)

    def finish(self, out: bytes | None, exc: Exception | None) -> None:
        """The end of an acknowledged task: its output, or why there is none."""
        if self._settle(exc) and self.waiter is not None:
            self.waiter.finished(self, out, exc)

    def drop(self, exc: Exception) -> None:
        """Its caller is gone: settled, and nobody is told."""
        self.waiter = None
        self._settle(exc)

    def cancel(self) -> None:
        """The caller gave up: the link forgets the task and tells the instance."""
        if not self.settled:
            self.link.cancel(self)


OnSettled = Callable[[LinkTask, Exception | None], None]


class Link(Protocol):
    """What the executor needs of a link to one instance. ``up``: it may take new tasks
    (connected, and the instance is not leaving)."""

    instance_id: str
    target: str
    up: bool
    transport: str  # "grpc", "unix", "tcp" (native), "unary"
    tasks_sent: int
    completed: int
    failed: int
    lost: int

    @property
    def inflight(self) -> int: ...

    def start(self) -> None: ...

    def submit(
        self,
        frame: bytes,
        want_result: bool,
        timeout: float = 0.0,
        waiter: Waiter | None = None,
        kind: int | None = None,
    ) -> LinkTask: ...

    def cancel(self, task: LinkTask) -> None: ...

    def expire(self, cutoff: float) -> int: ...

    async def close(self) -> None: ...


class InstanceLink:
    """The stream to one instance, with its in-flight tasks."""

    def __init__(self, instance_id: str, target: str, on_state: OnState,
                 on_settled: OnSettled, settings: LinkSettings | None = None):  # fmt: skip
        self.instance_id = instance_id
        self.target = target
        self.up = False
        self.transport = "grpc"
        self.leaving = False  # the instance said it drains: no new tasks
        self.settings = settings or LinkSettings()
        self.peer_limit = self.settings.max_message  # the instance's, once it says
        self.last_heard = 0.0  # perf_counter of its last message
        self._call = None  # the stream now
        self._stalled = ""  # why expire() ended the stream
        self._on_state = on_state
        self._on_settled = on_settled
        self._pending: dict[int, LinkTask] = {}
        self._acked: set[int] = set()
        self._writer: BatchWriter | None = None
        self._runner: asyncio.Task | None = None
        self._closing = False
        self._log = RateLimitedLog(log, 30.0)
        # Counters (cheap: integer additions on the loop).
        self.tasks_sent = self.completed = self.failed = self.lost = 0  # /stats per instance

    @property
    def inflight(self) -> int:
        return len(self._pending)

    def _busy(self) -> bool:
        return len(self._pending) >= BUSY_INFLIGHT

    def start(self) -> None:
        self._runner = asyncio.ensure_future(self._run())

    def submit(self, frame: bytes, want_result: bool, timeout: float = 0.0,
               waiter: Waiter | None = None, kind: int | None = None) -> LinkTask:  # fmt: skip
        task = LinkTask(self, self._on_settled, frame, waiter)
        if not self.up or self._writer is None:
            task.refuse("link is down")
            return task
        if len(frame) > self.peer_limit:
            task.refuse(f"the task's {len(frame):,} bytes are over this instance's "
                        f"{self.peer_limit:,}-byte limit ({RAISE_LIMIT})",
                        TaskTooLarge)  # fmt: skip
            return task
        self._pending[task.id] = task
        self.tasks_sent += 1
        if kind is None:  # (OIP tasks say theirs)
            kind = TASK if want_result else FIRE
        self._writer.put((task.id, kind, frame, timeout), len(frame) + ITEM_OVERHEAD)
        return task

    def cancel(self, task: LinkTask) -> None:
        if self._pending.pop(task.id, None) is None:
            return
        self._acked.discard(task.id)
        if self._writer is not None:
            self._writer.put((task.id, CANCEL, b"", 0.0), ITEM_OVERHEAD)
        task.drop(TaskCancelled(f"{self.instance_id}: the caller gave up"))

    def expire(self, cutoff: float) -> int:
        """A backstop for the task timeout, which a live instance applies itself (from
        the start of each run, with TIMED_OUT replies): when the instance has said
        nothing since ``cutoff`` (perf_counter) while a task sent before then waits,
        its event loop is wedged (HTTP/2 pings are answered by grpc's own threads, so
        keepalive cannot tell). The stream is ended: tasks it acknowledged are lost,
        the others go elsewhere. Returns how many tasks were waiting."""
        if self._writer is None or not self._pending or self.last_heard >= cutoff:
            return 0
        if min(task.t0 for task in self._pending.values()) >= cutoff:
            return 0
        self._stalled = (f"it said nothing for {self.settings.run_timeout:g}s with "
                         f"{len(self._pending)} tasks waiting")  # fmt: skip
        self._abort_session()
        return len(self._pending)

    async def _requests(self, writer: BatchWriter):
        while (batch := await writer.next_batch()) is not None:
            yield encode_tasks(batch)

    def _reply(self, task_id: int, kind: int, payload: bytes) -> None:
        if kind == LEAVING:
            self.leaving = True
            self._set_up(False)
            log.info("instance %s is leaving: no new tasks, %d in flight finish there",
                     self.instance_id, len(self._pending))  # fmt: skip
            return
        task = self._pending.get(task_id)
        if task is None:
            return  # cancelled or timed out meanwhile
        if kind == ACK:
            self._acked.add(task_id)
            task.ack()
            return
        del self._pending[task_id]
        if kind == REFUSED:
            if task_id in self._acked:  # taken, then given back unrun
                self._acked.discard(task_id)
                task.finish(None, TaskReturned(f"{self.instance_id} gave the task back"))
            else:
                task.refuse("the instance is leaving")
            return
        if task_id in self._acked:
            self._acked.discard(task_id)
        else:  # a result implies acceptance
            task.ack()
        if kind == RESULT:
            self.completed += 1
            task.finish(payload, None)
        elif kind == TIMED_OUT:
            self.failed += 1
            task.finish(
                None, TaskTimedOut(f"{self.instance_id}: {payload.decode(errors='replace')}")
            )
        else:
            self.failed += 1
            code = _REPLY_CODES.get(kind, grpc.StatusCode.INTERNAL)
            message = f"{self.instance_id}: {payload.decode(errors='replace')}"
            task.finish(None, TaskFailed(message, code))

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

    def _connected(self, writer, peer_limit: int) -> None:
        """A session is open: tasks go to ``writer`` (``put(item, size)``, ``close()``)."""
        self.peer_limit = peer_limit
        self._writer = writer
        self.leaving = False
        self._set_up(True)

    def _abort_session(self) -> None:
        """End the session now (expire(): the instance is wedged)."""
        if self._call is not None:
            self._call.cancel()

    async def _session(self) -> str:
        """One gRPC stream to the instance, until it ends: returns why it ended (an
        exception: it failed). Calls ``_connected`` once the instance answered."""
        settings = self.settings
        channel = settings.tls.aio_channel(self.target, settings.channel_options())
        writer = BatchWriter(linger=settings.linger, busy=self._busy,
                             max_bytes=LINK_BATCH_BYTES)  # fmt: skip
        try:
            call = channel.stream_stream(LINK_METHOD)(
                self._requests(writer), metadata=settings.metadata
            )
            self._call = call
            await call.wait_for_connection()
            self._connected(writer, _peer_limit(await call.initial_metadata(), settings))
            async for message in call:
                self.last_heard = perf_counter()
                for task_id, kind, payload in decode_replies(message):
                    self._reply(task_id, kind, payload)
            return "the instance ended the link"
        finally:
            writer.close()
            await channel.close()

    async def _run(self) -> None:
        backoff = 0.05
        while not self._closing:
            reason = "the link closed"
            self._stalled = ""
            try:
                reason = await self._session()
            except asyncio.CancelledError:
                if not self._stalled:
                    reason = "the link was closed by the executor"
                    raise
                reason = self._stalled  # expire() ended the session: reconnect
            except Exception as exc:
                reason = f"the link failed ({type(exc).__name__}: {_short(exc)})"
            finally:
                if self._writer is not None:
                    backoff = 0.05  # it was up: reconnect soon
                self._writer = None
                self._call = None
                self._set_up(False)
                self._fail_all(self._stalled or reason)
            if not self._closing:
                if self.leaving:
                    reason = "it left (drained); reconnecting while it is away"
                self._log.warning(f"instance {self.instance_id} at {self.target}",
                                  f"{reason}; reconnecting")  # fmt: skip
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


def _peer_limit(metadata, settings: LinkSettings) -> int:
    """The instance's --max-message from its stream metadata (else ours)."""
    for key, value in metadata or ():
        if key == LIMIT_HEADER and value.isdigit():
            return int(value)
    return settings.max_message


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
    The caller's deadline (and the block's task timeout) is the call's deadline.
    """

    def __init__(self, instance_id: str, target: str, on_state: OnState,
                 on_settled: OnSettled, settings: LinkSettings | None = None):  # fmt: skip
        self.instance_id = instance_id
        self.target = target
        self.up = False
        self.transport = "unary"
        self.settings = settings or LinkSettings()
        self._on_state = on_state
        self._on_settled = on_settled
        self._channel: grpc.aio.Channel | None = None
        self._call: Any = None
        self._pending: dict[LinkTask, asyncio.Task] = {}
        self._watch: asyncio.Task | None = None
        self.tasks_sent = self.completed = self.failed = self.lost = 0

    @property
    def inflight(self) -> int:
        return len(self._pending)

    def start(self) -> None:
        options = self.settings.channel_options()
        self._channel = self.settings.tls.aio_channel(self.target, options)
        self._call = self._channel.unary_unary(INFER)
        self._watch = asyncio.ensure_future(self._watch_state())

    async def _watch_state(self) -> None:
        channel = self._channel
        assert channel is not None  # started
        state = channel.get_state(try_to_connect=True)
        while True:
            # READY is up; IDLE (an idle timeout) keeps whatever it was; the rest is down.
            up = state is grpc.ChannelConnectivity.READY or (
                state is grpc.ChannelConnectivity.IDLE and self.up
            )
            if up != self.up:
                self.up = up
                self._on_state(self.instance_id, up)
            await channel.wait_for_state_change(state)
            state = channel.get_state(try_to_connect=True)

    def submit(self, frame: bytes, want_result: bool, timeout: float = 0.0,
               waiter: Waiter | None = None, kind: int | None = None) -> LinkTask:  # fmt: skip
        task = LinkTask(self, self._on_settled, frame, waiter)
        if kind is not None:  # an OIP task: the seeds' infer cannot carry it
            task.refuse("an instance without the link does not take OIP tasks")
            return task
        self.tasks_sent += 1
        limits = [t for t in (timeout, self.settings.run_timeout) if t > 0]
        runner = asyncio.ensure_future(self._send(task, frame, min(limits) if limits else None))
        self._pending[task] = runner
        runner.add_done_callback(partial(self._forget, task))
        return task

    def _forget(self, task: LinkTask, _runner: asyncio.Future) -> None:
        self._pending.pop(task, None)

    def cancel(self, task: LinkTask) -> None:
        runner = self._pending.pop(task, None)
        if runner is not None:
            runner.cancel()
        task.drop(TaskCancelled(f"{self.instance_id}: the caller gave up"))

    def expire(self, cutoff: float) -> int:
        return 0  # the call's own deadline is the task timeout

    async def _send(self, task: LinkTask, frame: bytes, timeout: float | None) -> None:
        try:
            reply = await self._call(frame, timeout=timeout, metadata=self.settings.metadata)
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.UNAVAILABLE:
                task.refuse(_short(exc))
                return
            task.ack()
            self.failed += 1
            if exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                task.finish(None, TaskTimedOut(f"{self.instance_id}: {_short(exc)}"))
            else:
                task.finish(None, TaskFailed(f"{self.instance_id}: {_short(exc)}", exc.code()))
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
        runners = list(self._pending.values())
        for runner in runners:
            runner.cancel()
        if runners:
            await asyncio.gather(*runners, return_exceptions=True)
        if self._channel is not None:
            await self._channel.close()
