"""The data plane under faults and hostile input, as real processes on 127.0.0.1: every
task completes or its caller gets an error, nothing unrelated fails, nothing is lost
silently (issue: data plane under faults)."""

from __future__ import annotations

import asyncio
import json
import signal
import time

import grpc
import pytest

from aios_fast import codec, wire

from .procs import frame, get_text, mgmt, start_executor, start_instance

CONTROL = "tests.blocks:ControlBlock"
LIMIT = wire.MAX_MESSAGE  # the executor's default accept limit


def order(**kw) -> str:
    return json.dumps(kw)


async def gather_calls(port: int, calls: list[tuple[str, bytes, float]]) -> list:
    """Run (method, frame, timeout) calls at once; each result is bytes or a StatusCode."""
    options = [("grpc.max_receive_message_length", -1), ("grpc.max_send_message_length", -1)]
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=options) as ch:

        async def one(method: str, body: bytes, timeout: float):
            try:
                return await ch.unary_unary(f"/InferenceProxy/{method}")(body, timeout=timeout)
            except grpc.aio.AioRpcError as exc:
                return exc.code(), exc.details()

        return await asyncio.gather(*(one(*c) for c in calls))


def stats(executor) -> dict:
    status, body = mgmt(executor.info["mgmt_port"], "stats")
    assert status == 200, body
    return body["data"]


def sized_frame(size: int, **kw) -> bytes:
    """An InferenceMessage of exactly ``size`` bytes whose data starts with the order."""
    head = order(**kw)
    pad = size
    while True:
        msg = frame("big", 1, head + " " * max(pad, 0))
        if len(msg) == size:
            return msg
        pad += size - len(msg)


@pytest.fixture
def two_control():
    instances = [start_instance(CONTROL), start_instance(CONTROL)]
    yield instances
    for p in instances:
        p.stop()


def test_tasks_at_the_size_limits_fail_alone(two_control):
    """A message exactly at the executor's limit goes through the link (with 64 other
    tasks in flight on the same links); one byte over is refused by the executor; an
    output at the largest returnable size comes back, one byte more fails that task
    alone with RESOURCE_EXHAUSTED. No unrelated task fails; nothing is lost."""
    executor, port = start_executor({f"i{k}": p.info["port"] for k, p in enumerate(two_control)})
    try:
        small = [("infer_result", frame("s", i, order(sleep=0.5)), 30) for i in range(48)]
        small += [("infer", frame("f", i, order(sleep=0.5)), 30) for i in range(16)]
        max_out = wire.max_output(LIMIT)
        big = [
            ("infer_result", sized_frame(LIMIT, out_bytes=100), 30),  # at the limit
            ("infer_result", sized_frame(LIMIT + 1, out_bytes=100), 30),  # just over
            ("infer", sized_frame(LIMIT, out_bytes=100), 30),  # at the limit, answered at once
            ("infer_result", frame("o", 1, order(out_bytes=max_out)), 30),
            ("infer_result", frame("o", 2, order(out_bytes=max_out + 1)), 30),
            ("infer_result", frame("o", 3, order(out_bytes=5 << 20)), 30),
        ]
        results = asyncio.run(gather_calls(port, small + big))
        assert all(isinstance(r, bytes) for r in results[:64]), [
            r for r in results[:64] if not isinstance(r, bytes)
        ]
        at_limit, over, infer_big, out_ok, out_over, out_5mib = results[64:]
        assert len(codec.encode_packet(codec.decode_message(at_limit))) == 100
        assert over[0] == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert infer_big == wire.ACCEPTED
        assert len(codec.encode_packet(codec.decode_message(out_ok))) == max_out
        assert out_over[0] == grpc.StatusCode.RESOURCE_EXHAUSTED, out_over
        assert "limit" in out_over[1]
        assert out_5mib[0] == grpc.StatusCode.RESOURCE_EXHAUSTED, out_5mib
        deadline = time.monotonic() + 10
        while stats(executor)["inflight"] and time.monotonic() < deadline:
            time.sleep(0.05)
        tasks = stats(executor)["tasks"]
        assert tasks["lost"] == 0 and tasks["failed"] == 2, tasks  # the two big outputs
        assert all(row["lost"] == 0 for row in stats(executor)["instances"].values())
    finally:
        executor.stop()


