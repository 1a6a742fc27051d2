"""Packet codec behaviour, run against both twins (ids c / py)."""

from __future__ import annotations

import math
import struct
import time

import pytest

from aios_fast.errors import PacketDecodeError, PacketEncodeError
from aios_fast.protos import inference_pb2, payload_pb2


def pb_packet(**fields):
    files = fields.pop("files", [])
    msg = payload_pb2.AIOSPacket(**fields)
    for meta, data in files:
        msg.files.add(metadata=meta, file_data=data)
    return msg


def small_packet():
    return pb_packet(
        session_id="session-123",
        seq_no=7,
        frame_ptr=b'{"framedb_id": "fdb-1", "key": "k-1"}',
        data='{"input": "Hello Block", "ünïcode": "✓"}',
        ts=time.time(),
        output_ptr='{"outputs": []}',
        files=[('{"type": "text"}', b"Sample file content"), ("", b"\x00" * 1024)],
    )


def assert_same(packet, msg):
    assert packet.session_id == msg.session_id
    assert packet.seq_no == msg.seq_no
    assert bytes(packet.frame_ptr) == msg.frame_ptr
    assert packet.data == msg.data
    assert packet.ts == msg.ts or (math.isnan(packet.ts) and math.isnan(msg.ts))
    assert packet.output_ptr == msg.output_ptr
    assert [(f.metadata, bytes(f.file_data)) for f in packet.files] == [
        (f.metadata, f.file_data) for f in msg.files
    ]


def test_decode_matches_protobuf(codec):
    msg = small_packet()
    packet = codec.decode_packet(msg.SerializeToString())
    assert_same(packet, msg)


def test_empty_buffer_is_default_packet(codec):
    packet = codec.decode_packet(b"")
    assert_same(packet, payload_pb2.AIOSPacket())
    assert packet == codec.Packet()


def test_bytes_fields_are_views_into_the_callers_buffer(codec):
    msg = pb_packet(session_id="s", frame_ptr=b"F" * 100, files=[("m", b"D" * 4096)])
    buf = msg.SerializeToString()
    packet = codec.decode_packet(buf)
    for view in (packet.frame_ptr, packet.files[0].file_data):
        assert isinstance(view, memoryview)
        assert view.obj is buf  # no copy: the view is backed by the caller's object
    assert packet.files[0].file_data == b"D" * 4096


def test_views_work_over_bytearray_and_memoryview(codec):
    buf = small_packet().SerializeToString()
    for source in (bytearray(buf), memoryview(buf), memoryview(bytearray(buf))[0:]):
        packet = codec.decode_packet(source)
        assert_same(packet, small_packet().__class__.FromString(buf))
        assert codec.encode_packet(packet) == buf


def test_decode_message_peels_inference_message(codec):
    msg = small_packet()
    frame = inference_pb2.InferenceMessage(rpc_data=msg.SerializeToString()).SerializeToString()
    assert_same(codec.decode_message(frame), msg)
    peeled = codec.peel_message(frame)
    assert isinstance(peeled, memoryview) and peeled.obj is frame
    assert peeled == msg.SerializeToString()


def test_encode_equals_protobuf(codec):
    msg = small_packet()
    built = codec.Packet(
        session_id=msg.session_id,
        seq_no=msg.seq_no,
        frame_ptr=msg.frame_ptr,
        data=msg.data,
        ts=msg.ts,
        output_ptr=msg.output_ptr,
        files=[codec.FileInfo(f.metadata, f.file_data) for f in msg.files],
    )
    assert codec.encode_packet(built) == msg.SerializeToString()
    assert (
        codec.encode_message(built)
        == inference_pb2.InferenceMessage(rpc_data=msg.SerializeToString()).SerializeToString()
    )


@pytest.mark.parametrize("ts", [0.0, -0.0, 1.5, float("inf"), float("nan")])
def test_ts_presence_follows_protobuf(codec, ts):
    assert codec.encode_packet(codec.Packet(ts=ts)) == pb_packet(ts=ts).SerializeToString()


def test_patch_output_ptr_reencodes_like_protobuf(codec):
    msg = small_packet()
    packet = codec.decode_packet(msg.SerializeToString())
    packet.output_ptr = '{"outputs": [{"host": "h", "port": 0}]}'
    msg.output_ptr = packet.output_ptr
    assert codec.encode_packet(packet) == msg.SerializeToString()
    files = packet.files
    files.append(codec.FileInfo("added", b"xyz"))
    files[0].metadata = "changed"
    msg.files[0].metadata = "changed"
    msg.files.add(metadata="added", file_data=b"xyz")
    assert codec.encode_packet(packet) == msg.SerializeToString()


