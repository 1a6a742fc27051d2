"""Where a native framed connection is accepted (``service.framed``): a TCP port (TLS
when the server has it) and, for peers on this host, a Unix socket in the runtime folder
(mode 0600, named ``{prefix}-{port}-{pid}.sock``; stale ones of killed processes are
pruned). Peers learn both from a unary gRPC call on the server's main port, whose
answer also carries a ``nonce`` the server's WELCOME repeats: a Unix socket is used only
when the path exists on the peer's host and the nonce proves it is that server.

Used by the instance (its native link, ``instance.native_link``) and by the executor
(vDAG hops, ``executor.hop_front``); each gives its connection Protocol.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import msgspec

from ..auth import Auth, AuthError, prune_stale, runtime_dir
from ..logs import RateLimitedLog
from ..tls import TLS
from ..wire import BATCH, HELLO, HOP_ENDPOINTS_METHOD, PING, PONG, REFUSE, WELCOME, link_limit
from .framed import FramedProtocol, FrameWriter

__all__ = ["FramedListener", "ServerConn", "endpoints_handler"]

log = logging.getLogger("aios_fast.service")
_over_limit = RateLimitedLog(log, 10.0)
_MAX_UNIX_PATH = 100  # sun_path holds 108 bytes: a longer folder gets TCP only


class ServerConn(FramedProtocol):
    """A listener's connection: HELLO first (within ``handshake_seconds()``, at most
    64 KiB before it; anything else first is REFUSEd), then BATCH frames; PING is
    answered from the event loop. Subclasses implement ``hello(body)`` (check it, send
    WELCOME and return True, or ``refuse`` and return False), ``on_batch(body)`` (a
    msgspec.DecodeError there cuts the connection: not a peer of ours) and may
    implement ``ended(reason)``. ``what`` names the listener in log lines."""

    what = "framed listener"

    def __init__(self, connections: set, limit: int = 0) -> None:
        super().__init__()
        self.connections = connections
        self.limit = limit  # connections at most (0: no bound); past it: closed at once
        self.welcomed = False
        self._timer: asyncio.TimerHandle | None = None

    def handshake_seconds(self) -> float:
        return 10.0

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        if self.limit and len(self.connections) >= self.limit:
            _over_limit.warning(self.what, f"{self.what}: {self.limit} connections are "
                                           "open: refusing more")  # fmt: skip
            transport.abort()  # (its descriptor is free again at once)
            return
        self.connections.add(self)
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(self.handshake_seconds(), self.fail, "no HELLO in time")

    def on_frames(self, frames: list) -> None:
        for kind, body in frames:
            if kind == BATCH and self.welcomed:
                try:
                    self.on_batch(body)
                except msgspec.DecodeError as exc:
                    log.warning("%s: a malformed batch (%s); closing it", self.what, exc)
                    self.fail(f"malformed batch: {exc}")
                    return
            elif kind == PING:
                self.send(PONG)
            elif kind == HELLO and not self.welcomed:
                if self.hello(body):
                    self.welcomed = True
                    if self._timer is not None:
                        self._timer.cancel()
            elif not self.welcomed:
                self.refuse("HELLO must come first")
                return

    def hello(self, body) -> bool:
        raise NotImplementedError

    def admit(self, auth: Auth, token: str, max_message: int, nonce: str,
              **writer: Any) -> FrameWriter | None:  # fmt: skip
        """After a HELLO: its token checked for the infer role (REFUSE and None if not),
        then the frame limit raised to ``link_limit(max_message)``, WELCOME sent and
        the connection's writer returned (``writer``: FrameWriter's options)."""
        try:
            auth.check(token or None, "infer")
        except AuthError as exc:
            self.refuse(str(exc))
            return None
        assert self.transport is not None
        self.reader.limit = link_limit(max_message)
        out = FrameWriter(self.transport, **writer)
        self.send(WELCOME, msgspec.msgpack.encode({"max_message": max_message, "nonce": nonce}))
        return out

    def on_batch(self, body) -> None:
        raise NotImplementedError

    def refuse(self, why: str) -> None:
        self.send(REFUSE, why.encode())
        if self.transport is not None:
            self.transport.close()

    def on_lost(self, reason: str) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self.connections.discard(self)
        self.ended(reason)

    def ended(self, reason: str) -> None:
        pass


class FramedListener:
    """Listens on TCP and (``unix``) a Unix socket; ``protocol()`` makes each
    connection's Protocol (a ``service.framed.FramedProtocol``); ``prefix`` names the
    socket file (and the listener in log lines)."""

    def __init__(self, protocol: Callable[[], asyncio.Protocol], tls: TLS, host: str,
                 prefix: str, unix: bool = True, port: int = 0) -> None:  # fmt: skip
        self.protocol = protocol
        self.prefix = prefix
        self.tls = tls
        self.host = host
        self.port = port
        self.nonce = secrets.token_hex(16)
        self.path = ""
        self._unix = unix
        self._servers: list[asyncio.AbstractServer] = []

    def endpoints(self) -> dict:
        return {"unix": self.path, "tcp": self.port, "nonce": self.nonce}

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(self.protocol, self.host, self.port,
                                          ssl=self.tls.server_context())  # fmt: skip
        self.port = server.sockets[0].getsockname()[1]
        self._servers.append(server)
        if self._unix:
            try:
                await self._listen_unix(loop)
            except OSError as exc:  # a read-only home, say: peers here use TCP
                log.warning("%s: no Unix socket (%s); TCP only", self.prefix, exc)

    async def _listen_unix(self, loop: asyncio.AbstractEventLoop) -> None:
        path = self._socket_path()
        if len(str(path)) > _MAX_UNIX_PATH:
            log.info("%s: %s is too long for a Unix socket; TCP only", self.prefix, path)
            return
        with contextlib.suppress(FileNotFoundError):
            path.unlink()  # a stale one of a killed process that had this name
        old = os.umask(0o177)  # the socket is created 0600
        try:
            server = await loop.create_unix_server(self.protocol, str(path))
        finally:
            os.umask(old)
        self.path = str(path)
        self._servers.append(server)

    def _socket_path(self) -> Path:
        folder = runtime_dir()
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        prune_stale(folder, f"{self.prefix}-*.sock")  # sockets of processes killed with -9
        return folder / f"{self.prefix}-{self.port}-{os.getpid()}.sock"

    async def close(self) -> None:
        """Stop listening and remove the socket (connections are the owner's to end)."""
        for server in self._servers:
            server.close()
        self._servers.clear()
        if self.path:
            with contextlib.suppress(OSError):
                os.unlink(self.path)


def endpoints_handler(endpoints: Callable[[], bytes]) -> grpc.GenericRpcHandler:
    """``HOP_ENDPOINTS_METHOD`` on a grpc.aio server, answered with ``endpoints()``
    (a listener's ``endpoints``, msgpack): where senders find a framed front served
    beside a grpcio port."""

    async def answer(request: bytes, context) -> bytes:
        return endpoints()

    service, method = HOP_ENDPOINTS_METHOD.split("/")[1:]
    return grpc.method_handlers_generic_handler(
        service, {method: grpc.unary_unary_rpc_method_handler(answer)}
    )
