"""The one error tree of aios_fast, raised by the compiled modules and their pure twins."""

from __future__ import annotations

import json

__all__ = [
    "AiosFastError",
    "LBConfigError",
    "NoInstanceError",
    "OutputTooLarge",
    "PacketDecodeError",
    "PacketEncodeError",
    "PolicyError",
    "PolicyLoadError",
    "TaskExpired",
    "TaskTimedOut",
    "UnknownInstanceError",
    "json_object",
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


class NoInstanceError(AiosFastError):
    """No instance is available to take a task (none known, or all unhealthy/draining)."""


class UnknownInstanceError(AiosFastError, KeyError):
    """An operation named an instance id the balancer does not know."""

    def __init__(self, instance_id: str) -> None:
        self.instance_id = instance_id
        super().__init__(instance_id)

    def __str__(self) -> str:
        return f"unknown instance {self.instance_id!r}"


class LBConfigError(AiosFastError, ValueError):
    """A load-balancing policy was configured with bad parameters or arguments."""


class PolicyLoadError(AiosFastError):
    """A policy (AIOSv1PolicyRule) could not be found, imported or constructed."""


class PolicyError(AiosFastError):
    """A user policy raised, or returned something that is not a valid decision."""


class TaskExpired(AiosFastError):
    """An instance did not start a task before its caller's deadline, so skipped it."""


class TaskTimedOut(AiosFastError):
    """A block ran one task longer than the block's task timeout."""


class OutputTooLarge(AiosFastError):
    """A task's output is over the message limit its caller can receive."""


def json_object(text: str, what: str) -> dict:
    """A JSON object given by a user (an option, a file): one-line AiosFastError
    naming ``what`` when it is not JSON or not an object."""
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise AiosFastError(f"{what} is not JSON ({exc}): {text[:60]!r}") from None
    if not isinstance(value, dict):
        raise AiosFastError(f"{what} must be a JSON object, not {text[:60]!r}")
    return value
