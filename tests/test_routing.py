"""Frame DB round trips and output_ptr routing (Redis lists and gRPC), with real processes
and a redis-server of the test's own."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os

import grpc
import pytest

from aios_fast import codec
from aios_fast.framedb import FrameDB, FrameError
from aios_fast.instance.routing import OutputRouter, RoutingError

from .procs import Proc, frame, start_executor, start_instance
from .redis_server import redis_url  # noqa: F401 - fixture

pytest.importorskip("redis")


def test_embedded_frame_store_round_trip():
    async def run():
        db = FrameDB({})
        ptr = await db.put(b"x" * 1000)
        assert json.loads(ptr)["framedb_id"] == "local"
        assert await db.get(ptr) == b"x" * 1000
        with pytest.raises(FrameError, match="unknown framedb_id"):
            await db.get(b'{"framedb_id": "nope", "key": "k"}')
        with pytest.raises(FrameError, match="malformed"):
            await db.get(b"not json")
        with pytest.raises(FrameError, match="not found"):
            await db.get(b'{"framedb_id": "local", "key": "missing"}')

    asyncio.run(run())


def test_16_mib_frame_travels_by_reference(redis_url):  # noqa: F811
    blob = os.urandom(16 << 20)

    async def put():
        db = FrameDB({"fdb1": redis_url})
        try:
            return await db.put(blob, "fdb1")
        finally:
            await db.close()

    ptr = asyncio.run(put())
    instance = Proc(["-m", "aios_fast.instance", "--block", "tests.blocks:FrameDigestBlock",
                     "--framedb", json.dumps({"fdb1": redis_url})])  # fmt: skip
    executor, port = start_executor({"i0": instance.info["port"]})
    try:
        request = frame("f", 1, frame_ptr=ptr)
        assert len(request) < 200  # the executor only ever sees the pointer
        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
            out = ch.unary_unary("/InferenceProxy/infer_result")(request, timeout=30)
        result = json.loads(codec.decode_message(out).data)
        assert result == {"size": len(blob), "sha256": hashlib.sha256(blob).hexdigest()}
    finally:
        executor.stop()
        instance.stop()


def test_output_ptr_routes_to_a_redis_list(redis_url):  # noqa: F811
    import redis

    port_redis = int(redis_url.rsplit(":", 1)[1].split("/")[0])
    instance = start_instance()
    executor, port = start_executor({"i0": instance.info["port"]})
    ptr = json.dumps({"outputs": [{"host": "127.0.0.1", "port": port_redis,
                                   "queue_name": "next-block-q", "block_id": "next"}]})  # fmt: skip
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
            reply = ch.unary_unary("/InferenceProxy/infer")(
                frame("r", 7, '{"v": 1}', output_ptr=ptr), timeout=10
            )
        assert reply == b"\x08\x01"
        client = redis.Redis.from_url(redis_url)
        item = client.brpop(["next-block-q"], timeout=10)
        assert item is not None
        routed = codec.decode_packet(item[1])
        assert (routed.session_id, routed.seq_no, routed.data) == ("r", 7, '{"v": 1}')
        assert routed.output_ptr == ""  # not routed again by the next block
    finally:
        executor.stop()
        instance.stop()


def test_output_ptr_routes_to_the_next_block_over_grpc(redis_url):  # noqa: F811
    import redis

    sink = start_instance("tests.blocks:RedisSinkBlock", {"url": redis_url, "queue": "seen"})
    next_exec, next_port = start_executor({"s0": sink.info["port"]})
    first = start_instance()
    executor, port = start_executor({"i0": first.info["port"]})
    ptr = json.dumps({"outputs": [{"host": f"127.0.0.1:{next_port}", "port": 0,
                                   "block_id": "block-next"}]})  # fmt: skip
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
            ch.unary_unary("/InferenceProxy/infer")(
                frame("g", 1, "hop", output_ptr=ptr), timeout=10
            )
        client = redis.Redis.from_url(redis_url)
        seen = []
        while b"hop" not in seen:  # the sink also saw the readiness probes
            item = client.brpop(["seen"], timeout=10)
            assert item is not None, f"the next block never got the task; saw {seen}"
            seen.append(item[1])
    finally:
        for proc in (executor, first, next_exec, sink):
            proc.stop()


@pytest.mark.parametrize(
    ("ptr", "match"),
    [
        ("not json", "not JSON"),
        ("[]", "JSON object"),
        ('{"is_graph": true, "graph": {}}', "not supported"),
        ('{"outputs": "x"}', "outputs"),
        ('{"outputs": [{"host": "h", "port": 6379}]}', "queue_name"),
    ],
)
def test_bad_output_ptrs_are_refused(ptr, match):
    with pytest.raises(RoutingError, match=match):
        OutputRouter.targets(ptr)


def test_routing_failure_reaches_the_result_caller():
    instance = start_instance()
    executor, port = start_executor({"i0": instance.info["port"]}, "--max-retries", "0")
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch, pytest.raises(grpc.RpcError) as info:
            ch.unary_unary("/InferenceProxy/infer_result")(
                frame("x", 1, output_ptr="{not json"), timeout=10
            )
        assert info.value.code() == grpc.StatusCode.INTERNAL
        assert "RoutingError" in info.value.details()
    finally:
        executor.stop()
        instance.stop()
