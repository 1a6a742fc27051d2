"""vDAG faults with real processes (split from test_vdag_run so xdist runs them beside
it): a raising node, a block that is down, a fan-in whose other branch never arrives,
a slow node under a deadline, SIGSTOP and kill -9 of a middle instance, cancellation."""

from __future__ import annotations

import signal

import grpc

from aios_fast.protos import vdag_pb2

from .procs import start_executor, start_instance
from .test_vdag_run import (  # noqa: F401  (net, policy_path: fixtures)
    POLICIES,
    STEP,
    Net,
    call,
    failure,
    net,
    node,
    policy_path,
    stats,
    vdag,
)


def test_a_raising_node_fails_the_task_naming_it(net):
    net.block("a", add=1)
    net.block("b", add=1, fail_over=10)
    net.block("c", add=1)
    raw = vdag("fails", [node(x, x) for x in "abc"], {"b": ["a"], "c": ["b"]}, ["a"], "c")
    ctl = net.controller(raw)
    code, message = failure(ctl, {"x": 50})
    assert code == "INTERNAL"
    assert message == "node 'b': ValueError: x=52 is too large"
    assert call(ctl, {"x": 1})[2]["x"] == 4  # the next task is fine
    s = stats(ctl)
    assert (s["accepted"], s["completed"], s["failed"]) == (2, 1, 1)
    assert s["failures"] == [{"node": "b", "code": "INTERNAL", "count": 1}]


def test_a_block_that_is_down_is_unavailable_naming_the_node(net):
    net.block("a")
    b = net.block("b")
    net.block("c")
    raw = vdag("down", [node(x, x) for x in "abc"], {"b": ["a"], "c": ["b"]}, ["a"], "c")
    ctl = net.controller(raw)
    assert call(ctl, {"x": 0})[2]["path"] == ["a", "b", "c"]
    b.signal(signal.SIGKILL)
    b.p.wait()
    code, message = failure(ctl, {"x": 0})
    assert code == "UNAVAILABLE" and message.startswith(
        f"node 'b' (block 'b' at {net.endpoints['b']}) is unavailable"
    )
    s = stats(ctl)
    assert s["failures"] == [{"node": "b", "code": "UNAVAILABLE", "count": 1}]


def test_a_next_blocks_executor_that_dies_mid_hop_fails_the_task_naming_the_node(net):
    # the hop from 'a' to 'b' travels on a stream to b's executor: the executor stops
    # (the hop waits unacknowledged on the stream), then dies: the stream breaks and
    # the task fails at once, UNAVAILABLE naming 'b' (not the controller's timeout)
    import time

    net.block("a")
    net.block_behind_executor("b")
    executor = net.procs[-1]
    net.block("c")
    raw = vdag("mid-hop", [node(x, x) for x in "abc"], {"b": ["a"], "c": ["b"]}, ["a"], "c")
    ctl = net.controller(raw, maxOutputWaitTimeSeconds=30)
    assert call(ctl, {"x": 0})[2]["path"] == ["a", "b", "c"]  # the stream is open
    executor.signal(signal.SIGSTOP)
    with grpc.insecure_channel(f"127.0.0.1:{ctl['port']}") as ch:
        request = vdag_pb2.vDAGInferencePacket(session_id="s", seq_no=2, data='{"x": 1}')
        pending = ch.unary_unary("/vDAGInferenceService/infer").future(
            request.SerializeToString(), timeout=30
        )
        time.sleep(0.5)  # (sent or not yet: either way it cannot arrive)
        executor.signal(signal.SIGKILL)
        executor.p.wait()
        try:
            pending.result()
            raise AssertionError("the task completed")
        except grpc.RpcError as exc:
            code, message = exc.code().name, exc.details()
    assert code == "UNAVAILABLE", message  # the controller's timeout would say DEADLINE
    assert message.startswith(f"node 'b' (block 'b' at {net.endpoints['b']}) is unavailable")
    s = stats(ctl)
    assert (s["accepted"], s["completed"], s["failed"], s["inflight"]) == (2, 1, 1, 0)
    assert s["failures"] == [{"node": "b", "code": "UNAVAILABLE", "count": 1}]


