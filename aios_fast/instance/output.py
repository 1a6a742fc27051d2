"""Output shaping: what ``on_data`` returns -> the output packet and its bytes, held to
the caller's size limit."""

from __future__ import annotations

import json
import time
from typing import Any

from .. import codec
from ..errors import OutputTooLarge
from ..wire import RAISE_LIMIT

__all__ = ["encode_output", "make_output"]


def make_output(result: Any, packet: codec.Packet) -> codec.Packet | None:
    """The output packet for on_data's result (see aios_fast.block)."""
    if result is None:
        return None
    if isinstance(result, codec.Packet):
        return result
    if isinstance(result, (bytes, bytearray, memoryview)):
        data = bytes(result).decode("utf-8")
    elif isinstance(result, str):
        data = result
    else:
        data = json.dumps(result)
    return codec.Packet(
        session_id=packet.session_id,
        seq_no=packet.seq_no,
        data=data,
        ts=time.time(),
        output_ptr=packet.output_ptr,
    )


def encode_output(out: codec.Packet, limit: int | None) -> bytes:
    """``out`` serialized; OutputTooLarge when over ``limit`` bytes (None: no limit)."""
    data = codec.encode_packet(out)
    if limit is not None and len(data) > limit:
        raise OutputTooLarge(f"output of {len(data):,} bytes is over the {limit:,}-byte limit "
                             f"({RAISE_LIMIT})")  # fmt: skip
    return data
