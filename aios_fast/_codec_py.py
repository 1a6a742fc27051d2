"""Pure-Python twin of ``aios_fast._codec``: the test oracle and the explicit opt-out.

Wire format (protos/payload.proto, protos/inference.proto):

    InferenceMessage { bytes rpc_data = 1; }
    AIOSPacket { string session_id = 1; uint64 seq_no = 2; bytes frame_ptr = 3;
                 string data = 4; double ts = 5; string output_ptr = 6;
                 repeated FileInfo files = 7; }
    FileInfo { string metadata = 1; bytes file_data = 2; }

Decoding follows protobuf (upb) exactly on valid input: last occurrence of a
singular field wins, ``files`` accumulates, unknown fields (groups included) are
skipped (field number 0 is accepted inside a group, as upb does, and refused
elsewhere), tags and lengths are at most 5 bytes, other varints at most 10. It is
stricter than protobuf in one place, on purpose: a known field that arrives with
another wire type is rejected (``wrong_wire_type``) instead of being kept as an
unknown field.

Bytes fields come back as memoryviews into the decoded buffer: zero-copy for bytes
(and memoryviews of bytes); any buffer the caller could change afterwards (bytearray,
a writable memoryview, array, mmap) is copied once at decode, so a Packet never changes
after it was decoded.
"""

from __future__ import annotations

import math
import struct

from .errors import PacketDecodeError, PacketEncodeError

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

IMPLEMENTATION = "py"
MAX_DEPTH = 100  # group nesting limit, as upb's default decode depth

_DOUBLE = struct.Struct("<d")
_U64_MAX = (1 << 64) - 1

# Wire types.
_VARINT, _I64, _LEN, _SGROUP, _EGROUP, _I32 = 0, 1, 2, 3, 4, 5


# --------------------------------------------------------------------------- reading


def _varint(buf, pos: int, end: int, max_len: int = 10) -> tuple[int, int]:
    result = 0
    shift = 0
    start = pos
    while True:
        if pos >= end:
            raise PacketDecodeError("truncated", start, "varint")
        if pos - start >= max_len:
            raise PacketDecodeError("varint_too_long", start)
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result & _U64_MAX, pos
        shift += 7


def _tag(buf, pos: int, end: int, in_group: bool = False) -> tuple[int, int, int]:
    """Read a tag. Field number 0 is an error except inside a group, where upb accepts it."""
    start = pos
    tag, pos = _varint(buf, pos, end, 5)
    if tag > 0xFFFFFFFF or (tag >> 3 == 0 and not in_group):
        raise PacketDecodeError("bad_tag", start)
    if tag & 7 > _I32:
        raise PacketDecodeError("bad_wire_type", start, f"wire type {tag & 7}")
    return tag >> 3, tag & 7, pos


def _length(buf, pos: int, end: int) -> tuple[int, int]:
    start = pos
    n, pos = _varint(buf, pos, end, 5)  # upb reads a length from at most 5 bytes
    if n > end - pos:
        raise PacketDecodeError("length_overflow", start, f"{n} bytes, {end - pos} left")
    return n, pos


def _skip(buf, field: int, wt: int, pos: int, end: int, depth: int) -> int:
    """Skip one unknown field whose tag has been read; returns the new position."""
    if wt == _VARINT:
        return _varint(buf, pos, end)[1]
    if wt == _I64:
        if end - pos < 8:
            raise PacketDecodeError("truncated", pos, "fixed64")
        return pos + 8
    if wt == _I32:
        if end - pos < 4:
            raise PacketDecodeError("truncated", pos, "fixed32")
        return pos + 4
    if wt == _LEN:
        n, pos = _length(buf, pos, end)
        return pos + n
    if wt == _SGROUP:
        if depth + 1 > MAX_DEPTH:
            raise PacketDecodeError("too_deep", pos)
        while True:
            if pos >= end:
                raise PacketDecodeError("bad_group", pos, "unterminated group")
            at = pos
            f, w, pos = _tag(buf, pos, end, True)
            if w == _EGROUP:
                if f != field:
                    raise PacketDecodeError("bad_group", at, "mismatched end group")
                return pos
            pos = _skip(buf, f, w, pos, end, depth + 1)
    # _EGROUP (_tag refuses wire types 6 and 7)
    raise PacketDecodeError("bad_group", pos, "end group without start")


