"""Output routing by a packet's output_ptr (JSON), as the original system did:

    {"outputs": [{"host": ..., "port": ..., "queue_name": ..., "block_id": ...}, ...]}

- port != 0: LPUSH the serialized output packet to Redis list ``queue_name`` at host:port;
- port == 0: call ``InferenceProxy.infer`` on ``host`` (default port 50051) with the
  metadata ``x-service-name: <block_id>``.

The packet forwarded has its output_ptr cleared, so the next block does not route it
back.

The graph form (``{"is_graph": true, ...}``, a vDAG task's ticket, ``aios_fast.vdag.hop``)
is not routed after the block ran: ``run_vdag`` takes the packet (answering an ack at
once) and runs the whole node detached (fan-in join, pre-processing policy, the block,
post-processing policy), then passes the output on: to the next blocks on one
``infer_stream`` per block (``aios_fast.vdag.streams``), to the vDAG controller on one
stream per controller (``_ReplyStream``).
"""

from __future__ import annotations

import asyncio
import functools
import json
import math
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from .. import codec
from ..auth import bearer
from ..errors import AiosFastError
from ..service.framed import framing_compiled
from ..tls import TLS
from ..vdag.hop import BATCH_PTR, CANCEL_PTR, NodeRunner, is_ticket
from ..vdag.hop_link import RETRY_FRAMED, FramedReplies
from ..vdag.streams import HopStreams, ack_packet
from ..wire import ACCEPTED, INFER, INFER_STREAM

__all__ = ["OutputRouter", "RoutingError"]


class RoutingError(AiosFastError):
    """An output_ptr that cannot be followed (bad JSON, unsupported form, failed send)."""


class OutputRouter:
    """Sends output packets where their output_ptr says; keeps one client per target."""

    def __init__(self, token: str | None = None, tls: TLS | None = None) -> None:
        self.tls = tls or TLS()
        self._metadata = (("authorization", bearer(token)),) if token else ()
        self._redis: dict[tuple[str, int], Any] = {}
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._vdag: NodeRunner | None = None
        self._replies: dict[str, _ReplyStream | FramedReplies] = {}
        # controller -> until when (the loop's clock) its answers keep the gRPC stream
        self._not_framed: dict[str, float] = {}
        self.hops = HopStreams(self._metadata, self.tls, self._channels)

    # ------------------------------------------------------------------ vDAG nodes

    @staticmethod
    def is_vdag(packet) -> bool:
        """Whether the packet is a vDAG task (its output_ptr is a ticket)."""
        return is_ticket(packet.output_ptr)

    @property
    def vdag(self) -> NodeRunner:
        if self._vdag is None:
            self._vdag = NodeRunner(self.hops.send, self._reply, watch=self._watch)
        return self._vdag

    async def run_vdag(
        self,
        packet,
        deadline: float | None,
        run_timeout: float,
        run: Callable[[codec.Packet, float | None, float], Awaitable[bytes]],
        quiet: bool = False,
    ) -> bytes:
        """Take the vDAG packet: the node its ticket names runs detached; ``run(packet,
        deadline, run_timeout)`` runs the block (the instance's own run_packet), for at
        most the block's task timeout and the time the task has left. The answer is an
        ack naming the task and node (``streams.ack_packet``: what the sender's hop
        stream waits for), b"" when the task was cancelled here. ``quiet``: the packet
        came as a task nobody waits for (``infer``, or a hop on an executor's framed
        front, answered when the instance took it): no ack is built, b"" is returned.
        The node runs detached either way: the link that brought it may break (its
        executor killed, a keepalive cut) while the node runs, and the node must still
        pass the task on or report it; an instance that stops waits for its nodes
        (``nodes_running``, in the instance's ``busy``)."""

        async def run_block(entry, node_deadline: float | None):
            if deadline is not None:
                node_deadline = deadline if node_deadline is None else min(deadline, node_deadline)
            timeout = run_timeout
            if node_deadline is not None:
                left = max(node_deadline - asyncio.get_running_loop().time(), 1e-3)
                timeout = left if timeout <= 0 else min(timeout, left)
            out = await run(entry, node_deadline, timeout)
            return codec.decode_packet(out) if out else None

        ticket = self.vdag.start(packet, run_block)
        if ticket is None or quiet:  # (quiet: nobody waits for an ack)
            return b""
        return ack_packet(packet.session_id, packet.seq_no, ticket.task, ticket.node)

    def nodes_running(self) -> int:
        """vDAG nodes running here (detached from the tasks that brought them)."""
        return 0 if self._vdag is None else self._vdag.nodes_running()

    def _watch(self, controller: str) -> None:
        """Keep a connection open to a task's controller: it carries the answers there
        and the controller's cancellations back (its framed answers front where the
        framing is compiled here and it has one, else a gRPC stream)."""
        stream = self._replies.get(controller)
        if stream is None or stream.closed:
            now = asyncio.get_running_loop().time()
            if framing_compiled() and self._not_framed.get(controller, 0.0) <= now:
                self._replies[controller] = FramedReplies(
                    controller, self._channel(controller), self._metadata, self.tls,
                    self.vdag.cancel, functools.partial(self._unframed, controller))  # fmt: skip
            else:
                self._replies[controller] = self._grpc_replies(controller)

    def _grpc_replies(self, controller: str) -> _ReplyStream:
        return _ReplyStream(self._channel(controller), self._metadata, self.vdag.cancel)

    def _unframed(self, controller: str, queued: list[bytes], unimplemented: bool) -> None:
        """The controller's framed front could not be used: its answers go on a gRPC
        stream (from now on when it has no such front, else for RETRY_FRAMED seconds)."""
        now = asyncio.get_running_loop().time()
        self._not_framed[controller] = math.inf if unimplemented else now + RETRY_FRAMED
        stream = self._replies[controller] = self._grpc_replies(controller)
        for payload in queued:
            stream.send(payload)

    def _reply(self, controller: str, payload: bytes) -> None:
        """An answer or failure report to a task's controller, on its stream."""
        self._watch(controller)
        self._replies[controller].send(payload)

    def _channel(self, target: str) -> grpc.aio.Channel:
        channel = self._channels.get(target)
        if channel is None:
            channel = self._channels[target] = self.tls.aio_channel(target)
        return channel

    @staticmethod
    def targets(output_ptr: str) -> list[dict]:
        try:
            ptr = json.loads(output_ptr)
        except ValueError as exc:
            raise RoutingError(f"output_ptr is not JSON: {exc}") from None
        if not isinstance(ptr, dict):
            raise RoutingError("output_ptr must be a JSON object")
        if ptr.get("is_graph"):
            raise RoutingError("a graph output_ptr ({'is_graph': true}) that is not a vDAG "
                               "controller's ticket is not supported")  # fmt: skip
        outputs = ptr.get("outputs")
        if not isinstance(outputs, list) or not all(isinstance(o, dict) for o in outputs):
            raise RoutingError("output_ptr needs an 'outputs' list of objects")
        for out in outputs:
            if not isinstance(out.get("host"), str) or not isinstance(out.get("port", 0), int):
                raise RoutingError(f"output {out!r} needs a string host and an integer port")
            if out.get("port", 0) and not isinstance(out.get("queue_name"), str):
                raise RoutingError(f"output {out!r} sends to Redis and needs a queue_name")
        return outputs

    async def route(self, packet) -> int:
        """Send packet to every output; returns how many. Raises RoutingError on failure."""
        outputs = self.targets(packet.output_ptr)
        payload = codec.encode_packet(packet.replace(output_ptr=""))
        for out in outputs:
            port = out.get("port", 0)
            try:
                if port:
                    await self._redis_client(out["host"], port).lpush(out["queue_name"], payload)
                else:
                    await self._infer(out["host"], out.get("block_id", ""), payload)
            except RoutingError:
                raise
            except Exception as exc:
                raise RoutingError(f"sending to {out!r} failed: {exc!r}") from exc
        return len(outputs)

    def _redis_client(self, host: str, port: int):
        key = (host, port)
        client = self._redis.get(key)
        if client is None:
            import redis.asyncio as redis

            client = self._redis[key] = redis.Redis(host=host, port=port)
        return client

    async def _infer(self, host: str, block_id: str, payload: bytes) -> None:
        target = host if ":" in host else f"{host}:50051"
        call = self._channel(target).unary_unary(INFER)
        metadata = (("x-service-name", block_id), *self._metadata)
        reply = await call(codec.encode_message(payload), metadata=metadata)
        if reply != ACCEPTED:
            raise RoutingError(f"next block {block_id!r} at {target} did not accept the task")

    async def close(self) -> None:
        if self._vdag is not None:
            self._vdag.close()
        await self.hops.close()
        for stream in self._replies.values():
            await stream.close()
        self._replies.clear()
        for client in self._redis.values():
            await client.aclose()
        for channel in self._channels.values():
            await channel.close()
        self._redis.clear()
        self._channels.clear()