def test_replace_copies_and_changes(codec):
    packet = codec.decode_packet(small_packet().SerializeToString())
    other = packet.replace(seq_no=8, output_ptr="")
    assert other.seq_no == 8 and other.output_ptr == "" and other.session_id == packet.session_id
    assert packet.seq_no == 7
    with pytest.raises(TypeError):
        packet.replace(nope=1)


def test_encode_reencodes_decoded_packet_unchanged(codec):
    buf = small_packet().SerializeToString()
    assert codec.encode_packet(codec.decode_packet(buf)) == buf


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("session_id", b"bytes"),
        ("seq_no", -1),
        ("seq_no", 1 << 64),
        ("seq_no", 1.5),
        ("frame_ptr", "text"),
        ("data", 3),
        ("ts", "now"),
        ("output_ptr", None),
        ("files", [b"not a FileInfo"]),
    ],
)
def test_bad_field_values_are_refused(codec, field, value):
    with pytest.raises(PacketEncodeError):
        codec.Packet(**{field: value})


def test_unencodable_string_is_refused_at_encode(codec):
    with pytest.raises(PacketEncodeError):
        codec.encode_packet(codec.Packet(session_id="\ud800"))
    with pytest.raises(PacketEncodeError):
        codec.encode_packet("not a packet")


def test_last_singular_field_wins_and_files_accumulate(codec):
    a = pb_packet(session_id="first", seq_no=1, files=[("a", b"1")]).SerializeToString()
    b = pb_packet(session_id="second", seq_no=2, files=[("b", b"2")]).SerializeToString()
    merged = payload_pb2.AIOSPacket.FromString(a + b)
    assert_same(codec.decode_packet(a + b), merged)


def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def test_unknown_fields_are_skipped(codec):
    unknown = (
        _varint((100 << 3) | 0) + _varint(2**63)
        + _varint((101 << 3) | 1) + struct.pack("<d", 1.0)
        + _varint((102 << 3) | 2) + _varint(3) + b"abc"
        + _varint((103 << 3) | 5) + b"\x01\x02\x03\x04"
        + _varint((104 << 3) | 3) + _varint((1 << 3) | 0) + b"\x05" + _varint((104 << 3) | 4)
    )  # fmt: skip
    buf = unknown + small_packet().SerializeToString() + unknown
    assert_same(codec.decode_packet(buf), payload_pb2.AIOSPacket.FromString(buf))


def test_field_zero_inside_a_group_is_skipped_like_protobuf(codec):
    # upb refuses field number 0 at the top level but accepts it inside a group.
    inner = b"\x00\x01" + b"\x02\x01x" + b"\x01" + b"\0" * 8 + b"\x05" + b"\0" * 4
    inner += b"\x03\x00\x07\x04"  # a group numbered 0 holding a field 0, closed by 0
    buf = b"\x4b" + inner + b"\x4c" + small_packet().SerializeToString()
    assert_same(codec.decode_packet(buf), payload_pb2.AIOSPacket.FromString(buf))
    in_file = b"\x3a" + _varint(len(inner) + 2) + b"\x4b" + inner + b"\x4c"
    assert_same(codec.decode_packet(in_file), payload_pb2.AIOSPacket.FromString(in_file))


