"""vDAG tasks run block to block, with real processes: instances (and an executor) as the
blocks, the vDAG controller as its own process. Shapes: chain, fan-out + fan-in
(diamond), conditional route, nested vDAG, a block in two vDAGs plus ad-hoc traffic;
faults: a raising node, a block that is down, a fan-in whose other branch never
arrives; quotas; the counted outcomes."""

from __future__ import annotations

import json
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
