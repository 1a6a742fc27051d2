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

from ..auth import prune_stale, runtime_dir
from ..tls import TLS

__all__ = ["FramedListener"]

log = logging.getLogger("aios_fast.service")
_MAX_UNIX_PATH = 100  # sun_path holds 108 bytes: a longer folder gets TCP only


class FramedListener:
    """Listens on TCP and (``unix``) a Unix socket; ``protocol()`` makes each
    connection's Protocol (a ``service.framed.FramedProtocol``)."""

    prefix = "link"

    def __init__(self, protocol: Callable[[], asyncio.Protocol], tls: TLS, host: str,
                 unix: bool = True, port: int = 0) -> None:  # fmt: skip
        self.protocol = protocol
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
