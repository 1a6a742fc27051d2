"""The executor: a block's gRPC front door, load-balancing tasks over its instances.

Per task: peel the caller's InferenceMessage and read the packet with the compiled
codec (malformed: INVALID_ARGUMENT), pick an instance with the block's policy (none
available: UNAVAILABLE), forward the caller's bytes unchanged over that instance's
link (``executor.links``), then answer:

- ``infer`` (the seeds' call): ``message=true`` once the instance has acknowledged the
  task; the result travels by output_ptr;
- ``infer_result``: the output packet, as rpc_data of an InferenceMessage;
- ``infer_stream``: one output message per task, as they finish; a task that fails
  ends the stream with its status (the details name the reason).

Guarantees: a task an instance never acknowledged is retried on another instance
(``max_retries``); a task acknowledged and then lost (instance died) fails its caller
with UNAVAILABLE, or, for ``infer``, which was already answered, is logged and counted
as ``lost``. Past ``max_inflight`` tasks in the executor, or ``instance_inflight`` on
every instance, callers get RESOURCE_EXHAUSTED. Every message up to ``max_message``
bytes fits through a link; an output too large to return fails its task alone
(RESOURCE_EXHAUSTED). Deadlines travel to the instance, and a caller that gives up has
its task cancelled there. An instance that loses or times out ``eject_after`` tasks in
a row is ejected for a while (outlier ejection). SIGTERM drains: calls that come now
get UNAVAILABLE, in-flight ones finish (up to ``drain_timeout``).

The executor keeps one ``Instance`` record per instance (spec, link, health verdict,
draining, weight, latest readings); the balancer mirrors the part it picks by. The
management API, discovery and the workers' front change the set only through the
executor's public methods.
"""

from __future__ import annotations

import asyncio
import gc
import logging
from dataclasses import dataclass
from time import perf_counter
from typing import TYPE_CHECKING, Any

import aiohttp
import grpc

from .. import lb
from ..auth import bearer, check_bind
from ..logs import RateLimitedLog
from ..service import runtime
from ..service.metrics import Histogram
from ..service.periodic import Periodic
from ..service.snapshot import MetricsSnapshot
from ..wire import (
    SERVICE,
    max_output,
)
from .config import ExecutorConfig, InstanceSpec
from .discovery import Discovery
from .grpc_handlers import InferenceHandlers
from .kube_discovery import KubeDiscovery
from .links import (
    InstanceLink,
    Link,
    LinkSettings,
    LinkTask,
    TaskCancelled,
    TaskLost,
    TaskNotAccepted,
    TaskReturned,
    TaskTimedOut,
    UnaryLink,
)
from .native_front import resolve_front

if TYPE_CHECKING:
    from .native_server import NativeServer
from .services import ExecutorServices
from .task_run import OnDone, Reject, TaskRun, error_answer

__all__ = ["Executor", "Instance"]

log = logging.getLogger("aios_fast.executor")
TASK_EVENTS = ("received", "accepted", "completed", "failed", "retried", "rejected", "lost",
               "invalid", "timed_out", "cancelled")  # fmt: skip
MAX_EJECTION = 300.0  # seconds, however often an instance was ejected
DEADLINE_SLACK = 0.05  # seconds past a caller's deadline before the executor gives up
STREAM_WINDOW = 1024  # tasks of one infer_stream started and not yet read by its caller
GC_THRESHOLD = 20_000  # allocations between young collections (_settle_gc)


@dataclass(eq=False)
class Instance:
    """Everything the executor knows of one instance. ``healthy`` is the health
    checker's verdict (the link's own state is ``link.up``); ``draining`` and ``weight``
    are what the balancer was told; ``metrics`` the instance's latest ``GET /stats``;
    the rest is outlier ejection: failures in a row, whether it is ejected now, how
    often it was (the multiplier of the next ejection) and when it was last let back."""

    spec: InstanceSpec
    link: Link
    healthy: bool = True
    draining: bool = False
    weight: float = 1.0
    metrics: dict | None = None
    failures: int = 0
    ejected: bool = False
    ejections: int = 0
    returned_at: float = 0.0

    @property
    def available(self) -> bool:
        """May get new tasks, as far as its state goes (the balancer adds draining)."""
        return self.link.up and self.healthy and not self.ejected

    @property
    def id(self) -> str:
        return self.spec.id