MALFORMED = [
    ("truncated_varint", b"\x10\xff", "truncated"),
    ("truncated_length", b"\x0a", "truncated"),
    ("length_past_end", b"\x0a\x05abc", "length_overflow"),
    ("huge_length", b"\x0a" + b"\xff" * 4 + b"\x0f", "length_overflow"),
    # upb reads a length from at most 5 bytes, even one whose value is small
    ("length_10_bytes", b"\x0a" + b"\xff" * 9 + b"\x01", "varint_too_long"),
    ("length_6_bytes", b"\x0a\x83\x80\x80\x80\x80\x00abc", "varint_too_long"),
    ("unknown_length_6_bytes", b"\x4a\x80\x80\x80\x80\x80\x00", "varint_too_long"),
    ("file_length_6_bytes", b"\x3a\x82\x80\x80\x80\x80\x00\x0a\x00", "varint_too_long"),
    ("metadata_length_6_bytes", b"\x3a\x07\x0a\x80\x80\x80\x80\x80\x00", "varint_too_long"),
    ("varint_11_bytes", b"\x10" + b"\xff" * 10 + b"\x01", "varint_too_long"),
    ("tag_6_bytes", b"\x80\x80\x80\x80\x80\x00", "varint_too_long"),
    ("tag_over_32_bits", b"\xf8\xff\xff\xff\x1f\x00", "bad_tag"),
    ("field_zero", b"\x00\x00", "bad_tag"),
    ("group_zero_at_top_level", b"\x03\x04", "bad_tag"),
    ("field_zero_in_file", b"\x3a\x02\x00\x00", "bad_tag"),
    ("group_ended_by_field_zero", b"\x4b\x04", "bad_group"),
    ("wire_type_6", b"\x0e", "bad_wire_type"),
    ("wire_type_7", b"\x0f", "bad_wire_type"),
    ("truncated_fixed64", b"\x29\x00\x00", "truncated"),
    ("truncated_fixed32_unknown", b"\x45\x00", "truncated"),
    ("end_group_alone", b"\x44", "bad_group"),
    ("mismatched_group", b"\x43\x4c", "bad_group"),
    ("unterminated_group", b"\x43", "bad_group"),
    ("groups_too_deep", b"\x43" * 101 + b"\x44" * 101, "too_deep"),
    ("invalid_utf8_session", b"\x0a\x01\xff", "invalid_utf8"),
    ("surrogate_in_data", b"\x22\x03\xed\xa0\x80", "invalid_utf8"),
    ("overlong_utf8", b"\x32\x02\xc0\x80", "invalid_utf8"),
    ("invalid_utf8_metadata", b"\x3a\x03\x0a\x01\xff", "invalid_utf8"),
    # upb checks every occurrence, not only the one that wins (found by Hypothesis)
    ("invalid_utf8_overwritten", b"\x0a\x01\xff\x0a\x01a", "invalid_utf8"),
    ("invalid_metadata_overwritten", b"\x3a\x06\x0a\x01\xff\x0a\x01a", "invalid_utf8"),
    ("file_length_past_end", b"\x3a\x04\x0a\x09ab", "length_overflow"),
    ("string_as_varint", b"\x08\x01", "wrong_wire_type"),
    ("seq_no_as_bytes", b"\x12\x00", "wrong_wire_type"),
    ("ts_as_fixed32", b"\x2d\x00\x00\x00\x00", "wrong_wire_type"),
    ("files_as_varint", b"\x38\x01", "wrong_wire_type"),
    ("file_data_as_varint", b"\x3a\x02\x10\x01", "wrong_wire_type"),
]


@pytest.mark.parametrize(
    ("buf", "reason"), [m[1:] for m in MALFORMED], ids=[m[0] for m in MALFORMED]
)
def test_malformed_input_raises_packet_decode_error(codec, buf, reason):
    with pytest.raises(PacketDecodeError) as info:
        codec.decode_packet(buf)
    assert info.value.reason == reason
    assert isinstance(info.value, ValueError)
    assert 0 <= info.value.offset <= len(buf)
    if reason != "wrong_wire_type":  # protobuf keeps those as unknown fields; we are stricter
        with pytest.raises(Exception):  # noqa: B017 - protobuf's DecodeError
            payload_pb2.AIOSPacket.FromString(buf)


def test_malformed_message_frames(codec):
    with pytest.raises(PacketDecodeError):
        codec.decode_message(b"\x0a\x05ab")
    with pytest.raises(PacketDecodeError):
        codec.peel_message(b"\x08\x01")
    inner_bad = inference_pb2.InferenceMessage(rpc_data=b"\x0a\x01\xff").SerializeToString()
    with pytest.raises(PacketDecodeError):
        codec.decode_message(inner_bad)


def test_nesting_limit_matches_protobuf(codec):
    ok = b"\x43" * 100 + b"\x44" * 100
    codec.decode_packet(ok)
    payload_pb2.AIOSPacket.FromString(ok)
    inner = b"\x43" * 100 + b"\x44" * 100
    in_file = b"\x3a" + _varint(len(inner)) + inner  # a FileInfo already is one level deep
    with pytest.raises(PacketDecodeError):
        codec.decode_packet(in_file)
    with pytest.raises(Exception):  # noqa: B017
        payload_pb2.AIOSPacket.FromString(in_file)


def test_views_outlive_the_packet(codec):
    import gc

    buf = bytearray(small_packet().SerializeToString())
    packet = codec.decode_packet(buf)
    info = packet.files[0]
    frame = packet.frame_ptr
    del packet
    gc.collect()
    assert info.metadata == '{"type": "text"}'
    assert bytes(info.file_data) == b"Sample file content"
    assert bytes(frame).startswith(b'{"framedb_id"')
    del info, frame
    gc.collect()
    buf.extend(b"x")  # every export released: the bytearray may be resized again


def test_selector_refuses_silent_fallback(monkeypatch):
    import aios_fast._select as select

    monkeypatch.setenv("AIOS_FAST_NO_EXTENSIONS", "1")
    assert select.load("_codec").IMPLEMENTATION == "py"
    monkeypatch.delenv("AIOS_FAST_NO_EXTENSIONS")
    with pytest.raises(ImportError, match="AIOS_FAST_NO_EXTENSIONS"):
        select.load("_no_such_module")


def test_public_codec_module_uses_selected_implementation():
    from aios_fast import codec

    from .conftest import PURE_ONLY

    assert codec.IMPLEMENTATION == ("py" if PURE_ONLY else "c")
