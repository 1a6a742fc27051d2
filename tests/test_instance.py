"""The instance runtime on its own: health and management over HTTP, the CPU example
block, deadlines, per-instance bounds and reconnection after an instance restarts."""

from __future__ import annotations

import asyncio
import json
import time

import grpc
import pytest

from aios_fast import codec

from .procs import Proc, frame, free_port, http, start_executor, start_instance


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


def test_instance_metrics_count_tasks_and_read_the_host():
    from prometheus_client.parser import text_string_to_metric_families

    from .procs import get_text

    inst = start_instance("aios_fast.block:HashBlock", {"rounds": 2})
    try:
        with grpc.insecure_channel(f"127.0.0.1:{inst.info['port']}") as ch:
            rpc = ch.unary_unary("/InferenceProxy/infer_result")
            for i in range(5):
                rpc(frame("m", i, "abc"), timeout=10)
        deadline = time.monotonic() + 10
        while True:  # hardware readings come from a background refresh
            text = get_text(f"http://127.0.0.1:{inst.info['mgmt_port']}/metrics")
            samples = {
                (s.name, tuple(sorted(s.labels.items()))): s.value
                for f in text_string_to_metric_families(text)
                for s in f.samples
            }
            if ("aios_host_memory_total_bytes", ()) in samples or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert samples[("aios_instance_tasks_total", (("outcome", "completed"),))] == 5
        assert samples[("aios_instance_tasks_total", (("outcome", "failed"),))] == 0
        assert samples[("aios_instance_on_data_seconds_count", ())] == 5
        assert samples[("aios_instance_queue_length", ())] == 0
        assert samples[("aios_host_memory_total_bytes", ())] > 0
        assert samples[("aios_host_cpus", ())] >= 1
        assert samples[("process_cpu_seconds_total", ())] > 0
        assert samples[("process_resident_memory_bytes", ())] > 0
        from aios_fast.service.hardware import gpu_readings

        if not gpu_readings():  # no GPU here: no GPU series, and no error
            assert not any(name.startswith("aios_gpu_") for name, _ in samples)
        else:
            assert ("aios_gpu_memory_total_bytes", (("gpu", "0"),)) in {
                (n, tuple((k, v) for k, v in labels if k == "gpu")) for n, labels in samples
            }
    finally:
        inst.stop()