def test_fan_in_whose_other_branch_never_arrives_times_out_naming_the_node(net):
    net.block("a")
    net.block("fast")
    net.block("slow", sleep=5)
    net.block("join")
    raw = vdag("stuck", [node(x, x) for x in ("a", "fast", "slow", "join")],
               {"fast": ["a"], "slow": ["a"], "join": ["fast", "slow"]}, ["a"], "join")  # fmt: skip
    # the join gives up long before the slow branch's deadline: it decides the outcome
    ctl = net.controller(raw, maxOutputWaitTimeSeconds=20, joinTimeoutSeconds=1)
    code, message = failure(ctl, {"x": 0})
    assert code == "DEADLINE_EXCEEDED"
    assert message.startswith("node 'join': fan-in waited 1s") and message.endswith("for 'slow'")
    s = stats(ctl)
    assert (s["accepted"], s["failed"], s["timed_out"], s["inflight"]) == (1, 1, 0, 0)


def test_a_slow_node_under_the_callers_deadline_fails_naming_it(net):
    net.block("a")
    net.block("slow", sleep=3)
    net.block("c")
    raw = vdag("slow", [node(x, x) for x in ("a", "slow", "c")],
               {"slow": ["a"], "c": ["slow"]}, ["a"], "c")  # fmt: skip
    ctl = net.controller(raw)  # maxOutputWaitTimeSeconds 30: the caller's 1.5 s rules
    code, message = failure(ctl, {"x": 0}, timeout=1.5)
    assert code == "DEADLINE_EXCEEDED"
    assert message.startswith("node 'slow': TaskTimedOut: the block ran the task over")
    s = stats(ctl)
    assert s["failures"] == [{"node": "slow", "code": "DEADLINE_EXCEEDED", "count": 1}]


def test_a_stopped_middle_instance_fails_the_task_naming_its_node(net):
    net.block("a")
    b = net.block("b")
    net.block("c")
    raw = vdag("stop", [node(x, x) for x in "abc"], {"b": ["a"], "c": ["b"]}, ["a"], "c")
    ctl = net.controller(raw, maxOutputWaitTimeSeconds=1.5)
    assert call(ctl, {"x": 0})[2]["path"] == ["a", "b", "c"]
    b.signal(signal.SIGSTOP)
    try:
        code, message = failure(ctl, {"x": 0})
    finally:
        b.signal(signal.SIGCONT)
    assert code == "DEADLINE_EXCEEDED"
    assert (
        message.startswith("node 'b' (block 'b' at ") and "did not take the task in time" in message
    )
    assert call(ctl, {"x": 0})[2]["path"] == ["a", "b", "c"]  # back once it runs again


def test_kill_9_of_one_instance_of_a_middle_block_every_task_ends_once(net, tmp_path):
    net.block("a")
    i0 = start_instance(STEP, {"name": "b"})
    i1 = start_instance(STEP, {"name": "b"})
    net.procs += [i0, i1]
    executor, port = start_executor({"i0": i0.info, "i1": i1.info})
    net.procs.append(executor)
    net.endpoints["b"] = f"127.0.0.1:{port}"
    net.block("c")
    raw = vdag("kill", [node(x, x) for x in "abc"], {"b": ["a"], "c": ["b"]}, ["a"], "c")
    ctl = net.controller(raw, maxOutputWaitTimeSeconds=5)
    for i in range(5):
        assert call(ctl, {"x": i}, seq=i)[2]["path"] == ["a", "b", "c"]
    i0.signal(signal.SIGKILL)
    i0.p.wait()
    outcomes = {"ok": 0}
    for i in range(20):
        try:
            assert call(ctl, {"x": i}, seq=100 + i)[2]["path"] == ["a", "b", "c"]
            outcomes["ok"] += 1
        except grpc.RpcError as exc:  # a task the dead instance held: failed, named
            assert "'b'" in exc.details(), exc.details()
            outcomes[exc.code().name] = outcomes.get(exc.code().name, 0) + 1
    assert outcomes["ok"] >= 19  # the executor sends the rest to the live instance
    s = stats(ctl)
    assert s["received"] == s["accepted"] == 25 and s["inflight"] == 0
    assert s["accepted"] == s["completed"] + s["failed"] + s["timed_out"] + s["cancelled"]