def test_instance_sigterm_drains_its_link():
    """SIGTERM on an instance under load: it tells the executor it is leaving, takes
    nothing new and finishes what it took. No infer_result fails, no infer task is lost."""
    leaving = start_instance(CONTROL)
    staying = start_instance(CONTROL)
    executor, port = start_executor({"leaving": leaving.info["port"],
                                     "staying": staying.info["port"]})  # fmt: skip
    try:

        async def run():
            calls = [
                ("infer_result" if i % 2 else "infer", frame("d", i, order(sleep=0.4)), 30)
                for i in range(200)
            ]
            batch = asyncio.ensure_future(gather_calls(port, calls))
            await asyncio.sleep(0.3)
            leaving.signal(signal.SIGTERM)
            first = await batch
            second = await gather_calls(port, calls[:40])  # after it left
            return first + second

        results = asyncio.run(run())
        assert leaving.p.wait(30) == 0
        failed = [r for r in results if not isinstance(r, bytes)]
        assert failed == [], failed[:5]
        # infer's callers are answered at acceptance (inflight is back to 0 then): wait
        # until every accepted task has ended, however it ended
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            tasks = stats(executor)["tasks"]
            ended = tasks["completed"] + tasks["lost"] + tasks["failed"] + tasks["cancelled"]
            if ended >= tasks["accepted"]:
                break
            time.sleep(0.05)
        assert tasks["lost"] == 0 and tasks["failed"] == 0, tasks
        assert tasks["completed"] == tasks["accepted"], tasks
        log = leaving.p.stderr.read()
        assert "unfinished" not in log, log
    finally:
        executor.stop()
        leaving.stop()
        staying.stop()


def test_hung_instance_is_taken_out_by_keepalive():
    """SIGSTOP on one of two instances: its link's pings go unanswered, the link goes
    down within a few seconds and every task then goes to the other instance. Tasks the
    hung one had taken fail (UNAVAILABLE); none hangs past its deadline."""
    hung = start_instance(CONTROL)
    fine = start_instance(CONTROL)
    executor, port = start_executor({"hung": hung.info["port"], "fine": fine.info["port"]},
                                    "--link-keepalive", "0.5")  # fmt: skip
    try:
        hung.signal(signal.SIGSTOP)
        t0 = time.monotonic()
        first = asyncio.run(gather_calls(port, [("infer_result", frame("h", i), 10)
                                                for i in range(20)]))  # fmt: skip
        waited = time.monotonic() - t0
        assert waited < 8, waited  # the keepalive took the link down, not a 10 s deadline
        codes = {r[0] for r in first if not isinstance(r, bytes)}
        assert codes <= {grpc.StatusCode.UNAVAILABLE}, codes
        rows = {r["id"]: r for r in mgmt(executor.info["mgmt_port"], "list_instances")[1]["data"]}
        assert rows["hung"]["up"] is False and rows["fine"]["up"] is True
        later = asyncio.run(gather_calls(port, [("infer_result", frame("l", i), 5)
                                                for i in range(50)]))  # fmt: skip
        assert all(isinstance(r, bytes) for r in later)
    finally:
        hung.signal(signal.SIGCONT)
        executor.stop()
        hung.stop()
        fine.stop()


def test_task_timeout_ejects_an_outlier_and_never_more_than_allowed():
    """A wedged block (alive, answering pings, never finishing): its tasks time out
    (DEADLINE_EXCEEDED) after --task-timeout, and after --eject-after in a row it is
    ejected: the next tasks all go to the healthy instance. With both wedged, at most
    --eject-max-percent are ejected."""
    wedged = start_instance("tests.blocks:HangBlock")
    fine = start_instance(CONTROL)
    executor, port = start_executor(
        {"wedged": wedged.info["port"], "fine": fine.info["port"]},
        "--task-timeout", "0.5", "--eject-after", "2", "--eject-seconds", "30",
    )  # fmt: skip
    try:
        results = asyncio.run(gather_calls(port, [("infer_result", frame("t", i), 10)
                                                  for i in range(6)]))  # fmt: skip
        codes = [r[0] for r in results if not isinstance(r, bytes)]
        assert codes and set(codes) == {grpc.StatusCode.DEADLINE_EXCEEDED}, results
        rows = {r["id"]: r for r in mgmt(executor.info["mgmt_port"], "list_instances")[1]["data"]}
        assert rows["wedged"]["ejected"] is True and rows["wedged"]["ejections"] == 1
        assert rows["wedged"]["available"] is False and rows["fine"]["ejected"] is False
        # a policy switch keeps the ejection in force
        mp = executor.info["mgmt_port"]
        assert mgmt(mp, "switch_policy", {"policyRuleURI": "builtin:least_outstanding"})[0] == 200
        after = asyncio.run(gather_calls(port, [("infer_result", frame("a", i), 10)
                                                for i in range(20)]))  # fmt: skip
        assert all(isinstance(r, bytes) for r in after)
        metrics = get_text(f"http://127.0.0.1:{executor.info['metrics_port']}/metrics")
        assert 'aios_executor_instance_ejected{instance="wedged"} 1.0' in metrics
        assert stats(executor)["tasks"]["timed_out"] >= 2
    finally:
        executor.stop()
        wedged.stop()
        fine.stop()


