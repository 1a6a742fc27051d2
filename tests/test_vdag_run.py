"""vDAG tasks run block to block, with real processes: instances (and an executor) as the
blocks, the vDAG controller as its own process. Shapes: chain, fan-out + fan-in
(diamond), conditional route, nested vDAG, a block in two vDAGs plus ad-hoc traffic;
faults: a raising node, a block that is down, a fan-in whose other branch never
arrives; quotas; the counted outcomes."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import grpc
import pytest

from aios_fast import codec
from aios_fast.protos import vdag_pb2
from aios_fast.vdag import compile_vdag, parse

from .procs import Proc, http, start_executor, start_instance

POLICIES = str(Path(__file__).resolve().parent / "vdag_policies")
STEP = "tests.vdag_blocks:StepBlock"


@pytest.fixture(autouse=True)
def policy_path(monkeypatch):
    monkeypatch.setenv("AIOS_POLICY_PATH", POLICIES)


class Net:
    """Blocks (instances serving InferenceProxy/infer themselves, or an executor in front)
    and controllers, stopped at the end."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.procs: list[Proc] = []
        self.endpoints: dict[str, str] = {}

    def block(self, block_id: str, **parameters) -> Proc:
        proc = start_instance(STEP, {"name": block_id, **parameters})
        self.procs.append(proc)
        self.endpoints[block_id] = f"127.0.0.1:{proc.info['port']}"
        return proc

    def block_behind_executor(self, block_id: str, **parameters) -> Proc:
        inst = start_instance(STEP, {"name": block_id, **parameters})
        self.procs.append(inst)
        executor, port = start_executor({"i0": inst.info})
        self.procs.append(executor)
        self.endpoints[block_id] = f"127.0.0.1:{port}"
        return inst

    def controller(self, raw: dict, vdags: dict | None = None, policies=None, extra=(),
                   **init) -> dict:  # fmt: skip
        raw = dict(raw, controller={"initSettings": init, "policies": policies or {}})
        doc = parse(raw)
        blocks = [{"id": b} for b in self.endpoints]
        compile_vdag(doc, blocks, {k: parse(v) for k, v in (vdags or {}).items()},
                     self.endpoints)  # fmt: skip
        import msgspec

        path = self.tmp / f"{doc.vdagName}.compiled.json"
        path.write_bytes(msgspec.json.encode(doc))
        proc = Proc(["-m", "aios_fast.vdag.controller", str(path), *extra])
        self.procs.append(proc)
        self.last = proc
        return proc.info

    def stop(self) -> None:
        for proc in reversed(self.procs):
            proc.stop()


@pytest.fixture
def net(tmp_path):
    n = Net(tmp_path)
    yield n
    n.stop()


def call(info: dict, data: dict, session: str = "s", seq: int = 1, timeout: float = 20.0):
    with grpc.insecure_channel(f"127.0.0.1:{info['port']}") as ch:
        request = vdag_pb2.vDAGInferencePacket(session_id=session, seq_no=seq,
                                               data=json.dumps(data))  # fmt: skip
        reply = ch.unary_unary("/vDAGInferenceService/infer")(
            request.SerializeToString(), timeout=timeout
        )
    out = vdag_pb2.vDAGInferencePacket.FromString(reply)
    return out.session_id, out.seq_no, json.loads(out.data)


def failure(info: dict, data: dict, **kw) -> tuple[str, str]:
    with pytest.raises(grpc.RpcError) as err:
        call(info, data, **kw)
    return err.value.code().name, err.value.details()


def stats(info: dict) -> dict:
    status, body = http(f"http://127.0.0.1:{info['http_port']}/mgmt",
                        {"mgmt_action": "stats", "mgmt_data": {}})  # fmt: skip
    assert status == 200
    return body["data"]


def node(label, block, **extra):
    return {"nodeLabel": label, "nodeType": "block", "manualBlockId": block, **extra}


def vdag(name, nodes, connections, inputs, output):
    return {
        "vdagName": name, "vdagVersion": {"version": "1", "releaseTag": "t"},
        "nodes": nodes,
        "graph": {"input": [{"nodeLabel": x} for x in inputs],
                  "output": [{"nodeLabel": output}],
                  "connections": [{"nodeLabel": d, "inputs": [{"nodeLabel": s} for s in srcs]}
                                  for d, srcs in connections.items()]},
    }  # fmt: skip


