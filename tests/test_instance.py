"""The instance runtime on its own: health and management over HTTP, the CPU example
block, deadlines, per-instance bounds and reconnection after an instance restarts."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request

import grpc
import pytest

from aios_fast import codec

from .procs import Proc, frame, free_port, start_executor, start_instance


def http(url: str, body: dict | None = None) -> tuple[int, dict]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_health_and_management_endpoints():
    inst = start_instance("aios_fast.block:HashBlock", {"rounds": 3})
    base = f"http://127.0.0.1:{inst.info['mgmt_port']}"
    try:
        assert http(f"{base}/health") == (200, {"healthy": True})
        status, body = http(f"{base}/mgmt", {"mgmt_action": "update_parameters",
                                             "mgmt_data": {"rounds": 5}})  # fmt: skip
        assert status == 200 and body["success"] is True
        status, body = http(f"{base}/mgmt", {"mgmt_action": "nope", "mgmt_data": {}})
        assert status == 400 and "unknown management action" in body["message"]
        status, body = http(f"{base}/mgmt", {"mgmt_data": {}})
        assert status == 400 and body["success"] is False
        # The CPU example block, with the updated parameter, through plain infer_result.
        with grpc.insecure_channel(f"127.0.0.1:{inst.info['port']}") as ch:
            out = ch.unary_unary("/InferenceProxy/infer_result")(frame(data="abc"), timeout=10)
        assert json.loads(codec.decode_message(out).data)["rounds"] == 5
    finally:
        inst.stop()


def test_deadline_is_honoured():
    inst = start_instance("tests.blocks:SleepBlock", {"delay": 2.0})
    executor, port = start_executor({"i0": inst.info["port"]})
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch, pytest.raises(grpc.RpcError) as info:
            ch.unary_unary("/InferenceProxy/infer_result")(frame(), timeout=0.3)
        assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    finally:
        executor.stop()
        inst.stop()


def test_per_instance_bound_answers_resource_exhausted():
    inst = start_instance("tests.blocks:SleepBlock", {"delay": 0.5})
    executor, port = start_executor({"i0": inst.info["port"]}, "--instance-inflight", "3")
    time.sleep(0.7)  # the readiness probe's task (0.5 s on this block) has left the link

    async def burst():
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            rpc = ch.unary_unary("/InferenceProxy/infer_result")
            return await asyncio.gather(*[rpc(frame("b", i), timeout=20) for i in range(12)],
                                        return_exceptions=True)  # fmt: skip

    try:
        results = asyncio.run(burst())
        errors = [r for r in results if isinstance(r, grpc.RpcError)]
        assert errors and {e.code() for e in errors} == {grpc.StatusCode.RESOURCE_EXHAUSTED}
        assert "every instance has 3 tasks in flight" in errors[0].details()
        assert len(results) - len(errors) >= 3
    finally:
        executor.stop()
        inst.stop()


def test_link_reconnects_when_the_instance_comes_back():
    port_i = free_port()
    args = ["-m", "aios_fast.instance", "--port", str(port_i)]
    inst = Proc(args)
    executor, port = start_executor({"i0": port_i})

    def ask() -> bytes:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
            return ch.unary_unary("/InferenceProxy/infer_result")(frame(data="x"), timeout=5)

    try:
        assert codec.decode_message(ask()).data == "x"
        inst.stop()
        with pytest.raises(grpc.RpcError) as info:
            ask()
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        inst = Proc(args)  # same address
        for _ in range(100):
            try:
                assert codec.decode_message(ask()).data == "x"
                break
            except grpc.RpcError:
                time.sleep(0.1)
        else:
            pytest.fail("the executor never reconnected to the restarted instance")
    finally:
        executor.stop()
        inst.stop()
