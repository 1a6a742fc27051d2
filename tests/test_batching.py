"""Dynamic batching in the instance runtime (``aios_fast.instance.batcher``): how batches
form (sizes, the delay bound, the idle fast path, preferred sizes), per-item and
whole-batch errors, deadlines and cancellations inside the queue, settings and their
checks, and the metrics (``/stats``, ``/metrics``, policies' ``get_metrics()``)."""

from __future__ import annotations

import asyncio
import json
import time

import grpc
import pytest

from aios_fast import codec
from aios_fast.block import Block
from aios_fast.errors import AiosFastError, TaskExpired
from aios_fast.instance import InstanceServer
from aios_fast.instance.batcher import BatchSettings

from .procs import ROOT, Proc, frame, http, start_executor, start_instance


class RecordingBlock(Block):
    """Batches: records each batch's data, waits ``delay`` seconds (async), then
    answers every entry with its data upper-cased. Data "bad..." gets a ValueError in
    its place; a batch holding "explode" raises; "short" makes it return one output
    too few."""

    def __init__(self, init_data=None, parameters=None):
        super().__init__(init_data, parameters)
        self.batches: list[list[str]] = []
        self.singles: list[str] = []

    async def on_batch(self, entries):
        data = [e.data for e in entries]
        self.batches.append(data)
        await asyncio.sleep(float(self.parameters.get("delay", 0.05)))
        if "explode" in data:
            raise RuntimeError("the model fell over")
        outs = [ValueError(f"cannot read {d!r}") if d.startswith("bad") else d.upper()
                for d in data]  # fmt: skip
        if "dict" in data:
            return {"not": "a list"}
        return outs[:-1] if "short" in data else outs


class BothBlock(RecordingBlock):
    """on_batch and on_data: on_data is used when batching is off."""

    inline = True

    def on_data(self, entry):
        self.singles.append(entry.data)
        return "single:" + entry.data


class SyncBatchBlock(Block):
    """A sync on_batch (run in a thread) with a sync on_preprocess."""

    def on_preprocess(self, packet):
        return json.loads(packet.data)["x"]

    def on_batch(self, entries):
        return [{"double": x * 2, "batch": len(entries)} for x in entries]


class DataOnlyBlock(Block):
    inline = True

    def on_data(self, entry):
        return entry.data


def _packet(data: str, seq: int = 0) -> codec.Packet:
    return codec.Packet(session_id="s", seq_no=seq, data=data, ts=time.time())


def _server(block: Block, **batching) -> InstanceServer:
    return InstanceServer(block, batching=batching or None)


async def _run(server: InstanceServer, data: str, seq: int = 0, deadline=None):
    out = await server.run_packet(_packet(data, seq), deadline)
    return codec.decode_packet(out).data if out else None


async def _gather(server, datas, **kw):
    return await asyncio.gather(*(_run(server, d, i, **kw) for i, d in enumerate(datas)),
                                return_exceptions=True)  # fmt: skip


# ---------------------------------------------------------------------- settings


def test_settings_defaults_layers_and_checks():
    s = BatchSettings.parse(None, None)
    assert (s.mode, s.max_size, s.delay, s.preferred, s.max_batches) == (
        "adaptive", 32, 0.005, (), 1)  # fmt: skip
    assert BatchSettings.parse({"mode": "delay", "maxQueueDelayMs": 0}).delay == 0.0
    # the block's parameters (second layer) win key by key
    s = BatchSettings.parse({"maxBatchSize": 8, "maxQueueDelayMs": 2},
                            {"maxBatchSize": 16, "preferredBatchSizes": [8, 4, 8]})  # fmt: skip
    assert (s.max_size, s.delay, s.preferred) == (16, 0.002, (4, 8))
    bad = [
        ({"mode": "fast"}, "batching.mode: invalid enum value 'fast'"),
        ({"maxBatchSize": 0}, "batching.maxBatchSize: expected int >= 1, not 0"),
        ({"maxBatchSize": 5000}, "batching.maxBatchSize: expected int <= 4096, not 5000"),
        ({"maxBatchSize": True}, "batching.maxBatchSize: expected int, got bool"),
        ({"maxBatchSize": "8"}, "batching.maxBatchSize: expected int, got str"),
        ({"maxQueueDelayMs": -1}, "batching.maxQueueDelayMs: expected float >= 0.0"),
        ({"maxQueueDelayMs": float("nan")}, "batching.maxQueueDelayMs: expected float"),
        ({"maxQueueDelayMs": float("inf")}, "batching.maxQueueDelayMs: expected float"),
        ({"maxQueueDelayMs": "5"}, "batching.maxQueueDelayMs: expected float, got str"),
        ({"preferredBatchSizes": 4}, "batching.preferredBatchSizes: expected array, got int"),
        (
            {"maxBatchSize": 8, "preferredBatchSizes": [16]},
            "preferredBatchSizes must each be <= maxBatchSize 8",
        ),
        ({"maxConcurrentBatches": 0}, "batching.maxConcurrentBatches: expected int >= 1, not 0"),
        (
            {"maxBatchsize": 8},
            "batching.maxBatchsize: unknown setting (did you mean 'maxBatchSize'?)",
        ),
        ([1], "batching settings must be a JSON object"),
    ]
    for layer, message in bad:
        with pytest.raises(AiosFastError, match=None) as info:
            BatchSettings.parse(layer)
        assert message in str(info.value), (layer, str(info.value))
        assert "\n" not in str(info.value)