def test_at_most_the_allowed_share_is_ejected():
    wedged = [start_instance("tests.blocks:HangBlock") for _ in range(2)]
    executor, port = start_executor(
        {f"w{k}": p.info["port"] for k, p in enumerate(wedged)},
        "--task-timeout", "0.3", "--eject-after", "1", "--eject-seconds", "30",
    )  # fmt: skip
    try:
        asyncio.run(gather_calls(port, [("infer_result", frame("t", i), 5) for i in range(8)]))
        rows = mgmt(executor.info["mgmt_port"], "list_instances")[1]["data"]
        assert sum(r["ejected"] for r in rows) == 1, rows  # 50% of 2
    finally:
        executor.stop()
        for p in wedged:
            p.stop()


def test_deadlines_reach_the_instance():
    """Callers with a 0.5 s deadline against an instance that runs one 0.3 s task at a
    time: the tasks whose callers gave up are skipped or cancelled there, not run."""
    instance = start_instance(CONTROL, None, "--max-concurrency", "1")
    executor, port = start_executor({"i": instance.info["port"]})
    try:
        calls = [("infer_result", frame("d", i, order(sleep=0.3)), 0.5) for i in range(12)]
        results = asyncio.run(gather_calls(port, calls))
        ok = [r for r in results if isinstance(r, bytes)]
        late = [r for r in results if not isinstance(r, bytes)]
        assert 1 <= len(ok) <= 2 and {r[0] for r in late} == {grpc.StatusCode.DEADLINE_EXCEEDED}
        # Both sides' books settle (on a loaded machine a cancel may take a moment to
        # travel): 12 tasks end at the instance, at most 3 of them run.
        end = time.monotonic() + 10
        while True:
            body = json.loads(get_text(f"http://127.0.0.1:{instance.info['mgmt_port']}/stats"))
            tasks = stats(executor)["tasks"]  # given up by their callers, or skipped there
            ended = body["completed"] + body["expired"] + body["cancelled"] + body["failed"]
            gave_up = tasks["cancelled"] + tasks["withdrawn"] + tasks["failed"]
            if (ended >= 12 and gave_up >= 9) or time.monotonic() > end:
                break
            time.sleep(0.1)
        assert body["completed"] <= 3, body  # not all 12 ran
        assert body["expired"] + body["cancelled"] >= 9, body
        assert gave_up >= 9, tasks
    finally:
        executor.stop()
        instance.stop()
    log = executor.p.stderr.read()  # an abort racing a deadline is no traceback
    assert "Traceback" not in log, log[-3000:]


def test_a_bad_task_on_a_stream_fails_alone(two_control):
    executor, port = start_executor({f"i{k}": p.info["port"] for k, p in enumerate(two_control)})
    try:
        frames = [frame("st", i, f"v{i}") for i in range(99)]
        frames.insert(45, b"\x0a\x05\xff\xff")  # malformed
        frames.insert(60, frame("st", 500, order(fail=True)))

        async def run():
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
                call = ch.stream_stream("/InferenceProxy/infer_stream")(iter(frames))
                return [codec.decode_message(m) async for m in call]

        outs = asyncio.run(run())
        assert len(outs) == 101
        errors = {(o.seq_no, wire.read_error(o)[0]) for o in outs if wire.read_error(o)}
        assert errors == {(0, "INVALID_ARGUMENT"), (500, "INTERNAL")}
        assert sorted(o.seq_no for o in outs if not wire.read_error(o)) == list(range(99))
    finally:
        executor.stop()


def test_drain_answers_late_calls_unavailable():
    instance = start_instance(CONTROL)
    executor, port = start_executor({"i": instance.info["port"]})
    try:

        async def run():
            slow = asyncio.ensure_future(
                gather_calls(
                    port, [("infer_result", frame("s", i, order(sleep=1.5)), 10) for i in range(10)]
                )
            )
            await asyncio.sleep(0.5)
            executor.signal(signal.SIGTERM)
            await asyncio.sleep(0.3)
            late = await gather_calls(port, [("infer_result", frame("l", i), 5)
                                             for i in range(10)])  # fmt: skip
            return await slow, late

        slow, late = asyncio.run(run())
        assert all(isinstance(r, bytes) for r in slow), slow
        assert {r[0] for r in late} == {grpc.StatusCode.UNAVAILABLE}, late
        assert executor.p.wait(15) == 0
    finally:
        executor.stop()
        instance.stop()


