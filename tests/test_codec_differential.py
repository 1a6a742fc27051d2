"""Hypothesis: both codec twins agree with each other and with protobuf (upb).

- random valid packets: same values as protobuf, and encode() == SerializeToString();
- random unknown fields (groups included) spliced between fields: ignored like protobuf;
- random garbage and truncations: every input protobuf rejects, both twins reject with
  the same reason and offset; inputs protobuf accepts decode to the same values, except
  the one documented strictness (a known field with another wire type).
"""

from __future__ import annotations

import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aios_fast.errors import PacketDecodeError
from aios_fast.protos import inference_pb2, payload_pb2

from .conftest import twins
from .test_codec import _varint as varint

CODECS = twins("_codec")
SETTINGS = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])

text = st.text(st.characters(codec="utf-8"), max_size=40)
blobs = st.binary(max_size=300)
files = st.lists(st.tuples(text, blobs), max_size=4)
packets = st.fixed_dictionaries(
    {
        "session_id": text,
        "seq_no": st.integers(0, 2**64 - 1),
        "frame_ptr": blobs,
        "data": text,
        "ts": st.floats(allow_nan=True, allow_infinity=True),
        "output_ptr": text,
        "files": files,
    }
)


def to_pb(fields):
    fields = dict(fields)
    msg = payload_pb2.AIOSPacket(**{k: v for k, v in fields.items() if k != "files"})
    for meta, data in fields["files"]:
        msg.files.add(metadata=meta, file_data=data)
    return msg


def values(packet):
    return (
        packet.session_id,
        packet.seq_no,
        bytes(packet.frame_ptr),
        packet.data,
        "nan" if math.isnan(packet.ts) else packet.ts.hex(),
        packet.output_ptr,
        [(f.metadata, bytes(f.file_data)) for f in packet.files],
    )


field_numbers = st.integers(8, 2**29 - 1)
# Inside a group upb accepts field number 0 (and a group numbered 0).
group_field_numbers = st.one_of(st.just(0), field_numbers)


@st.composite
def unknown_field(draw, depth=0):
    number = draw(group_field_numbers if depth else field_numbers)
    kind = draw(st.sampled_from([0, 1, 2, 5] + ([3] if depth < 4 else [])))
    tag = varint((number << 3) | kind)
    if kind == 0:
        return tag + varint(draw(st.integers(0, 2**64 - 1)))
    if kind == 1:
        return tag + draw(st.binary(min_size=8, max_size=8))
    if kind == 5:
        return tag + draw(st.binary(min_size=4, max_size=4))
    if kind == 2:
        body = draw(st.binary(max_size=20))
        return tag + varint(len(body)) + body
    inner = b"".join(draw(st.lists(unknown_field(depth + 1), max_size=3)))
    return tag + inner + varint((number << 3) | 4)


def split_fields(buf: bytes) -> list[bytes]:
    """Top-level fields of a valid packet, as separate byte strings (for splicing)."""
    out, pos = [], 0
    while pos < len(buf):
        start = pos
        tag = 0
        shift = 0
        while True:
            b = buf[pos]
            pos += 1
            tag |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                break
        wt = tag & 7
        if wt == 0:
            while buf[pos] & 0x80:
                pos += 1
            pos += 1
        elif wt == 1:
            pos += 8
        elif wt == 2:
            n = shift = 0
            while True:
                b = buf[pos]
                pos += 1
                n |= (b & 0x7F) << shift
                shift += 7
                if not b & 0x80:
                    break
            pos += n
        out.append(buf[start:pos])
    return out


def decode_all(buf):
    """Outcome of each twin: ('ok', values) or ('err', reason, offset)."""
    outcomes = []
    for codec in CODECS:
        try:
            outcomes.append(("ok", values(codec.decode_packet(buf))))
        except PacketDecodeError as exc:
            outcomes.append(("err", exc.reason, exc.offset))
    return outcomes


@SETTINGS
@given(packets)
def test_valid_packets_match_protobuf(fields):
    msg = to_pb(fields)
    buf = msg.SerializeToString()
    expected = values(msg)
    for codec in CODECS:
        packet = codec.decode_packet(buf)
        assert values(packet) == expected
        assert codec.encode_packet(packet) == buf
        built = codec.Packet(
            **{k: v for k, v in fields.items() if k != "files"},
            files=[codec.FileInfo(m, d) for m, d in fields["files"]],
        )
        assert codec.encode_packet(built) == buf
        frame = inference_pb2.InferenceMessage(rpc_data=buf).SerializeToString()
        assert codec.encode_message(buf) == frame
        assert values(codec.decode_message(frame)) == expected


@SETTINGS
@given(packets, st.data())
def test_unknown_fields_are_ignored_like_protobuf(fields, data):
    parts = split_fields(to_pb(fields).SerializeToString())
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(0, len(parts)))
        parts.insert(at, data.draw(unknown_field()))
    buf = b"".join(parts)
    expected = values(payload_pb2.AIOSPacket.FromString(buf))
    for outcome in decode_all(buf):
        assert outcome == ("ok", expected)


def check_against_protobuf(buf: bytes):
    try:
        expected = ("ok", values(payload_pb2.AIOSPacket.FromString(buf)))
    except Exception:  # protobuf's DecodeError
        expected = None
    outcomes = decode_all(buf)
    assert all(o == outcomes[0] for o in outcomes), outcomes  # the twins agree exactly
    got = outcomes[0]
    if expected is None:
        assert got[0] == "err", f"protobuf rejects {buf!r}, we accepted it"
    elif got[0] == "err":
        assert got[1] == "wrong_wire_type", f"protobuf accepts {buf!r}, we said {got}"
    else:
        assert got == expected


