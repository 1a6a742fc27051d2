"""How a vDAG task travels block to block.

The plan travels with the task, in the packet's ``output_ptr`` (the original's graph
form, ``{"is_graph": true, ...}``): a ``Ticket`` says which task it is (``task``), where
its controller waits (``reply``, host:port), which node this packet is for (``node``),
who sent it (``sender``), how many seconds are left (``ttl``, 0: no deadline) and
carries the compiled plan (``plan``, cached by ``plan_id`` in each instance, so it is
decoded once per instance, not per hop).

``NodeRunner.start(packet, run_block)`` is what an instance does with such a packet (it
answers the sender at once and runs the node detached, so a cancel can stop it):

1. a fan-in node (several inputs) joins the task's packets by (task, node) until every
   input arrived (or a timeout, the time the task has left or the plan's
   ``join_timeout`` if shorter: DEADLINE_EXCEEDED naming the node and what is
   missing; at most ``max_joins`` tasks and ``max_join_bytes`` wait, beyond that the
   task fails RESOURCE_EXHAUSTED) and hands the block one packet whose data is a JSON
   object: input name (IOMap, else the producer's label) -> that producer's output
   (its JSON value, or its data as a string), files concatenated;
2. the node's pre-processing policy (``eval(parameters, {"packet": packet}, context)``
   -> a packet, or None for unchanged), the Block, then the post-processing policy
   (``{"packet": the output, "input": the packet the block ran on, "node", "next"}``
   -> a packet, None for unchanged, or ``{"packet":
   ..., "next": [labels]}`` to fire only those outgoing edges: conditional routing);
3. the output goes to every next node's block at once (a message on the
   ``InferenceProxy/infer_stream`` kept open per next block, ``streams.HopStreams``;
   the block's own API); an edge that does not fire carries a *skip* packet instead, so a
   fan-in node downstream knows not to wait for it (a node whose inputs all skipped
   is skipped too, its block not run); the output node's packet goes to the controller.

A node that fails (its block or a policy raising, a deadline passing, a next block
unreachable) sends the controller a failure report (a ticket with ``code``, the gRPC
status name, and the message in the packet's data): the task ends there, named by its
node. Policies are loaded only from names an instance may load from a network request
(``builtin:*`` or ``name:version`` under ``AIOS_POLICY_PATH``, see ``aios_fast.policy``).
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec

from .. import codec
from ..errors import AiosFastError, TaskExpired, TaskTimedOut
from ..policy import PolicyRule, network_safe
from .compile import Plan, PlanNode
from .policies import BUILTINS

__all__ = [
    "BATCH_PTR",
    "CANCEL_PTR",
    "TICKET_PREFIX",
    "HopError",
    "NodeRunner",
    "Ticket",
    "decode_ticket",
    "encode_ticket",
    "is_ticket",
]

log = logging.getLogger("aios_fast.vdag")

TICKET_PREFIX = '{"is_graph":true'
# a controller's message on an instance's answer stream: the task (in data) it gave up on
CANCEL_PTR = "vdag-cancel"
# an instance's message to a controller carrying several answers (each a serialized
# AIOSPacket in a file's file_data): what was queued in one loop turn, one write
BATCH_PTR = "vdag-batch"
MAX_CANCELLED = 100_000  # cancelled task ids an instance remembers (oldest first out)


class Ticket(msgspec.Struct, omit_defaults=True):
    """The graph-form output_ptr of a vDAG packet (``is_graph`` first: see is_ticket)."""

    is_graph: bool
    task: str
    reply: str
    node: str
    plan_id: str
    plan: msgspec.Raw
    sender: str = ""
    skip: bool = False
    ttl: float = 0.0
    code: str = ""  # a failure report: the gRPC status name (the message is the data)
    spans: list[tuple[str, float]] = []  # (node, seconds it ran) along the way


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(Ticket)
_plan_decoder = msgspec.json.Decoder(Plan)


def is_ticket(output_ptr: str) -> bool:
    return output_ptr.startswith(TICKET_PREFIX)


def encode_ticket(ticket: Ticket) -> str:
    return _encoder.encode(ticket).decode()


def decode_ticket(output_ptr: str) -> Ticket:
    try:
        return _decoder.decode(output_ptr)
    except msgspec.DecodeError as exc:
        raise AiosFastError(f"bad vDAG ticket in output_ptr: {exc}") from None


class HopError(AiosFastError):
    """Sending a packet to the next block (or the controller) failed; ``code`` is the
    gRPC status name (UNAVAILABLE when nothing answered)."""

    def __init__(self, code: str, message: str) -> None:
        self.code = code
        super().__init__(message)


# send(target, block_id, payload, key, (session, seq), timeout, on_fail): queue a hop
# (``streams.HopStreams.send``); on_fail(code, message) at most once if it does not arrive
Send = Callable[
    [str, str, bytes, str, tuple[str, int], float | None, Callable[[str, str], None]], None
]
# reply(controller, payload): queue an answer or a failure report to a task's controller
Reply = Callable[[str, bytes], None]
RunBlock = Callable[[Any, float | None], Awaitable[Any]]


class _Join:
    __slots__ = ("first", "nbytes", "parts", "spans", "timer")

    def __init__(self, first: Ticket) -> None:
        self.first = first
        self.parts: dict[str, tuple[Any, bool]] = {}
        self.spans: dict[str, float] = dict(first.spans)
        self.nbytes = 0
        self.timer: asyncio.TimerHandle | None = None


class NodeRunner:
    """Runs the vDAG node a packet's ticket names, in one instance (see module doc).

    ``send`` queues a hop to a next block (``Send``), ``reply`` an answer or a failure
    report to a task's controller (``Reply``); neither waits. ``start`` takes a packet
    and runs its node detached (the packet's sender is answered when it is taken), so
    ``cancel`` can stop a task's running nodes."""

    def __init__(self, send: Send, reply: Reply, *, join_timeout: float = 30.0,
                 max_joins: int = 10_000, max_join_bytes: int = 256 << 20,
                 max_plans: int = 64,
                 watch: Callable[[str], None] | None = None) -> None:  # fmt: skip
        self.send = send
        self.reply = reply
        self.watch = watch  # called with each task's controller (keeps a stream to it)
        self._cancelled: OrderedDict[str, None] = OrderedDict()
        self.join_timeout = join_timeout
        self.max_joins = max_joins
        self.max_join_bytes = max_join_bytes
        self.max_plans = max_plans
        self._plans: OrderedDict[str, Plan] = OrderedDict()
        self._policies: dict[tuple[str, str, str], PolicyRule | None] = {}
        self._joins: dict[tuple[str, str], _Join] = {}
        self.join_bytes = 0
        self._running: dict[str, set[asyncio.Task]] = {}  # task -> its nodes running here
        # counters (the instance's /stats)
        self.ran = self.skipped = self.joined = self.failed = self.lost_reports = 0
        self.dropped = 0  # packets of cancelled tasks not run or not passed on
        self.stopped = 0  # nodes running when their task was cancelled: stopped, dropped

    # ------------------------------------------------------------------ plans, policies

    def plan(self, ticket: Ticket) -> Plan:
        plan = self._plans.get(ticket.plan_id)
        if plan is None:
            try:
                plan = _plan_decoder.decode(ticket.plan)
            except msgspec.DecodeError as exc:
                raise AiosFastError(f"bad vDAG plan in the ticket: {exc}") from None
            self._plans[ticket.plan_id] = plan
            if len(self._plans) > self.max_plans:
                old, _ = self._plans.popitem(last=False)
                self._policies = {k: v for k, v in self._policies.items() if k[0] != old}
        else:
            self._plans.move_to_end(ticket.plan_id)
        return plan

    def policy(self, plan_id: str, plan: Plan, node: PlanNode, kind: str) -> PolicyRule | None:
        key = (plan_id, node.label, kind)
        if key in self._policies:
            return self._policies[key]
        rule = node.preprocessing if kind == "pre" else node.postprocessing
        policy = None
        if rule:
            uri = rule.get("policyRuleURI", "")
            why = network_safe(uri)
            if why:
                raise AiosFastError(why)
            settings = {**(rule.get("settings") or {}), "vdag": plan.vdag_uri,
                        "node_label": node.label, "block_id": node.block_id}  # fmt: skip
            cls = BUILTINS.get(uri)
            if uri.startswith("builtin:") and cls is None:
                raise AiosFastError(f"unknown built-in vDAG policy {uri!r} (built-ins: "
                                    f"{', '.join(BUILTINS)})")  # fmt: skip
            policy = PolicyRule(cls or uri, rule_id=uri, parameters=rule.get("parameters") or {},
                                settings=settings)  # fmt: skip
        self._policies[key] = policy
        return policy

    # ------------------------------------------------------------------ running a node

    def start(self, packet: Any, run_block: RunBlock) -> Ticket | None:
        """Take a packet: its node runs detached (``run``); the packet's ticket, or None
        when its task was cancelled here (the packet is dropped)."""
        ticket = decode_ticket(packet.output_ptr)
        if self.watch is not None and ticket.reply:
            self.watch(ticket.reply)
        if ticket.task in self._cancelled:
            self.dropped += 1
            return None
        task = asyncio.ensure_future(self.run(ticket, packet, run_block))
        running = self._running.get(ticket.task)
        if running is None:
            running = self._running[ticket.task] = set()
        running.add(task)
        task.add_done_callback(functools.partial(self._ran, ticket.task))
        return ticket

    def nodes_running(self) -> int:
        return sum(len(runs) for runs in self._running.values())

    def _ran(self, key: str, task: asyncio.Task) -> None:
        running = self._running.get(key)
        if running is not None:
            running.discard(task)
            if not running:
                del self._running[key]
        if not task.cancelled() and task.exception() is not None:
            log.error("vDAG node run failed: %r", task.exception())

    async def run(self, ticket: Ticket, packet: Any, run_block: RunBlock) -> None:
        """Run the node ``ticket`` names, then pass the task on. Never raises for the
        task's own failures: they are reported to its controller. A cancelled task's
        run stops here (its block's asyncio task is cancelled; a sync block's thread
        finishes, its output dropped) and counts in ``stopped``."""
        try:
            await self._run(ticket, packet, run_block)
        except asyncio.CancelledError:
            if ticket.task not in self._cancelled:
                raise
            self.stopped += 1

    async def _run(self, ticket: Ticket, packet: Any, run_block: RunBlock) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + ticket.ttl if ticket.ttl > 0 else None
        label = ticket.node
        try:
            plan = self.plan(ticket)
            node = plan.nodes.get(label)
            if node is None:
                raise AiosFastError(f"the plan has no node {label!r}")
        except AiosFastError as exc:
            self.report(ticket, packet, "INVALID_ARGUMENT", str(exc))
            return
        if deadline is not None and deadline <= loop.time():
            self.report(ticket, packet, "DEADLINE_EXCEEDED",
                        f"node {label!r}: the task's deadline passed before it ran")  # fmt: skip
            return
        skip = ticket.skip
        if len(node.inputs) > 1:
            joined = self._join(ticket, packet, node, deadline, plan.join_timeout)
            if joined is None:
                return
            packet, skip, ticket = joined
        if skip:
            self.skipped += 1
            self.forward(ticket, plan, node, packet, [], deadline, skipped=True)
            return
        t0 = loop.time()
        try:
            pre = self.policy(ticket.plan_id, plan, node, "pre")
            if pre is not None:
                packet = _packet(pre.eval({"packet": packet}), packet, "preprocessing")
            out = await run_block(packet.replace(output_ptr=""), deadline)
            fire = list(node.next)
            post = self.policy(ticket.plan_id, plan, node, "post")
            if out is not None and post is not None:
                # the policy sees labels as its own vDAG document writes them
                local = _local_labels(node)
                answer = post.eval({"packet": out, "input": packet,
                                    "node": node.label.rpartition("/")[2],
                                    "next": list(local)})  # fmt: skip
                if isinstance(answer, dict):
                    if "next" in answer:
                        fire = [local[x] for x in _labels(answer["next"], list(local))]
                    answer = answer.get("packet")
                out = _packet(answer, out, "postprocessing")
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            code = "DEADLINE_EXCEEDED" if isinstance(exc, (TaskExpired, TaskTimedOut)) \
                else "INTERNAL"  # fmt: skip
            self.report(ticket, packet, code, f"node {label!r}: {type(exc).__name__}: {exc}")
            return
        self.ran += 1
        ticket = msgspec.structs.replace(
            ticket, spans=[*ticket.spans, (node.label, loop.time() - t0)]
        )
        if out is None:  # the block answered nothing: the task goes on as skipped
            self.forward(ticket, plan, node, packet, [], deadline, skipped=True)
            return
        self.forward(ticket, plan, node, out, fire, deadline)

    def cancel(self, task: str) -> None:
        """The controller gave up on ``task``: its packets here are not run nor passed
        on from now on, and its nodes running here are stopped (an async block's run is
        cancelled; a sync block's thread cannot be: it finishes, its output dropped)."""
        self._cancelled[task] = None
        if len(self._cancelled) > MAX_CANCELLED:
            self._cancelled.popitem(last=False)
        for key in [k for k in self._joins if k[0] == task]:
            self._drop(key)
            self.dropped += 1
        for run in self._running.pop(task, ()):
            run.cancel()

    def forward(self, ticket: Ticket, plan: Plan, node: PlanNode, out: Any,
                fire: list[str], deadline: float | None,
                skipped: bool = False) -> None:  # fmt: skip
        """``out`` to every next node (a skip packet on edges not in ``fire``), and to the
        controller from the output node (``skipped``: the task took no path through it)."""
        if ticket.task in self._cancelled:
            self.dropped += 1
            return
        ttl = 0.0
        if deadline is not None:
            ttl = deadline - asyncio.get_running_loop().time()
            if ttl <= 0:
                self.report(ticket, out, "DEADLINE_EXCEEDED",
                            f"node {node.label!r}: the task's deadline passed")  # fmt: skip
                return
        skip_packet = None
        session = (out.session_id, out.seq_no)
        for label in node.next:
            nxt = plan.nodes[label]
            skip = label not in fire
            if skip and skip_packet is None:
                skip_packet = codec.Packet(session_id=out.session_id, seq_no=out.seq_no)
            t = msgspec.structs.replace(ticket, node=label, sender=node.label, skip=skip,
                                        ttl=ttl, code="")  # fmt: skip
            src: Any = skip_packet if skip else out
            body = codec.encode_packet(src.replace(output_ptr=encode_ticket(t)))
            self.send(nxt.endpoint, nxt.block_id, body, f"{ticket.task} {label}", session,
                      ttl or None, self._hop_failed(ticket, out, nxt))  # fmt: skip
        if node.label == plan.output:
            t = msgspec.structs.replace(ticket, node=node.label, sender=node.label, ttl=ttl,
                                        skip=skipped, code="")  # fmt: skip
            self.reply(ticket.reply, codec.encode_packet(out.replace(output_ptr=encode_ticket(t))))

    def _hop_failed(self, ticket: Ticket, out: Any, nxt: PlanNode) -> Callable[[str, str], None]:
        def failed(code: str, message: str) -> None:
            what = {"UNAVAILABLE": "is unavailable",
                    "DEADLINE_EXCEEDED": "did not take the task in time"}.get(
                code, "refused the task")  # fmt: skip
            report = msgspec.structs.replace(ticket, node=nxt.label)
            self.report(report, out, code, f"node {nxt.label!r} (block {nxt.block_id!r} at "
                                           f"{nxt.endpoint}) {what}: {message}")  # fmt: skip

        return failed

    def report(self, ticket: Ticket, packet: Any, code: str, message: str) -> None:
        """Tell the task's controller that it failed at ``ticket.node``."""
        if ticket.task in self._cancelled:
            self.dropped += 1  # the controller ended it already
            return
        self.failed += 1
        t = msgspec.structs.replace(ticket, code=code, skip=False)
        body = codec.Packet(session_id=packet.session_id, seq_no=packet.seq_no, data=message,
                            output_ptr=encode_ticket(t))  # fmt: skip
        self.reply(ticket.reply, codec.encode_packet(body))

    # ------------------------------------------------------------------ fan-in

    def _join(self, ticket: Ticket, packet: Any, node: PlanNode, deadline: float | None,
              limit: float = 0.0):  # fmt: skip
        """(joined packet, all skipped, first ticket) once every input arrived, else None."""
        key = (ticket.task, node.label)
        join = self._joins.get(key)
        size = len(packet.data) + sum(len(f.file_data) for f in packet.files)
        if join is None:
            if len(self._joins) >= self.max_joins or self.join_bytes + size > self.max_join_bytes:
                self.report(ticket, packet, "RESOURCE_EXHAUSTED",
                            f"node {node.label!r}: too many fan-in joins waiting "
                            f"({len(self._joins)}, {self.join_bytes:,} bytes)")  # fmt: skip
                return None
            join = self._joins[key] = _Join(ticket)
            loop = asyncio.get_running_loop()
            wait = self.join_timeout if deadline is None else max(deadline - loop.time(), 0.0)
            if limit > 0:
                wait = min(wait, limit)
            join.timer = loop.call_later(wait, self._expire, key, node, wait)
        elif self.join_bytes + size > self.max_join_bytes:
            self._drop(key)
            self.report(ticket, packet, "RESOURCE_EXHAUSTED",
                        f"node {node.label!r}: fan-in inputs over "
                        f"{self.max_join_bytes:,} bytes")  # fmt: skip
            return None
        if ticket.sender in join.parts or ticket.sender not in node.inputs:
            log.warning("vDAG task %s: node %r got an unexpected input from %r", ticket.task,
                        node.label, ticket.sender)  # fmt: skip
            return None
        join.parts[ticket.sender] = (packet, ticket.skip)
        join.spans.update(ticket.spans)
        join.nbytes += size
        self.join_bytes += size
        if len(join.parts) < len(node.inputs):
            return None
        self._drop(key)
        self.joined += 1
        present = [(s, p) for s, (p, skipped) in join.parts.items() if not skipped]
        first = msgspec.structs.replace(join.first, spans=list(join.spans.items()))
        if not present:
            return packet, True, first
        data = {}
        files = []
        for sender in node.inputs:
            for s, p in present:
                if s == sender:
                    data[node.input_names.get(s, s)] = _value(p.data)
                    files += p.files
        base = present[0][1]
        merged = codec.Packet(session_id=base.session_id, seq_no=base.seq_no, ts=base.ts,
                              frame_ptr=bytes(base.frame_ptr), data=json.dumps(data),
                              files=files, output_ptr=base.output_ptr)  # fmt: skip
        return merged, False, first

    def _drop(self, key: tuple[str, str]) -> _Join | None:
        join = self._joins.pop(key, None)
        if join is not None:
            self.join_bytes -= join.nbytes
            if join.timer is not None:
                join.timer.cancel()
        return join

    def _expire(self, key: tuple[str, str], node: PlanNode, waited: float) -> None:
        join = self._drop(key)
        if join is None:
            return
        missing = [s for s in node.inputs if s not in join.parts]
        packet = next(iter(join.parts.values()))[0]
        self.report(join.first, packet, "DEADLINE_EXCEEDED",
                    f"node {node.label!r}: fan-in waited {waited:.3g}s for "
                    f"{', '.join(map(repr, missing))}")  # fmt: skip

    def pending_joins(self) -> int:
        return len(self._joins)

    def close(self) -> None:
        for key in list(self._joins):
            self._drop(key)
        for runs in self._running.values():
            for run in runs:
                run.cancel()
        self._running.clear()


def _value(data: str) -> Any:
    try:
        return json.loads(data)
    except ValueError:
        return data


def _packet(answer: Any, original: Any, what: str) -> Any:
    if answer is None:
        return original
    if isinstance(answer, codec.Packet):
        return answer
    raise AiosFastError(f"the {what} policy returned {type(answer).__name__}, not a packet")


def _local_labels(node: PlanNode) -> dict[str, str]:
    """The node's next labels as its own vDAG document writes them (a sub-vDAG's nodes
    are ``outer/inner`` in the plan) -> the plan's labels."""
    prefix = node.label.rpartition("/")[0]
    prefix = prefix + "/" if prefix else ""
    return {(x[len(prefix) :] if prefix and x.startswith(prefix) else x): x for x in node.next}


def _labels(value: Any, known: list[str]) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise AiosFastError(f"the postprocessing policy's next must be a list of labels, "
                            f"not {value!r}")  # fmt: skip
    unknown = [v for v in value if v not in known]
    if unknown:
        raise AiosFastError(f"the postprocessing policy chose {unknown[0]!r}, not one of "
                            f"the next nodes {known}")  # fmt: skip
    return value
