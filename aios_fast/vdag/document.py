"""The vDAG document (the original system's schema) and its validation.

A vDAG document::

    {"vdagName": "pipe", "vdagVersion": {"version": "1.0", "releaseTag": "stable"},
     "discoveryTags": [...],
     "controller": {"inputSources": [], "initParameters": {}, "initSettings": {},
                    "policies": [...]},
     "nodes": [{"nodeLabel": "a", "nodeType": "block" | "vdag",
                "manualBlockId": "...", "vdagURI": "...", "assignmentPolicyRule": {...},
                "preprocessingPolicyRule": {...}, "postprocessingPolicyRule": {...},
                "modelParameters": {}, "inputProtocol": {}, "outputProtocol": {},
                "IOMap": [...]}, ...],
     "graph": {"input": [{"nodeLabel": "a", "inputNames": [...]}],
               "output": [{"nodeLabel": "c", "outputNames": [...]}],
               "connections": [{"nodeLabel": "b",
                                "inputs": [{"nodeLabel": "a", "outputNames": [...]}]}]}}

The original's own documentation also spells ``graph.inputs`` / ``graph.outputs`` and
``vdagVersion["release-tag"]``; both spellings are read.

``parse`` turns JSON into a ``VDagDoc`` (one-line ``VDagError`` when it is not even a
document); ``problems`` lists everything wrong with its graph, one line per problem,
each naming the node: unknown or duplicate labels, cycles, nodes the input does not
reach or that do not reach the output, nodes that name no block or sub-vDAG.
"""

from __future__ import annotations

import json
from typing import Any

import msgspec

from ..errors import AiosFastError
from ..policy import network_safe
from .policies import BUILTINS

__all__ = [
    "NODE_TYPES",
    "Edge",
    "GraphDoc",
    "NodeDoc",
    "VDagDoc",
    "VDagError",
    "load",
    "parse",
    "problems",
    "vdag_uri",
]

NODE_TYPES = ("block", "vdag")


class VDagError(AiosFastError):
    """A vDAG document that cannot be read, checked, compiled or run (one line each)."""

    def __init__(self, message: str, lines: list[str] | None = None) -> None:
        self.lines = list(lines or [message])
        super().__init__(message)


class Edge(msgspec.Struct, forbid_unknown_fields=False):
    """One end of the graph: ``{"nodeLabel", "inputNames" | "outputNames"}``."""

    nodeLabel: str
    inputNames: list[str] = []
    outputNames: list[str] = []


class Connection(msgspec.Struct):
    nodeLabel: str
    inputs: list[Edge] = []


class GraphDoc(msgspec.Struct):
    input: list[Edge] = []
    output: list[Edge] = []
    connections: list[Connection] = []


class NodeDoc(msgspec.Struct):
    nodeLabel: str
    nodeType: str = "block"
    manualBlockId: str = ""
    vdagURI: str = ""
    assignmentPolicyRule: dict[str, Any] = {}
    preprocessingPolicyRule: dict[str, Any] = {}
    postprocessingPolicyRule: dict[str, Any] = {}
    modelParameters: dict[str, Any] = {}
    inputProtocol: dict[str, Any] = {}
    outputProtocol: dict[str, Any] = {}
    IOMap: list[Any] = []


class VDagDoc(msgspec.Struct):
    vdagName: str
    nodes: list[NodeDoc]
    graph: GraphDoc
    vdagVersion: dict[str, str] = {}
    vdagURI: str = ""
    discoveryTags: list[str] = []
    controller: dict[str, Any] = {}
    assignment_info: dict[str, Any] = {}
    status: str = "pending"
    compiled_graph_data: dict[str, Any] = {}
    metadata: dict[str, Any] = {}

    @property
    def uri(self) -> str:
        return self.vdagURI or vdag_uri(self.vdagName, self.vdagVersion)


def vdag_uri(name: str, version: dict[str, str]) -> str:
    """``name:version-releaseTag``, as the registry makes it."""
    tag = version.get("releaseTag", version.get("release-tag", ""))
    return f"{name}:{version.get('version', '')}-{tag}"


def _normalise(raw: Any) -> Any:
    """Read the original documentation's alternative spellings."""
    if not isinstance(raw, dict):
        return raw
    raw = dict(raw)
    if "vdag_name" in raw and "vdagName" not in raw:
        raw["vdagName"] = raw.pop("vdag_name")
    graph = raw.get("graph")
    if isinstance(graph, dict):
        graph = dict(graph)
        for plural, singular in (("inputs", "input"), ("outputs", "output")):
            if plural in graph and singular not in graph:
                graph[singular] = graph.pop(plural)
        raw["graph"] = graph
    version = raw.get("vdagVersion", raw.pop("vdag_version", None))
    if isinstance(version, dict):
        raw["vdagVersion"] = {k: str(v) for k, v in version.items()}
    for node in raw.get("nodes") or []:
        if isinstance(node, dict) and not node.get("nodeType"):
            node["nodeType"] = "block"  # the original: "" means a block
    return raw


def parse(raw: Any, where: str = "vDAG document") -> VDagDoc:
    """A checked ``VDagDoc`` from decoded JSON; VDagError (one line) when it is not one."""
    if not isinstance(raw, dict):
        raise VDagError(f"{where}: must be a JSON object")
    try:
        return msgspec.convert(_normalise(raw), VDagDoc)
    except msgspec.ValidationError as exc:
        raise VDagError(f"{where}: {exc}") from None


def load(path: str) -> VDagDoc:
    """Read and parse a vDAG document file."""
    try:
        with open(path, "rb") as f:
            raw = json.loads(f.read())
    except OSError as exc:
        raise VDagError(f"cannot read vDAG document: {exc}") from None
    except ValueError as exc:
        raise VDagError(f"vDAG document {path}: not JSON ({exc})") from None
    return parse(raw, f"vDAG document {path}")


