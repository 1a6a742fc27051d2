"""One task's way through the executor, from the caller's bytes to its answer, driven by
callbacks: no asyncio Task, future or coroutine per task.

``TaskRun.start`` reads the packet, picks an instance and hands the task to its link,
all synchronously. The link then calls back (``accepted``, ``refused``, ``finished``:
the ``LinkTask``'s waiter), and the run ends exactly once with ``on_done(run, answer,
reject)``: the bytes to answer with, or the ``Reject`` (a gRPC status and message) the
caller gets. The native front passes its own ``on_done`` (the answer goes out on the
HTTP/2 stream from inside the link's callback); the grpcio front and ``infer_stream``
await a future through ``Router.run``. Either way the rules are these:

- ``infer`` is answered at acceptance (``ACCEPTED``); the rest of its life is the
  router's (``Router.settled``: counted, logged if lost);
- a task no instance acknowledged is sent again to another pick, ``max_retries`` times;
  an instance that gives an acknowledged task back unrun (it is leaving) has it sent
  elsewhere, with a fresh set of retries;
- ``cancel()`` (the caller reset the stream, its deadline passed, its handler was
  cancelled) cancels the task at the instance; nothing is answered after it.

Every received task ends counted once in ``Router.stats`` (``executor.router`` states
the identities): invalid, rejected (no instance took it, or it was refused before one
was picked), withdrawn (its caller gave up before an instance acknowledged it), or
accepted and then completed, failed, lost or cancelled (``infer`` tasks: their end is
counted by ``Router.settled``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from time import perf_counter
from typing import Protocol

import grpc

from .. import codec
from ..errors import NoInstanceError, PacketDecodeError
from ..service.metrics import Histogram
from ..wire import ACCEPTED, RAISE_LIMIT, error_packet
from .hostset import HostSet
from .links import LinkTask, TaskFailed, TaskLost, TaskNotAccepted, TaskReturned, TaskTooLarge

__all__ = ["OnDone", "Reject", "RunContext", "TaskRun", "error_answer"]

log = logging.getLogger("aios_fast.executor")
_UNAVAILABLE = grpc.StatusCode.UNAVAILABLE
_EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED
_INVALID = grpc.StatusCode.INVALID_ARGUMENT


class Reject(Exception):
    """A call refused or failed: the status and message its caller gets."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        self.code = code
        self.message = message
        super().__init__(message)


OnDone = Callable[["TaskRun", "bytes | None", "Reject | None"], None]


class RunContext(Protocol):
    """What a run reads and counts: the router's (``executor.router.Router``) limits,
    books and host set."""

    hosts: HostSet
    stats: dict[str, int]
    latency: dict[str, Histogram]
    inflight: int
    draining: bool
    max_inflight: int
    instance_inflight: int
    max_retries: int
    max_output: int


def error_answer(frame: bytes, reject: Reject) -> bytes:
    """An ``infer_stream`` answer for a task that failed: an error packet
    (``wire.error_packet``) naming the task when its packet can be read, so one bad task
    fails alone."""
    try:
        packet = codec.decode_message(frame)
    except PacketDecodeError:
        packet = None
    return codec.encode_message(error_packet(reject.code.name, reject.message, packet))


