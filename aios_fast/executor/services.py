"""The executor's HTTP services: management (``POST /mgmt``, the seeds' port 18001) and
Prometheus metrics (``GET /metrics``, port 18000).

Built-in management actions (``mgmt_data`` fields in brackets):

- ``list_instances``: every instance with its target, health URL, link state, health
  verdict, draining flag, weight and tasks in flight;
- ``add_instance`` [id, target, protocol="stream"|"unary", health="host:port"];
- ``remove_instance`` [id, drain=true, timeout=30]: stop sending new tasks, wait for its
  in-flight ones (up to timeout), then close its link; answers how many were left;
- ``drain_instance`` [id, draining=true]: no new tasks while draining (false undoes it);
- ``set_instance_health`` [id, healthy]: the health checker's verdict;
- ``set_instance_weight`` [id, weight];
- ``get_policy``: the loadBalancer spec in force (policyRuleURI, parameters, settings);
- ``set_policy_parameters`` [parameters, replace=false]: merged into (or replacing) the
  policy's parameters; a built-in policy is rebuilt with them (and refuses unknown ones);
- ``switch_policy`` [policyRuleURI, parameters={}, settings={}]: a new balancer with the
  same instances;
- ``stats``: task counters, tasks in flight, latency summaries, per-instance counts.

Any other action goes to the user policy's ``management(action, data)``; a built-in
policy has none, so it is a 400 naming the built-in actions.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

import msgspec
from aiohttp import web

from ..errors import AiosFastError
from ..policy import network_safe
from ..service.http import MgmtError, convert, mgmt_route, new_app, run_action, start_site
from ..service.metrics import CONTENT_TYPE, Histogram, Registry, counter, gauge, histogram
from .config import ExecutorConfig, InstanceSpec

__all__ = ["BUILTIN_ACTIONS", "ExecutorServices", "Managed"]

BUILTIN_ACTIONS = ("list_instances", "add_instance", "remove_instance", "drain_instance",
                   "set_instance_health", "set_instance_weight", "get_policy",
                   "set_policy_parameters", "switch_policy", "stats")  # fmt: skip


class _AddInstance(msgspec.Struct):
    id: str
    target: str
    protocol: str = "stream"
    health: str = ""


class _RemoveInstance(msgspec.Struct):
    id: str
    drain: bool = True
    timeout: float = 30.0


class _Drain(msgspec.Struct):
    id: str
    draining: bool = True


class _Health(msgspec.Struct):
    id: str
    healthy: bool


class _Weight(msgspec.Struct):
    id: str
    weight: float


class _Parameters(msgspec.Struct):
    parameters: dict[str, Any]
    replace: bool = False


class _Policy(msgspec.Struct, rename={"uri": "policyRuleURI"}):
    uri: str
    parameters: dict[str, Any] = {}
    settings: dict[str, Any] = {}


class Managed(Protocol):
    """What the management API and /metrics read and change of an executor."""

    config: ExecutorConfig

    @property
    def policy_rule(self) -> Any: ...

    @property
    def policy_fallbacks(self) -> int: ...

    @property
    def inflight(self) -> int: ...

    @property
    def instances(self) -> Mapping[str, Any]: ...

    @property
    def stats(self) -> dict[str, int]: ...

    @property
    def latency(self) -> dict[str, Histogram]: ...

    def add_instance(self, spec: InstanceSpec) -> Any: ...

    async def remove_instance(self, instance_id: str, drain_timeout: float = 0.0) -> int: ...

    def set_instance_health(self, instance_id: str, healthy: bool) -> None: ...

    def set_draining(self, instance_id: str, draining: bool) -> None: ...

    def set_weight(self, instance_id: str, weight: float) -> None: ...

    def available(self) -> list[str]: ...

    def describe(self, instance_id: str) -> dict: ...

    def front_stats(self) -> dict: ...

    def policy(self) -> dict: ...

    def set_policy_parameters(self, parameters: dict[str, Any], replace: bool = False) -> None: ...

    def switch_policy(self, spec: dict) -> None: ...


class ExecutorServices:
    """Management and metrics HTTP servers for one executor process."""

    def __init__(self, executor: Managed) -> None:
        self.executor = executor
        self.registry = Registry(self.collect)
        self._runners: list[web.AppRunner] = []
        self.mgmt_port: int | None = None
        self.metrics_port: int | None = None
        self.actions = {name: getattr(self, name) for name in BUILTIN_ACTIONS}

    # ------------------------------------------------------------------ management

    async def dispatch(self, action: str, data: dict) -> Any:
        rule = self.executor.policy_rule
        if rule is not None:
            return await run_action(self.actions, action, data, rule)
        uri = self.executor.policy()["policyRuleURI"]
        return await run_action(self.actions, action, data,
                                no_policy=f"the built-in policy {uri} takes no others")  # fmt: skip

    def _row(self, iid: str) -> dict:
        try:
            return self.executor.describe(iid)
        except KeyError:
            raise MgmtError(f"unknown instance {iid!r}", 404) from None

    def list_instances(self, data: dict) -> list[dict]:
        return [self.executor.describe(iid) for iid in self.executor.instances]

    def add_instance(self, data: dict) -> dict:
        req = convert(data, _AddInstance, "add_instance")
        if req.id in self.executor.instances:
            raise MgmtError(f"instance {req.id!r} is already known", 409)
        if req.protocol not in ("stream", "unary"):
            raise MgmtError(
                f"add_instance: protocol must be 'stream' or 'unary', not {req.protocol!r}"
            )
        for field, address in (("target", req.target), ("health", req.health)):
            if address or field == "target":
                self._check_address(field, address)
        self.executor.add_instance(InstanceSpec(req.id, req.target, req.protocol, req.health))
        return self._row(req.id)

    def _check_address(self, field: str, address: str) -> None:
        """host:port only (no scheme, path or credentials: the executor connects to it),
        on a host of --allowed-host when that list is set."""
        host, sep, port = address.rpartition(":")
        host = host.strip("[]")
        if (
            not sep
            or not host
            or not port.isdigit()
            or not 0 < int(port) < 65536
            or any(c in host for c in "/@?#\\ ")
        ):
            raise MgmtError(f"add_instance: {field} must be host:port, not {address!r}")
        allowed = self.executor.config.allowed_hosts
        if allowed and host not in allowed:
            raise MgmtError(f"add_instance: {field} host {host!r} is not an allowed host "
                            f"({', '.join(allowed)})", 403)  # fmt: skip

    async def remove_instance(self, data: dict) -> dict:
        req = convert(data, _RemoveInstance, "remove_instance")
        self._row(req.id)
        left = await self.executor.remove_instance(req.id, req.timeout if req.drain else 0.0)
        return {"id": req.id, "removed": True, "inflight_left": left}

    def drain_instance(self, data: dict) -> dict:
        req = convert(data, _Drain, "drain_instance")
        self._row(req.id)
        self.executor.set_draining(req.id, req.draining)
        return self._row(req.id)

    def set_instance_health(self, data: dict) -> dict:
        req = convert(data, _Health, "set_instance_health")
        self._row(req.id)
        self.executor.set_instance_health(req.id, req.healthy)
        return self._row(req.id)

    def set_instance_weight(self, data: dict) -> dict:
        req = convert(data, _Weight, "set_instance_weight")
        self._row(req.id)
        try:
            self.executor.set_weight(req.id, req.weight)
        except (AiosFastError, ValueError) as exc:
            raise MgmtError(f"set_instance_weight: {exc}") from None
        return self._row(req.id)

    def get_policy(self, data: dict) -> dict:
        return self.executor.policy()

    def set_policy_parameters(self, data: dict) -> dict:
        req = convert(data, _Parameters, "set_policy_parameters")
        try:
            self.executor.set_policy_parameters(req.parameters, req.replace)
        except AiosFastError as exc:  # a built-in refusing the parameters
            raise MgmtError(f"policy not changed: {exc}") from None
        return self.executor.policy()

    def switch_policy(self, data: dict) -> dict:
        req = convert(data, _Policy, "switch_policy")
        config = self.executor.config
        started_with = (config.policy or {}).get("policyRuleURI")
        if not config.allow_policy_paths and req.uri.strip() != started_with:
            why = network_safe(req.uri)
            if why:
                raise MgmtError(f"switch_policy: {why} (start the executor with "
                                "--allow-policy-paths to allow it)", 400)  # fmt: skip
        spec = {"policyRuleURI": req.uri, "parameters": req.parameters, "settings": req.settings}
        try:
            self.executor.switch_policy(spec)
        except AiosFastError as exc:  # unknown policy, bad parameters, failed to load
            raise MgmtError(f"policy not changed: {exc}") from None
        return self.executor.policy()

    def stats(self, data: dict) -> dict:
        ex = self.executor
        return {
            "tasks": dict(ex.stats),
            "inflight": ex.inflight,
            "latency": {stage: _summary(h) for stage, h in ex.latency.items()},
            "policy_fallbacks": ex.policy_fallbacks,
            "instances": {iid: ex.describe(iid) for iid in ex.instances},
            "front": ex.front_stats(),
        }

    # ------------------------------------------------------------------ metrics

    def collect(self):
        ex = self.executor
        links = {iid: record.link for iid, record in ex.instances.items()}
        yield counter(
            "aios_executor_tasks",
            "Tasks by event: received, accepted, completed, failed, retried, rejected, "
            "lost, invalid, timed_out, cancelled (after acceptance), withdrawn (before).",
            ("event",),
            ex.stats.items(),
        )
        yield gauge("aios_executor_inflight", "Tasks in the executor now.", (), [(ex.inflight,)])
        yield histogram(
            "aios_executor_task_seconds",
            "Task latency by stage: accept (received to acknowledged by an instance), "
            "run (acknowledged to result), total (received to result).",
            ("stage",),
            ex.latency.items(),
        )
        yield counter(
            "aios_executor_instance_tasks",
            "Tasks per instance by outcome: sent, completed, failed, lost.",
            ("instance", "outcome"),
            [
                (iid, outcome, getattr(link, attr))
                for iid, link in links.items()
                for outcome, attr in (
                    ("sent", "tasks_sent"),
                    ("completed", "completed"),
                    ("failed", "failed"),
                    ("lost", "lost"),
                )
            ],
        )
        yield gauge(
            "aios_executor_instance_ejected",
            "1 while the instance is ejected as an outlier (tasks lost or timed out in a row).",
            ("instance",),
            [(iid, int(r.ejected)) for iid, r in ex.instances.items()],
        )
        yield counter(
            "aios_executor_instance_ejections",
            "Times the instance was ejected as an outlier.",
            ("instance",),
            [(iid, r.ejections) for iid, r in ex.instances.items()],
        )
        yield gauge(
            "aios_executor_instance_inflight",
            "Tasks in flight per instance.",
            ("instance",),
            [(iid, link.inflight) for iid, link in links.items()],
        )
        available = set(ex.available())
        yield gauge(
            "aios_executor_instance_up",
            "1 while the instance's link is up.",
            ("instance",),
            [(iid, int(link.up)) for iid, link in links.items()],
        )
        yield gauge(
            "aios_executor_instance_available",
            "1 while the balancer may pick the instance (up, healthy, not draining).",
            ("instance",),
            [(iid, int(iid in available)) for iid in links],
        )
        front = ex.front_stats()  # the native front's memory budgets and refusals
        if front:
            yield gauge(
                "aios_executor_front_bytes",
                "Bytes client calls hold in the native front: buffered requests, unsent answers.",
                ("kind",),
                [("buffered", front["buffered_bytes"]), ("unsent", front["unsent_bytes"])],
            )
            yield gauge(
                "aios_executor_front_connections",
                "Client connections open, and those stalled (over a budget: not read).",
                ("state",),
                [("open", front["connections"]), ("stalled", front["stalled_connections"])],
            )
            yield counter(
                "aios_executor_front_refused",
                "Refused by the native front: calls over a budget (streams), header lists "
                "over the limit (headers), connections past the limit (connections), "
                "handshakes not finished in time (handshakes).",
                ("what",),
                [
                    ("streams", front["refused_streams"]),
                    ("headers", front["oversized_headers"]),
                    ("connections", front["refused_connections"]),
                    ("handshakes", front["handshake_timeouts"]),
                ],
            )
        yield counter(
            "aios_executor_policy_fallbacks",
            "Picks the user policy failed and the fallback policy made.",
            (),
            [(ex.policy_fallbacks,)],
        )

    async def _metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=self.registry.exposition(), headers={"Content-Type": CONTENT_TYPE})

    async def _health(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                "healthy": True,
                "instances": len(self.executor.instances),
                "available": len(self.executor.available()),
            }
        )

    # ------------------------------------------------------------------ lifecycle

    async def start(self, host: str, mgmt_port: int | None, metrics_port: int | None) -> None:
        """Serve management on mgmt_port and metrics on metrics_port (None: not served;
        the same port for both serves both routes on one server)."""
        routes: dict[int, list[str]] = {}
        if mgmt_port is not None:
            routes.setdefault(mgmt_port, []).append("mgmt")
        if metrics_port is not None:
            routes.setdefault(metrics_port, []).append("metrics")
        for port, kinds in routes.items():
            app = new_app(self.executor.config.auth, host)
            app.router.add_get("/health", self._health)
            if "mgmt" in kinds:
                app.router.add_post("/mgmt", mgmt_route(self.dispatch, "executor"))
            if "metrics" in kinds:
                app.router.add_get("/metrics", self._metrics)
            config = self.executor.config
            context = config.tls.server_context() if config.http_tls else None
            runner, bound = await start_site(app, host, port, context)
            self._runners.append(runner)
            if "mgmt" in kinds:
                self.mgmt_port = bound
            if "metrics" in kinds:
                self.metrics_port = bound

    async def stop(self) -> None:
        for runner in self._runners:
            await runner.cleanup()
        self._runners.clear()


def _summary(hist) -> dict:
    count = hist.count
    return {"count": count, "mean_s": hist.sum / count if count else None}
