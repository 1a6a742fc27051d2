"""The executor's native gRPC front (``--front native``): HTTP/2 and gRPC framing in C
(``aios_fast._front``, Cython over libnghttp2) as an asyncio Protocol; this module is its
Python side: the listener, and what each call does once its request is read.

The compiled layer reads a chunk of bytes, runs nghttp2 over it, cuts the gRPC messages
out and calls ``NativeServer.dispatch`` once with every request that chunk completed.
Per request, this module checks the token and starts the executor's task (a unary
call: ``Executor.run_task``, the same ``executor.task_run`` state machine the grpcio
front's handlers await, here with no asyncio task or future: the link's reply answers
the call from inside its callback) and answers through the call's ``respond`` / ``send``
/ ``finish``. The semantics are the grpcio front's
(``executor.core``): statuses and messages, ``grpc-timeout`` deadlines (the call ends
with DEADLINE_EXCEEDED and its task is cancelled at the instance), a client's RST_STREAM
cancels its task, ``infer_stream`` answers each task as it finishes (a failed task's
answer is an error packet) with at most ``stream_window`` tasks running per stream.
Draining: GOAWAY (shutdown notice) to every connection, then the final GOAWAY once the
calls are done. Keepalive as grpc servers do it: a client silent for ``keepalive``
seconds is pinged, and cut (its calls cancelled) if it does not answer in
``keepalive_timeout``.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
from collections import deque

import grpc

from ..auth import Auth, AuthError
from ..errors import AiosFastError
from ..logs import RateLimitedLog
from ..service.grpc_auth import refusal
from ..tls import TLS
from .task_run import error_answer

__all__ = ["NativeServer", "load_front", "resolve_front", "unavailable"]

log = logging.getLogger("aios_fast.executor")
DEADLINE = grpc.StatusCode.DEADLINE_EXCEEDED.value[0]
INTERNAL = grpc.StatusCode.INTERNAL.value[0]
STREAM = 2  # _front.INFER_STREAM
RESULT = 1  # _front.INFER_RESULT
# A stream's window starts at FIRST_WINDOW tasks in flight and grows by one for each
# answer its client takes promptly, up to the server's stream_window; no new task starts
# while more than the compiled layer's QUEUED_HIGH answer bytes wait for the client (it
# calls ``writable`` once the client has taken half). A client that does not read its
# answers holds at most ~FIRST_WINDOW answers plus QUEUED_HIGH bytes here.
FIRST_WINDOW = 64
PROMPT_BYTES = 1 << 20  # answer bytes still unsent under which an answer counts as taken


# How to get the native front where the build left it out (its headers were missing).
REBUILD = ("install libnghttp2-dev (apt-get install libnghttp2-dev) and rebuild with "
           "`make setup` (a clone) or install the aios-fast wheel, which carries it")  # fmt: skip


def load_front():
    """The compiled front, or AiosFastError saying why it is not there."""
    from .._select import use_extensions

    if not use_extensions():
        raise AiosFastError("--front native needs the compiled extensions "
                            "(AIOS_FAST_NO_EXTENSIONS is set)")  # fmt: skip
    try:
        return importlib.import_module("aios_fast._front")
    except ImportError as exc:
        raise AiosFastError(
            f"--front native: aios_fast._front is not built ({exc}); {REBUILD}, or use "
            "--front grpcio"
        ) from None


def resolve_front(front: str) -> str:
    """``--front`` as it will serve: "auto" is native where it is built, grpcio
    elsewhere; "native" where it is not built is AiosFastError (one line)."""
    if front == "auto":
        why = unavailable()
        if why and "not built" in why:  # a build choice nobody made on purpose: said loudly
            log.warning(
                "WARNING: the native gRPC front is not built here: serving with grpcio, "
                "10-18x more CPU per task; %s", REBUILD)  # fmt: skip
        return "grpcio" if why else "native"
    if front == "native" and (why := unavailable()):
        raise AiosFastError(why)
    return front


def unavailable() -> str | None:
    """Why the native front cannot be used here, or None."""
    try:
        load_front()
    except AiosFastError as exc:
        return str(exc)
    return None


class _Stream:
    """One ``infer_stream`` call's tasks (kept as ``call.task``: ``cancel`` ends them):
    the runs in flight, and messages read while ``stream_window`` of them ran."""

    __slots__ = ("backlog", "call", "deadline", "ended", "pending", "pumping", "timer",
                 "window")  # fmt: skip

    def __init__(self, call, loop, window: int) -> None:
        self.call = call
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
        for run in list(self.pending):
            run.cancel()
        self.pending.clear()

    def done_if_over(self) -> None:
        if self.ended and not self.pending and not self.backlog:
            if self.timer is not None:
                self.timer.cancel()
            self.call.finish(0)


class NativeServer:
    """The listener (one per executor process; SO_REUSEPORT for workers).
    ``run_task(frame, want_result, timeout, on_done, call)`` starts the executor's task
    (``Executor.run_task``)."""

    def __init__(self, run_task, auth: Auth, tls: TLS, max_message: int, stream_window: int,
                 keepalive: float = 7200.0, keepalive_timeout: float = 20.0) -> None:  # fmt: skip
        self._front = load_front()
        self._queued_high = self._front.QUEUED_HIGH
        self.keepalive = keepalive  # seconds a client may be silent before a PING (0: never)
        self.keepalive_timeout = keepalive_timeout  # seconds it has to answer it
        self._pinger: asyncio.Task | None = None
        self._log = RateLimitedLog(log, 10.0)
        self._run_task = run_task
        self.auth = auth
        self.tls = tls
        self.max_message = max_message
        self.stream_window = stream_window
        self.connections: set = set()  # the compiled Connections, while open
        self.loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.base_events.Server | None = None

    # ------------------------------------------------------------------ lifecycle

    async def bind(self, host: str, port: int, reuse_port: bool = False) -> int:
        """Listen (not yet serving); returns the port. OSError (one line) if it cannot."""
        self.loop = asyncio.get_running_loop()
        ssl = self.tls.server_context()
        if ssl is not None:
            ssl.set_alpn_protocols(["h2"])
        try:
            self._server = await self.loop.create_server(
                lambda: self._front.Connection(self), host, port, reuse_port=reuse_port or None,
                ssl=ssl, backlog=1024, start_serving=False,
            )  # fmt: skip
        except OSError as exc:
            raise OSError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
        return self._server.sockets[0].getsockname()[1]

    async def start(self) -> None:
        await self._server.start_serving()
        if self.keepalive > 0:
            self._pinger = self.loop.create_task(self._keepalive())

    async def _keepalive(self) -> None:
        """Every connection's keepalive (``Connection.keepalive``), checked a few times
        per period: silent clients are pinged; those that do not answer are cut."""
        idle, timeout = self.keepalive, max(self.keepalive_timeout, 0.001)
        step = min(max(min(idle, timeout) / 4, 0.05), 5.0)
        while True:
            await asyncio.sleep(step)
            now = self.loop.time()
            cut = sum(bool(conn.keepalive(now, idle, timeout)) for conn in list(self.connections))
            if cut:  # one line per interval, however many (anyone may open connections)
                self._log.warning("keepalive", f"{cut} client connection(s) did not answer a "
                                               f"PING in {timeout:g}s: cut")  # fmt: skip

    async def stop(self, grace: float | None = None) -> None:
        """GOAWAY to every connection; calls still open after ``grace`` seconds are cut."""
        if self._server is None:
            return
        if self._pinger is not None:
            self._pinger.cancel()
        self._server.close()
        for conn in list(self.connections):
            conn.shutdown_notice()
        end = self.loop.time() + (grace or 0.0)
        while any(c.open_calls for c in self.connections) and self.loop.time() < end:
            await asyncio.sleep(0.01)
        for conn in list(self.connections):
            conn.goaway()
        end = self.loop.time() + 0.5  # the GOAWAYs' bytes leave; clients close
        while self.connections and self.loop.time() < end:
            await asyncio.sleep(0.01)
        for conn in list(self.connections):
            conn.abort()
        await self._server.wait_closed()

    # ------------------------------------------------------------------ calls

    def dispatch(self, conn, events: list) -> None:
        """Every request one chunk of bytes completed: (call, message), or (call, None)
        for an ``infer_stream``'s end of input. Called by the compiled layer."""
        check = self.auth.enabled
        for call, frame in events:
            if call.finished:
                continue
            try:
                if call.method == STREAM:
                    self._stream_event(call, frame)
                    continue
                if check and not self._allowed(call):
                    continue
                call.task = self._unary(call, frame, call.method == RESULT)
            except Exception:  # a bug: this call fails alone; the chunk's others go on
                log.exception("starting a call failed")
                if not call.finished:
                    call.finish(INTERNAL, "internal error")

    def _allowed(self, call) -> bool:
        try:
            self.auth.check(call.token, "infer")
        except AuthError as exc:
            code, message = refusal(exc)
            call.finish(code.value[0], message)
            return False
        return True

    def _unary(self, call, frame: bytes, want_result: bool):
        """The call's run (``executor.task_run``): no asyncio task; the link's callback
        answers the call (``_answered``) as soon as the instance's reply is read."""
        timeout = call.timeout
        run = self._run_task(frame, want_result, None if timeout < 0 else timeout,
                             self._answered, call)  # fmt: skip
        if timeout >= 0 and not run.over:
            run.timer = self.loop.call_later(timeout, self._expire, call)
        return run

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

    def _stream_event(self, call, frame: bytes | None) -> None:
        state = call.task
        if state is None:
            if self.auth.enabled and not self._allowed(call):
                return
            state = call.task = _Stream(call, self.loop, min(FIRST_WINDOW, self.stream_window))
        if frame is None:
            state.ended = True
            state.done_if_over()
            return
        state.backlog.append(frame)
        self._pump(state)

    def _pump(self, state: _Stream) -> None:
        """Start the stream's backlog while its window allows and its client takes its
        answers (at most QUEUED_HIGH bytes unsent); past that, hold the stream (back-
        pressure: its HTTP/2 window stays shut until tasks finish, or ``writable``).
        A loop, not recursion: runs that end at once (a bad message) come back here."""
        if state.pumping:
            return
        state.pumping = True
        call = state.call
        try:
            while (state.backlog and len(state.pending) < state.window
                   and call.queued <= self._queued_high):  # fmt: skip
                if call.finished:
                    state.backlog.clear()
                    return
                frame = state.backlog.popleft()
                run = self._run_task(frame, True, state.remaining(self.loop),
                                     self._stream_answered, state)  # fmt: skip
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
        a failed task fails alone. Then the next ones in its backlog start."""
        state = run.call
        state.pending.discard(run)
        call = state.call
        if call.finished:
            return
        call.send(answer if reject is None else error_answer(run.frame, reject))
        if call.queued < PROMPT_BYTES and state.window < self.stream_window:
            state.window += 1
        self._pump(state)

    def writable(self, call) -> None:
        """The compiled layer: the client took enough of this call's queued answers
        (a stream that stopped starting tasks for them may go on)."""
        state = call.task
        if isinstance(state, _Stream) and not call.finished:
            self._pump(state)
