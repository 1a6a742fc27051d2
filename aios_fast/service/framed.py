"""The native instance link's connection, shared by both ends (``aios_fast.wire``,
"Native link", describes the frames).

``FramedProtocol`` is an asyncio Protocol over TCP (optionally TLS) or a Unix socket:
Python is entered once per chunk read (``on_frames`` with every frame the chunk
completed, split by ``aios_fast._link``'s compiled reader) and writes are coalesced per
loop turn (``FrameWriter``: every item put during a turn goes out in one write, in
batches of at most ``LINK_BATCH_BYTES`` unless one item alone is larger). No thread, no
coroutine per message.
"""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import Callable

import msgspec

from .._select import load
from ..wire import BATCH, LINK_BATCH_BYTES, PING, PONG, REFUSE, WELCOME

__all__ = [
    "ClientConn",
    "Endpoints",
    "FrameError",
    "FrameWriter",
    "FramedProtocol",
    "Refused",
    "Welcome",
    "decode_endpoints",
    "decode_welcome",
    "frame",
    "framing",
    "framing_compiled",
]

framing = load("_link")
FrameError = framing.FrameError
frame = framing.frame
_HEAD = struct.Struct("<IB")


class Endpoints(msgspec.Struct):
    """Where a framed front listens (the answer of its gRPC port's endpoints call)."""

    unix: str = ""
    tcp: int = 0
    nonce: str = ""


class Welcome(msgspec.Struct):
    """A framed front's WELCOME: its message limit, and the nonce its endpoints named."""

    max_message: int
    nonce: str = ""


decode_endpoints = msgspec.msgpack.Decoder(Endpoints).decode
decode_welcome = msgspec.msgpack.Decoder(Welcome).decode


def framing_compiled() -> bool:
    """Whether the framing is compiled here (the pure twin keeps gRPC unless asked)."""
    return framing.IMPLEMENTATION == "compiled"


_encoder = msgspec.msgpack.Encoder()


class FrameWriter:
    """Items for the peer (``put(item, size)``), written once per loop turn as BATCH
    frames. ``defer``: the flush waits one more turn, so the work the items started
    (a task run inline) can put its reply in the same write; ``prepare(batch)`` may
    thin a batch before it is encoded (the instance drops ACKs answered in it)."""

    __slots__ = ("_defer", "_deferred", "_items", "_loop", "_prepare", "_scheduled", "_sizes",
                 "closed", "transport")  # fmt: skip

    def __init__(self, transport: asyncio.Transport, defer: bool = False,
                 prepare: Callable[[list], list] | None = None) -> None:  # fmt: skip
        self.transport = transport
        self._prepare = prepare
        self._loop = asyncio.get_running_loop()
        self._items: list = []
        self._sizes: list[int] = []
        self._scheduled = False
        self._defer = defer
        self._deferred = False
        self.closed = False

    def __len__(self) -> int:
        return len(self._items)

    def put(self, item, size: int = 0) -> None:
        if self.closed:
            return
        self._items.append(item)
        self._sizes.append(size)
        if not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        if self._defer and not self._deferred:
            self._deferred = True
            self._loop.call_soon(self._flush)
            return
        self._scheduled = self._deferred = False
        items, sizes = self._items, self._sizes
        if not items or self.closed:
            return
        self._items, self._sizes = [], []
        if self.transport.is_closing():
            return
        out = bytearray()
        cut = 0
        while cut < len(items):
            start, total = cut, 0
            while cut < len(items) and (cut == start or total + sizes[cut] <= LINK_BATCH_BYTES):
                total += sizes[cut]
                cut += 1
            batch = items[start:cut]
            if self._prepare is not None:
                batch = self._prepare(batch)
            at = len(out)
            out += b"\0\0\0\0\0"
            _encoder.encode_into(batch, out, at + 5)
            _HEAD.pack_into(out, at, len(out) - at - 5, BATCH)
        self.transport.write(out)

    def close(self) -> None:
        """Write what is queued, then take nothing more."""
        if not self.closed:
            self._defer = False
            self._flush()
            self.closed = True


class FramedProtocol(asyncio.Protocol):
    """One end of a native link connection. Subclasses implement ``on_frames`` (called
    once per chunk with its complete frames) and ``on_lost(reason)``."""

    limit = 64 * 1024  # the largest frame taken before the handshake

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.reader = framing.FrameReader(self.limit)
        self.write_paused = False
        self.lost: asyncio.Future = asyncio.get_running_loop().create_future()

    def connection_made(self, transport) -> None:
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass

    def data_received(self, data: bytes) -> None:
        try:
            frames = self.reader.feed(data)
        except FrameError as exc:
            self.fail(str(exc))
            return
        if frames:
            self.on_frames(frames)

    def on_frames(self, frames: list) -> None:
        raise NotImplementedError

    def on_lost(self, reason: str) -> None:
        pass

    def send(self, kind: int, body: bytes = b"") -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(frame(kind, body))

    def fail(self, reason: str) -> None:
        """End the connection at once (protocol error, hung peer)."""
        if not self.lost.done():
            self.lost.set_result(reason)
        if self.transport is not None:
            self.transport.abort()

    def eof_received(self) -> bool:
        return False  # close

    def connection_lost(self, exc: Exception | None) -> None:
        reason = f"the connection broke ({exc})" if exc is not None else "the peer closed it"
        if not self.lost.done():
            self.lost.set_result(reason)
        self.transport = None
        self.on_lost(self.lost.result())

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False


class Refused(ConnectionError):
    """The peer said REFUSE (why), or its WELCOME could not be read."""


class ClientConn(FramedProtocol):
    """The connecting end of a framed connection: ``welcome`` resolves with the peer's
    ``Welcome``, or fails with ``Refused`` (REFUSE, a bad WELCOME) or ConnectionError
    (the connection ended first); PING is answered from the event loop; each BATCH goes
    to ``on_batch(body)`` (a msgspec.DecodeError there cuts the connection: the state
    behind it is unknown; ``what`` names the batch in that reason)."""

    what = "batch"

    def __init__(self) -> None:
        super().__init__()
        self.welcome: asyncio.Future = asyncio.get_running_loop().create_future()

    def on_batch(self, body) -> None:
        raise NotImplementedError

    def on_frames(self, frames: list) -> None:
        for kind, body in frames:
            if kind == BATCH:
                try:
                    self.on_batch(body)
                except msgspec.DecodeError as exc:
                    self.fail(f"a malformed {self.what} ({exc})")
                    return
            elif kind == PING:
                self.send(PONG)
            elif kind == WELCOME and not self.welcome.done():
                try:
                    self.welcome.set_result(decode_welcome(body))
                except msgspec.DecodeError as exc:
                    self.welcome.set_exception(Refused(f"bad WELCOME: {exc}"))
            elif kind == REFUSE and not self.welcome.done():
                self.welcome.set_exception(Refused(bytes(body).decode(errors="replace")))

    def on_lost(self, reason: str) -> None:
        if not self.welcome.done():
            self.welcome.set_exception(ConnectionError(reason))
