"""Executor <-> instance link: one long-lived bidirectional gRPC stream per instance.

Each stream message is a msgpack batch (msgspec), so one gRPC message carries as many
tasks or replies as were ready when the writer last woke up:

    executor -> instance:  [[task_id, frame], ...]        frame: the caller's InferenceMessage
    instance -> executor:  [[task_id, kind, payload], ...]
        kind ACK:    the instance took the task (payload b"")
        kind RESULT: done; payload = output AIOSPacket bytes (b"" when routed elsewhere)
        kind ERROR:  failed; payload = the error message (UTF-8)

Both directions send raw bytes through grpc (no protobuf objects).
"""

from __future__ import annotations

import asyncio

import msgspec

__all__ = [
    "ACK",
    "ERROR",
    "LINK_METHOD",
    "LINK_RPC",
    "LINK_SERVICE",
    "RESULT",
    "BatchWriter",
    "decode_replies",
    "decode_tasks",
    "encode_replies",
    "encode_tasks",
]

LINK_SERVICE = "aios.InstanceLink"
LINK_RPC = "Tasks"
LINK_METHOD = f"/{LINK_SERVICE}/{LINK_RPC}"
ACK, RESULT, ERROR = 0, 1, 2

_encoder = msgspec.msgpack.Encoder()
_tasks_decoder = msgspec.msgpack.Decoder(list[tuple[int, bytes]])
_replies_decoder = msgspec.msgpack.Decoder(list[tuple[int, int, bytes]])


def encode_tasks(batch: list) -> bytes:
    return _encoder.encode(batch)


def decode_tasks(data: bytes) -> list[tuple[int, bytes]]:
    return _tasks_decoder.decode(data)


def encode_replies(batch: list) -> bytes:
    return _encoder.encode(batch)


def decode_replies(data: bytes) -> list[tuple[int, int, bytes]]:
    return _replies_decoder.decode(data)


class BatchWriter:
    """Collects items into batches: while one batch is being written the next
    accumulates. Under load (``busy()`` true) a small batch waits up to ``linger``
    seconds for company: each stream message costs about as much grpc work as a unary
    call, so one message per task would give the batching away (measured: 1.1 tasks a
    message without lingering). Idle links never wait."""

    def __init__(self, max_batch: int = 256, linger: float = 0.0, busy=None) -> None:
        self._items: list = []
        self._wake = asyncio.Event()
        self._max = max_batch
        self._linger = linger
        self._busy = busy
        self.closed = False

    def put(self, item) -> None:
        self._items.append(item)
        self._wake.set()

    async def next_batch(self) -> list | None:
        """The next batch, or None once closed and drained.

        After waking it yields to the event loop once, so the work that woke it (the rest
        of a batch being read, tasks finishing on the loop) lands in the same message."""
        while not self._items:
            if self.closed:
                return None
            self._wake.clear()
            await self._wake.wait()
        await asyncio.sleep(0)
        if self._linger and len(self._items) < self._max and self._busy and self._busy():
            await asyncio.sleep(self._linger)
        batch, self._items = self._items[: self._max], self._items[self._max :]
        return batch

    def close(self) -> None:
        self.closed = True
        self._wake.set()
