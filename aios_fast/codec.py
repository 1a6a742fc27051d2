"""Packet codec: decode InferenceMessage / AIOSPacket frames without protobuf objects.

Compiled (``aios_fast._codec``) unless ``AIOS_FAST_NO_EXTENSIONS=1`` picks the pure
twin (``aios_fast._codec_py``); both behave identically. See ``_codec_py`` for the
exact decoding rules.
"""

from __future__ import annotations

from ._select import load

_impl = load("_codec")

IMPLEMENTATION: str = _impl.IMPLEMENTATION
MAX_DEPTH: int = _impl.MAX_DEPTH
Packet = _impl.Packet
FileInfo = _impl.FileInfo
decode_packet = _impl.decode_packet
decode_message = _impl.decode_message
peel_message = _impl.peel_message
encode_packet = _impl.encode_packet
encode_message = _impl.encode_message

__all__ = [
    "IMPLEMENTATION",
    "MAX_DEPTH",
    "FileInfo",
    "Packet",
    "decode_message",
    "decode_packet",
    "encode_message",
    "encode_packet",
    "peel_message",
]