def test_a_caller_who_cancels_stops_the_tasks_pending_hops(net):
    import time

    from .procs import get_text

    net.block("a")
    slow = net.block("slow", sleep=2)
    c = net.block("c")
    raw = vdag("cancel", [node(x, x) for x in ("a", "slow", "c")],
               {"slow": ["a"], "c": ["slow"]}, ["a"], "c")  # fmt: skip
    ctl = net.controller(raw)
    with grpc.insecure_channel(f"127.0.0.1:{ctl['port']}") as ch:
        request = vdag_pb2.vDAGInferencePacket(session_id="s", data='{"x": 0}')
        pending = ch.unary_unary("/vDAGInferenceService/infer").future(
            request.SerializeToString(), timeout=30
        )
        running = f"http://127.0.0.1:{slow.info['mgmt_port']}/metrics"
        end = time.monotonic() + 20
        while "aios_instance_running 1.0" not in get_text(running):  # 'slow' runs it
            assert time.monotonic() < end, "the task never reached 'slow'"
            time.sleep(0.02)
        pending.cancel()  # the caller gives up while 'slow' runs
    # a second task on the same path: by the time it comes back, whatever 'slow' passed
    # on for the first one reached 'c' before it
    assert call(ctl, {"x": 1}, seq=2)[2]["path"] == ["a", "slow", "c"]
    metrics = get_text(f"http://127.0.0.1:{c.info['mgmt_port']}/metrics")
    assert 'aios_instance_tasks_total{outcome="completed"} 1.0' in metrics  # the 2nd only
    s = stats(ctl)
    assert (s["accepted"], s["cancelled"], s["completed"], s["late"]) == (2, 1, 1, 0)


def test_a_cancelled_task_stops_its_running_async_node(net, tmp_path):
    import time

    from .procs import get_text

    net.block("a")
    done = tmp_path / "slow-finished"
    slow = start_instance("tests.vdag_blocks:SleepyBlock", {"sleep": 4, "done": str(done)})
    net.procs.append(slow)
    net.endpoints["slow"] = f"127.0.0.1:{slow.info['port']}"
    net.block("c")
    raw = vdag("stop-running", [node(x, x) for x in ("a", "slow", "c")],
               {"slow": ["a"], "c": ["slow"]}, ["a"], "c")  # fmt: skip
    ctl = net.controller(raw)
    t0 = time.monotonic()
    with grpc.insecure_channel(f"127.0.0.1:{ctl['port']}") as ch:
        request = vdag_pb2.vDAGInferencePacket(session_id="s", data='{"x": 0}')
        pending = ch.unary_unary("/vDAGInferenceService/infer").future(
            request.SerializeToString(), timeout=30
        )
        running = f"http://127.0.0.1:{slow.info['mgmt_port']}/metrics"
        while "aios_instance_running 1.0" not in get_text(running):  # 'slow' runs it
            assert time.monotonic() < t0 + 20, "the task never reached 'slow'"
            time.sleep(0.02)
        started = time.monotonic()
        pending.cancel()  # the caller gives up while 'slow' runs
    time.sleep(max(0.0, started + 4.5 - time.monotonic()))  # past when it would have ended
    assert not done.exists()  # stopped: it never reached the end of on_data
    assert "aios_instance_running 0.0" in get_text(running)
    s = stats(ctl)
    assert (s["accepted"], s["cancelled"], s["late"]) == (1, 1, 0)