def _wrong(field: int, wt: int, at: int):
    return PacketDecodeError("wrong_wire_type", at, f"field {field} with wire type {wt}")


def _utf8(view, start: int, n: int) -> str:
    try:
        return str(view[start : start + n], "utf-8")
    except UnicodeDecodeError as exc:
        raise PacketDecodeError("invalid_utf8", start + exc.start) from None


# --------------------------------------------------------------------------- views


def _as_bytes_like(value, name: str):
    if isinstance(value, (bytes, bytearray, memoryview)):
        return value
    raise PacketEncodeError(f"{name} must be bytes-like, not {type(value).__name__}")


def _as_str(value, name: str) -> str:
    if isinstance(value, str):
        return value
    raise PacketEncodeError(f"{name} must be str, not {type(value).__name__}")


class FileInfo:
    """One ``FileInfo``: ``metadata`` (str) and ``file_data`` (bytes-like, a view when decoded)."""

    __slots__ = ("_file_data", "_metadata")

    def __init__(self, metadata: str = "", file_data=b"") -> None:
        self._metadata = _as_str(metadata, "metadata")
        self._file_data = _as_bytes_like(file_data, "file_data")

    @property
    def metadata(self) -> str:
        return self._metadata

    @metadata.setter
    def metadata(self, value: str) -> None:
        self._metadata = _as_str(value, "metadata")

    @property
    def file_data(self):
        return self._file_data

    @file_data.setter
    def file_data(self, value) -> None:
        self._file_data = _as_bytes_like(value, "file_data")

    def __eq__(self, other):
        if not isinstance(other, FileInfo):
            return NotImplemented
        return self.metadata == other.metadata and self.file_data == other.file_data

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"FileInfo(metadata={self.metadata!r}, file_data=<{len(self.file_data)} bytes>)"


_FIELDS = ("session_id", "seq_no", "frame_ptr", "data", "ts", "output_ptr", "files")


class Packet:
    """An ``AIOSPacket`` with the protobuf class's attribute names.

    Decoded packets reference the caller's buffer: ``frame_ptr`` and every
    ``file_data`` are memoryviews into it (into a copy taken at decode when the buffer
    was mutable, so a decoded packet never changes). Assigning a field patches the packet;
    ``encode_packet`` turns it back into protobuf-identical bytes.
    """

    __slots__ = ("_data", "_files", "_frame_ptr", "_output_ptr", "_seq_no", "_session_id", "_ts")

    def __init__(
        self,
        session_id: str = "",
        seq_no: int = 0,
        frame_ptr=b"",
        data: str = "",
        ts: float = 0.0,
        output_ptr: str = "",
        files=(),
    ) -> None:
        self.session_id = session_id
        self.seq_no = seq_no
        self.frame_ptr = frame_ptr
        self.data = data
        self.ts = ts
        self.output_ptr = output_ptr
        self.files = files

    # Properties keep assignments type-checked, as protobuf does.
    @property
    def session_id(self) -> str:
        return self._session_id

    @session_id.setter
    def session_id(self, value: str) -> None:
        self._session_id = _as_str(value, "session_id")

    @property
    def seq_no(self) -> int:
        return self._seq_no

    @seq_no.setter
    def seq_no(self, value: int) -> None:
        if isinstance(value, bool) or not isinstance(value, int):
            raise PacketEncodeError(f"seq_no must be int, not {type(value).__name__}")
        if not 0 <= value <= _U64_MAX:
            raise PacketEncodeError(f"seq_no {value} out of uint64 range")
        self._seq_no = value

    @property
    def frame_ptr(self):
        return self._frame_ptr

    @frame_ptr.setter
    def frame_ptr(self, value) -> None:
        self._frame_ptr = _as_bytes_like(value, "frame_ptr")

    @property
    def data(self) -> str:
        return self._data

    @data.setter
    def data(self, value: str) -> None:
        self._data = _as_str(value, "data")

    @property
    def ts(self) -> float:
        return self._ts

    @ts.setter
    def ts(self, value: float) -> None:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise PacketEncodeError(f"ts must be float, not {type(value).__name__}")
        self._ts = float(value)

    @property
    def output_ptr(self) -> str:
        return self._output_ptr

    @output_ptr.setter
    def output_ptr(self, value: str) -> None:
        self._output_ptr = _as_str(value, "output_ptr")

    @property
    def files(self) -> list:
        return self._files

    @files.setter
    def files(self, value) -> None:
        files = list(value)
        for f in files:
            if not isinstance(f, FileInfo):
                raise PacketEncodeError(f"files must hold FileInfo, not {type(f).__name__}")
        self._files = files

    def get_session_id(self) -> str:
        return self._session_id

    def replace(self, **changes) -> Packet:
        """A copy with some fields changed (views are shared, not copied)."""
        unknown = set(changes) - set(_FIELDS)
        if unknown:
            raise TypeError(f"unknown Packet field(s): {', '.join(sorted(unknown))}")
        values = {name: getattr(self, name) for name in _FIELDS}
        values["files"] = [FileInfo(f.metadata, f.file_data) for f in self.files]
        values.update(changes)
        return Packet(**values)

    def __eq__(self, other):
        if not isinstance(other, Packet):
            return NotImplemented
        return all(getattr(self, n) == getattr(other, n) for n in _FIELDS if n != "ts") and (
            self.ts == other.ts or (math.isnan(self.ts) and math.isnan(other.ts))
        )

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return (
            f"Packet(session_id={self.session_id!r}, seq_no={self.seq_no}, "
            f"frame_ptr=<{len(self.frame_ptr)} bytes>, data={self.data!r}, ts={self.ts!r}, "
            f"output_ptr={self.output_ptr!r}, files=<{len(self.files)}>)"
        )


