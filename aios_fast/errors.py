"""The one error tree of aios_fast, raised by the compiled modules and their pure twins."""

from __future__ import annotations

__all__ = [
    "AiosFastError",
    "PacketDecodeError",
    "PacketEncodeError",
]


class AiosFastError(Exception):
    """Base class of every error aios_fast raises on purpose."""


class PacketDecodeError(AiosFastError, ValueError):
    """A frame is not a valid InferenceMessage / AIOSPacket.

    ``reason`` is a short machine-readable code (see ``REASONS``), ``offset`` the
    byte position in the decoded buffer where the problem was found (or -1).
    """

    REASONS = (
        "truncated",  # a varint, fixed field or length runs past the end
        "varint_too_long",  # a varint longer than 10 bytes (tags: 5)
        "length_overflow",  # a length prefix that does not fit / passes the end
        "bad_tag",  # field number 0 or a tag over 32 bits
        "bad_wire_type",  # wire type 6 or 7
        "wrong_wire_type",  # a known field carried with another wire type (stricter than protobuf)
        "bad_group",  # unbalanced start/end group
        "too_deep",  # groups nested past the depth limit
        "invalid_utf8",  # a string field that is not UTF-8
    )

    def __init__(self, reason: str, offset: int = -1, detail: str = "") -> None:
        self.reason = reason
        self.offset = offset
        self.detail = detail
        msg = f"malformed packet: {reason}"
        if offset >= 0:
            msg += f" at byte {offset}"
        if detail:
            msg += f" ({detail})"
        super().__init__(msg)

    def __reduce__(self):
        return (type(self), (self.reason, self.offset, self.detail))


class PacketEncodeError(AiosFastError, ValueError):
    """A value cannot be encoded into an AIOSPacket (wrong type or out of range)."""