def test_chain_runs_block_to_block_with_policies_in_the_instances(net):
    net.block("a", add=1)
    net.block_behind_executor("b", add=10)  # through a block's executor, as callers do
    net.block("c", add=100)
    raw = vdag("chain", [node("a", "a", preprocessingPolicyRule={"policyRuleURI": "pre.double:v1"}),
                         node("b", "b"), node("c", "c")],
               {"b": ["a"], "c": ["b"]}, ["a"], "c")  # fmt: skip
    ctl = net.controller(raw)
    session, seq, out = call(ctl, {"x": 5}, session="user-1", seq=7)
    assert (session, seq) == ("user-1", 7)
    assert out == {"x": 5 * 2 + 111, "path": ["a", "b", "c"], "pre": ["a"]}
    for i in range(20):  # the plan is cached per instance; every task is its own
        assert call(ctl, {"x": i}, seq=i)[2]["x"] == 2 * i + 111
    s = stats(ctl)
    assert (s["received"], s["accepted"], s["completed"], s["inflight"]) == (21, 21, 21, 0)


def test_fan_out_and_fan_in_diamond(net):
    for name, add in (("a", 1), ("b", 10), ("c", 100), ("d", 1000)):
        net.block(name, add=add)
    raw = vdag("diamond", [node(x, x) for x in "abcd"],
               {"b": ["a"], "c": ["a"], "d": ["b", "c"]}, ["a"], "d")  # fmt: skip
    raw["nodes"][3]["IOMap"] = [{"nodeLabel": "b", "inputName": "left"}]
    ctl = net.controller(raw)
    _, _, out = call(ctl, {"x": 0})
    # d got both branches joined, named by IOMap (b -> left) or by label (c)
    assert out == {"path": [["a", "c"], ["a", "b"], "d"], "joined": ["c", "left"],
                   "x": (1 + 100) + (1 + 10) + 1000}  # fmt: skip


def test_conditional_route_skips_the_other_branch_and_fan_in_runs_with_what_came(net):
    for name, add in (("a", 0), ("big", 1000), ("small", 1), ("join", 0)):
        net.block(name, add=add)
    route = {"policyRuleURI": "route.by_x:v1", "parameters": {"threshold": 10}}
    raw = vdag("route", [node("a", "a", postprocessingPolicyRule=route), node("big", "big"),
                         node("small", "small"), node("join", "join")],
               {"big": ["a"], "small": ["a"], "join": ["big", "small"]}, ["a"], "join")  # fmt: skip
    ctl = net.controller(raw)
    assert call(ctl, {"x": 50})[2] == {"path": [["a", "big"], "join"], "joined": ["big"],
                                      "x": 1050}  # fmt: skip
    assert call(ctl, {"x": 3})[2] == {"path": [["a", "small"], "join"], "joined": ["small"],
                                     "x": 4}  # fmt: skip
    # a route to no edge at all: the task ends, naming the output node it never reached
    raw["nodes"][0]["postprocessingPolicyRule"] = {"policyRuleURI": "route.nowhere:v1"}
    raw["vdagName"] = "route2"
    ctl2 = net.controller(raw)
    code, message = failure(ctl2, {"x": 1})
    assert code == "FAILED_PRECONDITION" and "no path reached the output node 'join'" in message


def test_nested_vdag_and_a_block_shared_by_two_vdags_and_ad_hoc_traffic(net):
    for name, add in (("a", 1), ("x", 10), ("y", 100)):
        net.block(name, add=add)
    inner = vdag("inner", [node("x", "x"), node("y", "y")], {"y": ["x"]}, ["x"], "y")
    outer = vdag("outer", [node("a", "a"), {"nodeLabel": "sub", "nodeType": "vdag",
                                            "vdagURI": "inner:1-t"}],
                 {"sub": ["a"]}, ["a"], "sub")  # fmt: skip
    ctl_outer = net.controller(outer, {"inner:1-t": inner})
    ctl_inner = net.controller(inner)
    assert call(ctl_outer, {"x": 0})[2] == {"path": ["a", "x", "y"], "x": 111}
    assert call(ctl_inner, {"x": 0})[2] == {"path": ["x", "y"], "x": 110}
    # block x serves both vDAGs and plain callers at once
    with grpc.insecure_channel(net.endpoints["x"]) as ch:
        reply = ch.unary_unary("/InferenceProxy/infer_result")(
            codec.encode_message(codec.Packet(session_id="adhoc", data='{"x": 1}')), timeout=10
        )
    assert json.loads(codec.decode_message(reply).data) == {"x": 11, "path": ["x"]}


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