def test_failures_are_logged_in_aggregate():
    """500 failing infer tasks and an instance that is down make a few log lines, not
    one per task and one per reconnect attempt."""
    failing = start_instance("tests.blocks:FailingBlock")
    gone = start_instance(CONTROL)
    executor, port = start_executor({"failing": failing.info["port"]})
    try:
        results = asyncio.run(gather_calls(port, [("infer", frame("f", i), 10)
                                                  for i in range(500)]))  # fmt: skip
        assert all(r == wire.ACCEPTED for r in results)
        mgmt(executor.info["mgmt_port"], "add_instance",
             {"id": "gone", "target": f"127.0.0.1:{gone.info['port']}"})  # fmt: skip
        time.sleep(0.5)
        gone.p.kill()
        gone.p.wait()
        time.sleep(3.0)  # reconnect attempts every <= 1 s
    finally:
        executor.stop()
        failing.stop()
    log = executor.p.stderr.read()
    failed_lines = [line for line in log.splitlines() if "failed" in line and "tasks on" in line]
    assert 1 <= len(failed_lines) <= 3, failed_lines
    reconnects = [line for line in log.splitlines() if "reconnecting" in line]
    assert 1 <= len(reconnects) <= 2, reconnects
    assert "Traceback" not in log, log[-3000:]


def _rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def test_a_burst_of_10000_calls_is_answered_and_memory_comes_back():
    """10,000 calls at once, twice: each is answered OK or RESOURCE_EXHAUSTED (grpc core
    would cancel most of them before any handler saw them without the executor's
    pending-request settings), and once idle the executor gives the memory back."""
    instances = [start_instance(), start_instance()]
    executor, port = start_executor({f"i{k}": p.info["port"] for k, p in enumerate(instances)})
    try:
        pid = executor.info["pid"]
        baseline = _rss_mb(pid)
        for burst in range(2):
            calls = [("infer_result", frame("b", i), 120) for i in range(10_000)]
            results = asyncio.run(gather_calls(port, calls))
            codes = {r[0] for r in results if not isinstance(r, bytes)}
            assert codes <= {grpc.StatusCode.RESOURCE_EXHAUSTED}, (burst, codes)
            assert sum(isinstance(r, bytes) for r in results) >= 5_000
        deadline = time.monotonic() + 15
        while _rss_mb(pid) > baseline + 40 and time.monotonic() < deadline:
            time.sleep(0.5)
        assert _rss_mb(pid) <= baseline + 40, (baseline, _rss_mb(pid))
    finally:
        executor.stop()
        for p in instances:
            p.stop()


def test_executor_and_instance_limits_differ():
    """Each side says its --max-message on the link: a task over the instance's limit,
    or an output over the executor's, fails alone (RESOURCE_EXHAUSTED) instead of
    breaking the link; an infer task's output is not shipped back at all."""
    small = start_instance(CONTROL, None, "--max-message", str(4 << 20))
    executor, port = start_executor({"small": small.info["port"]}, "--max-message", str(8 << 20))
    big = start_instance(CONTROL, None, "--max-message", str(8 << 20))
    executor2, port2 = start_executor({"big": big.info["port"]}, "--max-message", str(2 << 20))
    try:
        calls = [("infer_result", frame("s", i, order(sleep=0.3)), 30) for i in range(40)]
        calls.append(("infer_result", sized_frame(6 << 20, out_bytes=10), 30))
        results = asyncio.run(gather_calls(port, calls))
        assert all(isinstance(r, bytes) for r in results[:40]), results[:40]
        assert results[40][0] == grpc.StatusCode.RESOURCE_EXHAUSTED, results[40]
        calls = [("infer_result", frame("s", i, order(sleep=0.3)), 30) for i in range(20)]
        calls += [("infer_result", frame("o", 1, order(out_bytes=3 << 20)), 30),
                  ("infer", frame("o", 2, order(out_bytes=3 << 20)), 30)]  # fmt: skip
        results = asyncio.run(gather_calls(port2, calls))
        assert all(isinstance(r, bytes) for r in results[:20]), results[:20]
        assert results[20][0] == grpc.StatusCode.RESOURCE_EXHAUSTED, results[20]
        assert results[21] == wire.ACCEPTED
        time.sleep(0.5)
        for ex in (executor, executor2):
            tasks = stats(ex)["tasks"]
            assert tasks["lost"] == 0, tasks
            rows = stats(ex)["instances"].values()
            assert all(r["up"] and not r["ejected"] and r["lost"] == 0 for r in rows), rows
        assert stats(executor2)["tasks"]["failed"] == 1  # only infer_result: infer ships no output
    finally:
        executor.stop()
        executor2.stop()
        small.stop()
        big.stop()