@SETTINGS
@given(st.binary(max_size=200))
def test_random_garbage(buf):
    check_against_protobuf(buf)


@SETTINGS
@given(packets, st.data())
def test_truncations_and_corruptions(fields, data):
    buf = bytearray(to_pb(fields).SerializeToString())
    if not buf:
        return
    op = data.draw(st.sampled_from(["truncate", "flip", "insert"]))
    if op == "truncate":
        buf = buf[: data.draw(st.integers(0, len(buf) - 1))]
    elif op == "flip":
        for _ in range(data.draw(st.integers(1, 3))):
            buf[data.draw(st.integers(0, len(buf) - 1))] = data.draw(st.integers(0, 255))
    else:
        at = data.draw(st.integers(0, len(buf)))
        buf[at:at] = data.draw(st.binary(min_size=1, max_size=6))
    check_against_protobuf(bytes(buf))


@pytest.mark.parametrize("depth", [1, 50, 99, 100, 101, 150])
def test_group_nesting_depth_matches_protobuf(depth):
    buf = b"\x43" * depth + b"\x44" * depth
    check_against_protobuf(buf)


def padded_varint(n: int, width: int) -> bytes:
    """n as a varint of exactly width bytes (non-minimal: continuation bytes of zero)."""
    out = bytearray()
    for i in range(width):
        out.append(((n >> (7 * i)) & 0x7F) | (0x80 if i < width - 1 else 0))
    return bytes(out)


LENGTH_SITES = {
    # name: (prefix, body); the length prefix goes between them
    "session_id": (b"\x0a", b"abc"),
    "frame_ptr": (b"\x1a", b"\x00\xff"),
    "unknown_field": (b"\x4a", b"xyz"),
    "files": (b"\x3a", b"\x0a\x01m"),
    "in_group": (b"\x4b\x52", b"abc"),
}


@pytest.mark.parametrize("width", range(1, 12))
@pytest.mark.parametrize("site", sorted(LENGTH_SITES))
def test_length_prefix_width_matches_protobuf(site, width):
    # upb reads a length from at most 5 bytes: 6-10 byte lengths are rejected even when
    # their value is small (a plain varint may take 10).
    prefix, body = LENGTH_SITES[site]
    buf = prefix + padded_varint(len(body), width) + body
    if site == "in_group":
        buf += b"\x4c"
    check_against_protobuf(buf)
    outcome = decode_all(buf)[0]
    assert (outcome[0] == "ok") == (width <= 5), outcome
    if width > 5:
        assert outcome[1] == "varint_too_long"
    # inside a FileInfo too
    meta = b"\x0a" + padded_varint(3, width) + b"abc"
    nested = b"\x3a" + bytes([len(meta)]) + meta
    check_against_protobuf(nested)
    assert (decode_all(nested)[0][0] == "ok") == (width <= 5)


@pytest.mark.parametrize(
    "inner",
    [b"\x00\x01", b"\x02\x01x", b"\x01" + b"\0" * 8, b"\x05" + b"\0" * 4, b"\x03\x04",
     b"\x03\x00\x01\x04", b"\x80\x00\x01", b"\x04", b"\x06", b"\x07", b"\x03\x4c"],
)  # fmt: skip
def test_field_zero_inside_groups_matches_protobuf(inner):
    for buf in (b"\x4b" + inner + b"\x4c", b"\x4b\x53" + inner + b"\x54\x4c"):
        check_against_protobuf(buf)
        check_against_protobuf(b"\x3a" + bytes([len(buf)]) + buf)
    assert decode_all(b"\x4b\x00\x01\x4c")[0][0] == "ok"


def _wide_views():
    from array import array

    raw = bytes(range(24))
    return {
        "array_I": memoryview(array("I", [1, 2, 0xFFFFFFFF])),
        "array_d": memoryview(array("d", [1.5, -2.0])),
        "2d": memoryview(raw).cast("B", (4, 6)),
        "3d_ints": memoryview(raw).cast("I").cast("B").cast("I", (2, 1, 3)),
        "bytearray_h": memoryview(bytearray(raw)).cast("h"),
    }


@pytest.mark.parametrize("kind", sorted(_wide_views()))
def test_multibyte_and_multidim_views_encode_their_bytes(kind):
    # len(view) counts items of the first dimension; a length prefix is the byte count.
    view = _wide_views()[kind]
    raw = view.tobytes()
    pb = payload_pb2.AIOSPacket(session_id="s", frame_ptr=raw)
    pb.files.add(metadata="m", file_data=raw)
    expected = pb.SerializeToString()
    frame = inference_pb2.InferenceMessage(rpc_data=raw).SerializeToString()
    for codec in CODECS:
        packet = codec.Packet(session_id="s", frame_ptr=view, files=[codec.FileInfo("m", view)])
        assert codec.encode_packet(packet) == expected, codec.IMPLEMENTATION
        assert codec.encode_message(view) == frame, codec.IMPLEMENTATION
        assert values(codec.decode_packet(expected)) == values(pb)


def test_non_contiguous_views_are_refused_at_encode():
    from aios_fast.errors import PacketEncodeError

    view = memoryview(b"abcdef")[::2]
    for codec in CODECS:
        with pytest.raises(PacketEncodeError):
            codec.encode_packet(codec.Packet(frame_ptr=view))
        with pytest.raises(PacketEncodeError):
            codec.encode_packet(codec.Packet(files=[codec.FileInfo("m", view)]))
        with pytest.raises(PacketEncodeError):
            codec.encode_message(view)
