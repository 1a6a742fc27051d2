"""The executor and instance runtime end to end, as real processes on 127.0.0.1."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time

import grpc
import pytest

from aios_fast import codec

from .procs import ROOT, frame, free_port, start_executor, start_instance


@pytest.fixture
def cluster():
    """Two echo instances behind a one-worker executor."""
    instances = [start_instance(), start_instance()]
    executor, port = start_executor({f"i{k}": p.info["port"] for k, p in enumerate(instances)})
    yield port, instances, executor
    executor.stop()
    for p in instances:
        p.stop()


def call(port: int, method: str, body: bytes, timeout: float = 10.0) -> bytes:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        return ch.unary_unary(f"/InferenceProxy/{method}")(body, timeout=timeout)


def test_results_come_back_intact(cluster):
    port, _, _ = cluster
    blob = os.urandom(1 << 20)

    async def run():
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            rpc = ch.unary_unary("/InferenceProxy/infer_result")
            frames = [frame(f"sess-{i % 7}", i, f'{{"i": {i}, "x": "é✓"}}') for i in range(300)]
            frames.append(
                codec.encode_message(codec.Packet(session_id="big", seq_no=999, data="big",
                                                  files=[codec.FileInfo("{}", blob)]))
            )  # fmt: skip
            return await asyncio.gather(*[rpc(f, timeout=20) for f in frames])

    outs = [codec.decode_message(o) for o in asyncio.run(run())]
    assert [(o.session_id, o.seq_no, o.data) for o in outs[:300]] == [
        (f"sess-{i % 7}", i, f'{{"i": {i}, "x": "é✓"}}') for i in range(300)
    ]
    assert outs[300].seq_no == 999 and outs[300].data == "big"


def test_infer_answers_true_and_stream_returns_every_result(cluster):
    port, _, _ = cluster
    reply = call(port, "infer", frame())
    assert reply == b"\x08\x01"  # InferenceResponse(message=True)

    async def run():
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            stream = ch.stream_stream("/InferenceProxy/infer_stream")

            async def gen():
                for i in range(100):
                    yield frame("st", i, str(i))

            return [codec.decode_message(m) async for m in stream(gen(), timeout=20)]

    outs = asyncio.run(run())
    assert sorted(o.seq_no for o in outs) == list(range(100))
    assert all(o.data == str(o.seq_no) for o in outs)


def test_malformed_packets_are_invalid_argument_and_serving_continues(cluster):
    port, _, _ = cluster
    for bad in (b"\x0a\x05ab", codec.encode_message(b"\x0a\x01\xff"), b"\xff"):
        with pytest.raises(grpc.RpcError) as info:
            call(port, "infer_result", bad)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "malformed packet" in info.value.details()
    assert codec.decode_message(call(port, "infer_result", frame(data="ok"))).data == "ok"


def test_seed_client_example_runs_unchanged():
    """seeds/block.txt's Python client, verbatim, against an executor on localhost:50051."""
    try:
        instance = start_instance()
        executor, _ = start_executor({"i0": instance.info["port"]}, port=50051)
    except (RuntimeError, TimeoutError):
        instance.stop()
        pytest.skip("port 50051 is taken on this machine")
    client = textwrap.dedent("""
        import grpc
        import time
        from protos import inference_pb2, inference_pb2_grpc, payload_pb2

        def create_aios_packet():
            packet = payload_pb2.AIOSPacket()
            packet.session_id = "session-123"
            packet.seq_no = 1
            packet.data = '{"input": "Hello Block"}'
            packet.ts = time.time()

            # Optional: Add a small file
            file_info = payload_pb2.FileInfo()
            file_info.metadata = '{"type": "text", "description": "sample file"}'
            file_info.file_data = b"Sample file content"

            packet.files.append(file_info)

            return packet

        def run():
            # Connect to the gRPC server
            channel = grpc.insecure_channel("localhost:50051")
            stub = inference_pb2_grpc.InferenceProxyStub(channel)

            # Serialize the payload
            aios_packet = create_aios_packet()
            serialized_data = aios_packet.SerializeToString()

            # Wrap it into InferenceMessage
            request = inference_pb2.InferenceMessage(rpc_data=serialized_data)

            # Send inference
            response = stub.infer(request)
            print("Inference response:", response.message)

        if __name__ == "__main__":
            run()
    """)
    try:
        out = subprocess.run([sys.executable, "-c", client], cwd=ROOT, capture_output=True,
                             text=True, timeout=60)  # fmt: skip
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == "Inference response: True"
    finally:
        executor.stop()
        instance.stop()


def test_block_errors_reach_the_caller():
    instance = start_instance("tests.blocks:FailingBlock")
    executor, port = start_executor({"i0": instance.info["port"]}, "--max-retries", "0")
    try:
        with pytest.raises(grpc.RpcError) as info:
            call(port, "infer_result", frame("who"))
        assert info.value.code() == grpc.StatusCode.INTERNAL
        assert "cannot handle who" in info.value.details()
    finally:
        executor.stop()
        instance.stop()