def test_instance_with_bad_batching_settings_exits_2_with_one_line():
    proc = Proc(["-m", "aios_fast.instance", "--block", "tests.test_batching:RecordingBlock",
                 "--batching", '{"maxBatchSize": 0}'], announce=False)  # fmt: skip
    assert proc.p.wait(30) == 2
    err = proc.p.stderr.read()
    assert "batching.maxBatchSize: expected int >= 1, not 0" in err
    assert "Traceback" not in err


# ---------------------------------------------------------------------- formation


def test_adaptive_runs_a_lone_task_at_once_and_batches_what_queues_meanwhile():
    async def main():
        block = RecordingBlock(parameters={"delay": 0.2})
        server = _server(block, maxQueueDelayMs=0)  # no linger: take what queued
        t0 = time.monotonic()
        first = asyncio.ensure_future(_run(server, "a"))
        await asyncio.sleep(0.05)  # "a" runs now: these queue behind it
        rest = await _gather(server, [f"x{i}" for i in range(10)])
        assert await first == "A"
        elapsed = time.monotonic() - t0
        await server.batcher.close()
        return block.batches, rest, elapsed, server.batcher.stats()

    batches, rest, elapsed, stats = asyncio.run(main())
    assert batches[0] == ["a"]  # idle: ran alone, at once
    assert batches[1] == [f"x{i}" for i in range(10)]  # all that queued, in order
    assert rest == [f"X{i}" for i in range(10)]
    assert elapsed < 2.0
    assert stats["batches"] == 2 and stats["items"] == 11 and stats["mean_batch_size"] == 5.5


def test_adaptive_lingers_only_for_tasks_that_came_while_a_batch_ran():
    async def main():
        block = RecordingBlock(parameters={"delay": 0.1})
        # a delay far longer than a batch: only tasks that came while one ran use it
        server = _server(block, maxQueueDelayMs=400, maxBatchSize=4)
        t0 = time.monotonic()
        assert await _run(server, "idle") == "IDLE"
        idle = time.monotonic() - t0  # the instance was idle: no wait for company
        first = asyncio.ensure_future(_run(server, "a"))
        await asyncio.sleep(0.03)
        t0 = time.monotonic()
        late = asyncio.ensure_future(_run(server, "b"))  # came while "a" ran
        await first
        await asyncio.sleep(0.1)
        early = list(block.batches)  # "b" still waits for company after "a" ended
        assert await late == "B"
        lingered = time.monotonic() - t0
        # a full batch's worth queued behind a running one goes as soon as it ends
        first = asyncio.ensure_future(_run(server, "c"))
        await asyncio.sleep(0.03)
        t0 = time.monotonic()
        full = await _gather(server, ["d", "e", "f", "g"])
        quick = time.monotonic() - t0
        await first
        return block.batches, idle, early, lingered, full, quick

    batches, idle, early, lingered, full, quick = asyncio.run(main())
    assert batches[0] == ["idle"] and idle < 0.35  # one 0.1 s batch, never the 0.4 s linger
    assert early == [["idle"], ["a"]]
    assert batches[2] == ["b"] and 0.39 <= lingered < 2.0  # waited its 0.4 s, then alone
    assert batches[3:] == [["c"], ["d", "e", "f", "g"]] and full == ["D", "E", "F", "G"]
    assert quick < 0.39  # full: no linger