# --------------------------------------------------------------------------- decoding


def _view(buf) -> memoryview:
    """A byte view of buf that nobody can change: bytes (and views of bytes) as they are,
    any other buffer (bytearray, writable memoryview, array, mmap) copied once."""
    view = buf if isinstance(buf, memoryview) else memoryview(buf)
    if view.ndim != 1 or view.itemsize != 1:
        view = view.cast("B")
    if type(view.obj) is not bytes:
        view = memoryview(view.tobytes())
    return view


def _decode_file(view, pos: int, end: int) -> FileInfo:
    metadata = ""
    data = (0, 0)
    while pos < end:
        at = pos
        field, wt, pos = _tag(view, pos, end)
        if field == 1 or field == 2:
            if wt != _LEN:
                raise _wrong(field, wt, at)
            n, pos = _length(view, pos, end)
            if field == 1:
                metadata = _utf8(view, pos, n)  # every occurrence is validated, as upb does
            else:
                data = (pos, n)
            pos += n
        else:
            pos = _skip(view, field, wt, pos, end, 1)
    info = FileInfo.__new__(FileInfo)
    info._metadata = metadata
    info._file_data = view[data[0] : data[0] + data[1]]
    return info


def _decode(view: memoryview, pos: int, end: int) -> Packet:
    strings = {1: "", 4: "", 6: ""}
    frame = (0, 0)
    seq_no = 0
    ts = 0.0
    files = []
    while pos < end:
        at = pos
        field, wt, pos = _tag(view, pos, end)
        if field in strings or field == 3 or field == 7:
            if wt != _LEN:
                raise _wrong(field, wt, at)
            n, pos = _length(view, pos, end)
            if field == 3:
                frame = (pos, n)
            elif field == 7:
                files.append(_decode_file(view, pos, pos + n))
            else:
                strings[field] = _utf8(view, pos, n)  # every occurrence, as upb does
            pos += n
        elif field == 2:
            if wt != _VARINT:
                raise _wrong(field, wt, at)
            seq_no, pos = _varint(view, pos, end)
        elif field == 5:
            if wt != _I64:
                raise _wrong(field, wt, at)
            if end - pos < 8:
                raise PacketDecodeError("truncated", pos, "fixed64")
            ts = _DOUBLE.unpack_from(view, pos)[0]
            pos += 8
        else:
            pos = _skip(view, field, wt, pos, end, 0)
    packet = Packet.__new__(Packet)
    packet._session_id = strings[1]
    packet._seq_no = seq_no
    packet._frame_ptr = view[frame[0] : frame[0] + frame[1]]
    packet._data = strings[4]
    packet._ts = ts
    packet._output_ptr = strings[6]
    packet._files = files
    return packet


