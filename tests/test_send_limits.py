"""``aios-fast send`` and message limits: it takes a 10 MB answer from a block whose
``maxMessageBytes`` allows it, and every RESOURCE_EXHAUSTED it prints names the setting
to raise (its own ``--max-message`` or the block's ``initSettings.maxMessageBytes``)."""

from __future__ import annotations

import json

import pytest

from .procs import ROOT, Proc
from .test_cli import aios

MiB = 1024 * 1024
EXAMPLE = ROOT / "aios_fast" / "examples" / "echo-block.json"


@pytest.fixture(scope="module")
def big_block(tmp_path_factory):
    doc = json.loads(EXAMPLE.read_text())
    doc["initSettings"]["maxMessageBytes"] = 16 * MiB
    doc["minInstances"] = 1
    path = tmp_path_factory.mktemp("send") / "big.json"
    path.write_text(json.dumps(doc))
    proc = Proc(["-m", "aios_fast", "block", "up", str(path), "--ports", "auto", "--json"])
    yield proc.info, path.parent
    proc.stop(60)


def _send(target: str, data_file, *extra: str) -> dict:
    out = aios("send", "--target", target, "--data", f"@{data_file}", *extra)
    return json.loads(out.stdout)


def test_send_takes_a_10_mb_answer(big_block):
    info, tmp = big_block
    data = json.dumps("x" * (10 * MiB))
    (tmp / "ten.json").write_text(data)
    answer = _send(info["grpc"], tmp / "ten.json")
    assert answer.get("data") == data, {k: str(v)[:200] for k, v in answer.items()}


def test_messages_over_a_limit_name_the_setting(big_block):
    info, tmp = big_block
    (tmp / "ten.json").write_text(json.dumps("x" * (10 * MiB)))
    (tmp / "twenty.json").write_text(json.dumps("x" * (20 * MiB)))
    own = _send(info["grpc"], tmp / "ten.json", "--max-message", str(4 * MiB))
    assert own["error"] == "RESOURCE_EXHAUSTED" and "raise --max-message" in own["details"]
    instance = info["instances"]["echo-block-instance-0"]["grpc"]
    for target in (info["grpc"], instance):  # the executor's limit, the instance's
        over = _send(target, tmp / "twenty.json")
        assert over["error"] == "RESOURCE_EXHAUSTED", over
        assert "initSettings.maxMessageBytes" in over["details"], over
