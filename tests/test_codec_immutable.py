"""A decoded Packet never changes: writing to a mutable source buffer after decode
changes nothing the Packet reads (both twins). bytes stay zero-copy."""

from __future__ import annotations

from array import array

import pytest

from aios_fast.protos import inference_pb2

from .conftest import twins
from .test_codec import assert_same, pb_packet

MSG = pb_packet(
    session_id="session-ascii-42",
    seq_no=9,
    frame_ptr=b'{"framedb_id": "fdb", "key": "k"}',
    data='{"x": "ünïcode ✓"}',
    ts=1.25,
    output_ptr='{"outputs": []}',
    files=[('{"type": "text"}', b"file content"), ("", b"\x01" * 64)],
)
WIRE = MSG.SerializeToString()
FRAME = inference_pb2.InferenceMessage(rpc_data=WIRE).SerializeToString()


def _sources(raw: bytes):
    """Mutable sources over raw, each with a function that overwrites every byte."""

    def fill(target):
        def go():
            view = memoryview(target).cast("B")
            view[:] = b"\xff" * view.nbytes

        return go

    ba = bytearray(raw)
    yield "bytearray", ba, fill(ba)
    ba2 = bytearray(raw)
    yield "memoryview(bytearray)", memoryview(ba2), fill(ba2)
    ba3 = bytearray(b"pad" + raw)
    yield "sliced memoryview", memoryview(ba3)[3:], fill(ba3)
    ba4 = bytearray(raw)
    yield "readonly view of bytearray", memoryview(ba4).toreadonly(), fill(ba4)
    arr = array("B", raw)
    yield "array", arr, fill(arr)


def _check_unchanged(codec, lbmod, decode, source, mutate, read_first):
    packet = decode(source)
    if read_first:  # values read before the write stay too
        assert_same(packet, MSG)
    pick = lbmod.ConsistentHash([f"i{k}" for k in range(16)])
    expected_pick = pick.pick_key(MSG.session_id)
    mutate()
    assert_same(packet, MSG)
    for s in (packet.session_id, packet.data, packet.output_ptr, packet.files[0].metadata):
        s.encode("utf-8")  # a valid str (an invalid one raises or misreports isascii)
        assert s.isascii() == all(ord(ch) < 128 for ch in s)
    assert bytes(packet.frame_ptr) == MSG.frame_ptr
    assert bytes(packet.files[0].file_data) == b"file content"
    assert codec.encode_packet(packet) == WIRE
    assert pick.pick(packet) == expected_pick
    assert pick.pick(packet) == pick.pick_key(packet.session_id)


@pytest.mark.parametrize("read_first", [False, True], ids=["lazy", "read"])
@pytest.mark.parametrize("lb_index", range(len(twins("_lb"))))
def test_writing_the_source_after_decode_changes_nothing(codec, lb_index, read_first):
    lbmod = twins("_lb")[lb_index]
    for _name, source, mutate in _sources(WIRE):
        _check_unchanged(codec, lbmod, codec.decode_packet, source, mutate, read_first)
    for _name, source, mutate in _sources(FRAME):
        _check_unchanged(codec, lbmod, codec.decode_message, source, mutate, read_first)


def test_peel_message_snapshots_a_mutable_source(codec):
    ba = bytearray(FRAME)
    view = codec.peel_message(ba)
    ba[:] = b"\x00" * len(ba)
    assert bytes(view) == WIRE


def test_bytes_and_views_of_bytes_stay_zero_copy(codec):
    for source in (WIRE, memoryview(WIRE), memoryview(b"xx" + WIRE)[2:]):
        packet = codec.decode_packet(source)
        base = source.obj if isinstance(source, memoryview) else source
        assert packet.frame_ptr.obj is base
        assert packet.files[0].file_data.obj is base
        assert_same(packet, MSG)


def test_mutable_source_can_be_resized_after_decode(codec):
    ba = bytearray(WIRE)
    packet = codec.decode_packet(ba)
    frame = packet.frame_ptr
    ba.extend(b"more")  # no export of the caller's buffer is held past decode
    del ba[:]
    assert bytes(frame) == MSG.frame_ptr
    assert_same(packet, MSG)
