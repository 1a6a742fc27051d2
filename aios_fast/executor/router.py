"""The router (Envoy's router): a task's placement, retries and settlement, and the books.

The fronts hand every task to ``Router.run_task`` (a ``TaskRun``, ``executor.task_run``,
driven by its link's callbacks) or await ``Router.run``. The router reads the host set
(pick, link, least loaded) and tells the outlier detector what became of each task an
instance took. Its books (``stats``) hold these identities exactly, once no task is in
flight (tests/test_router.py checks them under faults and cancellation races):

- received = invalid + rejected + withdrawn + accepted
- accepted = completed + failed + lost + cancelled

``withdrawn``: the caller gave up (cancelled, or its deadline passed) before any instance
acknowledged the task; ``cancelled``: after one did. ``retried`` and ``timed_out`` are
events, not outcomes (a timed-out task is also counted failed or lost).
"""

from __future__ import annotations

import asyncio
import logging
from time import perf_counter

from ..logs import RateLimitedLog
from ..service.metrics import Histogram
from ..wire import max_output
from .hostset import HostSet
from .links import (
    LinkTask,
    TaskCancelled,
    TaskLost,
    TaskNotAccepted,
    TaskReturned,
    TaskTimedOut,
)
from .outliers import OutlierDetector
from .task_run import OnDone, Reject, TaskRun

__all__ = ["TASK_EVENTS", "Router"]

log = logging.getLogger("aios_fast.executor")
TASK_EVENTS = ("received", "accepted", "completed", "failed", "retried", "rejected", "lost",
               "invalid", "timed_out", "cancelled", "withdrawn")  # fmt: skip


class Router:
    """Places tasks on the host set's instances and keeps the books."""

    def __init__(self, hosts: HostSet, outliers: OutlierDetector, *, max_inflight: int,
                 instance_inflight: int, max_retries: int, max_message: int) -> None:  # fmt: skip
        self.hosts = hosts
        self.outliers = outliers
        self.max_inflight = max_inflight
        self.instance_inflight = instance_inflight
        self.max_retries = max_retries
        self.max_output = max_output(max_message)  # bytes an answer may carry
        self.stats = dict.fromkeys(TASK_EVENTS, 0)
        self.inflight = 0  # tasks received and not ended (TaskRun.counted)
        # Seconds: received -> acknowledged by an instance, acknowledged -> result, and
        # received -> result (tasks that completed).
        self.latency = {"accept": Histogram(), "run": Histogram(), "total": Histogram()}
        self.draining = False  # stopping: new tasks get UNAVAILABLE
        self._log = RateLimitedLog(log, 5.0)

    def run_task(self, frame: bytes, want_result: bool, timeout: float | None,
                 on_done: OnDone, call=None) -> TaskRun:  # fmt: skip
        """Start one task: ``on_done(run, answer, reject)`` is called once, maybe before
        this returns. ``timeout``: seconds the caller still waits (None: no deadline)."""
        run = TaskRun(self, frame, want_result, timeout, on_done, call)
        run.start()
        return run

    async def run(self, frame: bytes, want_result: bool, timeout: float | None) -> bytes:
        """One task, awaited: the bytes to answer with, or Reject."""
        waiter = asyncio.get_running_loop().create_future()
        run = self.run_task(frame, want_result, timeout, _resolve, waiter)
        try:
            return await waiter
        except asyncio.CancelledError:
            run.cancel()
            raise

    def settled(self, task: LinkTask, exc: Exception | None) -> None:
        """Every task's end at its instance, reported once by its link."""
        hosts = self.hosts
        hosts.on_finish(task.instance_id)
        record = hosts.get(task.instance_id)
        if exc is None:
            now = perf_counter()
            self.latency["run"].observe(now - task.t_ack)
            self.latency["total"].observe(now - task.t0)
            if record is not None and record.failures:
                self.outliers.succeeded(record)
        elif isinstance(exc, (TaskLost, TaskTimedOut)):
            if isinstance(exc, TaskTimedOut):
                self.stats["timed_out"] += 1
            self.outliers.failed(record)
        if task.waiter is not None or isinstance(exc, (TaskNotAccepted, TaskCancelled)):
            return  # a waiting caller's run hears of it (or it was cancelled: counted there)
        if isinstance(exc, TaskReturned):  # an infer task given back unrun: run it elsewhere
            self.stats["retried"] += 1
            TaskRun(self, task.frame, False, None, self._rerun_done).resend()
            return
        # an infer task, whose caller was answered at acceptance
        if exc is None:
            self.stats["completed"] += 1
        elif isinstance(exc, TaskLost):
            self.stats["lost"] += 1
            self._log.error(f"tasks accepted by {task.instance_id}", f"lost: {exc}")
        else:
            self.stats["failed"] += 1
            self._log.error(f"tasks on {task.instance_id}", f"failed: {exc}")

    def _rerun_done(self, run: TaskRun, answer: bytes | None, reject: Reject | None) -> None:
        if reject is not None:
            self._log.error("tasks given back", f"could not be run elsewhere: {reject.message}")

    def books(self) -> dict[str, int]:
        """What each identity leaves over (0 for both once idle)."""
        s = self.stats
        return {
            "received": s["received"] - s["invalid"] - s["rejected"] - s["withdrawn"]
            - s["accepted"],
            "accepted": s["accepted"] - s["completed"] - s["failed"] - s["lost"]
            - s["cancelled"],
        }  # fmt: skip


def _resolve(run: TaskRun, answer: bytes | None, reject: Reject | None) -> None:
    """``Router.run``'s on_done: the awaited future (``run.call``) gets the outcome."""
    waiter = run.call
    if waiter.done():
        return
    if reject is None:
        waiter.set_result(answer)
    else:
        waiter.set_exception(reject)
