"""The controller's framed answers front: where the output nodes' instances hand back
results and failure reports without grpc.aio (``vdag.hop_link.FramedReplies`` is the
sending side), where the framing is compiled.

The frames are the vDAG hops' (``aios_fast.wire``, "vDAG hop"): HELLO with a token
giving the infer role (within ``HANDSHAKE_TIMEOUT`` seconds, at most 64 KiB before it),
then BATCH frames of ``[id, 0, message]`` items, each an answer as the gRPC
``InferenceProxy/infer_stream`` carries it (delivered by ``deliver``; one that is not
an answer counts in ``invalid``). What the controller sends back is the tasks it gave
up on, ``[0, message]`` items whose packet is a cancellation (``hop.CANCEL_PTR``), so
their pending hops stop. A connection that does not read them is sent at most
``MAX_CANCELS`` unread (more are dropped for it, as on the gRPC stream). Listens on a
Unix socket (0600, runtime folder, ``vdag-{port}-{pid}.sock``) and a TCP port (TLS as
the controller's gRPC ports); the instances learn both from ``HOP_ENDPOINTS_METHOD``
on the port their tickets name.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import msgspec

from ... import codec
from ...auth import Auth
from ...service.framed import FrameWriter
from ...service.framed_listener import FramedListener, ServerConn
from ...tls import TLS
from ...wire import decode_hop_hello, decode_hops
from ..hop import CANCEL_PTR

__all__ = ["HANDSHAKE_TIMEOUT", "MAX_CANCELS", "AnswersFront"]

log = logging.getLogger("aios_fast.vdag")
HANDSHAKE_TIMEOUT = 10.0
MAX_CANCELS = 10_000


class _Conn(ServerConn):
    """One instance's connection; also a watcher of the controller's cancellations
    (``qsize`` / ``put_nowait``, as the gRPC stream's queue is)."""

    what = "vDAG answers"

    def __init__(self, front: AnswersFront) -> None:
        super().__init__(front.connections, front.max_connections)
        self.front = front
        self.writer: FrameWriter | None = None

    def handshake_seconds(self) -> float:
        return HANDSHAKE_TIMEOUT

    def on_batch(self, body) -> None:
        deliver = self.front.deliver
        for _, _, message in decode_hops(body):
            deliver(message)

    def hello(self, body) -> bool:
        front = self.front
        try:
            token = decode_hop_hello(body).token
        except msgspec.DecodeError as exc:
            self.refuse(f"bad HELLO: {exc}")
            return False
        self.writer = self.admit(front.auth, token, front.max_message, front.listener.nonce)
        if self.writer is None:
            return False
        front.watch(self)
        return True

    def qsize(self) -> int:
        transport = self.transport
        unread = transport.get_write_buffer_size() if transport is not None else 0
        return len(self.writer or ()) + unread // 64  # (a cancellation is ~64 bytes)

    def put_nowait(self, task_id: str) -> None:
        if self.writer is not None:
            message = codec.encode_message(codec.Packet(data=task_id, output_ptr=CANCEL_PTR))
            self.writer.put((0, message), len(message))

    def ended(self, reason: str) -> None:
        self.front.unwatch(self)
        if self.writer is not None:
            self.writer.closed = True


class AnswersFront:
    """The listener; ``deliver(message)`` takes one answer; ``watch(conn)`` /
    ``unwatch(conn)``: a connection starts / stops taking the controller's
    cancellations (``qsize``, ``put_nowait``)."""

    def __init__(self, deliver: Callable[[bytes], None], watch: Callable[[Any], None],
                 unwatch: Callable[[Any], None], auth: Auth, tls: TLS,
                 host: str, max_message: int = 64 << 20,
                 max_connections: int = 1024) -> None:  # fmt: skip
        self.deliver = deliver
        self.max_connections = max_connections  # past it, a connection is closed at once
        self.watch = watch  # a welcomed connection takes the controller's cancellations
        self.unwatch = unwatch
        self.auth = auth
        self.max_message = max_message
        self.connections: set[_Conn] = set()
        self.listener = FramedListener(lambda: _Conn(self), tls, host, "vdag")

    def endpoints(self) -> bytes:
        """HOP_ENDPOINTS_METHOD's answer."""
        return msgspec.msgpack.encode(self.listener.endpoints())

    async def start(self) -> None:
        await self.listener.start()

    async def stop(self) -> None:
        await self.listener.close()
        for conn in list(self.connections):
            if conn.transport is not None:
                conn.transport.close()
