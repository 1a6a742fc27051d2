"""The executor's management API (POST /mgmt) and metrics (GET /metrics) over HTTP,
against real executor and instance processes."""

from __future__ import annotations

import time
from collections import Counter

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from aios_fast import codec

from .procs import frame, get_text, http, mgmt, start_executor, start_instance


@pytest.fixture
def named():
    """Two NameBlock instances ('a', 'b') behind a one-worker executor."""
    instances = {name: start_instance("tests.blocks:NameBlock", {"name": name}) for name in "ab"}
    # this test loads its policies by module path: the operator allows it
    executor, port = start_executor({name: p.info["port"] for name, p in instances.items()},
                                    "--allow-policy-paths")  # fmt: skip
    yield port, executor.info, instances
    executor.stop()
    for p in instances.values():
        p.stop()


def served_by(port: int, n: int = 40, session: str | None = None) -> Counter:
    """Which instance answered each of n infer_result calls."""
    seen = Counter()
    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        rpc = ch.unary_unary("/InferenceProxy/infer_result")
        for i in range(n):
            out = codec.decode_message(rpc(frame(session or f"s{i}", i), timeout=10))
            seen[out.data] += 1
    return seen


def metric_samples(port: int) -> dict:
    """{(sample name, sorted labels): value} from GET /metrics, via prometheus' parser."""
    text = get_text(f"http://127.0.0.1:{port}/metrics")
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_list_drain_health_remove_add(named):
    port, info, instances = named
    mp = info["mgmt_port"]
    status, body = mgmt(mp, "list_instances")
    assert status == 200 and body["success"] is True
    rows = {row["id"]: row for row in body["data"]}
    assert set(rows) == {"a", "b"} and all(r["up"] and r["available"] for r in rows.values())
    assert served_by(port) == {"a": 20, "b": 20}

    status, body = mgmt(mp, "drain_instance", {"id": "a"})
    assert status == 200 and body["data"]["draining"] is True and not body["data"]["available"]
    assert served_by(port) == {"b": 40}
    assert mgmt(mp, "drain_instance", {"id": "a", "draining": False})[0] == 200
    assert served_by(port) == {"a": 20, "b": 20}

    # The health checker's verdict: the link is up, but no tasks go there.
    status, body = mgmt(mp, "set_instance_health", {"id": "b", "healthy": False})
    assert status == 200 and body["data"]["up"] and not body["data"]["healthy"]
    assert served_by(port) == {"a": 40}
    assert mgmt(mp, "set_instance_health", {"id": "b", "healthy": True})[0] == 200
    assert served_by(port) == {"a": 20, "b": 20}

    status, body = mgmt(mp, "remove_instance", {"id": "a"})
    assert status == 200 and body["data"] == {"id": "a", "removed": True, "inflight_left": 0}
    assert [r["id"] for r in mgmt(mp, "list_instances")[1]["data"]] == ["b"]
    assert served_by(port) == {"b": 40}
    target = f"127.0.0.1:{instances['a'].info['port']}"
    status, body = mgmt(mp, "add_instance", {"id": "a2", "target": target})
    assert status == 200 and body["data"]["id"] == "a2" and body["data"]["target"] == target
    for _ in range(100):  # until its link is up
        if mgmt(mp, "list_instances")[1]["data"][-1]["up"]:
            break
        time.sleep(0.05)
    assert served_by(port) == {"a": 20, "b": 20}


