"""What an executor is told: its instances and its settings."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..auth import Auth
from ..settings import CONNECTION_BUDGET, FRONT_BUDGET, FRONTS, BlockDocument, InitSettings
from ..tls import TLS

__all__ = ["FRONTS", "ExecutorConfig", "InstanceSpec", "parse_instance", "settings_fields"]

# Every default below is the settings contract's (aios_fast.settings): never retyped here.
_S = InitSettings()
_E = _S.executor
_O = _S.outlierDetection


@dataclass
class InstanceSpec:
    id: str
    target: str  # host:port of the instance's gRPC server
    protocol: str = "stream"  # "stream" (aios_fast link) or "unary" (the seeds' infer only)
    health: str = ""  # host:port of the instance's management HTTP (GET /health), if any


@dataclass
class ExecutorConfig:
    host: str = "127.0.0.1"
    port: int = _S.ports.grpc
    instances: list[InstanceSpec] = field(default_factory=list)
    policy: dict = field(default_factory=dict)  # policies.loadBalancer of the block
    max_inflight: int = _E.maxInflight
    instance_inflight: int = _E.instanceInflight
    max_retries: int = _E.maxRetries
    drain_timeout: float = _E.drainTimeout
    reuse_port: bool = False
    # "native" (executor.native_front), "grpcio" (grpc.aio), or "auto": native where it
    # is built (resolved when the executor starts)
    front: str = _S.front
    link_linger: float = _E.linkLinger  # seconds a small batch may wait while a link is busy
    link_keepalive: float = _E.linkKeepalive  # seconds between link pings (unanswered: down)
    link: str = _E.link  # instance links: "native", "grpc", "auto" (resolved at start)
    # the front's clients (as grpc servers' keepalive_time / _timeout): one silent this
    # long gets a PING; unanswered after keepalive_timeout, its connection is cut
    keepalive: float = _E.keepalive  # seconds (0: never)
    keepalive_timeout: float = _E.keepaliveTimeout
    max_message: int = _S.maxMessageBytes  # bytes of the largest message a caller may send
    task_timeout: float = _S.taskTimeout  # seconds an instance may run one task (0: no limit)
    # The native front's limits on what clients may make it hold (issue 23): request
    # bytes buffered plus answer bytes not yet sent, per client connection and for the
    # whole process (over either: that connection is not read, its new calls get
    # RESOURCE_EXHAUSTED); open client connections (0: the open-file limit less 256);
    # seconds a connection has to send the HTTP/2 preface and SETTINGS (0: no limit).
    connection_budget: int = CONNECTION_BUDGET
    front_budget: int = FRONT_BUDGET
    max_connections: int = _E.maxConnections
    handshake_timeout: float = _E.handshakeTimeout
    # Outlier ejection (as Envoy's): eject_after failures in a row (tasks lost or timed
    # out) take an instance out for eject_seconds x its ejections (at most 300 s), never
    # more than eject_max_percent of the instances (at least one). 0: off.
    eject_after: int = _O.consecutiveFailures
    eject_seconds: float = _O.baseEjectionSeconds
    eject_max_percent: int = _O.maxEjectionPercent
    # redis:// URL of instance registrations (executor.discovery), or k8s://[NS/]SERVICE:
    # the instances' EndpointSlices (executor.kube_discovery)
    discover: str = ""
    block_id: str = "block"
    discover_interval: float = _E.discoverInterval
    # HTTP services (executor.services): None = not served, 0 = any free port.
    mgmt_port: int | None = None  # POST /mgmt (the seeds' 18001)
    metrics_port: int | None = None  # GET /metrics (the seeds' 18000)
    http_host: str = ""  # where those listen ("": host)
    http_port: int | None = None  # the HTTP/JSON API (executor.http_front), on host
    block_data: dict | None = None  # the block document, handed to user policies
    metrics_interval: float = _E.metricsInterval  # seconds between policy metrics refreshes
    # Security (docs/DESIGN.md, trust model): tokens by role; without any, only
    # loopback addresses may be bound unless insecure. Over the management API, policies
    # are only builtin:*, name:version (under AIOS_POLICY_PATH) or the one configured at
    # start, unless allow_policy_paths; instance addresses must be in allowed_hosts
    # when it is set.
    auth: Auth = field(default_factory=Auth)
    insecure: bool = False
    allow_policy_paths: bool = False
    allowed_hosts: tuple[str, ...] = ()
    tls: TLS = field(default_factory=TLS)  # listeners, links and /stats polls
    http_tls: bool = True  # False: management/metrics in plain HTTP (workers' private ports)


def settings_fields(doc: BlockDocument) -> dict:
    """The ExecutorConfig fields a block document's settings set (the one mapping from
    the contract to the executor)."""
    s = doc.initSettings
    e, o = s.executor, s.outlierDetection
    fields = {
        "port": s.ports.grpc,
        "mgmt_port": s.ports.mgmt,
        "metrics_port": s.ports.metrics,
        "http_port": s.ports.http,
        "front": s.front,
        "block_id": doc.id,
        "policy": dict(doc.policies.get("loadBalancer") or {}),
        "max_message": s.maxMessageBytes,
        "task_timeout": s.taskTimeout,
        "eject_after": o.consecutiveFailures,
        "eject_seconds": o.baseEjectionSeconds,
        "eject_max_percent": o.maxEjectionPercent,
        "max_inflight": e.maxInflight,
        "instance_inflight": e.instanceInflight,
        "max_retries": e.maxRetries,
        "drain_timeout": e.drainTimeout,
        "link_linger": e.linkLinger,
        "link_keepalive": e.linkKeepalive,
        "link": e.link,
        "keepalive": e.keepalive,
        "keepalive_timeout": e.keepaliveTimeout,
        "discover_interval": e.discoverInterval,
        "metrics_interval": e.metricsInterval,
        "max_connections": e.maxConnections,
        "handshake_timeout": e.handshakeTimeout,
    }
    if e.connectionBudgetBytes is not None:  # else derived from max_message (executor.__main__)
        fields["connection_budget"] = e.connectionBudgetBytes
    if e.frontBudgetBytes is not None:
        fields["front_budget"] = e.frontBudgetBytes
    return fields


def parse_instance(text: str) -> InstanceSpec:
    """``id=host:port`` (aios_fast stream link) or ``id=unary:host:port`` (seeds' infer),
    optionally followed by ``@host:port``, the instance's management HTTP (/health)."""
    iid, sep, target = text.partition("=")
    target, _, health = target.partition("@")
    protocol = "stream"
    if target.startswith("unary:"):
        protocol, target = "unary", target[len("unary:") :]
    if not sep or not iid or ":" not in target or (health and ":" not in health):
        raise ValueError(
            f"--instance wants id=[unary:]host:port[@mgmt_host:mgmt_port], not {text!r}"
        )
    return InstanceSpec(iid, target, protocol, health)