class TaskRun:
    """One task (see the module) of ``router``. ``call`` and ``timer`` are the front's:
    what it answers on, and a deadline timer it wants cancelled when the run ends."""

    __slots__ = ("acked", "attempts", "budget", "call", "counted", "ex", "frame",
                 "link_task", "on_done", "over", "packet", "returned", "t0", "timer",
                 "want_result")  # fmt: skip

    def __init__(self, router: RunContext, frame: bytes, want_result: bool,
                 timeout: float | None, on_done: OnDone, call=None) -> None:  # fmt: skip
        self.ex = router
        self.frame = frame
        self.want_result = want_result
        # infer's caller is answered at acceptance: its deadline does not bound the run
        self.budget = (timeout or 0.0) if want_result else 0.0
        self.on_done = on_done
        self.call = call
        self.timer: asyncio.TimerHandle | None = None
        self.packet = None
        self.link_task: LinkTask | None = None
        self.t0 = 0.0
        self.attempts = 0
        self.returned = False  # given back by an instance once: not taken again = lost
        self.acked = False  # an instance acknowledged it: counted accepted
        self.counted = False  # holds one of the executor's inflight places
        self.over = False

    # ------------------------------------------------------------------ what a kind says

    kind: int | None = None  # the link task kind (None: TASK or FIRE, by want_result)

    def _read(self):
        """The caller's message -> what the balancer picks by (PacketDecodeError or
        Reject if it cannot be taken). A subclass (``executor.oip_run``) reads another
        protocol's message."""
        return codec.decode_message(self.frame)

    def _answer(self, out: bytes) -> bytes:
        """An instance's output -> the caller's answer message."""
        return codec.encode_message(out)

    # ------------------------------------------------------------------ entry points

    def start(self) -> None:
        """A caller's task: counted as received, then placed (or refused at once)."""
        ex = self.ex
        self.t0 = perf_counter()
        stats = ex.stats
        stats["received"] += 1
        if ex.draining:
            stats["rejected"] += 1
            self._end(None, Reject(_UNAVAILABLE, "the executor is stopping; retry"))
            return
        try:
            self.packet = self._read()
        except PacketDecodeError as exc:
            stats["invalid"] += 1
            self._end(None, Reject(_INVALID, str(exc)))
            return
        except Reject as exc:  # (a subclass's own refusal: an OIP call's unknown model)
            stats["invalid"] += 1
            self._end(None, exc)
            return
        if ex.inflight >= ex.max_inflight:
            stats["rejected"] += 1
            self._end(None, Reject(_EXHAUSTED, f"executor has {ex.max_inflight} "
                                               "tasks in flight; retry later"))  # fmt: skip
            return
        ex.inflight += 1
        self.counted = True
        self._send()

    def resend(self) -> None:
        """An ``infer`` task an instance gave back unrun: its caller was answered at
        acceptance; it is placed again (not counted again as received)."""
        self.t0 = perf_counter()
        self.returned = self.acked = True
        try:
            self.packet = codec.decode_message(self.frame)
        except PacketDecodeError as exc:  # it was read once: cannot happen
            self._unplaced(_INVALID, str(exc))
            return
        self._send()

    def cancel(self) -> None:
        """The caller is gone: the task is cancelled at its instance; no answer."""
        if self.over:
            return
        self.ex.stats["cancelled" if self.acked else "withdrawn"] += 1
        task = self.link_task
        self._finish()
        self.call = None  # no answer will go there
        if task is not None:
            task.cancel()

    # ------------------------------------------------------------------ placing

    def _send(self) -> None:
        """Place the task (an attempt). It runs inside the front's dispatch or a link's
        callback: a bug here (a policy's pick returning an unknown instance, say) must
        end this run with INTERNAL, not escape into them with the run left hanging."""
        try:
            self._place()
        except Exception as exc:
            if not self.over:
                log.exception("placing a task failed")
                self._unplaced(grpc.StatusCode.INTERNAL, f"internal error: {exc!r}")

    def _place(self) -> None:
        hosts = self.ex.hosts
        try:
            instance_id = hosts.pick(self.packet)
        except NoInstanceError:
            self._unplaced(_UNAVAILABLE, "no instance available")
            return
        link = hosts.links[instance_id]
        limit = self.ex.instance_inflight
        if link.inflight >= limit:
            least = hosts.least_loaded()
            if least is None:
                self._unplaced(_EXHAUSTED, f"every instance has {limit} tasks in flight")
                return
            link = least
        hosts.on_dispatch(link.instance_id)
        left = 0.0
        if self.budget:
            left = max(self.budget - (perf_counter() - self.t0), 1e-6)
        if self.kind is None:
            task = link.submit(self.frame, self.want_result, left, self)
        else:
            task = link.submit(self.frame, self.want_result, left, self, kind=self.kind)
        task.t0 = self.t0
        # a link may refuse at once (down, too large): refused() ran inside submit, and
        # the next attempt's task, if any, is the one to keep
        if not task.settled:
            self.link_task = task

    def _unplaced(self, code: grpc.StatusCode, message: str) -> None:
        """No instance took it: rejected (or lost, if one had taken it and given it back)."""
        self.ex.stats["lost" if self.returned else "rejected"] += 1
        self._end(None, Reject(code, message))

    # ------------------------------------------------------------------ the link's calls

    def accepted(self, task: LinkTask) -> None:
        if self.over:
            return
        ex = self.ex
        ex.latency["accept"].observe(task.t_ack - self.t0)
        if not self.acked:
            self.acked = True
            ex.stats["accepted"] += 1
        if not self.want_result:
            task.waiter = None  # its end is the executor's (_settled), not the caller's
            self._end(ACCEPTED, None)

    def refused(self, task: LinkTask, exc: TaskNotAccepted) -> None:
        if self.over:
            return
        if isinstance(exc, TaskTooLarge):
            self._unplaced(_EXHAUSTED, str(exc))
            return
        if self.attempts >= self.ex.max_retries:
            self._unplaced(_UNAVAILABLE, f"no instance accepted the task: {exc}")
            return
        self.attempts += 1
        self.ex.stats["retried"] += 1
        self._send()

    def finished(self, task: LinkTask, out: bytes | None, exc: Exception | None) -> None:
        if self.over:
            return
        stats = self.ex.stats
        if exc is None and out is not None:
            limit = self.ex.max_output
            if len(out) > limit:  # an instance whose limit is larger than ours
                stats["failed"] += 1
                over = f"output of {len(out):,} bytes is over the {limit:,}-byte limit"
                self._end(None, Reject(_EXHAUSTED, f"{over} ({RAISE_LIMIT})"))
                return
            stats["completed"] += 1
            self._end(self._answer(out), None)
        elif isinstance(exc, TaskReturned):  # given back unrun: placed again, fresh retries
            stats["retried"] += 1
            self.returned = True  # acked already (it was accepted before it came back)
            self.attempts = 0
            self._send()
        elif isinstance(exc, TaskLost):
            stats["lost"] += 1
            self._end(None, Reject(_UNAVAILABLE, str(exc)))
        elif isinstance(exc, TaskFailed):
            stats["failed"] += 1
            self._end(None, Reject(exc.code, str(exc)))
        else:  # a link reports only these: anything else is a bug, and the caller is told
            stats["failed"] += 1
            self._end(None, Reject(grpc.StatusCode.INTERNAL, f"internal error: {exc!r}"))

    # ------------------------------------------------------------------ the end

    def _finish(self) -> None:
        self.over = True
        self.link_task = None  # no cycle (run <-> link task) left for the collector
        if self.counted:
            self.counted = False
            self.ex.inflight -= 1
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _end(self, answer: bytes | None, reject: Reject | None) -> None:
        self._finish()
        try:
            self.on_done(self, answer, reject)
        except Exception:  # a front's bug must not break the link whose reply this is
            log.exception("answering a task failed")
        self.call = None  # nor run <-> call: both are freed by reference counting
