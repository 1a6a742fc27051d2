"""In-process stand-ins for the executor's transport (Ray Serve's way: the router is
tested with a fake link; real processes test the transport and faults).

``FakeLink`` implements ``executor.links.Link``: it keeps the tasks submitted to it, and
the test plays the instance (``ack``, ``finish``, ``refuse``, ``lose``, ``give_back``,
``go_down``). ``Upstream`` wires a host set, an outlier detector and a router over fake
links, as ``executor.core.Executor`` wires them over real ones."""

from __future__ import annotations

from aios_fast import codec, lb
from aios_fast.executor.config import InstanceSpec
from aios_fast.executor.hostset import HostSet
from aios_fast.executor.links import (
    LinkSettings,
    LinkTask,
    OnSettled,
    OnState,
    TaskCancelled,
    TaskLost,
    TaskReturned,
    TaskTooLarge,
    Waiter,
)
from aios_fast.executor.outliers import OutlierDetector
from aios_fast.executor.router import Router
from aios_fast.executor.task_run import Reject, TaskRun


class FakeLink:
    def __init__(self, instance_id: str, target: str, on_state: OnState,
                 on_settled: OnSettled, settings: LinkSettings) -> None:  # fmt: skip
        self.instance_id = instance_id
        self.target = target
        self.on_state = on_state
        self.on_settled = on_settled
        self.settings = settings
        self.up = False
        self.transport = "fake"
        self.tasks_sent = self.completed = self.failed = self.lost = 0
        self.open: dict[int, LinkTask] = {}  # submitted, not settled
        self.timeouts: list[float] = []  # the budget each task came with
        self.kinds: list[int | None] = []  # each submitted task's link kind
        self.cancelled: list[int] = []
        self.refuse_next = 0  # submits to refuse at once (a link down, say)
        self.closed = False

    @property
    def inflight(self) -> int:
        return len(self.open)

    def start(self) -> None:
        self.up = True
        self.on_state(self.instance_id, True)

    def submit(self, frame: bytes, want_result: bool, timeout: float = 0.0,
               waiter: Waiter | None = None, kind: int | None = None) -> LinkTask:  # fmt: skip
        task = LinkTask(self, self._settled, frame, waiter)
        self.kinds.append(kind)  # (the link kind it would send: None is TASK / FIRE)
        self.tasks_sent += 1
        self.timeouts.append(timeout)
        if len(frame) > self.settings.max_message:
            task.refuse("too large", TaskTooLarge)
        elif self.refuse_next or not self.up:
            self.refuse_next = max(0, self.refuse_next - 1)
            task.refuse("not connected")
        else:
            self.open[task.id] = task
        return task

    def _settled(self, task: LinkTask, exc: Exception | None) -> None:
        self.open.pop(task.id, None)
        if exc is None:
            self.completed += 1
        elif isinstance(exc, TaskLost):
            self.lost += 1
        self.on_settled(task, exc)

    def cancel(self, task: LinkTask) -> None:
        self.cancelled.append(task.id)
        task.drop(TaskCancelled("cancelled"))

    def expire(self, cutoff: float) -> int:
        return 0

    async def close(self) -> None:
        self.closed = True
        self.go_down()

    # ------------------------------------------------------------------ the instance

    def tasks(self) -> list[LinkTask]:
        return list(self.open.values())

    def ack(self, task: LinkTask) -> None:
        task.ack()

    def finish(self, task: LinkTask, out: bytes | None = None,
               exc: Exception | None = None) -> None:  # fmt: skip
        if not task.acked:
            task.ack()
        task.finish(out if exc is None else None, exc)

    def echo(self, task: LinkTask) -> None:
        """Acknowledge and answer with the task's own packet."""
        self.finish(task, codec.encode_packet(codec.decode_message(task.frame)))

    def refuse(self, task: LinkTask) -> None:
        task.refuse("refused")

    def lose(self, task: LinkTask) -> None:
        task.finish(None, TaskLost(f"{self.instance_id}: connection lost"))

    def give_back(self, task: LinkTask) -> None:
        task.finish(None, TaskReturned(f"{self.instance_id}: leaving"))

    def go_down(self) -> None:
        """The stream broke: unacknowledged tasks refused, acknowledged ones lost."""
        self.up = False
        self.on_state(self.instance_id, False)
        for task in self.tasks():
            if task.acked:
                self.lose(task)
            else:
                task.refuse("connection lost")


class Upstream:
    """A host set, outlier detector and router over fake links."""

    def __init__(self, n: int = 3, *, policy: str = "builtin:round_robin",
                 max_inflight: int = 10_000, instance_inflight: int = 1_000,
                 max_retries: int = 2, max_message: int = 4 << 20, eject_after: int = 5,
                 eject_seconds: float = 5.0, eject_max_percent: int = 50) -> None:  # fmt: skip
        balancer = lb.make_balancer({"policyRuleURI": policy}, ())
        settings = LinkSettings(max_message=max_message)
        self.hosts = HostSet(balancer, settings, self._settled, instance_inflight,
                             links=lambda spec: FakeLink)  # fmt: skip
        # as the executor wires it: the links report straight to the router
        self.outliers = OutlierDetector(self.hosts, eject_after, eject_seconds,
                                        eject_max_percent)  # fmt: skip
        self.router = Router(self.hosts, self.outliers, max_inflight=max_inflight,
                             instance_inflight=instance_inflight, max_retries=max_retries,
                             max_message=max_message)  # fmt: skip
        for i in range(n):
            self.hosts.add(InstanceSpec(f"i{i}", f"127.0.0.1:{i + 1}"))
        self.outcomes: list[tuple[bytes | None, Reject | None]] = []

    def _settled(self, task: LinkTask, exc: Exception | None) -> None:
        self.router.settled(task, exc)

    def link(self, instance_id: str) -> FakeLink:
        return self.hosts.link_of(instance_id)  # type: ignore[return-value]

    def links(self) -> list[FakeLink]:
        return [self.link(r.id) for r in self.hosts]

    def open_tasks(self) -> list[tuple[FakeLink, LinkTask]]:
        return [(link, task) for link in self.links() for task in link.tasks()]

    def run(self, frame: bytes, want_result: bool = True,
            timeout: float | None = None) -> TaskRun:  # fmt: skip
        def done(run: TaskRun, answer: bytes | None, reject: Reject | None) -> None:
            self.outcomes.append((answer, reject))

        return self.router.run_task(frame, want_result, timeout, done)


def frame(session: str = "s", seq: int = 0, data: str = "x") -> bytes:
    """An InferenceMessage carrying one packet."""
    from aios_fast.protos import inference_pb2, payload_pb2

    packet = payload_pb2.AIOSPacket(session_id=session, seq_no=seq, data=data)
    return inference_pb2.InferenceMessage(rpc_data=packet.SerializeToString()).SerializeToString()
