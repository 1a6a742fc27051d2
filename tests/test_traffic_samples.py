"""``aios-fast block up --traffic`` with a block's own sample tasks
(``Block.traffic_samples`` and ``traffic_min_agreement``): the samples are sent, the
answers compared with their expected fields, the agreement counted and held to the
block's minimum; a malformed hook is a one-line error before anything starts. (The ONNX
example's held-out images: tests/test_onnx_block.py.)"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

from aios_fast.devtools.traffic import traffic_plan
from aios_fast.errors import AiosFastError

from .procs import ROOT

BLOCKS = '''
import json

from aios_fast.block import Block


class Doubler(Block):
    """{"n": k} -> {"n": k, "double": 2k}."""

    inline = True

    def on_data(self, entry):
        n = json.loads(entry.data)["n"]
        return {"n": n, "double": 2 * n}

    @classmethod
    def traffic_samples(cls, parameters):
        # every second expectation is wrong: agreement 0.5
        wrong = parameters.get("wrong", True)
        return [(json.dumps({"n": k}), {"double": 2 * k + (k % 2 if wrong else 0)})
                for k in range(10)]


class HalfRight(Doubler):
    traffic_min_agreement = 0.5  # exactly what it gets: passes


class MostlyRight(Doubler):
    traffic_min_agreement = 0.6


class Unchecked(Doubler):
    @classmethod
    def traffic_samples(cls, parameters):
        return [(json.dumps({"n": k}), None) for k in range(3)]


class Returns(Doubler):
    @classmethod
    def traffic_samples(cls, parameters):
        return parameters["value"]


class Raises(Doubler):
    @classmethod
    def traffic_samples(cls, parameters):
        raise KeyError("no data set here")


class BadFloor(Doubler):
    traffic_min_agreement = 1.5
'''


@pytest.fixture(scope="module")
def blocks(tmp_path_factory):
    where = tmp_path_factory.mktemp("blocks")
    (where / "sampleblocks.py").write_text(BLOCKS)
    sys.path.insert(0, str(where))
    yield where
    sys.path.remove(str(where))
    sys.modules.pop("sampleblocks", None)


def block_up(where, block: str, *extra: str, traffic: int = 100) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{where}", PYTHONUNBUFFERED="1")
    doc = ROOT / "aios_fast" / "examples" / "echo-block.json"
    return subprocess.run(
        [sys.executable, "-m", "aios_fast", "block", "up", str(doc), "--ports", "auto",
         "--block", f"sampleblocks:{block}", "--traffic", str(traffic), "--once", *extra],
        cwd=where, env=env, capture_output=True, text=True, timeout=180,
    )  # fmt: skip


def agreement(out: subprocess.CompletedProcess) -> tuple[float, int, int]:
    found = re.search(r"agreement\s+([\d.]+) \(([\d,]+) of ([\d,]+) answers", out.stdout)
    assert found, out.stdout[-2000:] + out.stderr[-2000:]
    return float(found[1]), int(found[2].replace(",", "")), int(found[3].replace(",", ""))


def test_wrong_expectations_fail_the_traffic_check_with_the_mismatches_counted(blocks):
    out = block_up(blocks, "Doubler")
    assert out.returncode == 1, out.stdout[-2000:] + out.stderr[-2000:]
    assert "the block's 10 samples" in out.stdout
    assert agreement(out) == (0.5, 50, 100)  # tasks cycle through the samples
    assert "below the block's traffic_min_agreement 1" in out.stdout
    assert "errors                      0" in out.stdout  # every call answered OK


def test_the_blocks_minimum_agreement_decides_at_its_limit(blocks):
    out = block_up(blocks, "HalfRight")
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert agreement(out) == (0.5, 50, 100)
    assert "below" not in out.stdout
    out = block_up(blocks, "MostlyRight")
    assert out.returncode == 1 and agreement(out) == (0.5, 50, 100)


def test_expect_status_sends_the_samples_without_comparing_the_answers(blocks):
    out = block_up(blocks, "Doubler", "--expect", "status", traffic=30)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert "statuses checked" in out.stdout and "agreement" not in out.stdout


def test_a_malformed_hook_is_a_one_line_error_before_the_block_starts(blocks):
    out = block_up(blocks, "Raises")
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in out.stderr, out.stderr[-2000:]
    assert "traffic_samples() raised KeyError" in lines[0] and "no data set here" in lines[0]
    assert "is up" not in out.stdout  # nothing was started


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("abc", "must return a non-empty list of (data, expected) pairs"),
        ([], "must return a non-empty list"),
        ({"data": None}, "must return a non-empty list"),
        ([("x",)], "item 0 is ('x',)"),
        ([("x", None), ("a", "b", "c")], "item 1 is"),
        ([(b"bytes", None)], "item 0: data must be a string, not bytes"),
        ([("x", None), ("y", ["class", 1])], "item 1: expected must be None or a dict"),
        ([("x", {1: 2})], "item 0: expected must be None or a dict"),
        ([("x", {"v": float("nan")})], "item 0: expected is not JSON data"),
        ([("x", {"v": object()})], "item 0: expected is not JSON data"),
        ([["x" * 500, {"v": 1}], 7], "item 1 is 7"),
    ],
)
def test_malformed_samples_are_refused_in_one_line(blocks, value, message):
    with pytest.raises(AiosFastError) as caught:
        traffic_plan("sampleblocks:Returns", {"value": value})
    text = str(caught.value)
    assert message in text and "\n" not in text and len(text) < 300, text
    assert text.startswith("block class 'sampleblocks:Returns': ")


def test_plans_without_samples_or_with_unchecked_ones(blocks):
    assert traffic_plan("aios_fast.block:EchoBlock", {}) == (None, 1.0)
    samples, floor = traffic_plan("sampleblocks:Unchecked", {})
    assert samples == [(json.dumps({"n": k}), None) for k in range(3)] and floor == 1.0
    samples, floor = traffic_plan("sampleblocks:HalfRight", {"wrong": False})
    assert samples[3] == ('{"n": 3}', {"double": 6}) and floor == 0.5
    with pytest.raises(AiosFastError, match=r"traffic_min_agreement must be a number in 0\.\.1"):
        traffic_plan("sampleblocks:BadFloor", {})
    with pytest.raises(AiosFastError, match="sampleblocks has no Missing"):
        traffic_plan("sampleblocks:Missing", {})
    with pytest.raises(AiosFastError, match="No module named 'nowhere'"):
        traffic_plan("nowhere:Block", {})


def test_the_guides_traffic_samples_make_its_block_pass_the_traffic_check(tmp_path):
    """docs/writing-a-block.md: UpperBlock with the guide's traffic_samples added, run
    with the guide's document: every answer as expected."""
    guide = (ROOT / "docs" / "writing-a-block.md").read_text()
    block = re.findall(r"```python\n(.*?)```", guide, re.S)[0]
    (hook,) = [b for b in re.findall(r"```py\n(.*?)```", guide, re.S) if "traffic_samples" in b]
    (tmp_path / "myblocks.py").write_text(block + "\n" + hook)
    document = re.findall(r"```json\n(.*?)```", guide, re.S)[0]
    (tmp_path / "upper.json").write_text(document)
    env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
    out = subprocess.run(
        [sys.executable, "-m", "aios_fast", "block", "up", "upper.json", "--ports", "auto",
         "--traffic", "30", "--once"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert agreement(out) == (1.0, 30, 30)
