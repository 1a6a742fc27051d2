"""Hops on the executor's framed front (``executor.hop_front``) instead of grpc.aio.

``FramedStream`` is one connection to a next block's executor, used by ``HopStreams``
where the framing is compiled: it asks the executor where its hop front listens
(``HOP_ENDPOINTS_METHOD`` on its gRPC port), connects to its Unix socket when the
executor is on this host (the WELCOME's nonce proves it) or to its TCP port (TLS as
the gRPC channel), says HELLO with the token, then writes the queued hops once per loop
turn and reads the answers once per chunk, each matched by its id (an ack, or an error
packet: that hop fails with its status). The hops' books are ``streams.HopStreams``':
each ends once, acknowledged, failed, timed out, or broken with its connection
(UNAVAILABLE, at once: a next block that went away is reported, not waited for).

An executor without the call (UNIMPLEMENTED: a grpcio front, an older executor) gets
the gRPC ``infer_stream`` from then on; any other failure before the connection is up
sends the hops on the gRPC stream (which reports an executor that is down) for
``RETRY_FRAMED`` seconds, then the framed front is tried again.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import os
from typing import Any

import grpc
import msgspec

from .. import codec
from ..service.framed import ClientConn, FrameWriter, Refused, Welcome, decode_endpoints
from ..wire import (
    ACCEPTED,
    HELLO,
    HOP_ENDPOINTS_METHOD,
    decode_hop_answers,
    link_limit,
    read_error,
)
from .hop import CANCEL_PTR

__all__ = [
    "CONNECT_TIMEOUT",
    "HANDSHAKE_TIMEOUT",
    "RETRY_FRAMED",
    "FramedReplies",
    "FramedStream",
    "connect",
]

log = logging.getLogger("aios_fast.vdag")
HANDSHAKE_TIMEOUT = 5.0  # the endpoints call (on the target's working gRPC port)
# the framed connection and its WELCOME: a connect on a network takes milliseconds; a
# port that is not reachable (dropped, not refused) must not take the hops' time
CONNECT_TIMEOUT = 1.0
# seconds a target whose framed front could not be reached (a port a network policy
# drops, say) keeps the gRPC stream before the framed front is tried again
RETRY_FRAMED = 30.0


class _Unimplemented(Exception):
    pass


class _Client(ClientConn):
    """The sender's end: ``peer`` (a FramedStream or FramedReplies) gets the answers
    (``answers``) and the connection's end (``lost``)."""

    what = "answer batch"

    def __init__(self, peer: Any) -> None:
        super().__init__()
        self.stream = peer

    def on_batch(self, body) -> None:
        self.stream.answers(decode_hop_answers(body))

    def on_lost(self, reason: str) -> None:
        super().on_lost(reason)
        self.stream.lost(reason)


async def connect(peer: Any, target: str, channel: grpc.aio.Channel, metadata: tuple,
                  tls: Any) -> tuple[_Client, Welcome]:  # fmt: skip
    """A framed connection to ``target``'s front that said WELCOME (its answers go to
    ``peer``): where it listens, from ``HOP_ENDPOINTS_METHOD`` on ``channel``; its Unix
    socket when the path is on this host and the nonce matches, else its TCP port.
    _Unimplemented when the target has no such front."""
    call = channel.unary_unary(HOP_ENDPOINTS_METHOD)
    try:
        reply = await call(b"", timeout=HANDSHAKE_TIMEOUT, metadata=metadata)
    except grpc.aio.AioRpcError as exc:
        if exc.code() == grpc.StatusCode.UNIMPLEMENTED:
            raise _Unimplemented() from None
        raise
    ep = decode_endpoints(reply)
    token = next((v for k, v in metadata if k == "authorization"), "")
    loop = asyncio.get_running_loop()
    if ep.unix and os.path.exists(ep.unix):
        try:
            _, unix = await loop.create_unix_connection(lambda: _Client(peer), ep.unix)
            welcome = await _handshake(unix, token)
            if welcome.nonce == ep.nonce:
                return unix, welcome
            unix.fail("another process")
        except OSError:
            pass  # not ours to reach: TCP
    if not ep.tcp:
        raise ConnectionError("no TCP port")
    host = target.rpartition(":")[0].strip("[]")
    ssl = tls.client_context()
    _, tcp = await asyncio.wait_for(
        loop.create_connection(lambda: _Client(peer), host, ep.tcp, ssl=ssl,
                               server_hostname=host if ssl is not None else None),
        CONNECT_TIMEOUT,
    )  # fmt: skip
    welcome = await _handshake(tcp, token)
    if welcome.nonce != ep.nonce:  # another process has that port now (not the target)
        tcp.fail("another process")
        raise ConnectionError("another process answered on the hop front's port")
    return tcp, welcome