def edges(doc: VDagDoc) -> dict[str, list[str]]:
    """label -> the labels it feeds (in the document's order, each once)."""
    out: dict[str, list[str]] = {n.nodeLabel: [] for n in doc.nodes}
    for conn in doc.graph.connections:
        for src in conn.inputs:
            targets = out.setdefault(src.nodeLabel, [])
            if conn.nodeLabel not in targets:
                targets.append(conn.nodeLabel)
    return out


def _cycle(succ: dict[str, list[str]]) -> list[str] | None:
    """One cycle (its labels, first repeated at the end), or None."""
    state: dict[str, int] = {}  # 1: on the stack, 2: done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in succ.get(node, ()):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in succ:
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def _reach(start: list[str], succ: dict[str, list[str]]) -> set[str]:
    seen = set(start)
    todo = list(start)
    while todo:
        for nxt in succ.get(todo.pop(), ()):
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def problems(doc: VDagDoc) -> list[str]:
    """Everything wrong with the document's nodes and graph: one line each, naming the
    node ("node 'x': ..."), or "graph: ..." for the graph as a whole."""
    out: list[str] = []
    labels: dict[str, int] = {}
    for i, node in enumerate(doc.nodes):
        label = node.nodeLabel
        if not label:
            out.append(f"nodes[{i}]: empty nodeLabel")
            continue
        if label in labels:
            out.append(f"node {label!r}: duplicate nodeLabel (nodes[{labels[label]}] "
                       f"and nodes[{i}])")  # fmt: skip
            continue
        labels[label] = i
        if "/" in label:
            out.append(f"node {label!r}: '/' is reserved for nested vDAG labels")
        if node.nodeType not in NODE_TYPES:
            out.append(f"node {label!r}: nodeType {node.nodeType!r} is not 'block' or 'vdag'")
        elif node.nodeType == "vdag" and not node.vdagURI:
            out.append(f"node {label!r}: nodeType 'vdag' needs a vdagURI")
        elif node.nodeType == "block" and not node.manualBlockId:
            rule = node.assignmentPolicyRule
            if not rule:
                out.append(f"node {label!r}: names no block (manualBlockId) and has no "
                           "assignmentPolicyRule")  # fmt: skip
        for name in ("preprocessingPolicyRule", "postprocessingPolicyRule"):
            rule = getattr(node, name)
            if rule and not isinstance(rule.get("policyRuleURI"), str):
                out.append(f"node {label!r}: {name} needs a policyRuleURI string")
            elif rule and rule["policyRuleURI"].startswith("builtin:") \
                    and rule["policyRuleURI"] not in BUILTINS:  # fmt: skip
                out.append(f"node {label!r}: {name} {rule['policyRuleURI']!r} is not a "
                           f"built-in ({', '.join(BUILTINS)})")  # fmt: skip
            elif rule and network_safe(rule["policyRuleURI"]):
                out.append(f"node {label!r}: {name} {rule['policyRuleURI']!r} must be "
                           "builtin:<name> or <name>:<version> under AIOS_POLICY_PATH "
                           "(instances load no code a task names by path)")  # fmt: skip
    if not doc.nodes:
        out.append("graph: the vDAG has no nodes")
    graph = doc.graph

    def known(label: str, where: str) -> bool:
        if label in labels:
            return True
        out.append(f"node {label!r}: named in {where} but not defined in nodes")
        return False

    inputs = [e.nodeLabel for e in graph.input if known(e.nodeLabel, "graph.input")]
    outputs = [e.nodeLabel for e in graph.output if known(e.nodeLabel, "graph.output")]
    targets: set[str] = set()
    for conn in graph.connections:
        if not known(conn.nodeLabel, "graph.connections"):
            continue
        if conn.nodeLabel in targets:
            out.append(f"node {conn.nodeLabel!r}: has two entries in graph.connections")
        targets.add(conn.nodeLabel)
        if not conn.inputs:
            out.append(f"node {conn.nodeLabel!r}: a connection with no inputs")
        for edge in conn.inputs:
            known(edge.nodeLabel, f"the inputs of {conn.nodeLabel!r}")
            if edge.nodeLabel == conn.nodeLabel:
                out.append(f"node {edge.nodeLabel!r}: connected to itself")
    for label in inputs:
        if label in targets:
            out.append(f"node {label!r}: a graph input that also has inputs in connections")
    if doc.nodes and not graph.input:
        out.append("graph: no input node (graph.input is empty)")
    if doc.nodes and not graph.output:
        out.append("graph: no output node (graph.output is empty)")
    if len(set(outputs)) > 1:
        names = ", ".join(sorted(set(outputs)))
        out.append(f"graph: {len(set(outputs))} output nodes ({names}); a vDAG answers "
                   "with one output node (join them with a fan-in node)")  # fmt: skip
    succ = {k: [t for t in v if t in labels] for k, v in edges(doc).items() if k in labels}
    loop = _cycle(succ)
    if loop:
        out.append(f"node {loop[0]!r}: in a cycle {' -> '.join(loop)}")
        return out  # reachability means little in a cyclic graph
    if inputs and outputs:
        from_input = _reach(inputs, succ)
        pred: dict[str, list[str]] = {k: [] for k in succ}
        for head, tails in succ.items():
            for tail in tails:
                pred[tail].append(head)
        to_output = _reach(outputs, pred)
        for label in labels:
            if label not in from_input:
                out.append(f"node {label!r}: not reachable from the graph's input")
            elif label not in to_output:
                out.append(f"node {label!r}: does not reach the graph's output")
    return out
