"""The user-facing Block API run by the instance runtime (``aios_fast.instance``).

Write a subclass of ``Block`` (sync or async methods both work; sync ones run in a
thread so they cannot stall the event loop, unless the class sets ``inline = True``
for work too cheap to be worth the thread hop):

    class MyBlock(Block):
        def on_preprocess(self, packet):   # Packet view -> the entry on_data gets
            return json.loads(packet.data)
        def on_data(self, entry):          # -> the output (see below)
            return {"answer": entry["x"] * 2}

on_data may return a Packet (sent as is), a str / bytes (the output packet's data), a
dict or list (JSON-encoded into data), or None (no output). The output packet keeps the
input's session_id, seq_no and output_ptr, with ts set to now.

Large inputs come by reference: ``await self.frames.get(packet.frame_ptr)`` resolves a
frame_ptr through the instance's Frame DB (``aios_fast.framedb``).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from .framedb import FrameDB

__all__ = ["Block", "EchoBlock", "HashBlock"]


class Block:
    """Base class: every hook has a working default."""

    frames: FrameDB  # set by the instance runtime before the first task

    def __init__(self, init_data: dict | None = None, parameters: dict | None = None) -> None:
        self.init_data = dict(init_data or {})
        self.parameters = dict(parameters or {})
        self.frames = FrameDB({})

    def on_preprocess(self, packet) -> Any:
        return packet

    def on_data(self, entry) -> Any:
        raise NotImplementedError("a Block must implement on_data()")

    def health(self) -> bool | dict:
        """True (or a dict, reported as JSON) when healthy; False or raising is unhealthy."""
        return True

    def on_update(self, parameters: dict) -> None:
        self.parameters.update(parameters)

    def management(self, action: str, data: dict) -> Any:
        raise ValueError(f"unknown management action {action!r}")


class EchoBlock(Block):
    """Returns the input packet's data unchanged (the transport's speed limit)."""

    inline = True  # trivially cheap: run on the event loop, no thread hop

    def on_data(self, entry) -> Any:
        return entry.data


class HashBlock(Block):
    """A real CPU computation: SHA-256 rounds over the data and files (``rounds`` param)."""

    def on_data(self, entry) -> Any:
        digest = entry.data.encode()
        for f in entry.files:
            digest += bytes(f.file_data)
        for _ in range(int(self.parameters.get("rounds", 100))):
            digest = hashlib.sha256(digest).digest()
        return json.dumps({"sha256": digest.hex(), "rounds": self.parameters.get("rounds", 100)})