async def _handshake(proto: _Client, token: str) -> Welcome:
    proto.send(HELLO, msgspec.msgpack.encode({"v": 1, "token": token}))
    try:
        return await asyncio.wait_for(asyncio.shield(proto.welcome), CONNECT_TIMEOUT)
    except BaseException:
        proto.fail("no WELCOME")
        raise


class FramedStream:
    """One framed connection to ``target`` and its hops in flight (by id). ``owner`` is
    a ``streams.HopStreams``, each hop its ``_Hop`` (not imported here: streams imports
    this module)."""

    def __init__(self, owner: Any, target: str, block_id: str) -> None:
        self.owner = owner
        self.target = target
        self.block_id = block_id
        self.pending: dict[int, Any] = {}
        self.waiting: list[Any] = []  # sent before the connection was up
        self.closed = False
        self.writer: FrameWriter | None = None
        self.proto: _Client | None = None
        self.max_message = 0  # the executor's, from its WELCOME
        self._ids = itertools.count(1)
        self._loop = asyncio.get_running_loop()
        self.reader = asyncio.ensure_future(self._open())

    # ------------------------------------------------------------------ hops

    def send(self, hop: Any, timeout: float | None) -> None:
        hop.hop_id = hop_id = next(self._ids)
        hop.timeout = timeout
        hop.since = self._loop.time()
        self.pending[hop_id] = hop
        if timeout is not None:
            hop.timer = self._loop.call_later(timeout, self._expire, hop_id, timeout)
        if self.writer is None:
            self.waiting.append(hop)
        else:
            self._put(hop)

    def _put(self, hop: Any) -> None:
        message = codec.encode_message(hop.payload)
        assert self.writer is not None
        if len(message) > self.max_message:  # the executor would cut the connection
            self.pending.pop(hop.hop_id, None)
            if hop.timer is not None:
                hop.timer.cancel()
            self.owner.failed += 1
            why = (f"the task's {len(message):,} bytes are over the {self.max_message:,}-byte "
                   f"limit of {self.target}")  # fmt: skip
            self._loop.call_soon(hop.on_fail, "RESOURCE_EXHAUSTED", why)  # (not in send)
            return
        self.writer.put((hop.hop_id, hop.timeout or 0.0, message), len(message))

    def _expire(self, hop_id: int, timeout: float) -> None:
        hop = self.pending.pop(hop_id, None)
        if hop is not None:
            self.owner.timed_out += 1
            hop.on_fail("DEADLINE_EXCEEDED", f"{self.target} did not take the task in "
                                             f"{timeout:.3g}s")  # fmt: skip

    def answers(self, answers: list[tuple[int, bytes]]) -> None:
        pending = self.pending
        for hop_id, message in answers:
            hop = pending.pop(hop_id, None)
            if hop is None:
                continue  # timed out already
            if hop.timer is not None:
                hop.timer.cancel()
            if message == ACCEPTED:  # an instance took it
                continue
            try:
                error = read_error(codec.decode_message(message))
            except Exception:
                error = ("INTERNAL", f"{self.target} answered the hop with a bad message")
            if error is not None:  # the executor could not place it, or the block refused
                self.owner.failed += 1
                hop.on_fail(error[0], error[1])

    # ------------------------------------------------------------------ connection

    async def _open(self) -> None:
        owner = self.owner
        try:
            proto, welcome = await connect(self, self.target, owner.channel(self.target),
                                           owner.metadata, owner.tls)  # fmt: skip
        except _Unimplemented:
            owner.not_framed[(self.target, self.block_id)] = math.inf
            self._fallback("no hop front there")
            return
        except (asyncio.TimeoutError, grpc.aio.AioRpcError, ConnectionError, OSError) as exc:
            owner.not_framed[(self.target, self.block_id)] = self._loop.time() + RETRY_FRAMED
            why = exc.details() if isinstance(exc, grpc.aio.AioRpcError) else exc
            what = "refused the connection" if isinstance(exc, Refused) else "did not answer"
            self._fallback(f"the hop front {what} ({why or type(exc).__name__}); "
                           f"trying it again in {RETRY_FRAMED:g}s")  # fmt: skip
            return
        except asyncio.CancelledError:
            return
        if self.closed:  # closed while connecting
            proto.fail("closed")
            return
        if proto.lost.done() or proto.transport is None:  # lost right after WELCOME
            self._fallback(f"the hop connection ended at once ({proto.lost.result()})")
            return
        proto.reader.limit = link_limit(welcome.max_message)
        assert proto.transport is not None
        self.max_message = welcome.max_message
        self.proto = proto
        self.writer = FrameWriter(proto.transport)
        waiting, self.waiting = self.waiting, []
        for hop in waiting:
            if hop.hop_id in self.pending:  # (not timed out meanwhile)
                self._put(hop)

    def _fallback(self, why: str) -> None:
        """Before the connection was up: these hops go on the gRPC stream (none was
        sent), each with the time it had left."""
        log.info("vDAG hops to %s: gRPC stream (%s)", self.target, why)
        self._end()
        now = self._loop.time()
        hops = [h for h in self.waiting if h.hop_id in self.pending]
        self.waiting.clear()
        self.pending.clear()
        for hop in hops:
            if hop.timer is not None:
                hop.timer.cancel()
                hop.timer = None
            left = None if hop.timeout is None else max(hop.timeout - (now - hop.since), 1e-3)
            self.owner.send_grpc(self.target, self.block_id, hop, left)

    def lost(self, reason: str) -> None:
        """The connection ended: every hop in flight on it fails UNAVAILABLE."""
        if self.writer is None and not self.closed:
            return  # before WELCOME: _open decides
        self._end()
        hops = list(self.pending.values())
        self.pending.clear()
        for hop in hops:
            if hop.timer is not None:
                hop.timer.cancel()
        self.owner.broken += len(hops)
        for hop in hops:
            hop.on_fail("UNAVAILABLE", f"the hop connection to {self.target} ended: {reason}")

    def _end(self) -> None:
        self.closed = True
        self.owner.forget(self)

    def close(self) -> None:
        _close(self)


