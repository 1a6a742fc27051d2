"""Starting and stopping said as they happen: an instance answers /health "loading"
while its Block loads (and logs a loading line), a stop says what it waits for, and a
second Ctrl-C stops everything at once, leaving no process behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import grpc

from .procs import ROOT, Proc, frame, free_port, http

ENV = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:  # a zombie is gone too
        return f.read().split(") ")[-1][0] != "Z"


def test_health_answers_loading_while_the_block_loads(tmp_path):
    gate = tmp_path / "loaded"
    port = free_port()
    inst = Proc(["-m", "aios_fast.instance", "--block", "tests.blocks:SlowInitBlock",
                 "--mgmt-port", str(port), "--init-data",
                 json.dumps({"gate": str(gate), "seconds": 120})], announce=False)  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                answer = http(f"http://127.0.0.1:{port}/health", timeout=2)
                break
            except OSError:  # not bound yet: the process is still starting Python
                assert time.monotonic() < deadline
                time.sleep(0.05)
        assert answer == (503, {"healthy": False, "status": "loading"})
        gate.touch()
        info = json.loads(inst.p.stdout.readline())
        assert info["mgmt_port"] == port
        assert http(f"http://127.0.0.1:{port}/health") == (200, {"healthy": True})
    finally:
        inst.stop()
    err = inst.p.stderr.read()
    assert "loading block tests.blocks:SlowInitBlock" in err and "loaded in" in err


def test_a_second_ctrl_c_stops_at_once_and_leaves_nothing(tmp_path):
    doc = json.loads((ROOT / "aios_fast" / "examples" / "echo-block.json").read_text())
    doc["initSettings"]["block"] = "tests.blocks:SleepBlock"
    doc["parameters"] = {"delay": 120}
    path = tmp_path / "slow.json"
    path.write_text(json.dumps(doc))
    proc = subprocess.Popen(
        [sys.executable, "-m", "aios_fast", "block", "up", str(path), "--ports", "auto",
         "--json"], cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, start_new_session=True,
    )  # fmt: skip
    info = json.loads(proc.stdout.readline())
    pids = [info["executor_pid"], *(i["pid"] for i in info["instances"].values())]

    def call() -> None:  # a task the first Ctrl-C's drain would wait 120 s for
        with grpc.insecure_channel(info["grpc"]) as ch:
            try:
                ch.unary_unary("/InferenceProxy/infer_result")(frame(), timeout=200)
            except grpc.RpcError:
                pass

    threading.Thread(target=call, daemon=True).start()
    time.sleep(1.0)  # the task reaches an instance
    os.killpg(proc.pid, signal.SIGINT)
    deadline = time.monotonic() + 30
    err = ""
    while "Ctrl-C again stops at once" not in err:
        assert time.monotonic() < deadline, err[-2000:]
        err += proc.stderr.readline()
    os.killpg(proc.pid, signal.SIGINT)
    err += proc.stderr.read()
    assert proc.wait(60) == 130, err[-3000:]
    assert "stopped at once" in err and "Traceback" not in err, err[-3000:]
    deadline = time.monotonic() + 10
    while any(_alive(pid) for pid in pids):  # SIGKILLed: reaped by init
        assert time.monotonic() < deadline, [p for p in pids if _alive(p)]
        time.sleep(0.1)
    assert not os.path.exists(info["token_file"])


def test_the_next_start_prunes_what_a_kill_9_left(tmp_path):
    """A ``kill -9``'d block up leaves its token file and its temporary document; the
    next block up removes both (named by the dead pid), and nothing of a live one."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    run_dir, tmp_dir = tmp_path / "run", tmp_path / "tmp"
    run_dir.mkdir(mode=0o700)
    tmp_dir.mkdir()
    stale_token = run_dir / f"block-{dead.pid}.json"
    stale_token.write_text(json.dumps({"pid": dead.pid, "token": "t", "endpoints": []}))
    stale_doc = tmp_dir / f"aios-block-echo-block-x1y2z3-{dead.pid}.json"
    stale_doc.write_text("{}")
    live_doc = tmp_dir / f"aios-block-echo-block-a1b2c3-{os.getpid()}.json"
    live_doc.write_text("{}")
    env = dict(ENV, AIOS_FAST_RUNTIME_DIR=str(run_dir), TMPDIR=str(tmp_dir))
    out = subprocess.run([sys.executable, "-m", "aios_fast", "block", "up", "--ports", "auto",
                          "--once"], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=120)  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    assert not stale_token.exists() and not stale_doc.exists()
    assert live_doc.exists()
    assert list(run_dir.iterdir()) == []  # its own, removed at its stop
