"""The packets the benchmarks use (shared by bench.codec and the pytest-benchmark suite)."""

from __future__ import annotations

import json

from aios_fast.protos import payload_pb2

TS = 1_763_850_000.123456


def small() -> bytes:
    """session_id, seq_no, ~100 B JSON data, ts and one 1 KiB file."""
    msg = payload_pb2.AIOSPacket(
        session_id="session-0000123",
        seq_no=42,
        data=json.dumps(
            {
                "input": "Hello Block",
                "params": {"top_k": 5, "threshold": 0.25},
                "tags": ["a", "b", "c"],
            }
        ),
        ts=TS,
    )
    msg.files.add(metadata='{"type": "image/jpeg", "name": "f.jpg"}', file_data=bytes(1024))
    return msg.SerializeToString()


def large(size: int = 4 << 20) -> bytes:
    """The small packet's fields with one 4 MiB file."""
    msg = payload_pb2.AIOSPacket.FromString(small())
    del msg.files[:]
    msg.files.add(metadata='{"type": "video/mp4"}', file_data=bytes(size))
    return msg.SerializeToString()


def small_message() -> bytes:
    """The small packet inside an InferenceMessage frame, as the executor receives it."""
    from aios_fast.protos import inference_pb2

    return inference_pb2.InferenceMessage(rpc_data=small()).SerializeToString()