def test_max_batch_size_splits_and_keeps_order():
    async def main():
        block = RecordingBlock(parameters={"delay": 0.01})
        server = _server(block, maxBatchSize=4)
        outs = await _gather(server, [str(i) for i in range(10)])
        return block.batches, outs

    batches, outs = asyncio.run(main())
    assert max(len(b) for b in batches) <= 4
    assert [d for b in batches for d in b] == [str(i) for i in range(10)]
    assert outs == [str(i) for i in range(10)]


def test_delay_mode_waits_for_company_but_no_longer_than_the_delay():
    async def main():
        block = RecordingBlock(parameters={"delay": 0.0})
        server = _server(block, mode="delay", maxQueueDelayMs=300, maxBatchSize=4)
        t0 = time.monotonic()
        assert await _run(server, "lone") == "LONE"
        lone = time.monotonic() - t0
        t0 = time.monotonic()
        outs = await _gather(server, ["a", "b", "c", "d"])  # a full batch: no waiting
        full = time.monotonic() - t0
        # tasks trickling in: the first waits at most the delay, then the rest follow
        t0 = time.monotonic()
        tasks = []
        for i in range(3):
            tasks.append(asyncio.ensure_future(_run(server, f"t{i}")))
            await asyncio.sleep(0.05)
        await asyncio.gather(*tasks)
        trickle = time.monotonic() - t0
        return block.batches, lone, outs, full, trickle, server.batcher

    batches, lone, outs, full, trickle, batcher = asyncio.run(main())
    assert batches[0] == ["lone"] and lone >= 0.29  # waited for company (the delay)
    assert batches[1] == ["a", "b", "c", "d"] and outs == ["A", "B", "C", "D"]
    assert full < 0.25  # full at once: dispatched without the delay
    assert batches[2] == ["t0", "t1", "t2"]  # one batch, formed within the delay
    assert 0.29 <= trickle < 2.0
    # the queue delay histogram saw every item; none waited much past the delay
    assert batcher.delays.count == 8
    assert batcher.delays.counts[-1] == 0 and max(0.0, batcher.delays.sum) < 8 * 0.6


def test_preferred_sizes_shape_the_batches():
    async def main():
        block = RecordingBlock(parameters={"delay": 0.0})
        server = _server(block, mode="delay", maxQueueDelayMs=100, maxBatchSize=8,
                         preferredBatchSizes=[4])  # fmt: skip
        outs = await _gather(server, [str(i) for i in range(6)])
        return block.batches, outs

    batches, outs = asyncio.run(main())
    assert batches == [["0", "1", "2", "3"], ["4", "5"]]  # 4 at once, the rest by the delay
    assert outs == [str(i) for i in range(6)]


class OverlapBlock(RecordingBlock):
    """Records how many on_batch calls run at once."""

    def __init__(self, init_data=None, parameters=None):
        super().__init__(init_data, parameters)
        self.now = self.most = 0

    async def on_batch(self, entries):
        self.now += 1
        self.most = max(self.most, self.now)
        try:
            return await super().on_batch(entries)
        finally:
            self.now -= 1


@pytest.mark.parametrize("workers", [1, 2, 3])
def test_concurrent_batches_run_up_to_the_limit_and_a_lone_task_still_runs_alone(workers):
    """maxConcurrentBatches workers take turns forming batches (one waits for tasks at
    a time): at most that many batches run at once, every task is answered once and in
    its place, and at an idle instance a lone task is a batch of one."""
    block = OverlapBlock(parameters={"delay": 0.1})
    server = _server(block, mode="adaptive", maxBatchSize=4, maxConcurrentBatches=workers)

    async def main():
        outs = await _gather(server, [f"t{i}" for i in range(20)])
        await asyncio.sleep(0.05)
        lone = await _run(server, "lone")
        await server.batcher.close()
        return outs, lone

    outs, lone = asyncio.run(main())
    assert outs == [f"T{i}" for i in range(20)] and lone == "LONE"
    assert block.most == workers
    assert sorted(d for b in block.batches for d in b) == sorted([*(f"t{i}" for i in range(20)),
                                                                  "lone"])  # fmt: skip
    assert all(len(b) <= 4 for b in block.batches) and block.batches[-1] == ["lone"]


