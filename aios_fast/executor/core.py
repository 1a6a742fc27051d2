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

The executor is split by role, as Envoy's upstream is: the host set
(``executor.hostset``) alone owns the instance records (health, draining, ejection,
weight) and the balancer that picks among them; the outlier detector
(``executor.outliers``) observes results and sets the ejected flag; the router
(``executor.router``, with ``executor.task_run``) places each task, retries it and keeps
the books; the fronts (``executor.native_front``, ``executor.grpcio_front``) hand calls
to one ``FrontDispatch``; discovery sources feed one reconcile
(``executor.reconcile``). This module wires them and owns the lifecycle; the management
API, discovery and the workers' front change the instance set through its public
methods.
"""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import Mapping
from time import perf_counter
from typing import TYPE_CHECKING, Any

import aiohttp

from .. import lb
from ..auth import bearer, check_bind
from ..oip import ModelSpec
from ..service import runtime
from ..service.metrics import Histogram
from ..service.periodic import Periodic
from ..service.snapshot import MetricsSnapshot
from .config import ExecutorConfig, InstanceSpec
from .discovery import Discovery
from .grpcio_front import FrontDispatch, GrpcioFront, ServerOptions
from .hop_front import HopFront
from .hostset import HostSet, Instance
from .http_front import HttpFront
from .kube_discovery import KubeDiscovery
from .links import Link, LinkSettings, LinkTask
from .native_front import resolve_front
from .native_link import framing_compiled, resolve_link
from .oip_run import OipCalls
from .outliers import OutlierDetector
from .router import TASK_EVENTS, Router
from .services import ExecutorServices
from .task_run import OnDone, TaskRun

if TYPE_CHECKING:
    from .native_server import NativeServer

__all__ = ["TASK_EVENTS", "Executor", "Instance"]

log = logging.getLogger("aios_fast.executor")
GC_THRESHOLD = 20_000  # allocations between young collections (_settle_gc)


class Executor:
    """One executor process: a front, a router and the host set of its instances."""

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
        token = config.auth.any_token("infer")
        self.link_settings = LinkSettings(
            config.link_linger, config.max_message, config.link_keepalive, config.task_timeout,
            ((("authorization", bearer(token)),) if token else ()), config.tls,
            resolve_link(config.link),
        )  # fmt: skip
        self.hosts = HostSet(self._make_balancer(self.policy_spec), self.link_settings,
                             _unwired, config.instance_inflight)  # fmt: skip
        self.outliers = OutlierDetector(self.hosts, config.eject_after, config.eject_seconds,
                                        config.eject_max_percent)  # fmt: skip
        self.router = Router(self.hosts, self.outliers, max_inflight=config.max_inflight,
                             instance_inflight=config.instance_inflight,
                             max_retries=config.max_retries,
                             max_message=config.max_message)  # fmt: skip
        self.hosts.on_settled = self.router.settled  # no hop through the executor per task
        self.dispatch = FrontDispatch(self.router, config.auth, config.instance_inflight)
        # the Open Inference Protocol beside the seeds' API: the block is the model
        self.dispatch.oip = OipCalls(
            self.router, ModelSpec.from_document(self.block_data, config.block_id)
        )
        self._server: GrpcioFront | NativeServer | None = None
        self.hop: HopFront | None = None  # vDAG hops' framed front, beside the native one
        self.port = config.port
        self.discovery: Discovery | KubeDiscovery | None = None
        self.http: HttpFront | None = None  # the HTTP/JSON API, when served
        self.services: ExecutorServices | None = None  # management and metrics, when served
        self._expiry = Periodic(self._expire_tasks, min(1.0, max(config.task_timeout / 4, 0.05)),
                                log, "task timeout sweep")  # fmt: skip
        # (tasks received, client connections closed) when memory was last released
        self._trimmed_at: tuple[int, int] = (0, 0)
        self._seen_at: tuple[int, int] = (0, 0)  # ... and at the last check
        self._trim = Periodic(self._release_memory, 2.0, log, "memory release")

    # ------------------------------------------------------------------ views

    @property
    def instances(self) -> Mapping[str, Instance]:
        """id -> record (read-only: the host set owns them)."""
        return self.hosts.records

    @property
    def balancer(self) -> Any:
        return self.hosts.balancer

    @property
    def stats(self) -> dict[str, int]:
        return self.router.stats

    @property
    def inflight(self) -> int:
        return self.router.inflight

    @property
    def latency(self) -> dict[str, Histogram]:
        return self.router.latency

    @property
    def draining(self) -> bool:
        return self.router.draining

    @property
    def max_output(self) -> int:
        return self.router.max_output

    # ------------------------------------------------------------------ instance set

    def add_instance(self, spec: InstanceSpec) -> Instance:
        return self.hosts.add(spec)

    def has(self, instance_id: str) -> bool:
        return instance_id in self.hosts

    def inflight_of(self, instance_id: str) -> int:
        return self.hosts.link_of(instance_id).inflight

    async def remove_instance(self, instance_id: str, drain_timeout: float = 0.0) -> int:
        """Forget an instance and close its link. With ``drain_timeout`` > 0 it first gets
        no new tasks while its in-flight ones finish (up to that many seconds). Returns
        the tasks still in flight when the link closed (they fail as lost)."""
        record = self.hosts.known(instance_id)
        if drain_timeout > 0:
            self.hosts.set_draining(instance_id, True)
            deadline = asyncio.get_running_loop().time() + drain_timeout
            await _until_idle([record.link], deadline)
            if self.hosts.get(instance_id) is not record:  # removed meanwhile
                return 0
        self.hosts.remove(instance_id)
        left = record.link.inflight
        await record.link.close()
        return left

    def set_instance_health(self, instance_id: str, healthy: bool) -> None:
        """The health checker's verdict: an unhealthy instance gets no tasks (even with
        its link up) until it is marked healthy again."""
        self.hosts.set_health(instance_id, healthy)

    def set_draining(self, instance_id: str, draining: bool) -> None:
        """A draining instance gets no new tasks; its in-flight ones finish."""
        self.hosts.set_draining(instance_id, draining)

    def set_weight(self, instance_id: str, weight: float) -> None:
        """For weighted policies; the balancer refuses a bad weight (ValueError)."""
        self.hosts.set_weight(instance_id, weight)

    def available(self) -> list[str]:
        """The instances the balancer may pick now (up, healthy, not draining)."""
        return self.hosts.available()

    def front_stats(self) -> dict:
        """The native front's books (connections, bytes held, refusals); {} for grpcio."""
        stats = getattr(self._server, "front_stats", None)
        return stats() if stats is not None else {}

    def describe(self, instance_id: str) -> dict:
        """One instance as the management API shows it."""
        return self.hosts.describe(instance_id)

    async def _release_memory(self) -> None:
        """Once quiet (nothing received for a whole period): return the freed memory
        (runtime.release_memory), once per burst. Not at every idle instant: under a
        light steady load the full collection cost ~30 us a task (measured, 740/s)."""
        # (a client that left may have held memory too: answers it never read)
        mark = (self.router.stats["received"], getattr(self._server, "connections_closed", 0))
        quiet, self._seen_at = mark == self._seen_at, mark
        if quiet and self.router.inflight == 0 and mark != self._trimmed_at:
            self._trimmed_at = mark
            runtime.release_memory()

    async def _expire_tasks(self) -> None:
        """Backstop for instances that cannot time their runs out themselves (a wedged
        event loop): see Link.expire."""
        cutoff = perf_counter() - self.config.task_timeout
        for record in self.hosts:
            record.link.expire(cutoff)

    # ------------------------------------------------------------------ policy

    def _make_balancer(self, spec: dict):
        return lb.make_balancer(
            spec, (), block_data=self.block_data, get_metrics=self.metrics.get_metrics
        )

    @property
    def policy_rule(self):
        """The user policy (``aios_fast.policy.PolicyRule``) in force, or None (built-in)."""
        balancer = self.hosts.balancer
        return balancer.rule if isinstance(balancer, lb.PolicyBalancer) else None

    @property
    def policy_fallbacks(self) -> int:
        """Picks the user policy failed and the fallback built-in made."""
        return getattr(self.hosts.balancer, "fallbacks", 0)

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
            "balancer": self.hosts.balancer.name,
            "fallbacks": self.policy_fallbacks,
            "last_error": getattr(self.hosts.balancer, "last_error", None),
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
        self.hosts.replace_balancer(self._make_balancer(spec))
        self.policy_spec = dict(spec)

    def _block_metrics(self) -> dict:
        """Executor state for policies (on the loop, every metrics interval)."""
        return {
            "executor": dict(self.router.stats),
            "inflight": self.router.inflight,
            "instances": {
                r.id: {"up": r.link.up, "inflight": r.link.inflight, "metrics": r.metrics}
                for r in self.hosts
            },
        }

    async def _poll_instances(self) -> None:
        targets = [r for r in self.hosts if r.spec.health]
        if not targets:
            return
        if self._http is None:
            token = self.config.auth.any_token("read")
            headers = {"Authorization": bearer(token)} if token else None
            self._http = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=1.0), headers=headers,
                connector=aiohttp.TCPConnector(ssl=self.config.tls.client_context() or True),
            )  # fmt: skip
        http = self._http

        async def one(record: Instance) -> None:
            metrics = None  # no stale readings
            try:
                url = f"{self.config.tls.scheme}://{record.spec.health}/stats"
                async with http.get(url) as resp:
                    if resp.status == 200:
                        metrics = await resp.json()
            except (aiohttp.ClientError, asyncio.TimeoutError, ValueError):
                pass
            self.hosts.set_metrics(record, metrics)

        await asyncio.gather(*(one(record) for record in targets))

    # ------------------------------------------------------------------ tasks

    def run_task(self, frame: bytes, want_result: bool, timeout: float | None,
                 on_done: OnDone, call=None) -> TaskRun:  # fmt: skip
        """Start one task (``Router.run_task``)."""
        return self.router.run_task(frame, want_result, timeout, on_done, call)

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        cfg = self.config
        check_bind(cfg.host, cfg.auth, cfg.insecure, "executor")
        check_bind(cfg.http_host or cfg.host, cfg.auth, cfg.insecure, "executor management")
        cfg.front = resolve_front(cfg.front)  # "auto": the native front where it is built
        server: GrpcioFront | NativeServer
        if cfg.front == "native":  # executor.native_server: same calls, C HTTP/2
            from .native_server import NativeServer, connection_limit  # (needs the extension)

            d = self.dispatch
            server = NativeServer(d.router.run_task, d.auth, cfg.tls, cfg.max_message,
                                  d.stream_window, cfg.keepalive, cfg.keepalive_timeout,
                                  connection_budget=cfg.connection_budget,
                                  budget=cfg.front_budget,
                                  max_connections=connection_limit(cfg.max_connections),
                                  handshake_timeout=cfg.handshake_timeout,
                                  oip=d.oip)  # fmt: skip
            self.port = await server.bind(cfg.host, cfg.port, cfg.reuse_port)
            if framing_compiled():  # vDAG hops on frames of our own (executor.hop_front)
                hop_limit = max(connection_limit(cfg.max_connections) // 4, 16)
                self.hop = HopFront(d.router.run_task, d.auth, cfg.tls, cfg.host,
                                    cfg.max_message, max_connections=hop_limit)  # fmt: skip
                await self.hop.start()
                server.hop = self.hop
        else:
            options = ServerOptions(cfg.max_inflight, cfg.max_message, cfg.reuse_port,
                                    cfg.keepalive, cfg.keepalive_timeout)  # fmt: skip
            server = GrpcioFront(self.dispatch, options)
            self.port = server.bind(cfg.tls, cfg.host, cfg.port)
        for spec in cfg.instances:
            self.add_instance(spec)
        if cfg.discover.startswith("k8s://"):  # the instances' EndpointSlices
            self.discovery = KubeDiscovery(self, cfg.discover)
        elif cfg.discover:
            self.discovery = Discovery(self, cfg.discover, cfg.block_id, cfg.discover_interval)
        if self.discovery is not None:
            await self.discovery.sync_once()
            self.discovery.start()
        await server.start()
        self._server = server
        _settle_gc()
        self.metrics.start()
        self._instance_poll.start()
        self._trim.start()
        if cfg.task_timeout > 0:
            self._expiry.start()
        if cfg.http_port is not None:  # the HTTP/JSON API, through the same dispatch
            self.http = HttpFront(self.dispatch, cfg.block_id, cfg.max_message, cfg.tls)
            await self.http.start(cfg.host, cfg.http_port, cfg.reuse_port)
        if cfg.mgmt_port is not None or cfg.metrics_port is not None:
            self.services = ExecutorServices(self)
            await self.services.start(cfg.http_host or cfg.host, cfg.mgmt_port,
                                      cfg.metrics_port)  # fmt: skip

    async def wait_ready(self, timeout: float = 10.0) -> None:
        """Until every configured instance's link is up (or timeout)."""
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        while loop.time() < end:
            if all(r.link.up for r in self.hosts):
                return
            await asyncio.sleep(0.02)
        down = [r.id for r in self.hosts if not r.link.up]
        raise TimeoutError(f"instance links not up after {timeout}s: {down}")

    async def stop(self, grace: float | None = None) -> None:
        """Drain: new calls get UNAVAILABLE (retryable) while the calls in flight finish,
        then accepted ``infer`` tasks finish, then the server and the links close."""
        grace = self.config.drain_timeout if grace is None else grace
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        self.router.draining = True
        if self.discovery is not None:
            await self.discovery.stop()
        while self.router.inflight and loop.time() < deadline:
            await asyncio.sleep(0.01)
        # infer calls were answered at acceptance: let their tasks finish before the links go
        links = [r.link for r in self.hosts]
        await _until_idle(links, deadline)
        if self.http is not None:
            await self.http.stop()
        if self.hop is not None:
            await self.hop.stop(max(0.0, min(5.0, deadline - loop.time())))
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


def _unwired(task: LinkTask, exc: Exception | None) -> None:
    raise RuntimeError("the host set's links report to the router (wired in Executor)")


def _settle_gc() -> None:
    """Once serving: what start-up allocated (modules, grpc, the policy) moves out of the
    collector's sight (gc.freeze), and young collections come every GC_THRESHOLD new
    objects, not 700: a task allocates dozens of short-lived objects, and the default
    collections (with their older-generation passes over everything start-up left)
    measured ~30% of the native front's CPU per task (bench.front)."""
    gc.freeze()
    gc.set_threshold(GC_THRESHOLD, 50, 100)


async def _until_idle(links: list[Link], deadline: float) -> None:
    """Until none of the links has a task in flight, or the loop's clock passes deadline."""
    loop = asyncio.get_running_loop()
    while any(link.inflight for link in links) and loop.time() < deadline:
        await asyncio.sleep(0.01)
