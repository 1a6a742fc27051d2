"""The vDAG controller: the gateway callers submit vDAG tasks to.

gRPC (raw bytes; the original's messages, ``protos/vdag.proto``):

- ``/vDAGInferenceService/infer``: one task through the whole vDAG; the answer is the
  output node's packet as a ``vDAGInferencePacket``;
- ``/vDAGInferenceService/infer_stream``: many tasks on one stream, answers as they
  finish (a failed task answers ``{"aios_error": {"code", "message", "node"}}`` in
  ``data`` and the stream goes on);
- ``/InferenceProxy/infer`` and ``/InferenceProxy/infer_stream``: where the blocks
  hand back results and failure reports (the block API's own calls; the instances keep
  one stream open to the controller and send on it, the controller answers nothing).

A task goes to the input node(s)' blocks with the plan in its ticket
(``aios_fast.vdag.hop``) and comes back from the output node's block; the controller
never sees the nodes in between. Every task the controller receives ends in exactly one
counted outcome: ``invalid`` (not a vDAGInferencePacket), ``refused`` (over a quota) or
``accepted``; every accepted one ``completed``, ``failed`` (a node's failure: its label
and status, or no path to the output node), ``timed_out`` (no answer within the
caller's deadline or ``maxOutputWaitTimeSeconds``) or ``cancelled`` (the caller gave
up). Failures are also counted by node and status.

Quotas (``controller.initSettings.quota``): a token bucket over all tasks (``rate``
tasks/s, ``burst``) and one per session (``sessionRate``, ``sessionBurst``; at most
``maxSessions`` sessions are tracked, least recently used first out); a task over
either is refused RESOURCE_EXHAUSTED before anything is sent. Then the quota checker
policy, if any (``controller.policies.quotaChecker``, an AIOSv1PolicyRule): ``eval``
gets ``{"session_id", "seq_no", "data", "stats"}`` and answers True / ``{"allowed":
true}`` to let the task in, False / ``{"allowed": false, "message": ...}`` to refuse
it (RESOURCE_EXHAUSTED); a policy that raises refuses the task (INTERNAL, counted as
refused): a quota is never skipped because its code failed.

HTTP (one port): ``GET /metrics`` (Prometheus), ``GET /health``, ``POST /mgmt``:
``stats``, ``get_plan``, ``get_quota``, ``set_quota`` ({rate, burst, sessionRate,
sessionBurst}: 0 turns a bucket off), ``health`` (the blocks' health and the health
checker policy's verdict; ``{"run_now": true}`` checks first), ``quality`` (the
quality checker's counts and last answers); see ``checks``.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import itertools
import logging
import os
import time
from collections import OrderedDict, deque
from typing import Any

import grpc
import msgspec
from aiohttp import web

from ... import codec
from ...auth import Auth, check_bind
from ...policy import PolicyRule
from ...protos import vdag_pb2
from ...service.framed import framing_compiled
from ...service.framed_listener import endpoints_handler
from ...service.grpc_auth import TokenInterceptor
from ...service.http import MgmtError, mgmt_route, new_app, start_site
from ...service.metrics import CONTENT_TYPE, Histogram, Registry, counter, gauge, histogram
from ...tls import TLS
from ...wire import ACCEPTED, HOP_ENDPOINTS_METHOD, INFER, INFER_STREAM, SERVICE
from ..compile import Plan
from ..hop import BATCH_PTR, CANCEL_PTR, Ticket, decode_ticket, encode_ticket
from ..streams import HopStreams
from .answers import AnswersFront
from .checks import HealthCheck, QualityCheck

__all__ = [
    "VDAG_INFER",
    "VDAG_SERVICE",
    "VDAG_STREAM",
    "Quota",
    "QuotaSettings",
    "TokenBucket",
    "VDagController",
]

log = logging.getLogger("aios_fast.vdag.controller")

VDAG_SERVICE = "vDAGInferenceService"
VDAG_INFER = f"/{VDAG_SERVICE}/infer"
VDAG_STREAM = f"/{VDAG_SERVICE}/infer_stream"


class QuotaSettings(msgspec.Struct, forbid_unknown_fields=True):
    rate: float = 0.0  # tasks/s over all sessions (0: no limit)
    burst: float = 0.0  # bucket size (0: max(rate, 1))
    sessionRate: float = 0.0  # tasks/s per session_id (0: no limit)
    sessionBurst: float = 0.0
    maxSessions: int = 100_000


class TokenBucket:
    __slots__ = ("burst", "rate", "stamp", "tokens")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate = rate
        self.burst = burst or max(rate, 1.0)
        self.tokens = self.burst
        self.stamp = now

    def take(self, now: float) -> bool:
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


class Quota:
    """The global and per-session token buckets."""

    def __init__(self, settings: QuotaSettings, clock=time.monotonic) -> None:
        self.clock = clock
        self.set(settings)

    def set(self, settings: QuotaSettings) -> None:
        if min(settings.rate, settings.burst, settings.sessionRate, settings.sessionBurst) < 0:
            raise ValueError("quota rates and bursts must be >= 0")
        self.settings = settings
        now = self.clock()
        self.all = TokenBucket(settings.rate, settings.burst, now) if settings.rate else None
        self.sessions: OrderedDict[str, TokenBucket] = OrderedDict()

    def take(self, session: str) -> str | None:
        """None when the task may run, else which quota it is over."""
        now = self.clock()
        s = self.settings
        if s.sessionRate:
            bucket = self.sessions.get(session)
            if bucket is None:
                bucket = self.sessions[session] = TokenBucket(s.sessionRate, s.sessionBurst, now)
                if len(self.sessions) > s.maxSessions:
                    self.sessions.popitem(last=False)
            else:
                self.sessions.move_to_end(session)
            if not bucket.take(now):
                return f"session {session!r} is over its quota ({s.sessionRate:g} tasks/s)"
        if self.all is not None and not self.all.take(now):
            return f"the vDAG is over its quota ({s.rate:g} tasks/s)"
        return None


class _Outcome(Exception):
    """A task that ends without an answer: its gRPC status and message."""

    def __init__(self, code: grpc.StatusCode, message: str, node: str = "") -> None:
        self.code = code
        self.node = node
        super().__init__(message)


MAX_GIVEN_UP = 10_000  # given-up tasks remembered for instances that connect late


class VDagController:
    def __init__(
        self,
        plan: Plan,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        http_port: int = 0,
        max_wait: float = 30.0,
        quota: QuotaSettings | None = None,
        auth: Auth | None = None,
        insecure: bool = False,
        tls: TLS | None = None,
        advertise: str | None = None,
        quota_policy: PolicyRule | None = None,
        health: HealthCheck | None = None,
        quality: QualityCheck | None = None,
        front: str = "auto",
    ) -> None:
        self.plan = plan
        self.front = front  # auto | native | grpcio: the gateway's gRPC server
        self.plan_json = msgspec.json.encode(plan)
        self.plan_id = hashlib.sha256(self.plan_json).hexdigest()[:16]
        self.host, self.port, self.http_port = host, port, http_port
        self.advertise = advertise or host
        self.max_wait = max_wait
        self.quota = Quota(quota or QuotaSettings())
        self.quota_policy = quota_policy
        self.health = health
        self.quality = quality
        self.auth = auth or Auth()
        self.insecure = insecure
        self.tls = tls or TLS()
        self._metadata = (
            (("authorization", f"Bearer {self.auth.any_token('infer')}"),)
            if self.auth.any_token("infer")
            else ()
        )
        self._ids = itertools.count(1)
        self._watchers: set = set()  # asyncio.Queues of gRPC streams, framed connections
        # (loop time, task) of the tasks given up on lately: told to an instance that
        # starts watching after the fact (its connection was still being set up)
        self._given_up: deque[tuple[float, str]] = deque(maxlen=MAX_GIVEN_UP)
        self._answers: AnswersFront | None = None  # the blocks' framed answers front
        self._prefix = f"{os.getpid():x}-{int(time.time() * 1000) & 0xFFFFFF:x}-"
        self.pending: dict[str, asyncio.Future] = {}
        self._channels: dict[str, grpc.aio.Channel] = {}
        self.hops = HopStreams(self._metadata, self.tls, self._channels)
        self._server: grpc.aio.Server | None = None
        self._native: Any = None  # the native gateway (controller.native), if serving
        self._runner: web.AppRunner | None = None
        self.reply = ""
        # counters: received = invalid + refused + accepted;
        # accepted = completed + failed + timed_out + cancelled + inflight
        self.received = self.invalid = self.refused = self.accepted = 0
        self.completed = self.failed = self.timed_out = self.cancelled = 0
        self.late = 0  # answers for tasks that had already ended
        self.invalid_answers = 0  # messages on an answer stream that were not answers
        self.failures: dict[tuple[str, str], int] = {}  # (node, code) -> count
        self.latency = Histogram()
        self.node_latency: dict[str, Histogram] = {label: Histogram() for label in plan.nodes}

    # ------------------------------------------------------------------ one task

    async def run(self, request: Any, timeout: float | None) -> Any:
        """Run one accepted task; the output packet (codec.Packet), or _Outcome."""
        loop = asyncio.get_running_loop()
        wait = self.max_wait if timeout is None else min(self.max_wait, timeout)
        # the nodes get a little less time than the controller waits, so a node that
        # runs out of time reports it (naming itself) before the controller gives up
        task_id = f"{self._prefix}{next(self._ids)}"
        future: asyncio.Future = loop.create_future()
        self.pending[task_id] = future
        files = [codec.FileInfo(f.metadata, f.file_data) for f in request.files]
        session = (request.session_id, request.seq_no)
        timer = loop.call_later(wait, self._expire, task_id, wait)
        try:
            for label in self.plan.input:
                node = self.plan.nodes[label]
                ticket = Ticket(is_graph=True, task=task_id, reply=self.reply, node=label,
                                plan_id=self.plan_id, plan=msgspec.Raw(self.plan_json),
                                ttl=wait - min(0.25, wait / 10))  # fmt: skip
                packet = codec.Packet(
                    session_id=request.session_id, seq_no=request.seq_no,
                    frame_ptr=request.frame_ptr, data=request.data, ts=request.ts,
                    files=files, output_ptr=encode_ticket(ticket),
                )  # fmt: skip
                self.hops.send(node.endpoint, node.block_id, codec.encode_packet(packet),
                               f"{task_id} {label}", session, wait,
                               functools.partial(self._hop_failed, task_id, label))  # fmt: skip
            try:
                ticket, out = await future
            except _Outcome as exc:
                if exc.code == grpc.StatusCode.DEADLINE_EXCEEDED and not exc.node:
                    self._give_up(task_id)
                raise
        except asyncio.CancelledError:
            self._give_up(task_id)  # the caller left: its pending hops stop
            raise
        finally:
            timer.cancel()
            self.pending.pop(task_id, None)
        for label, seconds in ticket.spans:
            hist = self.node_latency.get(label)
            if hist is not None:
                hist.observe(seconds)
        if ticket.code:
            code = getattr(grpc.StatusCode, ticket.code, grpc.StatusCode.UNKNOWN)
            raise _Outcome(code, out.data, ticket.node)
        if ticket.skip:
            raise _Outcome(grpc.StatusCode.FAILED_PRECONDITION,
                           f"no path reached the output node {ticket.node!r} (the "
                           "post-processing policies routed the task elsewhere)",
                           ticket.node)  # fmt: skip
        return out

    def _check_policy(self, request: Any) -> None:
        assert self.quota_policy is not None
        try:
            answer = self.quota_policy.eval({"session_id": request.session_id,
                                             "seq_no": request.seq_no, "data": request.data,
                                             "stats": self.stats()})  # fmt: skip
        except Exception as exc:
            self.refused += 1
            why = f"the quota checker policy failed: {type(exc).__name__}: {exc}"
            raise _Outcome(grpc.StatusCode.INTERNAL, why) from None
        allowed = answer.get("allowed", True) if isinstance(answer, dict) else answer
        if allowed is not True:
            self.refused += 1
            message = answer.get("message") if isinstance(answer, dict) else None
            raise _Outcome(grpc.StatusCode.RESOURCE_EXHAUSTED,
                           str(message or "refused by the quota checker policy"))  # fmt: skip

    def _expire(self, task_id: str, wait: float) -> None:
        future = self.pending.get(task_id)
        if future is not None and not future.done():
            future.set_exception(_Outcome(grpc.StatusCode.DEADLINE_EXCEEDED,
                                          f"the vDAG gave no answer within {wait:g}s"))  # fmt: skip

    def _hop_failed(self, task_id: str, label: str, code: str, message: str) -> None:
        """The task's packet did not reach an input node's block."""
        future = self.pending.get(task_id)
        if future is None or future.done():
            return
        node = self.plan.nodes[label]
        status = getattr(grpc.StatusCode, code, grpc.StatusCode.UNKNOWN)
        future.set_exception(_Outcome(status, f"node {label!r} (block {node.block_id!r} at "
                                              f"{node.endpoint}): {message}", label))  # fmt: skip

    async def submit(self, request: Any, timeout: float | None) -> Any:
        """Admit (quota), run and count one task: the answer packet or _Outcome."""
        self.received += 1
        over = self.quota.take(request.session_id)
        if over is not None:
            self.refused += 1
            raise _Outcome(grpc.StatusCode.RESOURCE_EXHAUSTED, over)
        if self.quota_policy is not None:
            self._check_policy(request)
        self.accepted += 1
        t0 = time.perf_counter()
        try:
            out = await self.run(request, timeout)
        except _Outcome as exc:
            if exc.code == grpc.StatusCode.DEADLINE_EXCEEDED and not exc.node:
                self.timed_out += 1
            else:
                self.failed += 1
                key = (exc.node, exc.code.name)
                self.failures[key] = self.failures.get(key, 0) + 1
            raise
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        except BaseException:
            self.failed += 1
            key = ("", "INTERNAL")
            self.failures[key] = self.failures.get(key, 0) + 1
            raise
        self.completed += 1
        seconds = time.perf_counter() - t0
        self.latency.observe(seconds)
        if self.quality is not None:
            self.quality.offer(request, out, seconds)
        return out

    # ------------------------------------------------------------------ gRPC handlers

    def _decode(self, request: bytes):
        try:
            return vdag_pb2.vDAGInferencePacket.FromString(request)
        except Exception:
            self.received += 1
            self.invalid += 1
            return None

    @staticmethod
    def _answer(out) -> bytes:
        reply = vdag_pb2.vDAGInferencePacket(
            session_id=out.session_id, seq_no=out.seq_no, frame_ptr=bytes(out.frame_ptr),
            data=out.data, ts=out.ts,
            files=[vdag_pb2.vDAGFileInfo(metadata=f.metadata, file_data=bytes(f.file_data))
                   for f in out.files],
        )  # fmt: skip
        return reply.SerializeToString()

    async def _infer(self, request: bytes, context) -> bytes:
        packet = self._decode(request)
        if packet is None:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "not a vDAGInferencePacket")
        try:
            out = await self.submit(packet, context.time_remaining())
        except _Outcome as exc:
            await context.abort(exc.code, str(exc))
        return self._answer(out)

    async def _infer_stream(self, requests, context):
        queue: asyncio.Queue = asyncio.Queue()
        running: set[asyncio.Task] = set()

        async def one(packet) -> None:
            try:
                out = await self.submit(packet, None)
                queue.put_nowait(self._answer(out))
            except _Outcome as exc:
                error = {"code": exc.code.name, "message": str(exc), "node": exc.node}
                queue.put_nowait(vdag_pb2.vDAGInferencePacket(
                    session_id=packet.session_id, seq_no=packet.seq_no,
                    data=msgspec.json.encode({"aios_error": error}).decode(),
                ).SerializeToString())  # fmt: skip

        async def read() -> None:
            async for request in requests:
                packet = self._decode(request)
                if packet is None:
                    error = {"code": "INVALID_ARGUMENT", "message": "not a vDAGInferencePacket"}
                    queue.put_nowait(vdag_pb2.vDAGInferencePacket(
                        data=msgspec.json.encode({"aios_error": error}).decode()
                    ).SerializeToString())  # fmt: skip
                    continue
                task = asyncio.ensure_future(one(packet))
                running.add(task)
                task.add_done_callback(running.discard)
            if running:
                await asyncio.wait(set(running))
            queue.put_nowait(None)

        reader = asyncio.ensure_future(read())
        try:
            while True:
                item = await queue.get()
                if item is None:
                    break
                yield item
        finally:
            reader.cancel()
            for task in list(running):
                task.cancel()

    async def _result(self, request: bytes, context) -> bytes:
        """A block hands back a task's output (or a failure report)."""
        try:
            self._deliver(request)
        except Exception as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"not a vDAG answer: {exc}")
        return ACCEPTED

    async def _results(self, requests, context):
        """An instance's stream of answers; what goes back on it: the tasks the
        controller gave up on (cancelled or timed out), so their pending hops stop."""
        cancels: asyncio.Queue = asyncio.Queue()
        self._watch(cancels)

        async def read() -> None:
            async for request in requests:
                self._deliver_counted(request)
            cancels.put_nowait(None)

        reader = asyncio.ensure_future(read())
        try:
            while (task_id := await cancels.get()) is not None:
                yield codec.encode_message(codec.Packet(data=task_id, output_ptr=CANCEL_PTR))
        finally:
            self._watchers.discard(cancels)
            reader.cancel()

    def _deliver_counted(self, request: bytes) -> None:
        """An answer from a block's stream or framed connection (one that is not an
        answer counts in ``invalid_answers``)."""
        try:
            self._deliver(request)
        except Exception:
            self.invalid_answers += 1

    def _give_up(self, task_id: str) -> None:
        """Tell every instance watching this controller to stop the task's hops."""
        self._given_up.append((asyncio.get_running_loop().time(), task_id))
        for watcher in self._watchers:
            if watcher.qsize() < 10_000:  # an instance that does not read loses them
                watcher.put_nowait(task_id)

    def _watch(self, watcher: Any) -> None:
        """An instance's answer connection (or gRPC stream) starts watching: it also
        gets the tasks given up on in the last ``max_wait`` seconds, which it may be
        running though it was not connected yet when they were given up."""
        self._watchers.add(watcher)
        since = asyncio.get_running_loop().time() - self.max_wait
        for at, task_id in self._given_up:
            if at >= since and watcher.qsize() < 10_000:
                watcher.put_nowait(task_id)

    def _deliver(self, request: bytes) -> None:
        packet = codec.decode_message(request)
        if packet.output_ptr == BATCH_PTR:  # several answers in one message
            for item in packet.files:
                self._deliver_one(codec.decode_packet(item.file_data))
            return
        self._deliver_one(packet)

    def _deliver_one(self, packet: Any) -> None:
        ticket = decode_ticket(packet.output_ptr)
        future = self.pending.get(ticket.task)
        if future is None or future.done():
            self.late += 1
        else:
            future.set_result((ticket, packet))

    # ------------------------------------------------------------------ HTTP

    def stats(self) -> dict:
        return {
            "received": self.received, "invalid": self.invalid, "refused": self.refused,
            "accepted": self.accepted, "completed": self.completed, "failed": self.failed,
            "timed_out": self.timed_out, "cancelled": self.cancelled,
            "inflight": len(self.pending), "late": self.late,
            "failures": [{"node": n, "code": c, "count": k}
                         for (n, c), k in sorted(self.failures.items())],
        }  # fmt: skip

    async def _mgmt(self, action: str, data: dict) -> Any:
        if action == "stats":
            return self.stats()
        if action == "get_plan":
            return self.plan.to_dict()
        if action == "get_quota":
            return msgspec.to_builtins(self.quota.settings)
        if action == "set_quota":
            try:
                merged = {**msgspec.to_builtins(self.quota.settings), **data}
                self.quota.set(msgspec.convert(merged, QuotaSettings))
            except msgspec.ValidationError as exc:
                raise ValueError(str(exc)) from None
            return msgspec.to_builtins(self.quota.settings)
        if action == "health" and self.health is not None:
            if data.get("run_now"):
                return await self.health.run_now()
            return self.health.status()
        if action == "quality":
            if self.quality is None:
                raise MgmtError("quality: the vDAG has no qualityChecker policy")
            return self.quality.status()
        raise MgmtError(f"unknown management action {action!r}: the actions are stats, "
                        "get_plan, get_quota, set_quota, health, quality")  # fmt: skip

    def _collect(self):
        yield counter("aios_vdag_tasks", "vDAG tasks by event.", ("event",), [
            ("received", self.received), ("invalid", self.invalid),
            ("refused", self.refused), ("accepted", self.accepted),
            ("completed", self.completed), ("failed", self.failed),
            ("timed_out", self.timed_out), ("cancelled", self.cancelled),
            ("late", self.late)])  # fmt: skip
        if self.health is not None and self.health.data:
            ups = [(n, d["block_id"], int(d["up"])) for n, d in self.health.data.items()]
            yield gauge("aios_vdag_block_up", "Whether a node's block answered the last "
                        "health check.", ("node", "block"), ups)  # fmt: skip
        rows = [(n, c, k) for (n, c), k in self.failures.items()]
        yield counter("aios_vdag_failures", "Failed vDAG tasks by node and status.",
                      ("node", "code"), rows)  # fmt: skip
        yield gauge("aios_vdag_inflight", "vDAG tasks accepted and not ended.", (),
                    [(len(self.pending),)])  # fmt: skip
        yield histogram("aios_vdag_task_seconds", "End-to-end latency of completed tasks.",
                        (), [(self.latency,)])  # fmt: skip
        yield histogram("aios_vdag_node_seconds",
                        "Time a node took (pre-processing, block, post-processing).",
                        ("node",), [(n, h) for n, h in self.node_latency.items()])  # fmt: skip

    async def _metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=self.registry.exposition(), headers={"Content-Type": CONTENT_TYPE})

    async def _health(self, request: web.Request) -> web.Response:
        return web.json_response({"healthy": True})

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        check_bind(self.host, self.auth, self.insecure, "vDAG controller")
        interceptors = []
        if self.auth.enabled:
            roles = {VDAG_INFER: "infer", VDAG_STREAM: "infer", INFER: "infer",
                     INFER_STREAM: "infer", HOP_ENDPOINTS_METHOD: "infer"}  # fmt: skip
            streaming = frozenset({VDAG_STREAM, INFER_STREAM})
            interceptors.append(TokenInterceptor(self.auth, roles, streaming))
        server = grpc.aio.server(interceptors=interceptors, options=[
            ("grpc.so_reuseport", 0),
            ("grpc.max_receive_message_length", 64 << 20),
            ("grpc.max_send_message_length", 64 << 20)])  # fmt: skip
        server.add_generic_rpc_handlers((
            grpc.method_handlers_generic_handler(VDAG_SERVICE, {
                "infer": grpc.unary_unary_rpc_method_handler(self._infer),
                "infer_stream": grpc.stream_stream_rpc_method_handler(self._infer_stream)}),
            grpc.method_handlers_generic_handler(SERVICE, {
                "infer": grpc.unary_unary_rpc_method_handler(self._result),
                "infer_stream": grpc.stream_stream_rpc_method_handler(self._results)}),
        ))  # fmt: skip
        if framing_compiled():  # the blocks' answers on frames of our own (answers.py)
            self._answers = AnswersFront(self._deliver_counted, self._watch,
                                         self._watchers.discard, self.auth,
                                         self.tls, self.host)  # fmt: skip
            await self._answers.start()
            server.add_generic_rpc_handlers((endpoints_handler(self._answers.endpoints),))
        native = self._native_gateway()
        if native is None:  # one grpcio server: callers and the blocks' answers
            self.port = self.tls.bind(server, f"{self.host}:{self.port}")
            await server.start()
            self.reply = f"{self.advertise}:{self.port}"
        else:  # callers on the native front; the blocks' answers on a grpcio port
            reply_port = self.tls.bind(server, f"{self.host}:0")
            await server.start()
            self.reply = f"{self.advertise}:{reply_port}"
            self.port = await native.bind(self.host, self.port)
            await native.start()
            self._native = native
        self._server = server
        self.registry = Registry(self._collect, process=True)
        app = new_app(self.auth, self.host)
        app.router.add_get("/health", self._health)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_post("/mgmt", mgmt_route(self._mgmt, "vDAG controller"))
        self._runner, self.http_port = await start_site(app, self.host, self.http_port,
                                                        self.tls.server_context())  # fmt: skip
        if self.health is not None:
            self.health.start()
        if self.quality is not None:
            self.quality.start()

    def _native_gateway(self) -> Any:
        """The native gateway where ``front`` allows it and it is built, else None."""
        if self.front == "grpcio":
            return None
        from ...errors import AiosFastError

        try:
            from . import native

            native.enable()
            from ...executor.native_server import NativeServer
        except (AiosFastError, ImportError) as exc:
            if self.front == "native":
                raise AiosFastError(f"--front native: {exc}") from None
            log.info("vDAG controller: grpcio gateway (%s)", exc)
            return None
        cls = native.gateway(self, NativeServer, _Outcome)
        return cls(None, self.auth, self.tls, 64 << 20, 4096)

    async def stop(self, grace: float = 10.0) -> None:
        for check in (self.health, self.quality):
            if check is not None:
                await check.stop()
        if self._native is not None:
            await self._native.stop(grace)  # callers' calls end once their answers came
        if self._server is not None:
            # with the native gateway this port only takes the blocks' answers (on
            # streams the instances keep open): nothing is left to wait for
            await self._server.stop(grace if self._native is None else 0.5)
        if self._runner is not None:
            await self._runner.cleanup()
        if self._answers is not None:
            await self._answers.stop()
        await self.hops.close()
        for channel in self._channels.values():
            await channel.close()
        self._channels.clear()
