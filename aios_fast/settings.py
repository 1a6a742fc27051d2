"""The settings contract: every block-document setting, declared once.

A block document (the seeds' block schema) carries, beside ``id``, ``policies``,
``minInstances``, ``maxInstances``, ``parameters``, ``blockInitData`` and ``cluster``, an
``initSettings`` object that says how the block runs. Each setting is declared here, once,
as a field of a msgspec Struct: its name, type, default, bounds and validation. Every
process of a block (``block up``, the executor, the instances, the sidecars, the
Kubernetes manifests) gets its settings by decoding this contract from the document,
never from flags re-typed per caller; command-line flags are explicit overrides on top.

``load_document(raw)`` checks a whole document and returns a ``BlockDocument``; every
problem is one line naming the setting: ``initSettings.prots: unknown setting (did you
mean 'ports'?)``, ``initSettings.workers: expected int >= 1, not 0``.

Adding a setting is one field here plus the code that uses it (and a row of
tests/test_settings.py, which proves each setting reaches every process that uses it).
"""

from __future__ import annotations

import difflib
import json
import re
import types
import typing
from typing import Annotated, Any, Literal, Union

import msgspec
from msgspec import Meta

from .errors import AiosFastError
from .wire import MAX_MESSAGE

__all__ = [
    "CONNECTION_BUDGET",
    "ECHO",
    "FRONTS",
    "FRONT_BUDGET",
    "Autoscaler",
    "Batching",
    "BlockDocument",
    "ExecutorSettings",
    "HealthChecker",
    "InitSettings",
    "InstanceSettings",
    "OutlierDetection",
    "Ports",
    "Resources",
    "SettingsError",
    "decode_part",
    "document_json",
    "effective_document",
    "load_document",
    "read_document",
]

ECHO = "aios_fast.block:EchoBlock"
CONNECTION_BUDGET = 64 << 20  # initSettings.executor.connectionBudgetBytes's default
FRONT_BUDGET = 1 << 30  # ... and frontBudgetBytes's
# the executor's gRPC server: "native" (C over libnghttp2), "grpcio" (grpc.aio), or
# "auto": native where it is built (resolved when the executor starts)
FRONTS = ("auto", "native", "grpcio")
Front = Literal["auto", "native", "grpcio"]
LinkTransport = Literal["auto", "native", "tcp", "grpc"]

Port = Annotated[int, Meta(ge=0, le=65535)]
Seconds = Annotated[float, Meta(ge=0, le=1e9)]
PositiveSeconds = Annotated[float, Meta(gt=0, le=1e9)]
Count = Annotated[int, Meta(ge=0)]
PositiveCount = Annotated[int, Meta(ge=1)]
_QUANTITY = r"^[0-9]+(\.[0-9]+)?(m|k|Ki|Mi|Gi|Ti|Pi|Ei|M|G|T|P|E)?$"
Quantity = Annotated[str, Meta(pattern=_QUANTITY)]  # a Kubernetes quantity: "2", "4Gi"


class SettingsError(AiosFastError):
    """A block document or a setting that does not fit the contract (one line)."""


