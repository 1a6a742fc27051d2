"""The native front's Python side (``--front native``): ``NativeServer``, the listener,
a subclass of the compiled layer's typed base class ``aios_fast._front.Server`` (declared
in native/aios_fast/_front.pxd, stubs in aios_fast/_front.pyi), and what each call does
once its request is read. Imported only where the compiled front is in use
(``native_front.resolve_front`` chose it): it imports the extension.

The compiled layer reads a chunk of bytes, runs nghttp2 over it, cuts the gRPC messages
out and calls ``NativeServer.dispatch`` once with every request that chunk completed.
With tokens configured it calls ``NativeServer.admit`` at each call's headers: a caller
without the token is answered there, before any of its body is buffered. Per request,
this module starts the executor's task (a unary call: ``Executor.run_task``, the same
``executor.task_run`` state machine the grpcio front's handlers await, here with no
asyncio task or future: the link's reply answers the call from inside its callback) and
answers through the call's ``respond`` / ``send`` / ``finish``. The semantics are the
grpcio front's (``executor.core``): statuses and messages, ``grpc-timeout`` deadlines
(the call ends with DEADLINE_EXCEEDED and its task is cancelled at the instance), a
client's RST_STREAM cancels its task, ``infer_stream`` answers each task as it finishes
(a failed task's answer is an error packet) with at most ``stream_window`` tasks running
per stream. Draining: GOAWAY (shutdown notice) to every connection, then the final
GOAWAY once the calls are done. Keepalive as grpc servers do it: a client silent for
``keepalive`` seconds is pinged, and cut (its calls cancelled) if it does not answer in
``keepalive_timeout``; one that has not finished its HTTP/2 handshake (preface and
SETTINGS) ``handshake_timeout`` seconds after connecting is cut too.

Memory (docs: issue 23): request bytes buffered and answer bytes not yet sent are
counted per connection and process-wide; over ``connection_budget`` or ``budget`` a
connection stops being read (its HTTP/2 window stays shut), its new calls get
RESOURCE_EXHAUSTED and its streams start no more tasks until it is under again.
Connections past ``max_connections`` get GOAWAY (ENHANCE_YOUR_CALM, "too many
connections") and are closed; the others go on.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import Any

import grpc

from .._front import (
    INFER_RESULT,
    INFER_STREAM,
    OIP_FIRST,
    OIP_METHODS,
    OIP_STREAM,
    Call,
    Connection,
    Server,
)
from ..auth import Auth, AuthError
from ..logs import RateLimitedLog
from ..service.grpc_auth import refusal
from ..tls import TLS
from ..wire import HOP_ENDPOINTS_METHOD
from .native_front import load_front
from .oip_run import OipCalls
from .task_run import Reject, error_answer

__all__ = ["NativeServer", "connection_limit"]

log = logging.getLogger("aios_fast.executor")
# where the hop front listens (executor.hop_front): a unary call answered here, its
# method number past the compiled ones (the compiled layer treats it as unary)
HOP_ENDPOINTS = OIP_FIRST + len(OIP_METHODS) + 16
load_front()._PATHS.setdefault(HOP_ENDPOINTS_METHOD.encode(), HOP_ENDPOINTS)
DEADLINE = grpc.StatusCode.DEADLINE_EXCEEDED.value[0]
INTERNAL = grpc.StatusCode.INTERNAL.value[0]
UNIMPLEMENTED = grpc.StatusCode.UNIMPLEMENTED.value[0]
STREAM = int(INFER_STREAM)
RESULT = int(INFER_RESULT)
# A stream's window starts at FIRST_WINDOW tasks in flight and grows by one for each
# answer its client takes promptly, up to the server's stream_window; no new task starts
# while more than the compiled layer's QUEUED_HIGH answer bytes wait for the client, or
# its connection is over its budget (``Call.blocked``; the compiled layer calls
# ``writable`` once that ends). A client that does not read its answers holds at most
# ~FIRST_WINDOW answers plus QUEUED_HIGH bytes a stream, and the budget a connection.
FIRST_WINDOW = 64
PROMPT_BYTES = 1 << 20  # answer bytes still unsent under which an answer counts as taken
MAX_SHARE = 100_000  # the most stream tasks one connection's window grows to


def connection_limit(configured: int) -> int:
    """``max_connections`` as configured, or for 0 (auto) what the open-file limit leaves
    after 256 descriptors for everything else (links, listeners, files), at least half
    of it: past the limit a client gets a clear refusal, not a failed accept."""
    if configured > 0:
        return configured
    import resource

    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return 1_000_000
    return max(soft - 256, soft // 2, 1)


class _Share:
    """A connection's ``infer_stream`` runs (``Connection.tag``): together they may have
    ``window`` in flight, FIRST_WINDOW at first, one more for each answer taken promptly,
    so a client that opens many streams and reads nothing gets no more run for it than
    one stream would. ``waiting``: streams that stopped for this window."""

    __slots__ = ("inflight", "waiting", "window")

    def __init__(self, window: int) -> None:
        self.inflight = 0
        self.window = window
        self.waiting: deque[_Stream] = deque()


class _Stream:
    """One ``infer_stream`` call's tasks (kept as ``call.task``: ``cancel`` ends them):
    the runs in flight, and messages read while ``stream_window`` of them ran."""

    __slots__ = ("answer", "backlog", "call", "deadline", "ended", "pending", "pumping",
                 "share", "start", "timer", "window")  # fmt: skip

    def __init__(self, call, loop, window: int, share: _Share, start, answer) -> None:
        self.call = call
        self.start = start  # (frame, timeout, on_done, state) -> its run
        self.answer = answer  # (output, reject, frame) -> the message the client gets
        self.share = share
        self.window = window  # runs it may have in flight now (grows, see _pump)
        self.pending: set = set()  # its TaskRuns not yet answered
        self.backlog: deque[bytes] = deque()  # read while the window was full
        self.ended = False
        self.pumping = False
        self.timer = None
        self.deadline = None
        if call.timeout >= 0:
            self.deadline = loop.time() + call.timeout
            self.timer = loop.call_later(call.timeout, self.expire)

    def remaining(self, loop) -> float | None:
        return None if self.deadline is None else max(self.deadline - loop.time(), 0.0)

    def expire(self) -> None:
        self.call.finish(DEADLINE, "Deadline Exceeded")
        self.cancel()

    def cancel(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.backlog.clear()
        self.share.inflight -= len(self.pending)  # (a cancelled run makes no on_done)
        for run in list(self.pending):
            run.cancel()
        self.pending.clear()

    def done_if_over(self) -> None:
        if self.ended and not self.pending and not self.backlog:
            if self.timer is not None:
                self.timer.cancel()
            self.call.finish(0)


class NativeServer(Server):
    """The listener (one per executor process; SO_REUSEPORT for workers).
    ``run_task(frame, want_result, timeout, on_done, call)`` starts the executor's task
    (``Executor.run_task``). The compiled base class holds the settings it reads in C
    (``max_message``, the budgets, ``max_connections``, ``handshake_timeout``,
    ``check_headers``) and calls ``dispatch``, ``admit`` and ``writable``."""

    def __init__(self, run_task, auth: Auth, tls: TLS, max_message: int, stream_window: int,
                 keepalive: float = 7200.0, keepalive_timeout: float = 20.0, *,
                 connection_budget: int = 64 << 20, budget: int = 1 << 30,
                 max_connections: int = 10_000,
                 handshake_timeout: float = 120.0,
                 oip: OipCalls | None = None) -> None:  # fmt: skip
        self.keepalive = keepalive  # seconds a client may be silent before a PING (0: never)
        self.keepalive_timeout = keepalive_timeout  # seconds it has to answer it
        self._sweeper: asyncio.Task | None = None
        self._log = RateLimitedLog(log, 10.0)
        self._run_task = run_task
        self.oip = oip  # the Open Inference Protocol's calls (None: UNIMPLEMENTED)
        self.hop: Any = None  # the executor's hop front (HopFront; None: UNIMPLEMENTED)
        self.auth = auth
        self.tls = tls
        self.max_message = max_message
        self.stream_window = stream_window
        self.connection_budget = connection_budget
        self.budget = budget
        self.max_connections = max_connections
        self.handshake_timeout = handshake_timeout
        # a token is (or, once the token file is re-read on SIGHUP, may be) required:
        # every call is checked at its headers (admit), before any of its body is read
        self.check_headers = "infer" not in auth.open_roles and (auth.enabled or bool(auth.path))
        self.loop = None
        self._loop: asyncio.AbstractEventLoop  # (= loop, set by bind)
        self._server: asyncio.Server | None = None

    # ------------------------------------------------------------------ lifecycle

    async def bind(self, host: str, port: int, reuse_port: bool = False) -> int:
        """Listen (not yet serving); returns the port. OSError (one line) if it cannot."""
        self.loop = self._loop = loop = asyncio.get_running_loop()
        ssl = self.tls.server_context()
        if ssl is not None:
            ssl.set_alpn_protocols(["h2"])
        try:
            self._server = await loop.create_server(
                lambda: Connection(self), host, port, reuse_port=reuse_port or None,
                ssl=ssl, backlog=1024, start_serving=False,
            )  # fmt: skip
        except OSError as exc:
            raise OSError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
        return self._server.sockets[0].getsockname()[1]

    async def start(self) -> None:
        assert self._server is not None, "bind() first"
        await self._server.start_serving()
        self._sweeper = self._loop.create_task(self._sweep())

    async def _sweep(self) -> None:
        """Every connection's timeouts (``Connection.sweep``: handshake, keepalive),
        checked a few times per period, and one log line per interval for what was
        cut or refused (however many: anyone may open connections)."""
        loop = self._loop
        idle, timeout = self.keepalive, max(self.keepalive_timeout, 0.001)
        periods = [p for p in (idle, timeout if idle > 0 else 0, self.handshake_timeout) if p > 0]
        step = min(max(min(periods, default=5.0) / 4, 0.05), 5.0)
        refused = self.refused_connections
        while True:
            await asyncio.sleep(step)
            now = loop.time()
            cuts = [conn.sweep(now, idle, timeout) for conn in list(self.connections)]
            if pinged := cuts.count(1):
                self._log.warning("keepalive", f"{pinged} client connection(s) did not "
                                               f"answer a PING in {timeout:g}s: cut")  # fmt: skip
            if slow := cuts.count(2):
                self._log.warning("handshake", f"{slow} client connection(s) did not send the "
                                               "HTTP/2 preface and SETTINGS in "
                                               f"{self.handshake_timeout:g}s: cut")  # fmt: skip
            if self.refused_connections != refused:
                self._log.warning("connection limit", f"{self.refused_connections - refused} "
                                  f"connection(s) refused: {self.max_connections} are open "
                                  "(--max-connections)")  # fmt: skip
                refused = self.refused_connections

    async def stop(self, grace: float | None = None) -> None:
        """GOAWAY to every connection; calls still open after ``grace`` seconds are cut."""
        if self._server is None:
            return
        loop = self._loop
        if self._sweeper is not None:
            self._sweeper.cancel()
        self._server.close()
        for conn in list(self.connections):
            conn.shutdown_notice()
        end = loop.time() + (grace or 0.0)
        while any(c.open_calls for c in self.connections) and loop.time() < end:
            await asyncio.sleep(0.01)
        for conn in list(self.connections):
            conn.goaway()
        end = loop.time() + 0.5  # the GOAWAYs' bytes leave; clients close
        while self.connections and loop.time() < end:
            await asyncio.sleep(0.01)
        for conn in list(self.connections):
            conn.abort()
        await self._server.wait_closed()

    # ------------------------------------------------------------------ calls

    def admit(self, call: Call) -> bool:
        """At a call's headers, when a token is required: False (and the call answered
        UNAUTHENTICATED / PERMISSION_DENIED) if its token does not give the infer role.
        Called by the compiled layer."""
        try:
            self.auth.check(call.token, "infer")
        except AuthError as exc:
            code, message = refusal(exc)
            call.finish(code.value[0], message)
            return False
        return True

    def dispatch(self, conn: Connection, events: list) -> None:
        """Every request one chunk of bytes completed: (call, message), or (call, None)
        for an ``infer_stream``'s end of input. Called by the compiled layer (admitted
        calls only)."""
        for call, frame in events:
            if call.finished:
                continue
            try:
                if call.method == STREAM:
                    self._stream_event(conn, call, frame)
                    continue
                if call.method == HOP_ENDPOINTS:
                    if self.hop is None:
                        call.finish(UNIMPLEMENTED, "no vDAG hop front here")
                    else:
                        call.respond(self.hop.endpoints())
                    continue
                if call.method >= OIP_FIRST:
                    self._oip_event(conn, call, frame)
                    continue
                call.task = self._unary(call, frame, call.method == RESULT)
            except Exception:  # a bug: this call fails alone; the chunk's others go on
                log.exception("starting a call failed")
                if not call.finished:
                    call.finish(INTERNAL, "internal error")

    def _unary(self, call, frame: bytes, want_result: bool):
        """The call's run (``executor.task_run``): no asyncio task; the link's callback
        answers the call (``_answered``) as soon as the instance's reply is read."""
        timeout = call.timeout
        run = self._run_task(frame, want_result, None if timeout < 0 else timeout,
                             self._answered, call)  # fmt: skip
        if timeout >= 0 and not run.over:
            run.timer = self._loop.call_later(timeout, self._expire, call)
        return run

    def _oip_event(self, conn: Connection, call: Call, frame: bytes | None) -> None:
        """An Open Inference Protocol call (``executor.oip_run``): ModelInfer runs as a
        unary task, ModelStreamInfer as ``infer_stream`` does, the rest are answered
        here."""
        oip = self.oip
        if oip is None:
            call.finish(UNIMPLEMENTED, "the Open Inference Protocol is not served here")
            return
        if call.method == OIP_STREAM:
            self._stream_event(conn, call, frame, oip.start, oip.stream_answer)
            return
        rpc = OIP_METHODS[call.method - OIP_FIRST]
        if rpc == "ModelInfer":
            assert frame is not None  # (a unary call's event carries its message)
            timeout = call.timeout
            run = oip.start(frame, None if timeout < 0 else timeout, self._answered, call)
            if timeout >= 0 and not run.over:
                run.timer = self._loop.call_later(timeout, self._expire, call)
            call.task = run
            return
        try:
            call.respond(oip.answer(rpc, frame or b""))
        except Reject as exc:
            call.finish(exc.code.value[0], exc.message)

    @staticmethod
    def _answered(run, answer: bytes | None, reject) -> None:
        """A unary call's run ended: its answer, or its status. (A cancelled run's call
        was answered already: deadline, or the client reset the stream.)"""
        call = run.call
        if call.finished:
            return
        if reject is None:
            call.respond(answer)
        else:
            call.finish(reject.code.value[0], reject.message)

    @staticmethod
    def _expire(call) -> None:
        call.finish(DEADLINE, "Deadline Exceeded")
        if call.task is not None:
            call.task.cancel()

    # ------------------------------------------------------------------ infer_stream

    def _stream_event(self, conn: Connection, call: Call, frame: bytes | None,
                      start=None, answer=None) -> None:  # fmt: skip
        state = call.task
        if state is None:
            share = conn.tag
            if share is None:
                share = conn.tag = _Share(FIRST_WINDOW)
            window = min(FIRST_WINDOW, self.stream_window)
            state = call.task = _Stream(call, self._loop, window, share,
                                        start or self._start_stream_task,
                                        answer or _stream_packet)  # fmt: skip
        if frame is None:
            state.ended = True
            state.done_if_over()
            return
        state.backlog.append(frame)
        self._pump(state)

    def _pump(self, state: _Stream) -> None:
        """Start the stream's backlog while its window and its connection's allow and its
        client takes its answers (``Call.blocked``: at most QUEUED_HIGH bytes unsent, its
        connection under its budget); past that, hold the stream (back-pressure: its
        HTTP/2 window stays shut until tasks finish, or ``writable``). A loop, not
        recursion: runs that end at once (a bad message) come back here."""
        if state.pumping:
            return
        state.pumping = True
        call = state.call
        share = state.share
        try:
            while state.backlog and len(state.pending) < state.window and not call.blocked:
                if call.finished:
                    state.backlog.clear()
                    return
                if share.inflight >= share.window:
                    share.waiting.append(state)
                    break
                frame = state.backlog.popleft()
                share.inflight += 1  # (less in _stream_answered, or _Stream.cancel)
                run = state.start(frame, state.remaining(self._loop), self._stream_answered,
                                  state)  # fmt: skip
                if not run.over:
                    state.pending.add(run)
            if state.backlog:
                call.hold()
            else:
                call.release()
        finally:
            state.pumping = False
        if not call.finished:
            state.done_if_over()

    def _stream_answered(self, run, answer: bytes | None, reject) -> None:
        """One stream task's end: its output, or an error packet (``wire.error_packet``):
        a failed task fails alone. Then the next ones in its backlog start (and streams
        of its connection that waited for the connection's window)."""
        state = run.call
        state.pending.discard(run)
        share = state.share
        share.inflight -= 1
        call = state.call
        if not call.finished:
            call.send(state.answer(answer, reject, run.frame))
            if call.queued < PROMPT_BYTES:
                if state.window < self.stream_window:
                    state.window += 1
                if share.window < MAX_SHARE:
                    share.window += 1
            self._pump(state)
        while share.waiting and share.inflight < share.window:
            self._pump(share.waiting.popleft())

    def _start_stream_task(self, frame: bytes, timeout, on_done, state):
        return self._run_task(frame, True, timeout, on_done, state)

    def writable(self, call) -> None:
        """The compiled layer: the client took enough of this call's queued answers
        (a stream that stopped starting tasks for them may go on)."""
        state = call.task
        if isinstance(state, _Stream) and not call.finished:
            self._pump(state)


def _stream_packet(answer: bytes | None, reject: Reject | None, frame: bytes) -> bytes:
    """An ``infer_stream`` answer: the output, or an error packet (``wire.error_packet``)."""
    return answer if reject is None else error_answer(frame, reject)  # type: ignore[return-value]
