"""The contracts between a block's processes and its callers, in one place.

Client <-> executor (and instance), the seeds' ``InferenceProxy`` service on raw bytes:
method paths and the serialized ``InferenceResponse(message=true)`` that ``infer``
answers once a task is taken.

Executor <-> instance link: one long-lived bidirectional gRPC stream per instance
(``LINK_METHOD``). Each stream message is a msgpack batch (msgspec), so one gRPC message
carries as many tasks or replies as were ready when the writer last woke up::

    executor -> instance:  [[task_id, frame], ...]        frame: the caller's InferenceMessage
    instance -> executor:  [[task_id, kind, payload], ...]
        kind ACK:    the instance took the task (payload b"")
        kind RESULT: done; payload = output AIOSPacket bytes (b"" when routed elsewhere)
        kind ERROR:  failed; payload = the error message (UTF-8)

Both directions send raw bytes through grpc (no protobuf objects).

Instance registration (Redis): the key ``instance_key(block, instance)`` holds
``{"target": "host:port", "mgmt": "host:port"}`` with a TTL.
"""

from __future__ import annotations

import msgspec

__all__ = [
    "ACCEPTED",
    "ACK",
    "ERROR",
    "INFER",
    "INFER_RESULT",
    "INFER_STREAM",
    "LINK_METHOD",
    "LINK_RPC",
    "LINK_SERVICE",
    "RESULT",
    "SERVICE",
    "decode_replies",
    "decode_tasks",
    "encode_replies",
    "encode_tasks",
    "instance_key",
]

# --------------------------------------------------------------------- InferenceProxy

SERVICE = "InferenceProxy"
INFER = f"/{SERVICE}/infer"
INFER_RESULT = f"/{SERVICE}/infer_result"
INFER_STREAM = f"/{SERVICE}/infer_stream"
ACCEPTED = b"\x08\x01"  # InferenceResponse(message=True), serialized

# --------------------------------------------------------------------- instance link

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


# --------------------------------------------------------------------- registration


def instance_key(block_id: str, instance_id: str = "*") -> str:
    """The Redis key an instance registers under (``*``: the pattern for a block)."""
    return f"aios:block:{block_id}:instance:{instance_id}"