class FramedReplies:
    """Answers to one vDAG controller on its framed answers front
    (``vdag.controller.answers``): each a serialized AIOSPacket, written once per loop
    turn; what comes back are the tasks the controller gave up on (``on_cancel``).
    ``fallback(queued, unimplemented)`` is called if the controller has no such front
    (or it could not be reached): the answers queued so far go on the gRPC stream.
    When the connection ends, the answers written on it that the controller did not
    read are lost (its own timeout ends those tasks), as on the gRPC stream; the next
    answer opens a new one."""

    def __init__(self, target: str, channel: grpc.aio.Channel, metadata: tuple, tls: Any,
                 on_cancel: Any, fallback: Any) -> None:  # fmt: skip
        self.target = target
        self.on_cancel = on_cancel
        self.fallback = fallback
        self.queue: list[bytes] = []  # answers before the connection was up
        self.closed = False
        self.writer: FrameWriter | None = None
        self.proto: _Client | None = None
        self.reader = asyncio.ensure_future(self._open(channel, metadata, tls))

    def send(self, payload: bytes) -> None:
        if self.writer is None:
            self.queue.append(payload)
            return
        message = codec.encode_message(payload)
        self.writer.put((0, 0.0, message), len(message))

    async def _open(self, channel: grpc.aio.Channel, metadata: tuple, tls: Any) -> None:
        try:
            proto, welcome = await connect(self, self.target, channel, metadata, tls)
        except asyncio.CancelledError:
            return
        except Exception as exc:
            self.closed = True
            queued, self.queue = self.queue, []
            self.fallback(queued, isinstance(exc, _Unimplemented))
            return
        if self.closed:
            proto.fail("closed")
            return
        if proto.lost.done() or proto.transport is None:  # lost right after WELCOME:
            # as a failed connect (lost() left it to here), else nothing sends the queue
            self.closed = True
            queued, self.queue = self.queue, []
            self.fallback(queued, False)
            return
        proto.reader.limit = link_limit(welcome.max_message)
        self.proto = proto
        self.writer = FrameWriter(proto.transport)
        queued, self.queue = self.queue, []
        for payload in queued:
            self.send(payload)

    def answers(self, answers: list[tuple[int, bytes]]) -> None:
        for _, message in answers:
            try:
                packet = codec.decode_message(message)
            except Exception:
                continue
            if packet.output_ptr == CANCEL_PTR:
                self.on_cancel(packet.data)

    def lost(self, reason: str) -> None:
        if self.writer is None and not self.closed:
            return  # before WELCOME: _open decides
        self.closed = True

    async def close(self) -> None:
        _close(self)


def _close(peer: FramedStream | FramedReplies) -> None:
    """End a peer's connection: what is queued is written, then it closes."""
    peer.closed = True
    peer.reader.cancel()
    if peer.writer is not None:
        peer.writer.close()
    if peer.proto is not None and peer.proto.transport is not None:
        peer.proto.transport.close()
