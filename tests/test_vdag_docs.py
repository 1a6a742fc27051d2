"""docs/writing-a-vdag.md works as written: its blocks, policy, vDAG document and block
document are run with `vdag check` and `vdag up --traffic --once`, and its `ask`
client calls a running controller."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys

from .procs import ROOT

GUIDE = ROOT / "docs" / "writing-a-vdag.md"
BLOCKS = {"clean": "Clean", "words": "Words", "chars": "Chars", "report": "Report"}


def _blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", GUIDE.read_text(), re.S)


def test_the_vdag_guide_runs(tmp_path):
    module, policy, client = _blocks("python")
    vdag, block = (json.loads(b) for b in _blocks("json"))
    (tmp_path / "myvdag.py").write_text(module)
    (tmp_path / "policies" / "tag").mkdir(parents=True)
    (tmp_path / "policies" / "tag" / "function.py").write_text(policy)
    (tmp_path / "text-stats.json").write_text(json.dumps(vdag))
    for block_id, cls in BLOCKS.items():
        doc = dict(block, id=block_id, initSettings={"block": f"myvdag:{cls}"})
        (tmp_path / f"{block_id}.json").write_text(json.dumps(doc))
    env = dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{tmp_path}",
               AIOS_POLICY_PATH=str(tmp_path / "policies"))  # fmt: skip
    commands = [line for line in _blocks("sh")[0].replace("\\\n", " ").splitlines() if line]
    check = commands[0].split()
    out = subprocess.run([sys.executable, "-m", "aios_fast", *check[1:]], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    assert out.returncode == 0, out.stderr
    up = commands[1].split()
    assert up[0] == "AIOS_POLICY_PATH=policies" and up[1] == "aios-fast"
    out = subprocess.run([sys.executable, "-m", "aios_fast", *up[2:]], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=180)  # fmt: skip
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert "100/100 completed" in out.stdout and "agreement 1.000" in out.stdout

    # the client, against a running vDAG
    proc = subprocess.Popen(
        [sys.executable, "-m", "aios_fast", "vdag", "up", "text-stats.json", "--blocks",
         *(f"{b}.json" for b in BLOCKS), "--ports", "auto", "--json"],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        info = json.loads(proc.stdout.readline())
        scope: dict = {}
        exec(client, scope)
        assert scope["ask"](info["controller"], "Hello  World") == {
            "words": 2, "tag": "w@words", "chars": 11}  # fmt: skip
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