class _Strict(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    pass


class Ports(_Strict):
    """Where the block's services listen (0: any free port)."""

    grpc: Port = 50051
    metrics: Port = 18000
    mgmt: Port = 18001
    autoscaler: Port = 10000
    healthChecker: Port = 19001
    http: Port | None = None  # the executor's HTTP/JSON API (executor.http_front); None: not served


class HealthChecker(_Strict):
    interval: PositiveSeconds = 5.0
    timeout: PositiveSeconds = 2.0
    unhealthyAfter: PositiveCount = 1
    healthyAfter: PositiveCount = 1


class Autoscaler(_Strict):
    interval: PositiveSeconds = 10.0
    drainTimeout: Seconds = 30.0


class OutlierDetection(_Strict):
    """Envoy's outlier ejection: ``consecutiveFailures`` tasks lost or timed out in a row
    eject an instance for ``baseEjectionSeconds`` x its ejections (at most 300 s), never
    more than ``maxEjectionPercent`` of the instances (at least one). 0: never eject."""

    consecutiveFailures: Count = 5
    baseEjectionSeconds: PositiveSeconds = 5.0
    maxEjectionPercent: Annotated[int, Meta(ge=0, le=100)] = 50


class Batching(_Strict):
    """Dynamic batching for a block with ``on_batch`` (``aios_fast.instance.batcher``)."""

    mode: Literal["adaptive", "delay", "off"] = "adaptive"
    maxBatchSize: Annotated[int, Meta(ge=1, le=4096)] = 32
    maxQueueDelayMs: Annotated[float, Meta(ge=0, le=60_000)] = 5.0
    preferredBatchSizes: list[Annotated[int, Meta(ge=1, le=4096)]] = []
    maxConcurrentBatches: Annotated[int, Meta(ge=1, le=64)] = 1

    def __post_init__(self) -> None:
        if any(size > self.maxBatchSize for size in self.preferredBatchSizes):
            raise ValueError(
                f"preferredBatchSizes must each be <= maxBatchSize {self.maxBatchSize}"
            )


class Resources(_Strict):
    """Kubernetes requests and limits of an instance pod: the shorthands (``gpus``
    requested and limited, ``cpu`` requested, ``memory`` requested and limited), then
    any resource by name in ``requests`` and ``limits``, which win over them."""

    gpus: Count = 0  # per instance; requested and limited as gpuResource
    gpuResource: str = "nvidia.com/gpu"
    cpu: Quantity | None = None
    memory: Quantity | None = None
    requests: dict[str, Quantity] = {}  # e.g. {"cpu": "2", "ephemeral-storage": "1Gi"}
    limits: dict[str, Quantity] = {}  # e.g. {"cpu": "4", "memory": "16Gi"}


class ExecutorSettings(_Strict):
    """The executor's own limits and timers (``initSettings.executor``)."""

    maxInflight: PositiveCount = 10_000  # tasks in the executor; past it RESOURCE_EXHAUSTED
    instanceInflight: PositiveCount = 1_000  # tasks on one instance
    maxRetries: Count = 2  # a task no instance acknowledged: tried on as many others
    drainTimeout: Seconds = 30.0  # on SIGTERM, seconds in-flight tasks may take
    linkLinger: Annotated[float, Meta(ge=0, le=1)] = 0.002  # a small batch may wait, s
    linkKeepalive: Seconds = 2.0  # pings on instance links (0: none); unanswered: down
    # instance links: "native" (our framing over a Unix socket, or TCP for an instance
    # on another host), "tcp" (native, TCP only), "grpc" (a grpc.aio stream), "auto":
    # native where aios_fast._link is compiled
    link: LinkTransport = "auto"
    keepalive: Seconds = 7200.0  # a silent caller gets a PING after this (0: never)
    keepaliveTimeout: PositiveSeconds = 20.0  # ... and is cut if it does not answer
    discoverInterval: PositiveSeconds = 1.0  # seconds between discovery reconciles
    metricsInterval: PositiveSeconds = 1.0  # seconds between policy metrics refreshes
    # Bytes one client connection, and all of them, may make the native front hold
    # (requests buffered plus answers unsent); over either: not read, new calls refused.
    # None: CONNECTION_BUDGET (or twice maxMessageBytes if larger), FRONT_BUDGET.
    connectionBudgetBytes: Annotated[int, Meta(ge=1024)] | None = None
    frontBudgetBytes: Annotated[int, Meta(ge=1024)] | None = None
    maxConnections: Count = 0  # open client connections (0: the open-file limit less 256)
    handshakeTimeout: Seconds = 120.0  # for the HTTP/2 preface and SETTINGS (0: none)


class InstanceSettings(_Strict):
    """Each instance's own limits (``initSettings.instance``)."""

    maxConcurrency: PositiveCount = 256  # tasks one instance runs at once
    drainTimeout: Seconds = 30.0  # on SIGTERM, seconds the tasks it took may take
    # a sync hook measured at most this long per call runs on the event loop, not in a
    # thread (instance.inline; 0: always a thread unless the Block says inline = True)
    inlineBudget: Annotated[float, Meta(ge=0, le=0.1)] = 0.0001


class InitSettings(_Strict):
    """``initSettings`` of a block document: how the block runs."""

    block: str = ECHO  # "module:Class" of the Block
    workers: PositiveCount = 1  # executor processes sharing the gRPC port
    front: Front = "auto"
    taskTimeout: Seconds = 0.0  # seconds an instance may run one task (0: no limit)
    maxMessageBytes: Annotated[int, Meta(ge=1024, le=2**31 - 1)] = MAX_MESSAGE
    # seconds an instance may take to load its Block (imports, __init__: a big model)
    # before Kubernetes restarts it (the instances' startupProbe)
    startupTimeout: PositiveSeconds = 300.0
    outlierDetection: OutlierDetection = msgspec.field(default_factory=OutlierDetection)
    ports: Ports = msgspec.field(default_factory=Ports)
    healthChecker: HealthChecker = msgspec.field(default_factory=HealthChecker)
    autoscaler: Autoscaler = msgspec.field(default_factory=Autoscaler)
    batching: Batching | None = None
    gpus: list[int | str] | str | None = None  # "auto" or GPU indices/UUIDs
    gpusPerInstance: PositiveCount = 1
    instancesPerGpu: PositiveCount = 1
    resources: Resources = msgspec.field(default_factory=Resources)
    executor: ExecutorSettings = msgspec.field(default_factory=ExecutorSettings)
    instance: InstanceSettings = msgspec.field(default_factory=InstanceSettings)

    def __post_init__(self) -> None:
        module, _, cls = self.block.partition(":")
        if not module or not cls:
            raise ValueError(f"block must be 'module:Class', not {self.block!r}")


class BlockDocument(msgspec.Struct, kw_only=True):
    """The fields of a block document the data plane reads (others are kept, unread)."""

    id: Annotated[str, Meta(min_length=1)]
    policies: dict[str, Any] = {}
    minInstances: Count = 1
    maxInstances: int | None = None
    parameters: dict[str, Any] = {}
    blockInitData: dict[str, Any] = {}
    initSettings: InitSettings = msgspec.field(default_factory=InitSettings)
    cluster: dict[str, Any] = {}

    def __post_init__(self) -> None:
        if self.maxInstances is None:
            self.maxInstances = max(self.minInstances, 1)
        if self.maxInstances < max(self.minInstances, 1):
            raise ValueError(
                f"need 0 <= minInstances <= maxInstances and maxInstances >= 1 "
                f"(got {self.minInstances}..{self.maxInstances})"
            )


_AT = re.compile(r"^(.*?)(?: - at `\$(.*)`)?$", re.S)


def _struct_of(annotation: Any) -> type[msgspec.Struct] | None:
    """The Struct type a field holds (directly or as ``X | None``), if any."""
    if isinstance(annotation, type) and issubclass(annotation, msgspec.Struct):
        return annotation
    origin = typing.get_origin(annotation)
    if origin is Annotated:
        return _struct_of(typing.get_args(annotation)[0])
    if origin in (Union, types.UnionType):
        for arg in typing.get_args(annotation):
            found = _struct_of(arg)
            if found is not None:
                return found
    return None


def _check_keys(raw: Any, struct: type[msgspec.Struct], path: str) -> None:
    """Unknown keys, named with the nearest known one (msgspec's own error names none)."""
    if not isinstance(raw, dict):
        return
    hints = typing.get_type_hints(struct, include_extras=True)
    strict = struct.__struct_config__.forbid_unknown_fields
    for key, value in raw.items():
        where = f"{path}.{key}" if path else str(key)
        if key not in struct.__struct_fields__:
            if strict:
                near = difflib.get_close_matches(str(key), struct.__struct_fields__, n=1)
                hint = f" (did you mean {near[0]!r}?)" if near else ""
                raise SettingsError(f"{where}: unknown setting{hint}")
            continue
        inner = _struct_of(hints[key])
        if inner is not None:
            _check_keys(value, inner, where)


def _value_at(raw: Any, where: str) -> Any:
    """The value at msgspec's ``.a.b[0]`` path in ``raw`` (``_MISSING`` if none)."""
    for part in re.findall(r"\.([^.\[]+)|\[(\d+)\]", where):
        key, index = part
        try:
            raw = raw[key] if key else raw[int(index)]
        except (KeyError, IndexError, TypeError):
            return _MISSING
    return raw


_MISSING = object()


def _one_line(exc: msgspec.ValidationError, raw: Any, path: str) -> str:
    """msgspec's ``Expected `int` >= 1 - at `$.workers``` as
    ``<path>.workers: expected int >= 1, not 0``."""
    match = _AT.match(str(exc))
    message, where = (match.group(1), match.group(2) or "") if match else (str(exc), "")
    message = re.sub(
        r"^Object missing required field `(.*)`$", r"missing required field '\1'", message
    )
    message = message.replace("`", "")
    message = message[:1].lower() + message[1:]
    if "matching regex" in message and where.endswith(("cpu", "memory")):
        message = "expected a Kubernetes quantity (e.g. '2', '500m', '4Gi')"
    elif message.startswith("invalid enum value") and where.endswith(".front"):
        message = f"expected one of {', '.join(FRONTS)}"
    value = _value_at(raw, where)
    if message.startswith("expected") and ", got" not in message and value is not _MISSING:
        message = f"{message}, not {json.dumps(value)[:80]}"
    where = f"{path}{where}" if path else where.lstrip(".")
    return f"{where}: {message}" if where else message


def decode_part(raw: Any, struct: type[msgspec.Struct], path: str) -> Any:
    """``raw`` (JSON-like) as ``struct``, or a one-line SettingsError naming ``path``."""
    _check_keys(raw, struct, path)
    try:
        return msgspec.convert(raw, struct)
    except msgspec.ValidationError as exc:
        raise SettingsError(_one_line(exc, raw, path)) from None


def load_document(raw: Any) -> BlockDocument:
    """A whole block document, checked against the contract."""
    if not isinstance(raw, dict):
        raise SettingsError(f"a block document is a JSON object, not {type(raw).__name__}")
    return decode_part(raw, BlockDocument, "")


def read_document(path: str) -> tuple[BlockDocument, dict]:
    """The checked document in file ``path`` and the raw one (handed to policies)."""
    try:
        with open(path, "rb") as f:
            raw = json.loads(f.read())
    except OSError as exc:
        raise SettingsError(f"cannot read the block document: {exc}") from None
    except ValueError as exc:
        raise SettingsError(f"block document {path} is not JSON: {exc}") from None
    try:
        return load_document(raw), raw
    except SettingsError as exc:
        raise SettingsError(f"block document {path}: {exc}") from None


def effective_document(doc: BlockDocument, raw: dict) -> dict:
    """The document every process of a block reads: the raw one (its other fields kept
    for policies) with the effective settings (overrides applied, defaults written)."""
    effective = dict(raw)
    effective.update(msgspec.to_builtins(doc))
    return effective


def document_json(doc: BlockDocument, raw: dict) -> str:
    return json.dumps(effective_document(doc, raw))
