"""``aios-fast vdag up``: a vDAG's blocks and controller started locally from the example
documents, checked traffic through the controller, everything stopped (--once)."""

from __future__ import annotations

import json

from .procs import Proc, http
from .test_cli import aios
from .test_vdag_document import BLOCKS as DOC_BLOCKS
from .test_vdag_document import chain, node

EX = "aios_fast/examples/vdag/"
BLOCKS = [f"{EX}echo-{x}.json" for x in "abc"]


def test_vdag_up_traffic_once():
    out = aios("vdag", "up", f"{EX}echo-chain.json", "--blocks", *BLOCKS, "--ports", "auto",
               "--json", "--traffic", "300", "--once")  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    lines = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    info, summary = lines[0], lines[1]
    assert info["vdag"] == "echo-chain:1.0-stable"
    assert {n: v["block"] for n, v in info["nodes"].items()} == {
        "first": "echo-a", "second": "echo-b", "third": "echo-c"}  # fmt: skip
    assert (summary["completed"], summary["errors"]) == (300, {})


def test_vdag_up_serves_until_stopped_and_refuses_bad_documents(tmp_path):
    proc = Proc(["-m", "aios_fast", "vdag", "up", f"{EX}echo-chain.json", "--blocks", *BLOCKS,
                 "--ports", "auto", "--json"])  # fmt: skip
    try:
        status, body = http(proc.info["controller_mgmt"], {"mgmt_action": "get_plan",
                                                           "mgmt_data": {}})  # fmt: skip
        assert status == 200 and body["data"]["output"] == "third"
    finally:
        assert proc.stop(60) == 0
    # a block missing: one line naming the node, exit 2, nothing started
    out = aios("vdag", "up", f"{EX}echo-chain.json", "--blocks", *BLOCKS[:2], "--ports", "auto")
    assert out.returncode == 2
    assert out.stderr.strip() == "aios-fast: node 'third': block 'echo-c' not found"


def test_the_digits_pipeline_example():
    """Normalize -> a nested ensemble vDAG: the classifier's post-processing routes
    unsure images to a second model as well, a fan-in combines the answers; the
    held-out images' labels check the pipeline's accuracy."""
    import pytest

    pytest.importorskip("onnxruntime")
    pytest.importorskip("sklearn")
    blocks = [f"{EX}digits-block-{x}.json" for x in ("normalize", "classifier", "second",
                                                      "combine")]  # fmt: skip
    out = aios("vdag", "up", f"{EX}digits.json", "--vdags", f"{EX}digits-ensemble.json",
               "--blocks", *blocks, "--ports", "auto", "--json", "--traffic", "450", "--once",
               timeout=600)  # fmt: skip
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    lines = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    info, summary = lines[0], lines[1]
    assert set(info["nodes"]) == {"normalize", "ensemble/classifier", "ensemble/second",
                                  "ensemble/combine"}  # fmt: skip
    assert (summary["completed"], summary["errors"], summary["checked"]) == (450, {}, 450)
    assert summary["agreement"] >= 0.9


def test_vdag_manifests_render_the_blocks_and_the_controller():
    import yaml

    out = aios("vdag", "manifests", f"{EX}echo-chain.json", "--blocks", *BLOCKS,
               "--namespace", "ml", "--image", "reg/aios:1")  # fmt: skip
    assert out.returncode == 0, out.stderr
    objects = list(yaml.safe_load_all(out.stdout))
    deployments = {o["metadata"]["name"]: o for o in objects if o["kind"] == "Deployment"}
    assert {"echo-a-executor", "echo-b-executor", "echo-c-executor",
            "vdag-echo-chain-controller"} <= set(deployments)  # fmt: skip
    ctl = deployments["vdag-echo-chain-controller"]["spec"]["template"]["spec"]["containers"][0]
    assert ctl["image"] == "reg/aios:1"
    assert ctl["command"][:4] == ["python", "-m", "aios_fast.vdag.controller",
                                  "/etc/aios-fast/vdag.json"]  # fmt: skip
    config = next(o for o in objects if o["metadata"]["name"] == "vdag-echo-chain-vdag")
    plan = json.loads(config["data"]["vdag.json"])["compiled_graph_data"]["plan"]
    assert plan["nodes"]["second"]["endpoint"] == "echo-b-executor.ml.svc:50051"
    kubernetes_validate = __import__("pytest").importorskip("kubernetes_validate")
    version = kubernetes_validate.latest_version()
    for obj in objects:
        kubernetes_validate.validate(obj, version, strict=True)


def test_vdag_check_command(tmp_path):
    good = tmp_path / "vdag.json"
    good.write_text(json.dumps(chain()))
    blocks = []
    for b in DOC_BLOCKS:
        path = tmp_path / f"{b['id']}.json"
        path.write_text(json.dumps(b))
        blocks.append(str(path))
    out = aios("vdag", "check", str(good))
    assert out.returncode == 0 and "ok: 3 nodes (blocks not checked" in out.stdout
    out = aios("vdag", "check", str(good), "--blocks", *blocks)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"{good}: ok: 3 nodes on blocks b1, b2, b3"
    out = aios("vdag", "check", str(good), "--blocks", *blocks, "--json")
    assert json.loads(out.stdout)["status"] == "assigned"

    raw = chain()
    raw["nodes"].append(node("lonely", "b1"))
    raw["graph"]["connections"][0]["inputs"].append({"nodeLabel": "ghost"})
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(raw))
    out = aios("vdag", "check", str(bad))
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.splitlines() == [
        f"{bad}: node 'ghost': named in the inputs of 'b' but not defined in nodes",
        f"{bad}: node 'lonely': not reachable from the graph's input",
    ]
    raw = chain()
    raw["nodes"][0]["manualBlockId"] = "gone"
    bad.write_text(json.dumps(raw))
    out = aios("vdag", "check", str(bad), "--blocks", *blocks)
    assert (out.returncode, out.stderr) == (2, f"{bad}: node 'a': block 'gone' not found\n")
    bad.write_text("{not json")
    out = aios("vdag", "check", str(bad))
    assert out.returncode == 2 and len(out.stderr.splitlines()) == 1
    assert "not JSON" in out.stderr