def test_sync_on_batch_with_preprocess_runs_in_a_thread():
    async def main():
        server = _server(SyncBatchBlock())
        return await _gather(server, [json.dumps({"x": i}) for i in range(5)])

    outs = [json.loads(o) for o in asyncio.run(main())]
    assert [o["double"] for o in outs] == [0, 2, 4, 6, 8]
    assert sum(o["batch"] for o in outs) >= 5


# ---------------------------------------------------------------------- errors


def test_one_failing_item_fails_only_its_own_task():
    async def main():
        block = RecordingBlock(parameters={"delay": 0.0})
        server = _server(block, mode="delay", maxQueueDelayMs=50)
        return block.batches, await _gather(server, ["ok1", "bad2", "ok3", "bad4"])

    batches, outs = asyncio.run(main())
    assert batches == [["ok1", "bad2", "ok3", "bad4"]]
    assert outs[0] == "OK1" and outs[2] == "OK3"
    assert isinstance(outs[1], ValueError) and str(outs[1]) == "cannot read 'bad2'"
    assert isinstance(outs[3], ValueError) and str(outs[3]) == "cannot read 'bad4'"


def test_a_raising_or_miscounting_on_batch_fails_its_whole_batch_only():
    async def main():
        block = RecordingBlock(parameters={"delay": 0.0})
        server = _server(block, mode="delay", maxQueueDelayMs=50)
        exploded = await _gather(server, ["a", "explode", "b"])
        short = await _gather(server, ["c", "short", "d"])
        wrong = await _gather(server, ["dict"])
        after = await _gather(server, ["e"])  # the batcher keeps going
        return exploded, short, wrong, after

    exploded, short, wrong, after = asyncio.run(main())
    assert str(wrong[0]) == "on_batch must return a list (one output per entry), not dict"
    assert all(isinstance(e, RuntimeError) and str(e) == "the model fell over" for e in exploded)
    assert all(isinstance(e, AiosFastError) for e in short)
    assert str(short[0]) == "on_batch returned 2 outputs for 3 entries (one per entry expected)"
    assert after == ["E"]


def test_errors_reach_callers_through_the_executor():
    """Per-item errors and a raising on_batch, end to end: INTERNAL with the message for
    the failed tasks, results for the others of the same batch."""
    batching = {"mode": "delay", "maxQueueDelayMs": 30}
    inst = start_instance("tests.test_batching:RecordingBlock",
                          {"delay": 0.05, "batching": batching})  # fmt: skip
    executor, port = start_executor({"i0": inst.info["port"]})

    async def send(datas):
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            rpc = ch.unary_unary("/InferenceProxy/infer_result")
            return await asyncio.gather(*(rpc(frame("e", i, d), timeout=10)
                                          for i, d in enumerate(datas)),
                                        return_exceptions=True)  # fmt: skip

    try:
        outs = asyncio.run(send(["ok0", "bad1", "ok2"]))
        assert codec.decode_message(outs[0]).data == "OK0"
        assert codec.decode_message(outs[2]).data == "OK2"
        assert outs[1].code() == grpc.StatusCode.INTERNAL
        assert "ValueError: cannot read 'bad1'" in outs[1].details()
        outs = asyncio.run(send(["x", "explode"]))
        for out in outs:
            assert out.code() == grpc.StatusCode.INTERNAL
            assert "RuntimeError: the model fell over" in out.details()
    finally:
        executor.stop()
        inst.stop()


# ---------------------------------------------------------------------- deadlines, cancels


def test_expired_tasks_are_dropped_before_a_batch_forms():
    async def main():
        block = RecordingBlock(parameters={"delay": 0.0})
        server = _server(block, mode="delay", maxQueueDelayMs=300)
        loop = asyncio.get_running_loop()
        soon = loop.time() + 0.05  # passes while the batch waits for company
        outs = await asyncio.gather(_run(server, "late", 0, deadline=soon),
                                    _run(server, "fine", 1), return_exceptions=True)  # fmt: skip
        return block.batches, outs, server._block_metrics()

    batches, outs, metrics = asyncio.run(main())
    assert isinstance(outs[0], TaskExpired) and "waited for a batch" in str(outs[0])
    assert outs[1] == "FINE"
    assert batches == [["fine"]]  # the expired task never reached on_batch
    assert metrics["expired"] == 1 and metrics["batching"]["expired"] == 1


