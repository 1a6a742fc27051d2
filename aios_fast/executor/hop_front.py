"""The executor's framed front for vDAG hops (``aios_fast.wire``, "vDAG hop").

A vDAG task goes block to block: the instance that ran a node hands its output to the
next block's executor, the controller hands a new task to the input node's. On the
gRPC front a hop is a message on a grpc.aio ``infer_stream`` (``vdag.streams``), whose
client side (grpc's completion queue, a call object per stream, a write op per message)
measured most of a chain's CPU. Here the same tasks arrive as the native link's frames
(``service.framed``): an asyncio Protocol entered once per chunk, every task of a BATCH
started with ``Router.run_task`` as an ``infer`` call is (the same books, limits and
retries; answered ``ACCEPTED`` once an instance took it: the vDAG node then runs there and
reports its own outcome), or with the executor's
error packet when no instance took it; the answers written once per loop turn.

Listens on a Unix socket (0600, runtime folder, ``hop-{port}-{pid}.sock``) and a TCP
port (TLS as the gRPC port); the sender learns both from ``HOP_ENDPOINTS_METHOD`` on
the gRPC port. A connection must say HELLO within ``HANDSHAKE_TIMEOUT`` seconds (at
most 64 KiB before it) with a token giving the infer role when one is required; past
``max_connections`` open (the executor gives it a quarter of its connection limit) a
new one is closed at once, so idle connections cannot take the executor's descriptors. At most
``window`` of a connection's tasks run at once: past that it is not read (nor while its
answers are not read), so a sender cannot queue unbounded work. A connection that ends
cancels its tasks still running (as a reset stream does).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable

import msgspec

from ..auth import Auth
from ..service.framed import FrameWriter
from ..service.framed_listener import FramedListener, ServerConn
from ..tls import TLS
from ..wire import decode_hop_hello, decode_hops
from .task_run import error_answer

__all__ = ["HANDSHAKE_TIMEOUT", "HopFront"]

log = logging.getLogger("aios_fast.executor")
HANDSHAKE_TIMEOUT = 10.0
WINDOW = 4096  # a connection's tasks running at once before it is not read


class _Conn(ServerConn):
    """One sender's connection: its tasks in flight by id."""

    what = "hop front"

    def __init__(self, front: HopFront) -> None:
        super().__init__(front.connections, front.max_connections)
        self.front = front
        self.writer: FrameWriter | None = None
        self.running: dict[int, object] = {}  # id -> TaskRun
        self.backlog: deque[tuple[int, float, bytes]] = deque()  # read, not yet started
        self.paused = False
        self.pumping = False
        self.later = False  # a _pump is scheduled for the next loop turn

    def handshake_seconds(self) -> float:
        return HANDSHAKE_TIMEOUT

    def on_batch(self, body) -> None:
        self.backlog.extend(decode_hops(body))
        self._pump()

    def hello(self, body) -> bool:
        front = self.front
        try:
            hello = decode_hop_hello(body)
        except msgspec.DecodeError as exc:
            self.refuse(f"bad HELLO: {exc}")
            return False
        if front.closing:
            self.refuse("the executor is stopping")
            return False
        self.writer = self.admit(front.auth, hello.token, front.max_message,
                                 front.listener.nonce)  # fmt: skip
        return self.writer is not None

    def _pump(self) -> None:
        """Start hops from the backlog while fewer than ``window`` run and the answers
        are read; the connection is read only when the backlog is empty (so one large
        batch does not start more than the window either). A hop id already in flight
        ends the connection (its runs could no longer be told apart)."""
        if self.pumping:  # (a run that ended at once, inside the loop below)
            return
        run_task, done, running = self.front.run_task, self._done, self.running
        backlog, window, writer = self.backlog, self.front.window, self.writer
        assert writer is not None
        self.pumping = True
        try:
            # (answers not yet written count too: runs that end at once, refused, are
            # not in ``running``; the rest waits for the next turn, after the write)
            while backlog and len(running) < window and len(writer) < window \
                    and not self.write_paused:  # fmt: skip
                hop_id, timeout, message = backlog.popleft()
                if hop_id in running:
                    self.fail(f"hop id {hop_id} is already in flight")
                    return
                # answered when an instance takes it (``infer``): a vDAG node reports its
                # own outcome
                run = run_task(message, False, timeout if timeout > 0 else None, done, hop_id)
                if not run.over:  # (a run that ended at once answered already)
                    running[hop_id] = run
        finally:
            self.pumping = False
        if backlog and len(writer) >= window and not self.write_paused and not self.later:
            self.later = True  # after this turn's write (if that fills the transport's
            asyncio.get_running_loop().call_soon(self._later)  # buffer: resume_writing)
        self._flow()

    def _later(self) -> None:
        self.later = False
        if self.writer is not None and not self.writer.closed:
            self._pump()

    def _done(self, run, answer: bytes | None, reject) -> None:
        hop_id = run.call
        if self.running.get(hop_id) is run:
            del self.running[hop_id]
        if reject is not None:
            answer = error_answer(run.frame, reject)
        assert answer is not None
        if self.writer is not None:
            self.writer.put((hop_id, answer), len(answer))
        if self.backlog:
            self._pump()
        elif self.paused:
            self._flow()

    def _flow(self) -> None:
        """Read while the backlog is empty, fewer than ``window`` tasks run and the
        answers are read."""
        transport = self.transport
        if transport is None:
            return
        stop = bool(self.backlog) or len(self.running) >= self.front.window or self.write_paused
        if stop != self.paused:
            self.paused = stop
            if stop:
                transport.pause_reading()
            else:
                transport.resume_reading()

    def pause_writing(self) -> None:
        super().pause_writing()
        self._flow()

    def resume_writing(self) -> None:
        super().resume_writing()
        self._pump()

    def ended(self, reason: str) -> None:
        if self.writer is not None:
            self.writer.closed = True
        self.backlog.clear()
        running, self.running = self.running, {}
        for run in running.values():
            run.cancel()  # type: ignore[attr-defined]


class HopFront:
    """The executor's hop listener. ``run_task`` is ``Router.run_task``."""

    def __init__(self, run_task: Callable, auth: Auth, tls: TLS, host: str, max_message: int,
                 unix: bool = True, window: int = WINDOW,
                 max_connections: int = 1024) -> None:  # fmt: skip
        self.run_task = run_task
        self.max_connections = max_connections  # past it, a connection is closed at once
        self.auth = auth
        self.max_message = max_message
        self.window = window
        self.closing = False
        self.connections: set[_Conn] = set()
        self.listener = FramedListener(lambda: _Conn(self), tls, host, "hop", unix)

    def endpoints(self) -> bytes:
        """HOP_ENDPOINTS_METHOD's answer."""
        return msgspec.msgpack.encode(self.listener.endpoints())

    async def start(self) -> None:
        await self.listener.start()

    async def stop(self, grace: float = 0.0) -> None:
        """No new connections; those open end once their tasks are answered (at most
        ``grace`` seconds), then they are cut."""
        self.closing = True
        await self.listener.close()
        loop = asyncio.get_running_loop()
        end = loop.time() + grace
        while any(c.running for c in self.connections) and loop.time() < end:
            await asyncio.sleep(0.01)
        for conn in list(self.connections):
            if conn.writer is not None:
                conn.writer.close()
            if conn.transport is not None:
                conn.transport.close()
