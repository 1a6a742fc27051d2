"""Compiling a vDAG document into an execution plan.

- Each ``block`` node gets its block: ``manualBlockId`` (which must be one of the known
  blocks), else its ``assignmentPolicyRule`` evaluated once over the candidate block
  documents: ``parameters.filterRule`` (the seeds' ``{"matchType": "block", "filter":
  {"blockQuery": COND, "clusterQuery": COND}}``, or a bare condition, see
  ``aios_fast.vdag.filters``; ``clusterQuery`` is matched against each block's
  ``cluster``) narrows them, then a ``policyRuleURI`` other than ``builtin:filter`` (an
  ``AIOSv1PolicyRule``, loaded as every policy is) gets the remaining block documents and
  returns the chosen one(s). Exactly one block must be left, as in the original.
- Each ``vdag`` node is replaced by the nodes of its sub-vDAG, labelled
  ``outer/inner``: edges into the node go to the sub-vDAG's input nodes, edges out of
  it leave from its output node. Nesting is limited (``max_depth``) and a vDAG that
  contains itself, directly or not, is refused.
- Each node is resolved to its block's gRPC endpoint (``endpoints``, else
  ``127.0.0.1:<initSettings.ports.grpc>`` as ``block up`` serves it).
- A fan-in node (several inputs) joins a task's inputs in the memory of the instance
  that takes them, so they must all reach one instance: its block may run only one
  (``maxInstances``, else ``minInstances``, at most 1) or places by session
  (``policies.loadBalancer`` ``builtin:consistent_hash``: a task's packets share its
  session_id); any other block is refused, one line naming the node (its executor
  would spread the inputs over its instances and the join would wait for what went
  elsewhere).

The result is a ``Plan``; ``compile_vdag`` also records, as the original did, the
assignments in the document's ``assignment_info`` (label -> block id, ``vdag:::URI``
for a sub-vDAG node), the compiled graph in ``compiled_graph_data`` (``head``,
``tail``, ``t2_graph`` block -> next blocks, ``rev_mapping`` block -> label, and
``plan``, the plan itself) and ``status`` ("assigned", or "failed" with every problem
raised as one ``VDagError``, one line each naming the node).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgspec

from ..errors import AiosFastError
from ..policy import PolicyRule
from .document import VDagDoc, VDagError, edges, parse, problems
from .filters import FilterError, compile_condition

__all__ = ["MAX_DEPTH", "Plan", "PlanNode", "assign", "compile_vdag", "endpoint_of",
           "fan_in_problems"]  # fmt: skip

MAX_DEPTH = 8
# load balancers that place a task's packets by its session_id (a fan-in's inputs meet)
BY_SESSION = ("builtin:consistent_hash", "builtin:ring_hash")


class PlanNode(msgspec.Struct):
    """One node of the flattened graph, resolved to a block."""

    label: str  # "a", or "outer/inner" for a node of a sub-vDAG
    block_id: str
    endpoint: str  # host:port of the block's gRPC inference API
    next: list[str] = []  # the nodes it feeds
    inputs: list[str] = []  # the nodes that feed it (fan-in when more than one)
    input_names: dict[str, str] = {}  # input node -> its key in a fan-in's joined data
    preprocessing: dict[str, Any] = {}  # policy rules, {} when none
    postprocessing: dict[str, Any] = {}
    model_parameters: dict[str, Any] = {}
    io_map: list[Any] = []


class Plan(msgspec.Struct):
    vdag_uri: str
    input: list[str]  # the nodes a task enters at
    output: str  # the node whose output answers the task
    nodes: dict[str, PlanNode]
    # seconds a fan-in node waits for a task's inputs (0: as long as the task has left);
    # controller.initSettings.joinTimeoutSeconds
    join_timeout: float = 0.0

    def to_dict(self) -> dict:
        return msgspec.to_builtins(self)

    @classmethod
    def from_dict(cls, data: Any) -> Plan:
        try:
            return msgspec.convert(data, cls)
        except msgspec.ValidationError as exc:
            raise VDagError(f"not a vDAG plan: {exc}") from None


def endpoint_of(block: Mapping[str, Any], endpoints: Mapping[str, str] | None = None) -> str:
    """Where a block's executor serves gRPC."""
    if endpoints and block.get("id") in endpoints:
        return endpoints[block["id"]]
    ports = (block.get("initSettings") or {}).get("ports") or {}
    return f"127.0.0.1:{ports.get('grpc', 50051)}"


def _chosen_ids(result: Any) -> list[str]:
    """An assignment policy's answer: a block document or id, or a list of them."""
    if isinstance(result, (str, dict)):
        result = [result]
    if not isinstance(result, list):
        raise AiosFastError(f"returned {type(result).__name__}, not a block list")
    ids = []
    for item in result:
        if isinstance(item, dict) and isinstance(item.get("id"), str):
            ids.append(item["id"])
        elif isinstance(item, str):
            ids.append(item)
        else:
            raise AiosFastError(f"returned {item!r}, not a block document or id")
    return ids


