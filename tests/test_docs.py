"""The guides' code works as written: docs/writing-a-block.md's Block, its block
document and its pytest example are run as they stand in the guide."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

from .procs import ROOT

GUIDE = ROOT / "docs" / "writing-a-block.md"


def _blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", GUIDE.read_text(), re.S)


def test_the_block_guide_runs(tmp_path):
    block, test = _blocks("python")
    document = json.loads(_blocks("json")[0])
    assert document["initSettings"]["block"] == "myblocks:UpperBlock"
    (tmp_path / "myblocks.py").write_text(block)
    (tmp_path / "upper.json").write_text(json.dumps(document))
    (tmp_path / "test_upper.py").write_text(test)
    env = dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{tmp_path}")
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_upper.py"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    # the document runs with block up, from the folder holding the block
    out = subprocess.run(
        [sys.executable, "-m", "aios_fast", "block", "up", "upper.json", "--ports", "auto",
         "--json", "--once"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    assert len(json.loads(out.stdout.splitlines()[0])["instances"]) == 2
