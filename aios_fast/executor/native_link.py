"""The executor's side of the native instance link (``aios_fast.wire``, "Native link").

``NativeLink`` is an ``InstanceLink`` (the same task books, acknowledgements, refusals,
LEAVING, expiry) whose sessions are native connections instead of gRPC streams: it asks
the instance where its native link listens (``ENDPOINTS_METHOD``), connects to the
Unix socket when the instance is on this host (the WELCOME's nonce proves it) or to
its TCP port (TLS when the link has a CA), says HELLO with the token and limits, then
reads reply batches once per chunk (``service.framed``) and writes task batches once
per loop turn. Keepalive is its own PING, answered by the instance's event loop: a
stopped or wedged instance goes silent and the link is cut after ``keepalive``
seconds, its acknowledged tasks lost and the others retried elsewhere. An instance
that does not offer a native link keeps the gRPC stream.
"""

from __future__ import annotations

import asyncio
import os
from time import perf_counter

import grpc
import msgspec

from ..service.framed import (
    ClientConn,
    Endpoints,
    FrameWriter,
    Refused,
    Welcome,
    decode_endpoints,
    framing_compiled,
)
from ..wire import ENDPOINTS_METHOD, HELLO, PING, decode_replies, link_limit
from .links import InstanceLink, log

__all__ = ["HANDSHAKE_TIMEOUT", "NativeLink", "framing_compiled", "resolve_link"]

HANDSHAKE_TIMEOUT = 5.0  # seconds for the endpoints call, the connection and WELCOME


def resolve_link(choice: str) -> str:
    """The instance links' transport: "auto" is native where the framing is compiled
    (the pure-Python twins keep gRPC unless native is asked for)."""
    if choice not in ("auto", "native", "tcp", "grpc"):
        raise ValueError(f"link must be auto, native, tcp or grpc, not {choice!r}")
    if choice == "auto":
        return "native" if framing_compiled() else "grpc"
    return choice


class _Client(ClientConn):
    """The executor's end of one native connection."""

    what = "reply batch"

    def __init__(self, link: NativeLink) -> None:
        super().__init__()
        self.link = link

    def on_frames(self, frames: list) -> None:
        link = self.link
        link.last_heard = perf_counter()
        link.ping_sent = 0.0
        super().on_frames(frames)

    def on_batch(self, body) -> None:
        reply = self.link._reply
        for task_id, reply_kind, payload in decode_replies(body):
            reply(task_id, reply_kind, payload)


class NativeLink(InstanceLink):
    """An instance link over the native transport (falls back to the gRPC stream)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.transport = "native"  # "unix", "tcp" once connected; "grpc" if not offered
        self.ping_sent = 0.0
        self._proto: _Client | None = None

    def _abort_session(self) -> None:
        if self._proto is not None:
            self._proto.fail(self._stalled or "ended by the executor")
        else:
            super()._abort_session()

    async def _session(self) -> str:
        if self.transport == "grpc":
            return await super()._session()
        endpoints = await self._endpoints()
        if endpoints is None:  # an instance without a native link: keep gRPC
            self.transport = "grpc"
            log.info("instance %s offers no native link: using the gRPC stream",
                     self.instance_id)  # fmt: skip
            return await super()._session()
        proto, welcome = await self._connect(endpoints)
        try:
            return await self._serve(proto, welcome)
        finally:
            self._proto = None
            if proto.transport is not None:
                if self._closing:
                    proto.transport.close()  # what is queued still goes
                else:
                    proto.transport.abort()

    async def _endpoints(self) -> Endpoints | None:
        settings = self.settings
        channel = settings.tls.aio_channel(self.target, settings.channel_options())
        try:
            call = channel.unary_unary(ENDPOINTS_METHOD)
            reply = await call(b"", timeout=HANDSHAKE_TIMEOUT, metadata=settings.token_metadata,
                               wait_for_ready=True)  # fmt: skip
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.UNIMPLEMENTED:
                return None
            raise
        finally:
            await channel.close()
        return decode_endpoints(reply)

    async def _connect(self, ep: Endpoints) -> tuple[_Client, Welcome]:
        """A connection that said WELCOME: the Unix socket when it is this instance's,
        else TCP."""
        loop = asyncio.get_running_loop()
        if ep.unix and self.settings.transport != "tcp" and os.path.exists(ep.unix):
            try:
                _, unix = await loop.create_unix_connection(lambda: _Client(self), ep.unix)
                welcome = await self._handshake(unix)
                if welcome.nonce == ep.nonce:
                    self.transport = "unix"
                    return unix, welcome
                unix.fail("another instance")
            except OSError:
                pass  # not ours to reach (another host's folder, permissions): use TCP
        host = self.target.rpartition(":")[0].strip("[]")
        ssl = self.settings.tls.client_context()
        _, tcp = await asyncio.wait_for(
            loop.create_connection(lambda: _Client(self), host, ep.tcp, ssl=ssl,
                                   server_hostname=host if ssl is not None else None),
            HANDSHAKE_TIMEOUT,
        )  # fmt: skip
        welcome = await self._handshake(tcp)
        self.transport = "tcp"
        return tcp, welcome

    async def _handshake(self, proto: _Client) -> Welcome:
        settings = self.settings
        token = next((v for k, v in settings.token_metadata if k == "authorization"), "")
        hello = {"v": 1, "max_message": settings.max_message,
                 "run_timeout": settings.run_timeout, "token": token}  # fmt: skip
        proto.send(HELLO, msgspec.msgpack.encode(hello))
        try:
            welcome = await asyncio.wait_for(asyncio.shield(proto.welcome), HANDSHAKE_TIMEOUT)
        except Refused as exc:
            proto.fail("refused")
            raise ConnectionError(f"the instance refused the link: {exc}") from None
        except (asyncio.TimeoutError, ConnectionError):
            proto.fail("no WELCOME")
            raise
        proto.reader.limit = link_limit(settings.max_message)
        return welcome

    async def _serve(self, proto: _Client, welcome: Welcome) -> str:
        """Tasks flow until the connection ends; returns why it ended."""
        assert proto.transport is not None
        self._proto = proto
        self.last_heard = perf_counter()
        self.ping_sent = 0.0
        self._connected(FrameWriter(proto.transport), welcome.max_message)
        keepalive = self.settings.keepalive
        lost = proto.lost
        while not lost.done():
            await asyncio.wait((lost,), timeout=keepalive / 2 if keepalive > 0 else None)
            if lost.done():
                break
            now = perf_counter()
            if self.ping_sent:
                if now - self.ping_sent >= keepalive:
                    proto.fail(f"it answered no ping for {keepalive:g}s (stopped or wedged)")
            elif now - self.last_heard >= keepalive:
                self.ping_sent = now
                proto.send(PING)
        return lost.result()