def assign(label: str, rule: Mapping[str, Any], blocks: list[dict]) -> str:
    """The block id an assignmentPolicyRule picks for node ``label`` among ``blocks``;
    VDagError (one line naming the node) when it picks none, several or fails."""
    params = rule.get("parameters") or {}
    candidates = list(blocks)
    filter_rule = params.get("filterRule")
    try:
        if filter_rule:
            if not isinstance(filter_rule, dict):
                raise FilterError("filterRule must be an object")
            query = filter_rule.get("filter", filter_rule)
            block_q = query.get("blockQuery")
            cluster_q = query.get("clusterQuery")
            if block_q is None and cluster_q is None:
                block_q = query  # a bare condition over block documents
            if block_q is not None:
                match = compile_condition(block_q, "blockQuery")
                candidates = [b for b in candidates if match(b)]
            if cluster_q is not None:
                match = compile_condition(cluster_q, "clusterQuery")
                candidates = [b for b in candidates if match(b.get("cluster") or {})]
    except FilterError as exc:
        raise VDagError(f"node {label!r}: assignmentPolicyRule: {exc}") from None
    uri = rule.get("policyRuleURI") or "builtin:filter"
    ids = [b["id"] for b in candidates]
    if uri != "builtin:filter":
        try:
            policy = PolicyRule(uri, parameters=params, settings=rule.get("settings") or {})
            ids = _chosen_ids(policy.eval(candidates))
        except Exception as exc:  # the user's policy: name it, one line
            raise VDagError(f"node {label!r}: assignment policy {uri!r} failed: {exc}") from None
        unknown = [i for i in ids if i not in {b["id"] for b in blocks}]
        if unknown:
            raise VDagError(f"node {label!r}: assignment policy {uri!r} chose unknown "
                            f"block {unknown[0]!r}")  # fmt: skip
    if not ids:
        raise VDagError(f"node {label!r}: assignment found no block ({len(blocks)} "
                        f"candidates, {len(candidates)} passed the filter)")  # fmt: skip
    if len(set(ids)) > 1:
        shown = ", ".join(sorted(set(ids))[:5])
        raise VDagError(f"node {label!r}: assignment matched {len(set(ids))} blocks ({shown}); "
                        "it must choose one (narrow the filter or add a policy)")  # fmt: skip
    return ids[0]


def _input_names(io_map: list[Any]) -> dict[str, str]:
    """IOMap entries ``{"nodeLabel": <input node>, "inputName": <key>}``: the keys a
    fan-in node's joined data uses (default: the input node's label)."""
    return {
        m["nodeLabel"]: m["inputName"]
        for m in io_map
        if isinstance(m, dict)
        and isinstance(m.get("nodeLabel"), str)
        and isinstance(m.get("inputName"), str)
    }


class _Compiler:
    def __init__(self, blocks: list[dict], vdags: Mapping[str, Any],
                 endpoints: Mapping[str, str] | None, max_depth: int) -> None:  # fmt: skip
        self.blocks = {b["id"]: b for b in blocks if isinstance(b.get("id"), str)}
        self.vdags = vdags
        self.endpoints = endpoints
        self.max_depth = max_depth
        self.lines: list[str] = []
        self.nodes: dict[str, PlanNode] = {}
        self.assignment: dict[str, str] = {}

    def sub_doc(self, uri: str) -> VDagDoc | None:
        found = self.vdags.get(uri)
        if found is None:
            return None
        return found if isinstance(found, VDagDoc) else parse(found, f"sub-vDAG {uri}")

    def expand(self, doc: VDagDoc, prefix: str, stack: tuple[str, ...]) -> tuple[list[str], str]:
        """Add doc's nodes (labels prefixed); returns its (entry labels, exit label).
        Problems go to self.lines."""
        for line in problems(doc):
            if prefix and line.startswith("graph:"):
                line = f"node {prefix[:-1]!r}: sub-vDAG {line}"
            elif prefix:
                line = line.replace("node '", f"node '{prefix}", 1)
            self.lines.append(line)
        if self.lines:
            return [], ""
        entries: dict[str, list[str]] = {}
        exits: dict[str, str] = {}
        for node in doc.nodes:
            label = prefix + node.nodeLabel
            if node.nodeType == "vdag":
                if node.preprocessingPolicyRule or node.postprocessingPolicyRule:
                    self.lines.append(f"node {label!r}: pre/postprocessing policies go on the "
                                      "sub-vDAG's own nodes, not on a vdag node")  # fmt: skip
                sub = self.sub_doc(node.vdagURI)
                if sub is None:
                    self.lines.append(f"node {label!r}: sub-vDAG {node.vdagURI!r} not found")
                    continue
                if node.vdagURI in stack:
                    chain = " -> ".join((*stack, node.vdagURI))
                    self.lines.append(f"node {label!r}: vDAG cycle {chain}")
                    continue
                if len(stack) >= self.max_depth:
                    self.lines.append(f"node {label!r}: vDAGs nested deeper than "
                                      f"{self.max_depth}")  # fmt: skip
                    continue
                self.assignment[label] = f"vdag:::{node.vdagURI}"
                ins, out = self.expand(sub, label + "/", (*stack, node.vdagURI))
                entries[node.nodeLabel], exits[node.nodeLabel] = ins, out
                continue
            block_id = node.manualBlockId
            if block_id:
                if block_id not in self.blocks:
                    self.lines.append(f"node {label!r}: block {block_id!r} not found")
                    continue
            else:
                try:
                    block_id = assign(label, node.assignmentPolicyRule, list(self.blocks.values()))
                except VDagError as exc:
                    self.lines.append(str(exc))
                    continue
            self.assignment[label] = block_id
            self.nodes[label] = PlanNode(
                label=label,
                block_id=block_id,
                endpoint=endpoint_of(self.blocks[block_id], self.endpoints),
                preprocessing=dict(node.preprocessingPolicyRule),
                postprocessing=dict(node.postprocessingPolicyRule),
                model_parameters=dict(node.modelParameters),
                io_map=list(node.IOMap),
            )
            entries[node.nodeLabel], exits[node.nodeLabel] = [label], label
        if self.lines:
            return [], ""
        names = {n.nodeLabel: _input_names(n.IOMap) for n in doc.nodes}
        for src, dsts in edges(doc).items():
            for dst in dsts:
                for entry in entries[dst]:
                    exit_ = exits[src]
                    if entry not in self.nodes[exit_].next:
                        self.nodes[exit_].next.append(entry)
                        self.nodes[entry].inputs.append(exit_)
                        self.nodes[entry].input_names[exit_] = names[dst].get(src, src)
        ins = [e for edge in doc.graph.input for e in entries[edge.nodeLabel]]
        ins = list(dict.fromkeys(ins))
        return ins, exits[doc.graph.output[0].nodeLabel]