def test_quotas_refuse_before_running(net):
    net.block("a")
    raw = vdag("quota", [node("a", "a")], {}, ["a"], "a")
    ctl = net.controller(raw, quota={"sessionRate": 0.001, "sessionBurst": 2})
    assert call(ctl, {"x": 0}, session="u1")[2]["path"] == ["a"]
    assert call(ctl, {"x": 0}, session="u1")[2]["path"] == ["a"]
    code, message = failure(ctl, {"x": 0}, session="u1")
    assert code == "RESOURCE_EXHAUSTED" and "session 'u1' is over its quota" in message
    assert call(ctl, {"x": 0}, session="u2")[2]["path"] == ["a"]  # another session
    status, body = http(f"http://127.0.0.1:{ctl['http_port']}/mgmt",
                        {"mgmt_action": "set_quota", "mgmt_data": {"sessionRate": 0}})  # fmt: skip
    assert status == 200 and body["data"]["sessionRate"] == 0
    assert call(ctl, {"x": 0}, session="u1")[2]["path"] == ["a"]
    s = stats(ctl)
    assert (s["received"], s["refused"], s["accepted"], s["completed"]) == (5, 1, 4, 4)


def test_policy_named_by_path_is_refused_before_running(tmp_path):
    raw = vdag("p", [node("a", "a", preprocessingPolicyRule={"policyRuleURI": "/tmp/x.py"})],
               {}, ["a"], "a")  # fmt: skip
    from aios_fast.vdag import problems

    assert problems(parse(raw)) == [
        "node 'a': preprocessingPolicyRule '/tmp/x.py' must be builtin:<name> or "
        "<name>:<version> under AIOS_POLICY_PATH (instances load no code a task names by path)"
    ]
    assert os.environ["AIOS_POLICY_PATH"] == POLICIES


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


def test_stream_and_metrics(net):
    net.block("a", add=1)
    net.block("b", add=2, fail_over=100)
    raw = vdag("stream", [node("a", "a"), node("b", "b")], {"b": ["a"]}, ["a"], "b")
    ctl = net.controller(raw)

    def requests():
        for i in range(10):
            yield vdag_pb2.vDAGInferencePacket(
                session_id="st", seq_no=i, data=json.dumps({"x": 1000 if i == 3 else i})
            ).SerializeToString()

    with grpc.insecure_channel(f"127.0.0.1:{ctl['port']}") as ch:
        stream = ch.stream_stream("/vDAGInferenceService/infer_stream")
        answers = [
            vdag_pb2.vDAGInferencePacket.FromString(r) for r in stream(requests(), timeout=30)
        ]
    by_seq = {a.seq_no: json.loads(a.data) for a in answers}
    assert sorted(by_seq) == list(range(10))
    assert by_seq[3]["aios_error"]["node"] == "b"
    assert by_seq[3]["aios_error"]["code"] == "INTERNAL"
    assert all(by_seq[i]["x"] == i + 3 for i in range(10) if i != 3)
    from .procs import get_text

    text = get_text(f"http://127.0.0.1:{ctl['http_port']}/metrics")
    assert 'aios_vdag_tasks_total{event="completed"} 9.0' in text
    assert 'aios_vdag_failures_total{code="INTERNAL",node="b"} 1.0' in text
    assert 'aios_vdag_node_seconds_count{node="a"} 10.0' in text
    assert 'aios_vdag_node_seconds_count{node="b"} 9.0' in text


def test_tokens_guard_the_controller_and_the_hops(net, monkeypatch):
    monkeypatch.setenv("AIOS_FAST_TOKEN", "s3cret-token-0123456789")  # every process: every role
    net.block("a", add=1)
    net.block("b", add=2)
    raw = vdag("auth", [node("a", "a"), node("b", "b")], {"b": ["a"]}, ["a"], "b")
    ctl = net.controller(raw)
    code, _ = failure(ctl, {"x": 0})
    assert code == "UNAUTHENTICATED"
    with grpc.insecure_channel(f"127.0.0.1:{ctl['port']}") as ch:
        request = vdag_pb2.vDAGInferencePacket(session_id="s", data='{"x": 0}')
        reply = ch.unary_unary("/vDAGInferenceService/infer")(
            request.SerializeToString(),
            timeout=20,
            metadata=(("authorization", "Bearer s3cret-token-0123456789"),),
        )
    assert json.loads(vdag_pb2.vDAGInferencePacket.FromString(reply).data)["x"] == 3
    # a forged answer without the token is refused
    with grpc.insecure_channel(f"127.0.0.1:{ctl['port']}") as ch:
        with pytest.raises(grpc.RpcError) as err:
            ch.unary_unary("/InferenceProxy/infer")(codec.encode_message(codec.Packet()), timeout=5)
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    status, _ = http(f"http://127.0.0.1:{ctl['http_port']}/mgmt",
                     {"mgmt_action": "stats", "mgmt_data": {}})  # fmt: skip
    assert status == 401