def test_backpressure_answers_resource_exhausted():
    instance = start_instance("tests.blocks:SleepBlock", {"delay": 0.5})
    executor, port = start_executor({"i0": instance.info["port"]}, "--max-inflight", "4")

    async def burst():
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            rpc = ch.unary_unary("/InferenceProxy/infer_result")
            return await asyncio.gather(
                *[rpc(frame("bp", i), timeout=20) for i in range(20)], return_exceptions=True
            )

    try:
        results = asyncio.run(burst())
        errors = [r for r in results if isinstance(r, grpc.RpcError)]
        assert 1 <= len(errors) <= 16
        assert {e.code() for e in errors} == {grpc.StatusCode.RESOURCE_EXHAUSTED}
        assert "in flight" in errors[0].details()
        assert len(results) - len(errors) >= 4
    finally:
        executor.stop()
        instance.stop()


def test_no_instances_is_unavailable():
    instance = start_instance()
    executor, port = start_executor({"i0": instance.info["port"]})
    instance.stop()
    time.sleep(0.5)
    try:
        with pytest.raises(grpc.RpcError) as info:
            call(port, "infer_result", frame())
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        executor.stop()


def test_instance_killed_under_load_loses_no_task_silently():
    slow = [start_instance("tests.blocks:SleepBlock", {"delay": 0.05}) for _ in range(2)]
    executor, port = start_executor({f"i{k}": p.info["port"] for k, p in enumerate(slow)})
    total = 400

    async def load():
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            rpc = ch.unary_unary("/InferenceProxy/infer_result")
            sem = asyncio.Semaphore(32)

            async def one(i):
                async with sem:
                    return await rpc(frame("k", i, str(i)), timeout=30)

            tasks = [asyncio.ensure_future(one(i)) for i in range(total)]
            await asyncio.sleep(0.4)
            slow[0].p.kill()  # dies with tasks in flight
            return await asyncio.gather(*tasks, return_exceptions=True)

    try:
        results = asyncio.run(load())
        ok = [codec.decode_message(r) for r in results if isinstance(r, bytes)]
        errors = [r for r in results if isinstance(r, grpc.RpcError)]
        assert len(ok) + len(errors) == total  # every task answered, none hung or vanished
        assert all(o.data == str(o.seq_no) for o in ok)
        assert {e.code() for e in errors} <= {grpc.StatusCode.UNAVAILABLE}
        assert all("accepted by i0" in e.details() for e in errors)
        assert len(ok) > total // 2
        print(f"\ncompleted {len(ok)}, reported lost {len(errors)}")
    finally:
        executor.stop()
        for p in slow:
            p.stop()


def test_sigterm_drains_in_flight_work():
    instance = start_instance("tests.blocks:SleepBlock", {"delay": 1.0})
    executor, port = start_executor({"i0": instance.info["port"]})

    async def run():
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            rpc = ch.unary_unary("/InferenceProxy/infer_result")
            tasks = [asyncio.ensure_future(rpc(frame("d", i), timeout=20)) for i in range(10)]
            await asyncio.sleep(0.3)
            executor.signal(signal.SIGTERM)
            return await asyncio.gather(*tasks, return_exceptions=True)

    try:
        results = asyncio.run(run())
        assert all(isinstance(r, bytes) for r in results), results
        assert executor.p.wait(15) == 0
    finally:
        executor.stop()
        instance.stop()


def test_several_workers_share_the_port():
    instance = start_instance()
    executor, port = start_executor({"i0": instance.info["port"]}, workers=2)
    try:
        for i in range(20):
            assert codec.decode_message(call(port, "infer_result", frame(seq_no=i))).seq_no == i
    finally:
        assert executor.stop() == 0
        instance.stop()


def test_instances_that_only_speak_unary_infer():
    """An instance reached through the seeds' plain infer call (no stream link)."""
    from .procs import Proc

    # The instance routes its output by output_ptr; the caller only learns acceptance.
    plain = start_instance()
    proc = Proc(["-m", "aios_fast.executor", "--port", str(free_port()), "--workers", "1",
                 "--mgmt-port", "-1", "--metrics-port", "-1",
                 "--instance", f"u0=unary:127.0.0.1:{plain.info['port']}"])  # fmt: skip
    port = proc.info["port"]
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                assert call(port, "infer", frame("u", 1)) == b"\x08\x01"
                break
            except grpc.RpcError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        assert call(port, "infer_result", frame("u", 2)) == b""  # result went by output_ptr
        with pytest.raises(grpc.RpcError) as info:
            call(port, "infer", b"\x0a\x05ab")
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    finally:
        proc.stop()
        plain.stop()


