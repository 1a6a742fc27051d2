"""The instance's native link listener (``aios_fast.wire``, "Native link"): a Unix
socket in the runtime folder (mode 0600, for executors on this host) and a TCP port
(TLS when the instance serves TLS), both feeding the instance's ``LinkServer`` exactly
as its gRPC stream does. A connection must say HELLO within ``HANDSHAKE_TIMEOUT``
seconds, with a token when the instance requires one; until then it may send at most
64 KiB. While the executor does not read the replies (the transport's buffer is over
its high-water mark) the connection is not read either: no new tasks are taken.
"""

from __future__ import annotations

import asyncio
import logging

import msgspec

from ..auth import Auth, AuthError
from ..service.framed import FramedProtocol, FrameWriter
from ..service.framed_listener import FramedListener
from ..tls import TLS
from ..wire import BATCH, HELLO, PING, PONG, REFUSE, WELCOME, decode_tasks, link_limit
from .link_server import LinkServer, _Stream, drop_answered_acks

__all__ = ["HANDSHAKE_TIMEOUT", "NativeLinkListener"]

log = logging.getLogger("aios_fast.instance")
HANDSHAKE_TIMEOUT = 10.0


class Hello(msgspec.Struct):
    v: int = 1
    max_message: int | None = None
    run_timeout: float = 0.0
    token: str = ""


_hello = msgspec.msgpack.Decoder(Hello)
_encode = msgspec.msgpack.encode


class _Conn(FramedProtocol):
    """One executor's connection."""

    def __init__(self, listener: NativeLinkListener) -> None:
        super().__init__()
        self.listener = listener
        self.writer: FrameWriter | None = None
        self.stream: _Stream | None = None
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self.listener.connections.add(self)
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(HANDSHAKE_TIMEOUT, self.fail, "no HELLO in time")

    # what LinkServer needs of a stream's writer
    def put(self, item, size: int = 0) -> None:
        if self.writer is not None:
            self.writer.put(item, size)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        if self.transport is not None:
            self.transport.close()

    def on_frames(self, frames: list) -> None:
        links = self.listener.links
        for kind, body in frames:
            if kind == BATCH and self.stream is not None:
                try:
                    tasks = decode_tasks(body)
                except msgspec.DecodeError as exc:  # not an executor of ours: cut
                    log.warning("native link: a malformed task batch (%s); closing it", exc)
                    self.fail(f"malformed batch: {exc}")
                    return
                links.on_tasks(self.stream, tasks)
            elif kind == PING:
                self.send(PONG)
            elif kind == HELLO and self.stream is None:
                self._hello(body)
            elif self.stream is None:
                self._refuse("HELLO must come first")
                return

    def _hello(self, body) -> None:
        listener = self.listener
        try:
            hello = _hello.decode(body)
        except msgspec.DecodeError as exc:
            self._refuse(f"bad HELLO: {exc}")
            return
        try:
            listener.auth.check(hello.token or None, "infer")
        except AuthError as exc:
            self._refuse(str(exc))
            return
        if listener.links.leaving:
            self._refuse("the instance is stopping")
            return
        if self._timer is not None:
            self._timer.cancel()
        self.reader.limit = link_limit(listener.max_message)
        assert self.transport is not None
        self.writer = FrameWriter(self.transport, defer=True, prepare=drop_answered_acks)
        self.send(WELCOME, _encode({"max_message": listener.max_message,
                                    "nonce": listener.nonce}))  # fmt: skip
        self.stream = listener.links.open(self, hello.max_message, hello.run_timeout)

    def _refuse(self, why: str) -> None:
        self.send(REFUSE, why.encode())
        if self.transport is not None:
            self.transport.close()

    def pause_writing(self) -> None:
        super().pause_writing()
        if self.transport is not None:
            self.transport.pause_reading()  # take no new tasks while replies pile up

    def resume_writing(self) -> None:
        super().resume_writing()
        if self.transport is not None:
            self.transport.resume_reading()

    def on_lost(self, reason: str) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self.listener.connections.discard(self)
        if self.writer is not None:
            self.writer.closed = True
        if self.stream is not None:
            self.listener.links.broken(self.stream)


class NativeLinkListener(FramedListener):
    """Listens for executors' native links for one instance."""

    prefix = "link"

    def __init__(self, links: LinkServer, auth: Auth, tls: TLS, host: str,
                 max_message: int, unix: bool = True, port: int = 0) -> None:  # fmt: skip
        super().__init__(lambda: _Conn(self), tls, host, unix, port)
        self.links = links
        self.auth = auth
        self.max_message = max_message
        self.connections: set[_Conn] = set()

    async def close(self) -> None:
        """Stop listening (the streams end through the LinkServer) and remove the socket."""
        await super().close()
        for conn in list(self.connections):
            if conn.stream is None:
                conn.fail("the instance stopped")