class Executor:
    """One executor process: a grpc.aio server, a balancer and one link per instance."""

    def __init__(self, config: ExecutorConfig, *, block_data: dict | None = None) -> None:
        self.config = config
        self.block_data = block_data if block_data is not None else config.block_data
        # What user policies see through settings["get_metrics"]: served from memory.
        self.metrics = MetricsSnapshot(self._block_metrics, config.metrics_interval)
        # Each instance's GET /stats (those added with a health address), polled off the
        # hot path, so policies can weigh queue lengths and GPU load.
        self._instance_poll = Periodic(self._poll_instances, config.metrics_interval, log,
                                       "instance metrics poll")  # fmt: skip
        self._http: aiohttp.ClientSession | None = None  # the poll's
        self.policy_spec = dict(config.policy)
        self.balancer = self._make_balancer(self.policy_spec)
        self.instances: dict[str, Instance] = {}  # read-only outside: change through methods
        # Seconds: received -> acknowledged by an instance, acknowledged -> result, and
        # received -> result (tasks that completed).
        self.latency = {"accept": Histogram(), "run": Histogram(), "total": Histogram()}
        self.inflight = 0
        self.stats = dict.fromkeys(TASK_EVENTS, 0)
        self._server: grpc.aio.Server | NativeServer | None = None
        self.port = config.port
        self.discovery: Discovery | KubeDiscovery | None = None
        self.services: ExecutorServices | None = None  # management and metrics, when served
        self.draining = False  # stopping: new calls get UNAVAILABLE
        token = config.auth.any_token("infer")
        self.link_settings = LinkSettings(
            config.link_linger, config.max_message, config.link_keepalive, config.task_timeout,
            ((("authorization", bearer(token)),) if token else ()), config.tls,
        )  # fmt: skip
        self._expiry = Periodic(self._expire_tasks, min(1.0, max(config.task_timeout / 4, 0.05)),
                                log, "task timeout sweep")  # fmt: skip
        self._log = RateLimitedLog(log, 5.0)
        self.max_output = max_output(config.max_message)  # bytes an answer may carry
        # (tasks received, client connections closed) when memory was last released
        self._trimmed_at: tuple[int, int] = (0, 0)
        self._trim = Periodic(self._release_memory, 2.0, log, "memory release")

    # ------------------------------------------------------------------ instance set

    def add_instance(self, spec: InstanceSpec) -> Instance:
        if spec.id in self.instances:
            raise ValueError(f"instance {spec.id!r} is already known")
        if spec.protocol not in ("stream", "unary"):
            raise ValueError(f"instance {spec.id!r}: unknown protocol {spec.protocol!r}")
        self.balancer.add(spec.id)
        self.balancer.set_healthy(spec.id, False)  # until its link is up
        link_cls = InstanceLink if spec.protocol == "stream" else UnaryLink
        link = link_cls(spec.id, spec.target, self._link_state, self._settled, self.link_settings)
        record = Instance(spec, link, weight=self.balancer.state(spec.id)["weight"])
        self.instances[spec.id] = record
        link.start()
        return record

    def _known(self, instance_id: str) -> Instance:
        record = self.instances.get(instance_id)
        if record is None:
            raise KeyError(instance_id)
        return record

    async def remove_instance(self, instance_id: str, drain_timeout: float = 0.0) -> int:
        """Forget an instance and close its link. With ``drain_timeout`` > 0 it first gets
        no new tasks while its in-flight ones finish (up to that many seconds). Returns
        the tasks still in flight when the link closed (they fail as lost)."""
        record = self._known(instance_id)
        if drain_timeout > 0:
            self.set_draining(instance_id, True)
            deadline = asyncio.get_running_loop().time() + drain_timeout
            await _until_idle([record.link], deadline)
            if self.instances.get(instance_id) is not record:  # removed meanwhile
                return 0
        del self.instances[instance_id]
        left = record.link.inflight
        self.balancer.remove(instance_id)
        await record.link.close()
        return left

    def set_instance_health(self, instance_id: str, healthy: bool) -> None:
        """The health checker's verdict: an unhealthy instance gets no tasks (even with
        its link up) until it is marked healthy again."""
        record = self._known(instance_id)
        record.healthy = healthy
        self.balancer.set_healthy(instance_id, record.available)

    def set_draining(self, instance_id: str, draining: bool) -> None:
        """A draining instance gets no new tasks; its in-flight ones finish."""
        record = self._known(instance_id)
        self.balancer.set_draining(instance_id, draining)
        record.draining = draining

    def set_weight(self, instance_id: str, weight: float) -> None:
        """For weighted policies; the balancer refuses a bad weight (ValueError)."""
        record = self._known(instance_id)
        self.balancer.set_weight(instance_id, weight)
        record.weight = weight

    def available(self) -> list[str]:
        """The instances the balancer may pick now (up, healthy, not draining)."""
        return list(self.balancer.available())

    def front_stats(self) -> dict:
        """The native front's books (connections, bytes held, refusals); {} for grpcio."""
        stats = getattr(self._server, "front_stats", None)
        return stats() if stats is not None else {}

    def describe(self, instance_id: str) -> dict:
        """One instance as the management API shows it."""
        record = self._known(instance_id)
        link, spec = record.link, record.spec
        return {
            "id": instance_id,
            "target": spec.target,
            "protocol": spec.protocol,
            "health": spec.health,
            "up": link.up,
            "healthy": record.healthy,
            "draining": record.draining,
            "available": self.balancer.state(instance_id)["available"],
            "weight": record.weight,
            "ejected": record.ejected,
            "ejections": record.ejections,
            "inflight": link.inflight,
            "tasks_sent": link.tasks_sent,
            "completed": link.completed,
            "failed": link.failed,
            "lost": link.lost,
        }

    def _link_state(self, instance_id: str, up: bool) -> None:
        record = self.instances.get(instance_id)
        if record is not None:
            self.balancer.set_healthy(instance_id, record.available)

    # ------------------------------------------------------------------ outliers

    def _eject(self, record: Instance) -> None:
        """Out for eject_seconds x its ejections (Envoy's outlier ejection), unless that
        would eject more than eject_max_percent of the instances (at least one may go)."""
        cfg = self.config
        ejected = sum(r.ejected for r in self.instances.values())
        n = len(self.instances)
        allowed = max(1, n * cfg.eject_max_percent // 100) if n > 1 else 0  # never the last
        if ejected + 1 > allowed:
            self._log.warning(f"instance {record.id}", f"{record.failures} failures in a row; "
                              "not ejected: too many instances are ejected already")  # fmt: skip
            return
        loop = asyncio.get_running_loop()
        if record.returned_at:  # a quiet spell since the last one shortens the next
            quiet = int((loop.time() - record.returned_at) // max(cfg.eject_seconds, 1e-3))
            record.ejections = max(0, record.ejections - quiet)
        record.ejections += 1
        seconds = min(cfg.eject_seconds * record.ejections, MAX_EJECTION)
        log.warning("instance %s ejected for %.1fs after %d failures in a row (ejection %d)",
                    record.id, seconds, record.failures, record.ejections)  # fmt: skip
        record.ejected = True
        record.failures = 0
        self.balancer.set_healthy(record.id, False)
        loop.call_later(seconds, self._unject, record)

    def _unject(self, record: Instance) -> None:
        record.ejected = False
        record.returned_at = asyncio.get_running_loop().time()
        if self.instances.get(record.id) is record:
            self.balancer.set_healthy(record.id, record.available)
            log.info("instance %s is back from ejection", record.id)

    async def _release_memory(self) -> None:
        """After a burst, once idle: return the freed memory (runtime.release_memory)."""
        # (a client that left may have held memory too: answers it never read)
        mark = (self.stats["received"], getattr(self._server, "connections_closed", 0))
        if self.inflight == 0 and mark != self._trimmed_at:
            self._trimmed_at = mark
            runtime.release_memory()

    async def _expire_tasks(self) -> None:
        """Backstop for instances that cannot time their runs out themselves (a wedged
        event loop): see Link.expire."""
        cutoff = perf_counter() - self.config.task_timeout
        for record in list(self.instances.values()):
            record.link.expire(cutoff)

    # ------------------------------------------------------------------ policy

    def _make_balancer(self, spec: dict):
        return lb.make_balancer(
            spec, (), block_data=self.block_data, get_metrics=self.metrics.get_metrics
        )

    @property
    def policy_rule(self):
        """The user policy (``aios_fast.policy.PolicyRule``) in force, or None (built-in)."""
        return self.balancer.rule if isinstance(self.balancer, lb.PolicyBalancer) else None

    @property
    def policy_fallbacks(self) -> int:
        """Picks the user policy failed and the fallback built-in made."""
        return getattr(self.balancer, "fallbacks", 0)

    def policy(self) -> dict:
        """The loadBalancer policy in force: its spec, the balancer and its errors."""
        spec = self.policy_spec
        rule = self.policy_rule
        settings = spec.get("settings") or {}
        return {
            "policyRuleURI": spec.get("policyRuleURI") or "builtin:round_robin",
            "parameters": rule.parameters if rule is not None else spec.get("parameters") or {},
            # the JSON-able part: policies' settings also carry functions
            "settings": {k: v for k, v in settings.items() if not callable(v)},
            "balancer": self.balancer.name,
            "fallbacks": self.policy_fallbacks,
            "last_error": getattr(self.balancer, "last_error", None),
        }

    def set_policy_parameters(self, parameters: dict[str, Any], replace: bool = False) -> None:
        """Merge into (or replace) the policy's parameters. A user policy sees the new
        dict at its next eval(); a built-in one is rebuilt (and refuses unknown ones)."""
        rule = self.policy_rule
        if rule is not None:
            params = rule.parameters
            if replace:
                params.clear()
            params.update(parameters)  # the dict eval() receives: in force at once
            self.policy_spec["parameters"] = dict(params)
            return
        old = self.policy_spec.get("parameters") or {}
        merged = dict(parameters) if replace else {**old, **parameters}
        self.switch_policy({**self.policy_spec, "parameters": merged})

    def switch_policy(self, spec: dict) -> None:
        """Replace the balancer (a new policy, or new built-in parameters); the instance
        set, weights, health, draining and outstanding counts carry over."""
        new = self._make_balancer(spec)
        old = self.balancer
        for iid, record in self.instances.items():
            new.add(iid, record.weight)
            new.set_healthy(iid, record.available)
            new.set_draining(iid, record.draining)
            for _ in range(old.state(iid)["outstanding"]):
                new.on_dispatch(iid)
        self.balancer = new
        self.policy_spec = dict(spec)

    def _block_metrics(self) -> dict:
        """Executor state for policies (on the loop, every metrics interval)."""
        return {
            "executor": dict(self.stats),
            "inflight": self.inflight,
            "instances": {
                iid: {"up": r.link.up, "inflight": r.link.inflight, "metrics": r.metrics}
                for iid, r in self.instances.items()
            },
        }

    async def _poll_instances(self) -> None:
        targets = {iid: r for iid, r in self.instances.items() if r.spec.health}
        if not targets:
            return
        if self._http is None:
            token = self.config.auth.any_token("read")
            headers = {"Authorization": bearer(token)} if token else None
            self._http = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=1.0), headers=headers,
                connector=aiohttp.TCPConnector(ssl=self.config.tls.client_context() or True),
            )  # fmt: skip

        async def one(record: Instance) -> None:
            try:
                url = f"{self.config.tls.scheme}://{record.spec.health}/stats"
                async with self._http.get(url) as resp:
                    if resp.status == 200:
                        record.metrics = await resp.json()
                        return
            except (aiohttp.ClientError, asyncio.TimeoutError, ValueError):
                pass
            record.metrics = None  # no stale readings

        await asyncio.gather(*(one(record) for record in targets.values()))

    # ------------------------------------------------------------------ dispatch

    def _least_loaded(self) -> Link | None:
        best = None
        for iid in self.balancer.available():
            link = self.instances[iid].link
            if link.inflight < self.config.instance_inflight and (
                best is None or link.inflight < best.inflight
            ):
                best = link
        return best

    def _settled(self, task: LinkTask, exc: Exception | None) -> None:
        """Every task's end, reported once by its link."""
        self.balancer.on_finish(task.instance_id)
        record = self.instances.get(task.instance_id)
        if exc is None:
            now = perf_counter()
            self.latency["run"].observe(now - task.t_ack)
            self.latency["total"].observe(now - task.t0)
            if record is not None:
                record.failures = 0
        elif isinstance(exc, (TaskLost, TaskTimedOut)) and record is not None:
            if isinstance(exc, TaskTimedOut):
                self.stats["timed_out"] += 1
            record.failures += 1
            limit = self.config.eject_after
            if limit and record.failures >= limit and not record.ejected:
                self._eject(record)
        if task.waiter is not None or isinstance(exc, (TaskNotAccepted, TaskCancelled)):
            return  # a waiting caller's run hears of it (or it was cancelled: counted there)
        if isinstance(exc, TaskReturned):  # an infer task given back unrun: run it elsewhere
            self.stats["retried"] += 1
            self._rerun(task.frame)
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

    def _rerun(self, frame: bytes) -> None:
        """An ``infer`` task an instance gave back: its caller has its answer already."""
        TaskRun(self, frame, False, None, self._rerun_done).resend()

    def _rerun_done(self, run: TaskRun, answer: bytes | None, reject: Reject | None) -> None:
        if reject is not None:
            self._log.error("tasks given back", f"could not be run elsewhere: {reject.message}")

    def run_task(self, frame: bytes, want_result: bool, timeout: float | None,
                 on_done: OnDone, call=None) -> TaskRun:  # fmt: skip
        """Start one task (``executor.task_run``): ``on_done(run, answer, reject)`` is
        called once, maybe before this returns. ``timeout``: seconds the caller still
        waits (None: no deadline)."""
        run = TaskRun(self, frame, want_result, timeout, on_done, call)
        run.start()
        return run

    async def _run(self, frame: bytes, want_result: bool, timeout: float | None) -> bytes:
        """One task, awaited: the bytes to answer with, or Reject."""
        waiter = asyncio.get_running_loop().create_future()
        run = self.run_task(frame, want_result, timeout, _resolve, waiter)
        try:
            return await waiter
        except asyncio.CancelledError:
            run.cancel()
            raise

    # ------------------------------------------------------------------ gRPC handlers

    # (tokens: checked at each call's headers, before its request is read, by the
    # method lookup: executor.grpc_handlers)

    async def _unary(self, frame: bytes, context, want_result: bool) -> bytes:
        remaining = context.time_remaining()
        try:
            if remaining is None:
                return await self._run(frame, want_result, None)
            # grpc itself ends the call at its deadline (cancelling this handler); the
            # timer here is a backstop, a little later, so the two do not race
            budget = remaining + DEADLINE_SLACK
            return await asyncio.wait_for(self._run(frame, want_result, remaining), budget)
        except Reject as exc:
            await context.abort(exc.code, exc.message)
            raise  # (abort raises AbortError first: not reached)
        except asyncio.TimeoutError:
            if not context.done():
                try:
                    await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, "deadline exceeded")
                except grpc.aio.AbortError:
                    raise
                except Exception:  # the call ended meanwhile: nothing left to tell
                    pass
            return b""  # the call is over: nobody reads this

    async def _infer(self, frame: bytes, context) -> bytes:
        return await self._unary(frame, context, False)

    async def _infer_result(self, frame: bytes, context) -> bytes:
        return await self._unary(frame, context, True)

    async def _infer_stream(self, requests, context):
        """Tasks pipelined on one stream; each answer is its output, or an error packet
        (``wire.error_packet``) for a task that failed: one bad task fails alone."""
        results: asyncio.Queue = asyncio.Queue()
        pending: set[asyncio.Task] = set()
        # back-pressure: a caller that does not read its answers stops being read
        window = asyncio.Semaphore(self._stream_window())

        async def one(frame: bytes) -> None:
            try:
                answer = await self._run(frame, True, context.time_remaining())
            except Reject as exc:
                answer = error_answer(frame, exc)
            await results.put(answer)

        async def read() -> None:
            async for frame in requests:
                await window.acquire()
                t = asyncio.ensure_future(one(frame))
                pending.add(t)
                t.add_done_callback(pending.discard)
            if pending:
                await asyncio.gather(*pending)
            await results.put(None)

        reader = asyncio.ensure_future(read())
        try:
            while (item := await results.get()) is not None:
                yield item
                window.release()
        finally:
            reader.cancel()
            for t in list(pending):  # the caller left: its tasks are cancelled too
                t.cancel()

    # ------------------------------------------------------------------ lifecycle

    def _stream_window(self) -> int:
        """Tasks one infer_stream may have running: never more than one instance takes
        (--instance-inflight), so a lone stream is slowed down rather than answered
        RESOURCE_EXHAUSTED for what it sent past that."""
        return max(1, min(STREAM_WINDOW, self.config.instance_inflight))

    def _server_options(self) -> list[tuple[str, int]]:
        cfg = self.config
        # grpc core queues calls not yet handed to Python; past its default limits (1,000
        # / 3,000) a burst's calls are CANCELLED before any handler sees them. Let the
        # executor's own max_inflight decide instead (RESOURCE_EXHAUSTED past it).
        pending = max(2 * cfg.max_inflight, 20_000)
        return [("grpc.so_reuseport", 1 if cfg.reuse_port else 0),
                ("grpc.max_receive_message_length", cfg.max_message),
                ("grpc.max_send_message_length", cfg.max_message),
                ("grpc.server.max_pending_requests", pending),
                ("grpc.server.max_pending_requests_hard_limit", pending),
                *_keepalive_options(cfg)]  # fmt: skip

    def _grpc_server(self) -> grpc.aio.Server:
        server = grpc.aio.server(options=self._server_options())
        server.add_generic_rpc_handlers(
            (
                InferenceHandlers(
                    SERVICE,
                    {
                        "infer": grpc.unary_unary_rpc_method_handler(self._infer),
                        "infer_result": grpc.unary_unary_rpc_method_handler(self._infer_result),
                        "infer_stream": grpc.stream_stream_rpc_method_handler(self._infer_stream),
                    },
                    self.config.auth,
                ),
            )
        )
        return server

    async def start(self) -> None:
        cfg = self.config
        check_bind(cfg.host, cfg.auth, cfg.insecure, "executor")
        check_bind(cfg.http_host or cfg.host, cfg.auth, cfg.insecure, "executor management")
        cfg.front = resolve_front(cfg.front)  # "auto": the native front where it is built
        if cfg.front == "native":  # executor.native_server: same calls, C HTTP/2
            from .native_server import NativeServer, connection_limit  # (needs the extension)

            server = NativeServer(self.run_task, cfg.auth, cfg.tls, cfg.max_message,
                                  self._stream_window(), cfg.keepalive, cfg.keepalive_timeout,
                                  connection_budget=cfg.connection_budget,
                                  budget=cfg.front_budget,
                                  max_connections=connection_limit(cfg.max_connections),
                                  handshake_timeout=cfg.handshake_timeout)  # fmt: skip
            self.port = await server.bind(cfg.host, cfg.port, cfg.reuse_port)
        else:
            server = self._grpc_server()
            self.port = cfg.tls.bind(server, f"{cfg.host}:{cfg.port}")
        for spec in self.config.instances:
            self.add_instance(spec)
        if self.config.discover.startswith("k8s://"):  # the instances' EndpointSlices
            self.discovery = KubeDiscovery(self, self.config.discover)
        elif self.config.discover:
            self.discovery = Discovery(
                self, self.config.discover, self.config.block_id, self.config.discover_interval
            )
        if self.discovery is not None:
            await self.discovery.sync_once()
            self.discovery.start()
        await server.start()
        self._server = server
        _settle_gc()
        self.metrics.start()
        self._instance_poll.start()
        self._trim.start()
        if self.config.task_timeout > 0:
            self._expiry.start()
        if self.config.mgmt_port is not None or self.config.metrics_port is not None:
            self.services = ExecutorServices(self)
            await self.services.start(
                self.config.http_host or self.config.host,
                self.config.mgmt_port,
                self.config.metrics_port,
            )

    async def wait_ready(self, timeout: float = 10.0) -> None:
        """Until every configured instance's link is up (or timeout)."""
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        while loop.time() < end:
            if all(r.link.up for r in self.instances.values()):
                return
            await asyncio.sleep(0.02)
        down = [iid for iid, r in self.instances.items() if not r.link.up]
        raise TimeoutError(f"instance links not up after {timeout}s: {down}")

    async def stop(self, grace: float | None = None) -> None:
        """Drain: new calls get UNAVAILABLE (retryable) while the calls in flight finish,
        then accepted ``infer`` tasks finish, then the server and the links close."""
        grace = self.config.drain_timeout if grace is None else grace
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        self.draining = True
        if self.discovery is not None:
            await self.discovery.stop()
        while self.inflight and loop.time() < deadline:
            await asyncio.sleep(0.01)
        # infer calls were answered at acceptance: let their tasks finish before the links go
        links = [r.link for r in self.instances.values()]
        await _until_idle(links, deadline)
        if self._server is not None:
            await self._server.stop(max(0.5, min(5.0, deadline - loop.time())))
        await self._expiry.stop()
        await self._trim.stop()
        for link in links:
            await link.close()
        await self.metrics.stop()
        await self._instance_poll.stop()
        if self._http is not None:
            await self._http.close()
        if self.services is not None:
            await self.services.stop()