def test_policy_parameters_switch_and_user_policy_actions(named):
    port, info, _ = named
    mp = info["mgmt_port"]
    status, body = mgmt(mp, "get_policy")
    assert status == 200 and body["data"]["policyRuleURI"] == "builtin:round_robin"

    status, body = mgmt(
        mp,
        "switch_policy",
        {"policyRuleURI": "builtin:consistent_hash", "parameters": {"vnodes": 40}},
    )
    assert status == 200 and body["data"]["balancer"] == "consistent_hash"
    assert len(served_by(port, 20, session="one-session")) == 1  # sticky now
    status, body = mgmt(mp, "set_policy_parameters", {"parameters": {"vnodes": 80}})
    assert status == 200 and body["data"]["parameters"] == {"vnodes": 80}
    status, body = mgmt(mp, "set_policy_parameters", {"parameters": {"nope": 1}})
    assert status == 400 and "does not take nope" in body["message"]
    assert mgmt(mp, "get_policy")[1]["data"]["parameters"] == {"vnodes": 80}  # unchanged

    # Weights, for the weighted policy.
    assert mgmt(mp, "switch_policy", {"policyRuleURI": "builtin:weighted_round_robin"})[0] == 200
    status, body = mgmt(mp, "set_instance_weight", {"id": "a", "weight": 3})
    assert status == 200 and body["data"]["weight"] == 3
    assert served_by(port, 40) == {"a": 30, "b": 10}

    status, body = mgmt(mp, "custom_thing")
    assert status == 400 and "unknown management action 'custom_thing'" in body["message"]

    # A user policy: its parameters change in place, its own actions reach management().
    status, body = mgmt(mp, "switch_policy", {"policyRuleURI": "tests.policies.sticky_module"})
    assert status == 200 and body["data"]["balancer"] == "policy"
    assert mgmt(mp, "set_policy_parameters", {"parameters": {"prefer": "b"}})[0] == 200
    assert served_by(port, 20) == {"b": 20}
    status, body = mgmt(mp, "get_params")
    assert status == 200 and body["data"] == {
        "success": True,
        "data": {"prefer": "b", "tag": "default"},
    }

    status, body = mgmt(mp, "switch_policy", {"policyRuleURI": "tests.policies.no_such_policy"})
    assert status == 400 and "policy not changed" in body["message"]
    assert mgmt(mp, "get_policy")[1]["data"]["policyRuleURI"] == "tests.policies.sticky_module"


def test_management_errors(named):
    _, info, _ = named
    url = f"http://127.0.0.1:{info['mgmt_port']}/mgmt"
    mp = info["mgmt_port"]
    for body in (
        b"{not json",
        b"[]",
        b'{"mgmt_data": {}}',
        b'{"mgmt_action": 3}',
        b'{"mgmt_action": "stats", "mgmt_data": []}',
        b'{"mgmt_action": "stats", "extra": 1}',
    ):
        status, reply = http(url, body)
        assert status == 400 and reply["success"] is False and "bad request" in reply["message"]
    assert mgmt(mp, "drain_instance", {"id": "zz"})[0] == 404
    status, reply = mgmt(mp, "remove_instance", {"id": "zz"})
    assert status == 404 and "unknown instance 'zz'" in reply["message"]
    status, reply = mgmt(mp, "add_instance", {"id": "a", "target": "127.0.0.1:1"})
    assert status == 409
    status, reply = mgmt(mp, "add_instance", {"id": "c"})
    assert status == 400 and "add_instance: bad mgmt_data" in reply["message"]
    status, reply = mgmt(mp, "add_instance", {"id": "c", "target": "nohost"})
    assert status == 400 and "host:port" in reply["message"]
    status, reply = mgmt(mp, "set_instance_health", {"id": "a", "healthy": "maybe"})
    assert status == 400 and "healthy" in reply["message"]
    status, reply = mgmt(mp, "set_instance_weight", {"id": "a", "weight": -1})
    assert status == 400
    # A policy without management(): 400; one whose management() raises: 500.
    assert (
        mgmt(
            mp,
            "switch_policy",
            {
                "policyRuleURI": "tests.policies.sticky_module:Misbehaving",
                "parameters": {"answer": "raise"},
            },
        )[0]
        == 200
    )
    status, reply = mgmt(mp, "anything")
    assert status == 400 and "has no management()" in reply["message"]
    uri = "tests.policies.sticky_module:FailingManagement"
    assert mgmt(mp, "switch_policy", {"policyRuleURI": uri})[0] == 200
    status, reply = mgmt(mp, "anything")
    assert status == 500 and "RuntimeError: cannot do anything" in reply["message"]
    assert mgmt(mp, "stats")[0] == 200


def _tasks(m: dict) -> dict:
    return {
        labels[0][1]: v for (name, labels), v in m.items() if name == "aios_executor_tasks_total"
    }