def test_a_quota_checker_policy_admits_or_refuses(net):
    net.block("a")
    raw = vdag("qpol", [node("a", "a")], {}, ["a"], "a")
    ctl = net.controller(raw, policies={"quotaChecker": {"policyRuleURI": "quota.vip:v1"}})
    assert call(ctl, {"x": 0}, session="vip-1")[2]["path"] == ["a"]
    assert failure(ctl, {"x": 0}, session="joe") == ("RESOURCE_EXHAUSTED", "joe is not a vip")
    code, message = failure(ctl, {"x": 0}, session="boom")
    assert code == "INTERNAL"
    assert message == "the quota checker policy failed: RuntimeError: no quota data"
    s = stats(ctl)
    assert (s["received"], s["refused"], s["accepted"], s["completed"]) == (3, 2, 1, 1)


def test_the_controller_registers_in_the_registry_and_leaves_on_stop(net, tmp_path):
    from .registry.test_api import Server

    registry = Server(tmp_path / "db")
    try:
        net.block("a")
        raw = vdag("reg", [node("a", "a")], {}, ["a"], "a")
        url = f"http://127.0.0.1:{registry.port}"
        ctl = net.controller(raw, extra=("--registry", url, "--cluster-id", "c-1",
                                         "--controller-id", "reg-ctl"))  # fmt: skip
        status, body = registry.call("GET", "/vdag-controller/reg-ctl")
        assert status == 200
        assert {k: body["data"][k] for k in ("vdag_uri", "public_url", "cluster_id")} == {
            "vdag_uri": "reg:1-t",
            "public_url": f"127.0.0.1:{ctl['port']}",
            "cluster_id": "c-1",
        }
        status, body = registry.call("GET", "/vdag/reg:1-t")
        assert status == 200 and body["data"]["status"] == "assigned"
        assert body["data"]["assignment_info"] == {"a": "a"}
        assert body["data"]["compiled_graph_data"]["plan"]["output"] == "a"
        assert call(ctl, {"x": 1})[2]["path"] == ["a"]
        assert net.last.stop() == 0
        assert registry.call("GET", "/vdag-controller/reg-ctl")[0] == 404
        assert registry.call("GET", "/vdag/reg:1-t")[0] == 200  # the vDAG stays
    finally:
        registry.stop()


def test_health_and_quality_checks(net, tmp_path):
    net.block("a", add=1)
    b = net.block("b", add=2)
    raw = vdag("checks", [node("a", "a"), node("b", "b")], {"b": ["a"]}, ["a"], "b")
    audit = tmp_path / "audit.jsonl"
    ctl = net.controller(raw, policies={
        "healthChecker": {"policyRuleURI": "health.verdict:v1"},
        "qualityChecker": {"policyRuleURI": "quality.audit:v1",
                           "parameters": {"sampleRate": 1.0, "path": str(audit)}},
    }, healthCheckIntervalSeconds=3600, healthCheckTimeoutSeconds=1)  # fmt: skip
    for i in range(5):
        call(ctl, {"x": i}, seq=i)

    def mgmt(action, data=None):
        status, body = http(f"http://127.0.0.1:{ctl['http_port']}/mgmt",
                            {"mgmt_action": action, "mgmt_data": data or {}})  # fmt: skip
        assert status == 200, body
        return body["data"]

    health = mgmt("health", {"run_now": True})
    assert health["verdict"] == {"down": []}
    assert {n: d["up"] for n, d in health["nodes"].items()} == {"a": True, "b": True}
    b.signal(signal.SIGKILL)
    b.p.wait()
    health = mgmt("health", {"run_now": True})
    assert health["verdict"] == {"down": ["b"]} and health["nodes"]["b"]["up"] is False
    from .procs import get_text

    assert 'aios_vdag_block_up{block="b",node="b"} 0.0' in get_text(
        f"http://127.0.0.1:{ctl['http_port']}/metrics"
    )
    # every completed task was sampled (rate 1.0) and handed to the policy with its input
    import time

    end = time.monotonic() + 20
    while mgmt("quality")["checked"] < 5 and time.monotonic() < end:
        time.sleep(0.05)
    quality = mgmt("quality")
    assert (quality["sampled"], quality["checked"], quality["dropped"]) == (5, 5, 0)
    samples = [json.loads(line) for line in audit.read_text().splitlines()]
    assert sorted(json.loads(s["input"]["data"])["x"] for s in samples) == [0, 1, 2, 3, 4]
    assert all(json.loads(s["output"]["data"])["x"] == json.loads(s["input"]["data"])["x"] + 3
               for s in samples)  # fmt: skip


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