def decode_packet(buf) -> Packet:
    """Decode a serialized ``AIOSPacket`` (any bytes-like object) into a Packet view."""
    view = _view(buf)
    return _decode(view, 0, len(view))


def _rpc_data(view: memoryview) -> tuple[int, int]:
    end = len(view)
    pos = 0
    span = (0, 0)
    while pos < end:
        at = pos
        field, wt, pos = _tag(view, pos, end)
        if field == 1:
            if wt != _LEN:
                raise _wrong(field, wt, at)
            n, pos = _length(view, pos, end)
            span = (pos, n)
            pos += n
        else:
            pos = _skip(view, field, wt, pos, end, 0)
    return span


def peel_message(buf) -> memoryview:
    """``rpc_data`` of a serialized ``InferenceMessage``, as a view (no copy)."""
    view = _view(buf)
    start, n = _rpc_data(view)
    return view[start : start + n]


def decode_message(buf) -> Packet:
    """Decode an ``InferenceMessage`` frame and the ``AIOSPacket`` inside it."""
    view = _view(buf)
    start, n = _rpc_data(view)
    return _decode(view, start, start + n)


# --------------------------------------------------------------------------- encoding


def _put_varint(out: bytearray, value: int) -> None:
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)


def _utf8_bytes(value: str, name: str) -> bytes:
    try:
        return value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise PacketEncodeError(f"{name} is not encodable as UTF-8: {exc.reason}") from None


def _put_len(out: bytearray, tag: int, payload) -> None:
    if isinstance(payload, memoryview):
        # The byte length: len() counts items of the first dimension (array('I'), 2-D).
        if not payload.c_contiguous:
            raise PacketEncodeError("bytes fields must be C-contiguous buffers")
        n = payload.nbytes
        if payload.ndim != 1 or payload.itemsize != 1:
            payload = payload.cast("B")
    else:
        n = len(payload)
    if n:
        out.append(tag)
        _put_varint(out, n)
        out += payload


def encode_packet(packet: Packet) -> bytes:
    """Serialize a Packet; the bytes equal protobuf's ``SerializeToString`` for the same values."""
    if not isinstance(packet, Packet):
        raise PacketEncodeError(f"expected a Packet, not {type(packet).__name__}")
    out = bytearray()
    _put_len(out, 0x0A, _utf8_bytes(packet.session_id, "session_id"))
    if packet.seq_no:
        out.append(0x10)
        _put_varint(out, packet.seq_no)
    _put_len(out, 0x1A, packet.frame_ptr)
    _put_len(out, 0x22, _utf8_bytes(packet.data, "data"))
    raw_ts = _DOUBLE.pack(packet.ts)
    if raw_ts != b"\0" * 8:  # proto3 implicit presence compares bits: -0.0 is written
        out.append(0x29)
        out += raw_ts
    _put_len(out, 0x32, _utf8_bytes(packet.output_ptr, "output_ptr"))
    for info in packet.files:
        body = bytearray()
        _put_len(body, 0x0A, _utf8_bytes(info.metadata, "metadata"))
        _put_len(body, 0x12, info.file_data)
        out.append(0x3A)
        _put_varint(out, len(body))
        out += body
    return bytes(out)


def encode_message(payload) -> bytes:
    """Wrap serialized packet bytes (or a Packet) into an ``InferenceMessage`` frame."""
    if isinstance(payload, Packet):
        payload = encode_packet(payload)
    payload = _as_bytes_like(payload, "rpc_data")
    out = bytearray()
    _put_len(out, 0x0A, payload)
    return bytes(out)