def test_sigterm_waits_for_accepted_infer_tasks():
    """infer answers at acceptance; a drain must still let those tasks finish."""
    instance = start_instance("tests.blocks:SleepBlock", {"delay": 0.8})
    executor, port = start_executor({"i0": instance.info["port"]})
    try:
        for i in range(5):
            assert call(port, "infer", frame("a", i)) == b"\x08\x01"
        executor.signal(signal.SIGTERM)
        assert executor.p.wait(15) == 0
        log = executor.p.stderr.read()
        assert "was lost" not in log, log
    finally:
        executor.stop()
        instance.stop()


def test_user_policy_sees_executor_metrics():
    """A user policy's get_metrics() carries the executor's live state and the hardware."""
    from aios_fast.block import EchoBlock
    from aios_fast.executor import Executor, ExecutorConfig, InstanceSpec
    from aios_fast.instance import InstanceServer

    async def run():
        instances = [InstanceServer(EchoBlock()) for _ in range(2)]
        for inst in instances:
            await inst.start()
        specs = [
            InstanceSpec(f"i{k}", f"127.0.0.1:{inst.port}", health=f"127.0.0.1:{inst.mgmt_port}")
            for k, inst in enumerate(instances)
        ]
        specs[1].health = ""  # no management address: no per-instance readings
        policy = {"policyRuleURI": "tests.policies.metrics_probe"}
        config = ExecutorConfig(port=0, instances=specs, policy=policy, metrics_interval=0.1)
        executor = Executor(config)
        await executor.start()
        await executor.wait_ready()
        for _ in range(100):  # until a refresh carries i0's readings
            if (executor.metrics.get_metrics()["block_metrics"].get("instances", {})
                    .get("i0", {}).get("metrics")):  # fmt: skip
                break
            await asyncio.sleep(0.05)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{executor.port}") as ch:
            rpc = ch.unary_unary("/InferenceProxy/infer_result")
            outs = await asyncio.gather(*[rpc(frame("m", i), timeout=10) for i in range(20)])
        seen = executor.balancer.rule.rule.seen
        fallbacks = executor.balancer.fallbacks
        await executor.stop(2)
        for inst in instances:
            await inst.stop(1)
        return outs, seen, fallbacks

    outs, seen, fallbacks = asyncio.run(run())
    assert len(outs) == 20 and fallbacks == 0
    block = seen["block_metrics"]
    assert set(block["instances"]) == {"i0", "i1"}
    assert block["executor"]["received"] >= 0 and "hardware" in block
    assert isinstance(block["hardware"]["gpus"], list)  # [] without a GPU; never an error
    i0 = block["instances"]["i0"]["metrics"]  # the instance's own readings (GET /stats)
    assert i0["hardware"]["host"]["cpu_count"] >= 1 and i0["waiting"] == 0
    assert block["instances"]["i1"]["metrics"] is None


@pytest.mark.parametrize("front", ["native", "grpcio"])
def test_a_bug_while_placing_a_task_fails_that_call_alone(front, monkeypatch):
    """If placing a task raises (here: the balancer's pick, made to fail for one
    session), that call ends INTERNAL and is counted; nothing hangs, the executor's
    inflight goes back to 0 and the next calls are served."""
    from aios_fast.block import EchoBlock
    from aios_fast.executor import Executor, ExecutorConfig, InstanceSpec
    from aios_fast.executor.native_front import unavailable
    from aios_fast.instance import InstanceServer

    if front == "native" and (why := unavailable()):
        pytest.skip(f"native front not available: {why}")

    async def run():
        instance = InstanceServer(EchoBlock())
        await instance.start()
        spec = InstanceSpec("i0", f"127.0.0.1:{instance.port}")
        config = ExecutorConfig(port=0, front=front, instances=[spec])
        executor = Executor(config)
        await executor.start()
        await executor.wait_ready()

        class Buggy:  # the executor's balancer, with a pick that fails for one session
            def __init__(self, inner):
                self.inner = inner

            def __getattr__(self, name):
                return getattr(self.inner, name)

            def pick(self, packet):
                if packet.session_id == "boom":
                    raise RuntimeError("a bug in pick")
                return self.inner.pick(packet)

        executor.hosts.replace_balancer(Buggy(executor.balancer))
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{executor.port}") as ch:
                rpc = ch.unary_unary("/InferenceProxy/infer_result")
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await rpc(frame("boom"), timeout=5)
                outs = await asyncio.gather(*[rpc(frame("ok", i), timeout=5) for i in range(5)])
            return err.value, outs, dict(executor.stats), executor.inflight
        finally:
            await executor.stop(2)
            await instance.stop(1)

    err, outs, stats, inflight = asyncio.run(run())
    assert err.code() == grpc.StatusCode.INTERNAL and "a bug in pick" in err.details()
    assert [codec.decode_message(o).seq_no for o in outs] == list(range(5))
    assert stats["received"] == 6 and stats["rejected"] == 1 and stats["completed"] == 5
    assert inflight == 0
