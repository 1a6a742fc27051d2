"""``block up``'s stdout is its own: the ``--json`` line first, whatever the Block's
module prints at import (in ``block up``'s own process too) goes to stderr; a reader
that closes the pipe after the first line (``| head -1``) is not an error."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

from .procs import ROOT

ENV = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")


def test_a_block_printing_at_import_leaves_the_json_line_first():
    out = subprocess.run(
        [sys.executable, "-m", "aios_fast", "block", "up", "--ports", "auto", "--block",
         "tests.loud_blocks:LoudBlock", "--json", "--once", "--traffic", "20"],
        cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    first = out.stdout.splitlines()[0]
    assert json.loads(first)["block"] == "echo-block", out.stdout[:500]
    assert "loading weights" not in out.stdout and "LoudBlock:" not in out.stdout
    assert "loading weights... done" in out.stderr and "LoudBlock: a task" in out.stderr


def test_a_printing_policy_leaves_the_json_line_first(tmp_path):
    doc = json.loads((ROOT / "aios_fast" / "examples" / "echo-block.json").read_text())
    doc["policies"]["stabilityChecker"] = {"policyRuleURI": "tests.policies.loud_policy",
                                           "parameters": {}, "settings": {}}  # fmt: skip
    (tmp_path / "loud.json").write_text(json.dumps(doc))
    out = subprocess.run(
        [sys.executable, "-m", "aios_fast", "block", "up", str(tmp_path / "loud.json"),
         "--ports", "auto", "--json", "--once", "--traffic", "20"],
        cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    assert json.loads(out.stdout.splitlines()[0])["block"] == "echo-block"
    assert "loud policy" not in out.stdout and "loud policy: created" in out.stderr


def test_a_closed_stdout_is_not_an_error():
    """``block up --json | head -1``, then Ctrl-C: a clean stop, no Broken pipe, no
    unclosed connections."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "aios_fast", "block", "up", "--ports", "auto", "--json"],
        cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    )  # fmt: skip
    json.loads(proc.stdout.readline())
    proc.stdout.close()  # as head -1 does once it has its line
    os.killpg(proc.pid, signal.SIGINT)
    err = proc.stderr.read()
    assert proc.wait(90) in (0, 130), err[-3000:]
    for sign in ("Broken pipe", "Unclosed", "Traceback"):
        assert sign not in err, err[-3000:]
