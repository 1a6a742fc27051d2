"""Registry document schemas (seeds/registries.txt and cluster-registry.txt) as msgspec
Structs. They check required fields and types on create and after every update; the
stored document is the client's own JSON, so fields the schema does not name are kept
(the original silently dropped them).

vDAG documents are not specified in the seeds beyond their URI; the original's fields
are used: ``vdagName`` and ``vdagVersion: {version, releaseTag}`` make
``vdagURI = name:version-releaseTag``, which the server sets.
"""

from __future__ import annotations

from typing import Any

import msgspec

from .errors import SchemaError

__all__ = ["MAX_ID_BYTES", "REGISTRIES", "Registry", "validate"]

MAX_ID_BYTES = 1024
"""The longest document id (UTF-8 bytes): it must fit in a request line (a URL path) with
room to spare, percent-encoded; MongoDB's old index-key limit was the same."""

Number = int | float


class _Gpus(msgspec.Struct):
    count: Number
    memory: Number


class _Count(msgspec.Struct):
    count: Number


class _Storage(msgspec.Struct):
    disks: Number
    size: Number


class _Network(msgspec.Struct):  # field names as in the seeds (camelCase)
    interfaces: Number
    txBandwidth: Number
    rxBandwidth: Number


class _GpuModel(msgspec.Struct):
    modelName: str
    memory: Number


class _NodeGpus(msgspec.Struct):
    count: Number
    memory: Number
    gpus: list[_GpuModel] = []
    features: list[str] = []


class _Node(msgspec.Struct):
    id: str
    gpus: _NodeGpus
    vcpus: _Count
    memory: Number
    swap: Number
    storage: _Storage
    network: _Network


class _Nodes(msgspec.Struct):
    count: Number
    nodeData: list[_Node] = []


class _UrlMap(msgspec.Struct):
    controllerService: str
    metricsService: str
    blocksQuery: str
    publicGateway: str
    parameterUpdater: str


class _ClusterConfig(msgspec.Struct):
    publicHostname: str
    urlMap: _UrlMap
    policyExecutorId: str = ""
    policyExecutionMode: str = "local"
    useGateway: bool = True


class _ClusterMetadata(msgspec.Struct):
    name: str
    description: str
    owner: str
    email: str | None = None
    countries: list[str] | None = None


class Cluster(msgspec.Struct):
    id: str
    status: str
    nodes: _Nodes
    gpus: _Gpus
    vcpus: _Count
    memory: Number
    swap: Number
    storage: _Storage
    network: _Network
    config: _ClusterConfig
    tags: list[str]
    clusterMetadata: _ClusterMetadata
    regionId: str | None = None
    reputation: Number | None = None


class Block(msgspec.Struct):
    id: str
    componentUri: str | None = None
    component: Any = None
    blockUri: str | None = None
    blockMetadata: Any = None
    policies: dict[str, Any] | None = None
    cluster: Any = None
    blockInitData: Any = None
    initSettings: Any = None
    parameters: Any = None
    minInstances: Number | None = None
    maxInstances: Number | None = None
    inputProtocol: Any = None
    outputProtocol: Any = None


class _VdagVersion(msgspec.Struct):
    version: str
    releaseTag: str


class VDag(msgspec.Struct):
    vdagName: str
    vdagVersion: _VdagVersion
    vdagURI: str | None = None
    discoveryTags: list[str] | None = None
    controller: Any = None
    nodes: list[Any] | None = None
    graph: Any = None
    status: str | None = None


class VDagController(msgspec.Struct):
    vdag_controller_id: str
    vdag_uri: str
    public_url: str = ""
    cluster_id: str = ""
    metadata: dict[str, Any] = {}
    config: dict[str, Any] = {}
    search_tags: list[str] = []


class Registry(msgspec.Struct, frozen=True):
    name: str  # collection name
    id_field: str
    schema: type


REGISTRIES = {
    "clusters": Registry("clusters", "id", Cluster),
    "blocks": Registry("blocks", "id", Block),
    "vdags": Registry("vdags", "vdagURI", VDag),
    "vdag_controllers": Registry("vdag_controllers", "vdag_controller_id", VDagController),
}


def vdag_uri(doc: dict) -> str:
    version = doc["vdagVersion"]
    return f"{doc['vdagName']}:{version['version']}-{version['releaseTag']}"


def _check_names(doc: dict) -> None:
    """SchemaError for a field name holding NUL (MongoDB forbids them: BSON names are
    NUL-terminated), anywhere in the document."""
    stack: list = [doc]
    while stack:
        item = stack.pop()
        if type(item) is dict:
            for key, value in item.items():
                if "\x00" in key:
                    raise SchemaError(f"field names cannot contain NUL ({key!r})")
                if type(value) in (dict, list):
                    stack.append(value)
        elif type(item) is list:
            stack.extend(v for v in item if type(v) in (dict, list))


def validate(registry: Registry, doc: Any) -> dict:
    """Check doc against the registry's schema; returns it (vDAGs get their vdagURI)."""
    if not isinstance(doc, dict):
        raise SchemaError(f"a {registry.name} document must be a JSON object")
    try:
        msgspec.convert(doc, registry.schema)
    except msgspec.ValidationError as exc:
        raise SchemaError(f"invalid {registry.name} document: {exc}") from None
    if registry.schema is VDag:
        uri = vdag_uri(doc)
        if doc.get("vdagURI") not in (None, uri):
            raise SchemaError(f"vdagURI must be name:version-releaseTag ({uri!r})")
        doc["vdagURI"] = uri
    _check_names(doc)
    if not isinstance(doc.get(registry.id_field), str) or not doc[registry.id_field]:
        raise SchemaError(f"{registry.id_field} must be a non-empty string")
    if len(doc[registry.id_field].encode("utf-8", "surrogatepass")) > MAX_ID_BYTES:
        raise SchemaError(
            f"{registry.id_field} is longer than {MAX_ID_BYTES} bytes (UTF-8): it could not "
            "be read or deleted by URL"
        )
    return doc
