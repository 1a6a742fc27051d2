"""Hops on long-lived streams: one ``InferenceProxy/infer_stream`` per next block.

A vDAG hop (an instance passing its output on, or the controller starting a task) used to
be a unary ``InferenceProxy/infer`` call: an HTTP/2 stream, a grpc.aio call object and
its task per hop. Here a hop is a message on a stream kept open per (endpoint, block):
``HopStreams.send`` queues it and returns; the stream's writer sends what is queued in
order, its reader matches the answers.

What comes back per message: the receiving instance answers a vDAG packet at once, when
it takes it (``ack``: the task and node, ``ACK_PTR``), and runs the node detached, as
``infer`` did; the executor answers a task it could not place with an error packet
(``wire.error_packet``: its code and message, the packet's session and seq). Every hop
ends once, in exactly one of:

- acknowledged: nothing more to do (the node reports its own outcome);
- ``on_fail(code, message)``: the executor's error answer (matched to the oldest hop
  in flight with that packet's session and seq: error packets carry no task id), the
  stream ending or failing (every hop in flight on it: UNAVAILABLE unless the stream's
  status says otherwise: a next block that is down is reported at once, not by a
  timeout), or the hop's ``timeout`` passing before it was taken (DEADLINE_EXCEEDED).

A target that does not serve ``infer_stream`` (an instance serving the block API by
itself answers UNIMPLEMENTED) gets unary ``infer`` calls from then on; the hops that
were on the refused stream are sent again that way (none of them ran). grpc may report
a write that raced that refusal as INTERNAL: a stream ending INTERNAL from a target that
never answered on one counts as the refusal. Until a target first answers on a stream,
one message is written at a time there.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

import grpc

from .. import codec
from ..tls import TLS
from ..wire import ACCEPTED, INFER, INFER_STREAM, read_error

if TYPE_CHECKING:
    from .hop_link import FramedStream

__all__ = ["ACK_PTR", "HopStreams", "ack_packet"]

log = logging.getLogger("aios_fast.vdag")

ACK_PTR = "vdag-ack"  # an instance took a vDAG packet: data = "<task> <node>"
OnFail = Callable[[str, str], None]


def ack_packet(session_id: str, seq_no: int, task: str, node: str) -> bytes:
    """What an instance answers for a vDAG packet it took (serialized AIOSPacket)."""
    ack = codec.Packet(session_id=session_id, seq_no=seq_no, data=f"{task} {node}",
                       output_ptr=ACK_PTR)  # fmt: skip
    return codec.encode_packet(ack)


class _Hop:
    __slots__ = ("hop_id", "key", "on_fail", "payload", "session", "since", "timeout", "timer")

    def __init__(self, key: str, session: tuple[str, int], payload: bytes,
                 on_fail: OnFail) -> None:  # fmt: skip
        self.key = key
        self.session = session
        self.payload = payload
        self.on_fail = on_fail
        self.timeout: float | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.hop_id = 0  # on a framed stream: its id there
        self.since = 0.0  # ... and when it was sent


class _Stream:
    """One open ``infer_stream`` to (target, block_id) and its hops in flight."""

    def __init__(self, owner: HopStreams, target: str, block_id: str) -> None:
        self.owner = owner
        self.target = target
        self.block_id = block_id
        self.out: deque[bytes] = deque()
        self.wake = asyncio.Event()
        self.pending: dict[str, _Hop] = {}
        self.closed = False
        # any answer read (the target serves infer_stream); until then one message is
        # written, so what a refusal races is at most that one write
        self.answered = (target, block_id) in owner._serves
        metadata = ((("x-service-name", block_id),) if block_id else ()) + owner.metadata
        channel = owner.channel(target)
        self.call = channel.stream_stream(INFER_STREAM)(metadata=metadata)
        self.reader = asyncio.ensure_future(self._read())
        self.writer = asyncio.ensure_future(self._write())

    async def _write(self) -> None:
        """What is queued, in order (call.write, not a request iterator: a write that
        races the call's end then fails here, and the call keeps the server's status)."""
        out, wake, call = self.out, self.wake, self.call
        wrote = False
        try:
            while not self.closed:
                while out and (self.answered or not wrote):
                    await call.write(out.popleft())
                    wrote = True
                wake.clear()
                await wake.wait()
        except (asyncio.InvalidStateError, grpc.aio.AioRpcError, asyncio.CancelledError):
            pass  # the call ended: the reader ends the hops

    def send(self, hop: _Hop, timeout: float | None) -> None:
        self.pending[hop.key] = hop
        hop.timeout = timeout
        if timeout is not None:
            hop.timer = asyncio.get_running_loop().call_later(timeout, self._expire, hop.key,
                                                              timeout)  # fmt: skip
        self.out.append(codec.encode_message(hop.payload))
        if not self.wake.is_set():
            self.wake.set()

    def _expire(self, key: str, timeout: float) -> None:
        hop = self.pending.pop(key, None)
        if hop is not None:
            self.owner.timed_out += 1
            hop.on_fail("DEADLINE_EXCEEDED", f"{self.target} did not take the task in "
                                             f"{timeout:.3g}s")  # fmt: skip

    def _answer(self, message: bytes) -> None:
        if not self.answered:
            self.answered = True
            self.owner._serves.add((self.target, self.block_id))
            self.wake.set()
        packet = codec.decode_message(message)
        if packet.output_ptr == ACK_PTR:
            hop = self.pending.pop(packet.data, None)
            if hop is not None and hop.timer is not None:
                hop.timer.cancel()
            return
        error = read_error(packet)
        if error is None:  # some other answer (not a vDAG node's): nothing waits for it
            return
        session = (packet.session_id, packet.seq_no)
        for key, hop in self.pending.items():
            if hop.session == session:
                del self.pending[key]
                if hop.timer is not None:
                    hop.timer.cancel()
                self.owner.failed += 1
                hop.on_fail(error[0], error[1])
                return

    async def _read(self) -> None:
        code, details = "UNAVAILABLE", "the stream ended"
        try:
            async for message in self.call:
                try:
                    self._answer(message)
                except Exception:  # one bad answer does not end the stream
                    log.exception("vDAG hop: a bad answer from %s", self.target)
        except grpc.aio.AioRpcError as exc:
            code, details = exc.code().name, exc.details() or exc.code().name
        except asyncio.CancelledError:
            code, details = "CANCELLED", "the hop stream was closed"
        finally:
            self.closed = True
            self.wake.set()
            self.owner.ended(self, code, details)
        self.writer.cancel()

    def close(self) -> None:
        self.closed = True
        self.wake.set()
        self.writer.cancel()
        self.call.cancel()


def _now() -> float:
    return asyncio.get_running_loop().time()


class HopStreams:
    """The hop streams of one process (an instance, or a vDAG controller)."""

    def __init__(self, metadata: tuple = (), tls: TLS | None = None,
                 channels: dict[str, grpc.aio.Channel] | None = None,
                 framed: bool | None = None) -> None:  # fmt: skip
        from ..service.framed import framing_compiled
        from .hop_link import FramedStream

        # hops on the executors' framed fronts (vdag.hop_link) where compiled here
        self._framed = FramedStream if (framing_compiled() if framed is None else framed) \
            else None  # fmt: skip
        # target -> until when (the loop's clock) its hops keep the gRPC stream: inf for
        # an executor without a hop front, a while for one whose front was unreachable
        self.not_framed: dict[tuple[str, str], float] = {}
        self.metadata = metadata
        self.tls = tls or TLS()
        self._channels = channels if channels is not None else {}
        self._streams: dict[tuple[str, str], _Stream | FramedStream] = {}
        self._unary: set[tuple[str, str]] = set()  # targets without infer_stream
        self._serves: set[tuple[str, str]] = set()  # targets that answered on a stream
        self._tasks: set[asyncio.Task] = set()
        self.failed = self.timed_out = self.broken = 0  # hops that did not arrive

    def channel(self, target: str) -> grpc.aio.Channel:
        channel = self._channels.get(target)
        if channel is None:
            channel = self._channels[target] = self.tls.aio_channel(target)
        return channel

    def send(self, target: str, block_id: str, payload: bytes, key: str,
             session: tuple[str, int], timeout: float | None, on_fail: OnFail) -> None:  # fmt: skip
        """Queue a hop (``payload``: an AIOSPacket; ``key``: "<task> <node>", what its
        ack names); ``on_fail`` is called at most once, if it does not arrive."""
        hop = _Hop(key, session, payload, on_fail)
        where = (target, block_id)
        stream = self._streams.get(where)
        if stream is not None and not stream.closed:
            stream.send(hop, timeout)
        elif self._framed is not None and self.not_framed.get(where, 0.0) <= _now():
            stream = self._streams[where] = self._framed(self, target, block_id)
            stream.send(hop, timeout)
        else:
            self.send_grpc(target, block_id, hop, timeout)

    def send_grpc(self, target: str, block_id: str, hop: _Hop, timeout: float | None) -> None:
        """A hop on the target's ``infer_stream`` (or unary ``infer`` calls)."""
        where = (target, block_id)
        if where in self._unary:
            self._spawn(self._unary_hop(target, block_id, hop, timeout))
            return
        stream = self._streams.get(where)
        if not isinstance(stream, _Stream) or stream.closed:
            stream = self._streams[where] = _Stream(self, target, block_id)
        stream.send(hop, timeout)

    def forget(self, stream) -> None:
        """A stream that ended is no longer the one for its target."""
        where = (stream.target, stream.block_id)
        if self._streams.get(where) is stream:
            del self._streams[where]

    def ended(self, stream: _Stream, code: str, details: str) -> None:
        """A stream ended: its hops in flight fail (or go unary: UNIMPLEMENTED)."""
        where = (stream.target, stream.block_id)
        if self._streams.get(where) is stream:
            del self._streams[where]
        hops = list(stream.pending.values())
        stream.pending.clear()
        for hop in hops:
            if hop.timer is not None:
                hop.timer.cancel()
        if stream.answered:
            self._serves.add(where)
        elif code == "UNIMPLEMENTED" or (code == "INTERNAL" and where not in self._serves):
            # no infer_stream there (grpc reports a write that raced the refusal as
            # INTERNAL): unary calls from now on, these hops too (none of them ran)
            self._unary.add(where)
            for hop in hops:
                self._spawn(self._unary_hop(stream.target, stream.block_id, hop, hop.timeout))
            return
        self.broken += len(hops)
        for hop in hops:
            hop.on_fail(code, details)

    async def _unary_hop(self, target: str, block_id: str, hop: _Hop,
                         timeout: float | None) -> None:  # fmt: skip
        metadata = ((("x-service-name", block_id),) if block_id else ()) + self.metadata
        try:
            reply = await self.channel(target).unary_unary(INFER)(
                codec.encode_message(hop.payload), metadata=metadata, timeout=timeout
            )
        except grpc.aio.AioRpcError as exc:
            self.failed += 1
            code = exc.code().name
            if code == "DEADLINE_EXCEEDED":
                hop.on_fail(code, f"{target} did not take the task in {timeout:.3g}s")
            else:
                hop.on_fail(code, exc.details() or code)
            return
        if reply != ACCEPTED:
            self.failed += 1
            hop.on_fail("UNAVAILABLE", f"{target} did not accept the task")

    def _spawn(self, coro) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def in_flight(self) -> int:
        return sum(len(s.pending) for s in self._streams.values()) + len(self._tasks)

    async def close(self, grace: float = 2.0) -> None:
        """End every stream; the hops in flight first get up to ``grace`` seconds to be
        taken or to fail (a node that finished as its process stops queued them: closing
        at once would drop them with no outcome)."""
        loop = asyncio.get_running_loop()
        end = loop.time() + grace
        while self.in_flight() and loop.time() < end:
            await asyncio.sleep(0.01)
        for stream in list(self._streams.values()):
            stream.close()
        readers = [s.reader for s in self._streams.values() if isinstance(s, _Stream)]
        self._streams.clear()
        for task in list(self._tasks):
            task.cancel()
        if readers:
            await asyncio.wait(readers, timeout=2.0)