def instances_of(block: Mapping[str, Any]) -> int:
    """How many instances a block document lets its block run (at most)."""
    most = block.get("maxInstances")
    if most is None:
        most = block.get("minInstances", 1)
    return most if isinstance(most, int) and not isinstance(most, bool) else 1


def fan_in_problems(nodes: Mapping[str, PlanNode], blocks: Mapping[str, Any]) -> list[str]:
    """One line per fan-in node whose block may run more than one instance."""
    lines = []
    for label, node in nodes.items():
        block = blocks.get(node.block_id)
        if len(node.inputs) < 2 or not isinstance(block, Mapping) or instances_of(block) < 2:
            continue
        balancer = (block.get("policies") or {}).get("loadBalancer") or {}
        if isinstance(balancer, Mapping) and balancer.get("policyRuleURI") in BY_SESSION:
            continue
        lines.append(f"node {label!r}: a fan-in node joins its inputs in one instance, but "
                     f"block {node.block_id!r} may run {instances_of(block)} (maxInstances): "
                     "give it maxInstances 1 or the builtin:consistent_hash "
                     "loadBalancer")  # fmt: skip
    return lines


def compile_vdag(
    doc: VDagDoc,
    blocks: list[dict],
    vdags: Mapping[str, Any] | None = None,
    endpoints: Mapping[str, str] | None = None,
    max_depth: int = MAX_DEPTH,
) -> Plan:
    """The execution plan of ``doc`` over the block documents ``blocks`` and the
    sub-vDAGs ``vdags`` (URI -> document); records it in the document (see the module
    docstring). Every problem found is raised together as one VDagError."""
    compiler = _Compiler(blocks, vdags or {}, endpoints, max_depth)
    entries, exit_ = compiler.expand(doc, "", (doc.uri,))
    compiler.lines += fan_in_problems(compiler.nodes, compiler.blocks)
    if compiler.lines:
        doc.status = "failed"
        raise VDagError(compiler.lines[0], compiler.lines)
    join_timeout = (doc.controller.get("initSettings") or {}).get("joinTimeoutSeconds", 0.0)
    if isinstance(join_timeout, bool) or not isinstance(join_timeout, (int, float)) \
            or join_timeout < 0:  # fmt: skip
        doc.status = "failed"
        raise VDagError("controller.initSettings.joinTimeoutSeconds must be a number >= 0")
    plan = Plan(vdag_uri=doc.uri, input=entries, output=exit_, nodes=compiler.nodes,
                join_timeout=float(join_timeout))  # fmt: skip
    top = {label: v for label, v in compiler.assignment.items() if "/" not in label}
    doc.assignment_info = {**top, **compiler.assignment}
    t2: dict[str, list[str]] = {}
    for node in plan.nodes.values():
        nxt = t2.setdefault(node.block_id, [])
        for label in node.next:
            if plan.nodes[label].block_id not in nxt:
                nxt.append(plan.nodes[label].block_id)
    doc.compiled_graph_data = {
        "head": plan.nodes[entries[0]].block_id,
        "tail": [plan.nodes[exit_].block_id],
        "t2_graph": t2,
        "rev_mapping": {n.block_id: n.label for n in plan.nodes.values()},
        "plan": plan.to_dict(),
    }
    doc.status = "assigned"
    return plan