def _keepalive_options(cfg: ExecutorConfig) -> list[tuple[str, int]]:
    """The grpcio front's server keepalive: the same as the native front's."""
    never = 2**31 - 1  # grpc's largest (and "never") milliseconds
    if cfg.keepalive <= 0:
        return [("grpc.keepalive_time_ms", never)]
    idle = min(max(int(cfg.keepalive * 1000), 1), never)
    timeout = min(max(int(cfg.keepalive_timeout * 1000), 1), never)
    return [("grpc.keepalive_time_ms", idle),
            ("grpc.keepalive_timeout_ms", timeout),
            # as the native front: idle connections too, and with no data sent meanwhile
            ("grpc.http2.ping_timeout_ms", timeout),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.max_pings_without_data", 0)]  # fmt: skip


def _settle_gc() -> None:
    """Once serving: what start-up allocated (modules, grpc, the policy) moves out of the
    collector's sight (gc.freeze), and young collections come every GC_THRESHOLD new
    objects, not 700: a task allocates dozens of short-lived objects, and the default
    collections (with their older-generation passes over everything start-up left)
    measured ~30% of the native front's CPU per task (bench.front)."""
    gc.freeze()
    gc.set_threshold(GC_THRESHOLD, 50, 100)


async def _until_idle(links: list, deadline: float) -> None:
    """Until none of the links has a task in flight, or the loop's clock passes deadline."""
    loop = asyncio.get_running_loop()
    while any(link.inflight for link in links) and loop.time() < deadline:
        await asyncio.sleep(0.01)


def _resolve(run: TaskRun, answer: bytes | None, reject: Reject | None) -> None:
    """``Executor._run``'s on_done: the awaited future (``run.call``) gets the outcome."""
    waiter = run.call
    if waiter.done():
        return
    if reject is None:
        waiter.set_result(answer)
    else:
        waiter.set_exception(reject)