class _ReplyStream:
    """Answers to one vDAG controller, sent on one ``InferenceProxy/infer_stream``: a
    message costs a stream write, not a call, and what was queued while the last write
    went out leaves in one message (``BATCH_PTR``: each answer a file). The controller
    sends back only the tasks it gave up on (``on_cancel(task)``: their pending hops
    stop). When the stream ends (the controller went away) the next answer opens a new
    one; what was queued on the ended one is lost and the controller's own timeout
    ends those tasks (``lost`` counts them here)."""

    def __init__(self, channel: grpc.aio.Channel, metadata: tuple,
                 on_cancel: Callable[[str], None]) -> None:  # fmt: skip
        self.on_cancel = on_cancel
        self.queue: deque[bytes] = deque()  # serialized AIOSPackets
        self.wake = asyncio.Event()
        self.closed = False
        self.lost = 0
        self.call = channel.stream_stream(INFER_STREAM)(self._requests(), metadata=metadata)
        self.reader = asyncio.ensure_future(self._read())

    async def _requests(self):
        queue, wake = self.queue, self.wake
        while True:  # (close: what is queued goes first, then the end of the stream)
            if not queue:
                if self.closed:
                    return
                wake.clear()
                await wake.wait()
                continue
            if len(queue) == 1:
                yield codec.encode_message(queue.popleft())
                continue
            files = [codec.FileInfo("", queue.popleft()) for _ in range(len(queue))]
            yield codec.encode_message(codec.Packet(output_ptr=BATCH_PTR, files=files))

    async def _read(self) -> None:
        try:
            async for message in self.call:
                packet = codec.decode_message(message)
                if packet.output_ptr == CANCEL_PTR:
                    self.on_cancel(packet.data)
        except (grpc.aio.AioRpcError, asyncio.CancelledError):
            pass
        finally:
            self.closed = True
            self.wake.set()
            self.lost += len(self.queue)

    def send(self, payload: bytes) -> None:
        self.queue.append(payload)
        if not self.wake.is_set():
            self.wake.set()

    async def close(self) -> None:
        self.closed = True
        self.wake.set()
        try:
            await asyncio.wait_for(asyncio.shield(self.reader), 2.0)
        except (asyncio.TimeoutError, Exception):
            self.reader.cancel()
        self.call.cancel()