def test_a_short_drain_gives_back_the_tasks_it_did_not_start():
    """An instance that runs 4 tasks at a time, SIGTERMed with 100 queued on it: the 4
    running finish there, the queued ones are given back and run on the other one."""
    leaving = start_instance(CONTROL, None, "--max-concurrency", "4", "--drain-timeout", "5")
    staying = start_instance(CONTROL)
    executor, port = start_executor({"leaving": leaving.info["port"],
                                     "staying": staying.info["port"]})  # fmt: skip
    try:

        async def run():
            calls = [
                ("infer_result" if i % 3 else "infer", frame("q", i, order(sleep=1.0)), 60)
                for i in range(200)
            ]
            batch = asyncio.ensure_future(gather_calls(port, calls))
            await asyncio.sleep(0.5)
            leaving.signal(signal.SIGTERM)
            return await batch

        results = asyncio.run(run())
        assert [r for r in results if not isinstance(r, bytes)] == []
        assert leaving.p.wait(30) == 0
        deadline = time.monotonic() + 20
        while stats(executor)["inflight"] and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(1.5)  # infer tasks given back run on the other instance
        tasks = stats(executor)["tasks"]
        assert tasks["lost"] == 0 and tasks["failed"] == 0, tasks
        assert tasks["retried"] >= 50, tasks  # the queued ones went to the other instance
        done = json.loads(get_text(f"http://127.0.0.1:{staying.info['mgmt_port']}/stats"))
        gone = [line for line in leaving.p.stderr.read().splitlines() if "unfinished" in line]
        assert gone == []
        assert done["completed"] >= 150, done
    finally:
        executor.stop()
        leaving.stop()
        staying.stop()


def test_the_last_instance_is_never_ejected():
    wedged = start_instance("tests.blocks:HangBlock")
    executor, port = start_executor({"only": wedged.info["port"]}, "--task-timeout", "0.3",
                                    "--eject-after", "1")  # fmt: skip
    try:
        asyncio.run(gather_calls(port, [("infer_result", frame("t", i), 5) for i in range(4)]))
        rows = mgmt(executor.info["mgmt_port"], "list_instances")[1]["data"]
        assert rows[0]["ejected"] is False and rows[0]["available"] is True
    finally:
        executor.stop()
        wedged.stop()


def test_the_task_timeout_counts_from_the_start_of_the_run():
    """An instance running one task at a time: tasks that wait for their turn longer
    than --task-timeout still run (the clock starts when they start); a run longer than
    that fails with DEADLINE_EXCEEDED and is counted as a timeout there."""
    instance = start_instance(CONTROL, None, "--max-concurrency", "1")
    executor, port = start_executor({"i": instance.info["port"]}, "--task-timeout", "0.5",
                                    "--eject-after", "0")  # fmt: skip
    try:
        calls = [("infer_result", frame("q", i, order(sleep=0.3)), 10) for i in range(4)]
        calls.append(("infer_result", frame("slow", 9, order(sleep=2.0)), 10))
        results = asyncio.run(gather_calls(port, calls))
        assert all(isinstance(r, bytes) for r in results[:4]), results[:4]
        assert results[4][0] == grpc.StatusCode.DEADLINE_EXCEEDED and "0.5s" in results[4][1]
        time.sleep(1.2)  # /stats is a snapshot refreshed every second
        body = json.loads(get_text(f"http://127.0.0.1:{instance.info['mgmt_port']}/stats"))
        assert body["timed_out"] == 1, body
    finally:
        executor.stop()
        instance.stop()


def test_a_wedged_event_loop_is_timed_out_by_the_executor():
    """A block that blocks its instance's event loop: pings still get answers, the
    instance cannot time the run out itself, so the executor's backstop ends the link
    once the instance has said nothing for the task timeout with tasks waiting."""
    wedged = start_instance("tests.blocks:WedgeBlock", {"seconds": 20})
    executor, port = start_executor({"w": wedged.info["port"]}, "--task-timeout", "0.5")
    try:
        t0 = time.monotonic()
        result = asyncio.run(gather_calls(port, [("infer_result", frame("w", 1), 15)]))[0]
        # the stream is ended (the task never got its ACK: no other instance takes it)
        assert result[0] == grpc.StatusCode.UNAVAILABLE, result
        assert time.monotonic() - t0 < 5
    finally:
        wedged.p.kill()
        executor.stop()
        wedged.stop()