def test_metrics_match_the_traffic(named):
    port, info, _ = named
    # wait_serving's probes came first: one answered, and any made before the links were
    # up were rejected (counted too); the traffic below is counted on top of them
    before = _tasks(metric_samples(info["metrics_port"]))
    probe = 1
    assert before["accepted"] == probe and before["received"] == probe + before.get("rejected", 0)
    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        result = ch.unary_unary("/InferenceProxy/infer_result")
        infer = ch.unary_unary("/InferenceProxy/infer")
        for i in range(30):
            result(frame(f"s{i}", i), timeout=10)
        for i in range(10):
            assert infer(frame(f"t{i}", i), timeout=10) == b"\x08\x01"
        with pytest.raises(grpc.RpcError) as err:
            result(b"\x0a\x03bad", timeout=10)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    deadline = time.monotonic() + 10
    while True:  # infer's results arrive after its answer
        m = metric_samples(info["metrics_port"])
        if m[("aios_executor_tasks_total", (("event", "completed"),))] == 40 + probe:
            break
        assert time.monotonic() < deadline, m
        time.sleep(0.05)
    tasks = _tasks(m)
    assert tasks["received"] - before["received"] == 41 and tasks["accepted"] == 40 + probe
    assert tasks["invalid"] == 1 and tasks["failed"] == tasks["lost"] == 0
    assert tasks.get("rejected", 0) == before.get("rejected", 0)
    for stage in ("accept", "run", "total"):
        count = m[("aios_executor_task_seconds_count", (("stage", stage),))]
        assert count == 40 + probe
        inf = m[("aios_executor_task_seconds_bucket", (("le", "+Inf"), ("stage", stage)))]
        assert inf == count and m[("aios_executor_task_seconds_sum", (("stage", stage),))] > 0
    sent = {
        labels[0][1]: v
        for (name, labels), v in m.items()
        if name == "aios_executor_instance_tasks_total" and ("outcome", "sent") in labels
    }
    assert sum(sent.values()) == 40 + probe and set(sent) == {"a", "b"}
    assert m[("aios_executor_inflight", ())] == 0
    assert m[("aios_executor_instance_up", (("instance", "a"),))] == 1
    assert m[("aios_executor_policy_fallbacks_total", ())] == 0
    status, body = mgmt(info["mgmt_port"], "stats")
    assert status == 200 and body["data"]["tasks"]["completed"] == 40 + probe
    assert body["data"]["latency"]["total"]["count"] == 40 + probe


def test_several_workers_share_one_front():
    """With 2 workers the parent serves /mgmt and /metrics: state changes reach both
    workers and the metrics add up over them."""
    instances = {name: start_instance("tests.blocks:NameBlock", {"name": name}) for name in "ab"}
    executor, port = start_executor({n: p.info["port"] for n, p in instances.items()}, workers=2)
    try:
        info = executor.info
        assert len(info["workers"]) == 2 and info["mgmt_port"] != info["metrics_port"]
        mp = info["mgmt_port"]
        status, _body = mgmt(mp, "drain_instance", {"id": "a"})
        assert status == 200
        # Many fresh connections land on both workers; none may send to 'a'.
        for _ in range(8):
            assert served_by(port, 5) == {"b": 5}
        rows = mgmt(mp, "list_instances")[1]["data"]
        assert {r["id"]: r["draining"] for r in rows} == {"a": True, "b": False}
        assert mgmt(mp, "drain_instance", {"id": "zz"})[0] == 404
        m = metric_samples(info["metrics_port"])
        stats = mgmt(mp, "stats")[1]["data"]
        assert stats["workers"] == 2
        completed = m[("aios_executor_tasks_total", (("event", "completed"),))]
        assert completed >= 40 and completed == stats["tasks"]["completed"]
        assert m[("aios_executor_instance_up", (("instance", "b"),))] == 1  # max, not sum
    finally:
        executor.stop()
        for p in instances.values():
            p.stop()


def test_every_received_task_ends_counted():
    """received = invalid + rejected + accepted, also for calls no instance could take
    (an executor without instances answers UNAVAILABLE and counts them rejected)."""
    executor, port = start_executor({})
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
            for method in ("infer", "infer_result", "infer_result"):
                with pytest.raises(grpc.RpcError) as err:
                    ch.unary_unary(f"/InferenceProxy/{method}")(frame(), timeout=10)
                assert err.value.code() == grpc.StatusCode.UNAVAILABLE
            with pytest.raises(grpc.RpcError) as err:
                ch.unary_unary("/InferenceProxy/infer_result")(b"\x0a\x03bad", timeout=10)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        tasks = _tasks(metric_samples(executor.info["metrics_port"]))
        assert tasks["received"] == 4 and tasks["rejected"] == 3 and tasks["invalid"] == 1
        assert tasks["accepted"] == 0
    finally:
        executor.stop()