def test_deadline_inside_a_batch_queue_answers_deadline_exceeded():
    batching = {"mode": "delay", "maxQueueDelayMs": 800}
    inst = start_instance("tests.test_batching:RecordingBlock",
                          {"delay": 0.0, "batching": batching})  # fmt: skip
    try:
        with grpc.insecure_channel(f"127.0.0.1:{inst.info['port']}") as ch:
            rpc = ch.unary_unary("/InferenceProxy/infer_result")
            with pytest.raises(grpc.RpcError) as info:
                rpc(frame(data="slow"), timeout=0.3)
            assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            time.sleep(1.0)  # past the moment its batch would have formed
            out = rpc(frame(data="next"), timeout=10)  # the next one still runs
            assert codec.decode_message(out).data == "NEXT"
        for _ in range(50):
            _, stats = http(f"http://127.0.0.1:{inst.info['mgmt_port']}/stats")
            if stats.get("batching", {}).get("items"):
                break
            time.sleep(0.1)
        # the expired task never reached on_batch: one item ran, the later one
        assert stats["batching"]["items"] == 1 and stats["batching"]["queued"] == 0
    finally:
        inst.stop()


def test_cancelled_tasks_leave_the_queue_and_count_as_not_started():
    async def main():
        block = RecordingBlock(parameters={"delay": 0.0})
        server = _server(block, mode="delay", maxQueueDelayMs=200)
        gone = asyncio.ensure_future(_run(server, "gone"))
        kept = asyncio.ensure_future(_run(server, "kept"))
        await asyncio.sleep(0.05)
        assert server.queued(gone) and server.queued(kept)  # given back on leave()
        gone.cancel()
        assert await kept == "KEPT"
        assert not server.queued(kept)
        return block.batches, gone.cancelled()

    batches, cancelled = asyncio.run(main())
    assert cancelled and batches == [["kept"]]


def test_run_timeout_applies_to_a_task_waiting_in_a_batch():
    from aios_fast.errors import TaskTimedOut

    async def main():
        block = RecordingBlock(parameters={"delay": 0.5})
        server = _server(block)
        with pytest.raises(TaskTimedOut):
            await server.run_packet(_packet("slow"), None, -1, 0.1)
        assert await _run(server, "next") == "NEXT"  # the batcher is still healthy

    asyncio.run(main())


# ---------------------------------------------------------------------- on_data / off


def test_on_data_alone_is_unchanged_and_batching_settings_are_ignored():
    async def main():
        server = _server(DataOnlyBlock(), maxBatchSize=8)
        assert server.batcher is None
        return await _gather(server, ["a", "b"]), server._block_metrics()

    outs, metrics = asyncio.run(main())
    assert outs == ["a", "b"] and "batching" not in metrics


def test_mode_off_uses_on_data_and_on_batch_only_blocks_get_batches_of_one():
    async def main():
        both = BothBlock()
        server = _server(both, mode="off")
        assert server.batcher is None
        outs = await _gather(server, ["a", "b"])
        only = RecordingBlock(parameters={"delay": 0.0})
        server2 = _server(only, mode="off")
        outs2 = await _gather(server2, ["c", "d", "e"])
        return outs, both.singles, outs2, only.batches

    outs, singles, outs2, batches = asyncio.run(main())
    assert outs == ["single:a", "single:b"] and singles == ["a", "b"]
    assert outs2 == ["C", "D", "E"] and batches == [["c"], ["d"], ["e"]]


def test_update_parameters_changes_batching_live_and_checks_it():
    async def main():
        block = RecordingBlock(parameters={"delay": 0.0})
        server = _server(block, mode="delay", maxQueueDelayMs=50)
        await server._mgmt("update_parameters", {"batching": {"maxBatchSize": 2}})
        outs = await _gather(server, ["a", "b", "c"])
        with pytest.raises(ValueError, match="maxBatchSize: expected int >= 1"):
            await server._mgmt("update_parameters", {"batching": {"maxBatchSize": -1}})
        with pytest.raises(ValueError, match="needs a restart"):
            await server._mgmt("update_parameters", {"batching": {"mode": "off"}})
        return outs, block.batches, server.batcher.settings.max_size

    outs, batches, size = asyncio.run(main())
    assert outs == ["A", "B", "C"] and batches == [["a", "b"], ["c"]] and size == 2


