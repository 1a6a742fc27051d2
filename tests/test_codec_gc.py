"""Packets and FileInfos take part in garbage collection: reference cycles through them
are freed (both twins)."""

from __future__ import annotations

import gc
import weakref

from .test_codec import small_packet

N = 1000


class Blob(bytearray):
    """A bytes-like value that can point back at what holds it (and be weakly referenced)."""


def _collect_all() -> None:
    for _ in range(3):
        gc.collect()


def test_decoded_packets_and_file_infos_are_tracked(codec):
    packet = codec.decode_packet(small_packet().SerializeToString())
    assert gc.is_tracked(packet)
    assert gc.is_tracked(packet.files[0])
    assert gc.is_tracked(codec.Packet())
    assert gc.is_tracked(codec.FileInfo())


def test_cycles_through_packets_are_freed(codec):
    wire = small_packet().SerializeToString()
    refs = []
    for _ in range(N):
        packet = codec.decode_packet(wire)
        blob = Blob(b"frame")
        blob.packet = packet  # packet -> frame_ptr -> blob -> packet
        packet.frame_ptr = blob
        refs.append(weakref.ref(blob))
    for _ in range(N):
        packet = codec.decode_packet(wire)
        packet.files.append(packet)  # packet -> files list -> packet
        marker = Blob(b"x")
        marker.packet = packet
        packet.files[0].file_data = marker  # and through a decoded FileInfo
        refs.append(weakref.ref(marker))
    for _ in range(N):
        blob = Blob(b"data")
        info = codec.FileInfo("m", blob)
        blob.info = info  # info -> file_data -> blob -> info
        refs.append(weakref.ref(blob))
    del packet, blob, marker, info
    _collect_all()
    alive = sum(r() is not None for r in refs)
    assert alive == 0, f"{alive} of {len(refs)} cycles leaked"


def test_collected_packets_keep_their_views_valid(codec):
    # A cycle's views handed out earlier stay readable after the cycle is collected.
    wire = small_packet().SerializeToString()
    views = []
    for _ in range(100):
        packet = codec.decode_packet(bytearray(wire))
        views.append((packet.frame_ptr, packet.files[1].file_data, packet.files[0]))
        packet.files.append(packet)
    del packet
    _collect_all()
    msg = small_packet()
    for frame, data, info in views:
        assert bytes(frame) == msg.frame_ptr
        assert bytes(data) == msg.files[1].file_data
        assert info.metadata == msg.files[0].metadata
