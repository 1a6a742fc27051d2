"""Pure-Python twin of ``aios_fast._link``: the native instance link's framing.

A frame is a 5-byte header, the body's length (uint32, little-endian) and its type
(one byte), then the body. ``FrameReader.feed(chunk)`` returns every frame the chunk
completed, as ``(type, body)``; the body is a bytes-like object (``bytes``, or a
memoryview of the chunk for a large body that arrived whole: no copy). A
header announcing a body over the reader's ``limit`` raises ``FrameError`` (the
connection is then closed: the reader does not resynchronise). ``frame(type, body)``
is the frame's bytes; ``header(type, length)`` its header alone.
"""

from __future__ import annotations

import struct

__all__ = ["HEADER", "IMPLEMENTATION", "FrameError", "FrameReader", "frame", "header"]

IMPLEMENTATION = "python"
HEADER = 5
BIG = 65536  # bodies this large stay views of the chunk
_HEAD = struct.Struct("<IB")


class FrameError(ValueError):
    """The peer sent a frame this side will not take (over its limit)."""


def header(kind: int, length: int) -> bytes:
    return _HEAD.pack(length, kind)


def frame(kind: int, body: bytes = b"") -> bytes:
    return _HEAD.pack(len(body), kind) + body


class FrameReader:
    """Splits a byte stream into frames; bodies of at most ``limit`` bytes."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._parts: list[bytes] = []  # the start of a frame not complete yet, as read
        self._have = 0  # bytes in _parts
        self._need = 0  # bytes that frame needs in all (0: its header is incomplete)

    @property
    def buffered(self) -> int:
        """Bytes held of a frame not complete yet."""
        return self._have

    def feed(self, data: bytes) -> list[tuple[int, object]]:
        frames: list[tuple[int, object]] = []
        if self._have:
            self._parts.append(data)
            self._have += len(data)
            if self._need and self._have < self._need:
                return frames  # a large frame still arriving: joined once, when whole
            data = b"".join(self._parts)
            self._parts, self._have, self._need = [], 0, 0
        view = memoryview(data)
        pos, end = 0, len(view)
        while end - pos >= HEADER:
            length, kind = _HEAD.unpack_from(view, pos)
            if length > self.limit:
                raise FrameError(f"a {length:,}-byte frame is over the {self.limit:,}-byte limit")
            if end - pos - HEADER < length:
                self._need = HEADER + length
                break
            start = pos + HEADER
            body = view[start : start + length]
            frames.append((kind, body if length >= BIG else body.tobytes()))
            pos = start + length
        if pos < end:
            self._parts.append(view[pos:].tobytes())
            self._have = end - pos
        return frames