# ---------------------------------------------------------------------- metrics


def test_metrics_reach_stats_prometheus_and_policies():
    from prometheus_client.parser import text_string_to_metric_families

    from aios_fast.executor import Executor, ExecutorConfig, InstanceSpec

    from .procs import get_text

    async def main():
        block = RecordingBlock(parameters={"delay": 0.02})
        inst = InstanceServer(block, batching={"maxBatchSize": 16})
        await inst.start()
        spec = InstanceSpec("i0", f"127.0.0.1:{inst.port}", health=f"127.0.0.1:{inst.mgmt_port}")
        policy = {"policyRuleURI": "tests.policies.metrics_probe"}
        config = ExecutorConfig(port=0, instances=[spec], policy=policy, metrics_interval=0.1)
        executor = Executor(config)
        await executor.start()
        await executor.wait_ready()
        async with grpc.aio.insecure_channel(f"127.0.0.1:{executor.port}") as ch:
            rpc = ch.unary_unary("/InferenceProxy/infer_result")
            outs = await asyncio.gather(*[rpc(frame("m", i, f"d{i}"), timeout=10)
                                          for i in range(40)])  # fmt: skip
            inst.snapshot.refresh({})
            seen = None
            for _ in range(100):  # until the executor polled the instance's /stats again
                await asyncio.sleep(0.05)
                await rpc(frame("m", 99, "probe"), timeout=10)
                seen = executor.balancer.rule.rule.seen
                got = seen["block_metrics"]["instances"]["i0"]["metrics"] or {}
                if got.get("batching", {}).get("items", 0) >= 40:
                    break
        loop = asyncio.get_running_loop()
        text = await loop.run_in_executor(None, get_text,
                                          f"http://127.0.0.1:{inst.mgmt_port}/metrics")  # fmt: skip
        await executor.stop(2)
        await inst.stop(1)
        return outs, seen, text, block.batches

    outs, seen, text, batches = asyncio.run(main())
    assert [codec.decode_message(o).data for o in outs] == [f"D{i}" for i in range(40)]
    assert max(len(b) for b in batches) > 1 and max(len(b) for b in batches) <= 16
    stats = seen["block_metrics"]["instances"]["i0"]["metrics"]["batching"]
    assert stats["items"] >= 40 and stats["batches"] < stats["items"]
    assert stats["settings"]["maxBatchSize"] == 16 and stats["mean_batch_size"] > 1
    assert stats["batch_size"]["+Inf"] == stats["batches"]  # cumulative buckets
    assert stats["queue_delay_s"]["+Inf"] == stats["items"]
    assert isinstance(stats["items_per_s"], float)
    families = {f.name: f for f in text_string_to_metric_families(text)}
    sizes = {s.labels.get("le"): s.value for s in families["aios_instance_batch_size"].samples
             if s.name.endswith("_bucket")}  # fmt: skip
    assert sizes["1.0"] < sizes["16.0"] == sizes["+Inf"]
    assert "aios_instance_batch_queue_delay_seconds" in families
    items = families["aios_instance_batch_items"].samples[0].value
    assert items >= 40


def test_the_guides_batching_example_works_as_written():
    """docs/writing-a-block.md's on_batch example: batches, per-item errors."""
    import re

    pytest.importorskip("numpy", reason="the guide's example uses numpy")
    guide = (ROOT / "docs" / "writing-a-block.md").read_text()
    (source,) = [b for b in re.findall(r"```py\n(.*?)```", guide, re.S) if "class SumBlock" in b]
    namespace: dict = {}
    exec(compile(source, "writing-a-block.md", "exec"), namespace)

    async def main():
        server = _server(namespace["SumBlock"](), mode="delay", maxQueueDelayMs=50)
        ok = await _gather(server, [json.dumps({"x": [1, 2, i]}) for i in range(3)])
        mixed = await _gather(server, [json.dumps({"x": [1, 2]}), json.dumps({"x": [1]})])
        huge = await _gather(server, ['{"x": [Infinity, 1]}'])
        return ok, mixed, huge

    ok, mixed, huge = asyncio.run(main())
    assert [json.loads(o)["sum"] for o in ok] == [3.0, 4.0, 5.0]
    assert all(isinstance(e, ValueError) and "same length" in str(e) for e in mixed)
    assert isinstance(huge[0], ValueError) and "not finite" in str(huge[0])
