"""The vDAG controller with real processes (split from test_vdag_run so xdist runs them
beside it): quotas and the quota checker, policies refused by path, the stream form and
metrics, tokens, registry registration, health and quality checks."""

from __future__ import annotations

import json
import os
import signal

import grpc
import pytest

from aios_fast import codec
from aios_fast.protos import vdag_pb2
from aios_fast.vdag import parse

from .procs import http
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


def test_answers_batched_in_one_message_each_reach_their_task():
    """An instance sends what it queued in one loop turn as one message (BATCH_PTR, one
    answer per file): each answer ends its own task; an unknown task counts as late."""
    import asyncio

    import msgspec

    from aios_fast.vdag.compile import Plan, PlanNode
    from aios_fast.vdag.controller.server import VDagController
    from aios_fast.vdag.hop import BATCH_PTR, Ticket, encode_ticket

    plan = Plan(vdag_uri="v:1", input=["a"], output="a",
                nodes={"a": PlanNode(label="a", block_id="a", endpoint="127.0.0.1:1")})  # fmt: skip

    async def main():
        ctl = VDagController(plan)
        loop = asyncio.get_running_loop()
        ctl.pending = {t: loop.create_future() for t in ("t1", "t2")}

        def answer(task: str, data: str) -> bytes:
            ticket = Ticket(is_graph=True, task=task, reply="", node="a", plan_id="p",
                            plan=msgspec.Raw(b"{}"))  # fmt: skip
            return codec.encode_packet(codec.Packet(data=data, output_ptr=encode_ticket(ticket)))

        files = [codec.FileInfo("", answer(t, d)) for t, d in
                 (("t2", "two"), ("t1", "one"), ("gone", "x"))]  # fmt: skip
        ctl._deliver(codec.encode_message(codec.Packet(output_ptr=BATCH_PTR, files=files)))
        got = {t: f.result()[1].data for t, f in ctl.pending.items()}
        return got, ctl.late

    assert asyncio.run(main()) == ({"t1": "one", "t2": "two"}, 1)
