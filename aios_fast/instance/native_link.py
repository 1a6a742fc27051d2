"""The instance's native link listener (``aios_fast.wire``, "Native link"): a Unix
socket in the runtime folder (mode 0600, for executors on this host) and a TCP port
(TLS when the instance serves TLS), both feeding the instance's ``LinkServer`` exactly
as its gRPC stream does. A connection must say HELLO within ``HANDSHAKE_TIMEOUT``
seconds, with a token when the instance requires one; until then it may send at most
64 KiB. While the executor does not read the replies (the transport's buffer is over
its high-water mark) the connection is not read either: no new tasks are taken.
"""

from __future__ import annotations

import logging

import msgspec

from ..auth import Auth
from ..service.framed import FrameWriter
from ..service.framed_listener import FramedListener, ServerConn
from ..tls import TLS
from ..wire import decode_tasks
from .link_server import LinkServer, _Stream, drop_answered_acks

__all__ = ["HANDSHAKE_TIMEOUT", "NativeLinkListener"]

log = logging.getLogger("aios_fast.instance")
HANDSHAKE_TIMEOUT = 10.0
MAX_CONNECTIONS = 1024  # executors' links at once (past it: closed at once)


class Hello(msgspec.Struct):
    v: int = 1
    max_message: int | None = None
    run_timeout: float = 0.0
    token: str = ""


_hello = msgspec.msgpack.Decoder(Hello)
_encode = msgspec.msgpack.encode


class _Conn(ServerConn):
    """One executor's connection."""

    what = "native link"

    def __init__(self, listener: NativeLinkListener) -> None:
        super().__init__(listener.connections, MAX_CONNECTIONS)
        self.listener = listener
        self.writer: FrameWriter | None = None
        self.stream: _Stream | None = None

    def handshake_seconds(self) -> float:
        return HANDSHAKE_TIMEOUT

    # what LinkServer needs of a stream's writer
    def put(self, item, size: int = 0) -> None:
        if self.writer is not None:
            self.writer.put(item, size)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        if self.transport is not None:
            self.transport.close()

    def on_batch(self, body) -> None:
        assert self.stream is not None
        self.listener.links.on_tasks(self.stream, decode_tasks(body))

    def hello(self, body) -> bool:
        listener = self.listener
        try:
            hello = _hello.decode(body)
        except msgspec.DecodeError as exc:
            self.refuse(f"bad HELLO: {exc}")
            return False
        if listener.links.leaving:
            self.refuse("the instance is stopping")
            return False
        self.writer = self.admit(listener.auth, hello.token, listener.max_message, listener.nonce,
                                 defer=True, prepare=drop_answered_acks)  # fmt: skip
        if self.writer is None:
            return False
        self.stream = listener.links.open(self, hello.max_message, hello.run_timeout)
        return True

    def pause_writing(self) -> None:
        super().pause_writing()
        if self.transport is not None:
            self.transport.pause_reading()  # take no new tasks while replies pile up

    def resume_writing(self) -> None:
        super().resume_writing()
        if self.transport is not None:
            self.transport.resume_reading()

    def ended(self, reason: str) -> None:
        if self.writer is not None:
            self.writer.closed = True
        if self.stream is not None:
            self.listener.links.broken(self.stream)


class NativeLinkListener(FramedListener):
    """Listens for executors' native links for one instance."""

    def __init__(self, links: LinkServer, auth: Auth, tls: TLS, host: str,
                 max_message: int, unix: bool = True, port: int = 0) -> None:  # fmt: skip
        super().__init__(lambda: _Conn(self), tls, host, "link", unix, port)
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
