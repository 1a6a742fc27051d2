"""The user's own errors, told as theirs: a Block whose module or ``__init__`` raises
shows its exception and its own frames once (no runpy, asyncio or uvloop frames, none
of ours), then which instances failed; an exception in ``on_data`` is logged by the
instance with the user's traceback the first time and counted after."""

from __future__ import annotations

import os
import subprocess
import sys

import grpc

from .procs import ROOT, frame, start_instance

OUR_FRAMES = ("runpy", "asyncio", "uvloop", f"aios_fast{os.sep}")


def _run(args: list[str], cwd=ROOT, extra_path: str = "") -> subprocess.CompletedProcess:
    path = os.pathsep.join(p for p in (str(ROOT), extra_path) if p)
    env = dict(os.environ, PYTHONPATH=path, PYTHONUNBUFFERED="1")
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=120)  # fmt: skip


def _traceback_of(stderr: str) -> str:
    start = stderr.index("Traceback (most recent call last):")
    return stderr[start:]


def test_a_raising_init_shows_the_users_frames_once_then_which_instances_failed():
    out = _run(["-m", "aios_fast", "block", "up", "--ports", "auto", "--block",
                "tests.blocks:BrokenInitBlock", "--once"])  # fmt: skip
    err = out.stderr
    assert out.returncode == 2, err[-3000:]
    assert err.count("RuntimeError: weights.bin not found") == 1, err
    assert err.count("Traceback (most recent call last):") == 1, err
    shown = _traceback_of(err).split("RuntimeError:")[0]
    assert "_load_weights" in shown and "blocks.py" in shown
    assert not any(ours in shown for ours in OUR_FRAMES), shown
    assert "block tests.blocks:BrokenInitBlock: __init__ failed" in err
    for k in (0, 1):
        assert f"instance echo-block-instance-{k} failed to load its block" in err
    assert err.rstrip().endswith("only 0 of 2 instances started")


def test_a_block_module_raising_at_import_shows_its_frames(tmp_path):
    (tmp_path / "badmodel.py").write_text("import json\n\nraise ValueError('no GPU here')\n")
    out = _run(["-m", "aios_fast.instance", "--block", "badmodel:Model"],
               extra_path=str(tmp_path))  # fmt: skip
    assert out.returncode == 2, out.stderr[-3000:]
    shown = _traceback_of(out.stderr)
    assert "badmodel.py" in shown and "ValueError: no GPU here" in shown
    assert not any(ours in shown for ours in OUR_FRAMES), shown
    assert shown.rstrip().endswith("block badmodel:Model: its module failed to import")


def test_on_data_errors_are_logged_once_with_the_users_frames_then_counted():
    inst = start_instance("tests.blocks:KeyErrorBlock")
    try:
        with grpc.insecure_channel(f"127.0.0.1:{inst.info['port']}") as ch:
            rpc = ch.unary_unary("/InferenceProxy/infer_result")
            for k in range(5):
                try:
                    rpc(frame(seq_no=k), timeout=10)
                    raise AssertionError("on_data raised: the call must fail")
                except grpc.RpcError as exc:
                    assert exc.code() == grpc.StatusCode.INTERNAL
                    assert "KeyError: 'x'" in exc.details()
    finally:
        inst.stop()
    err = inst.p.stderr.read()
    assert err.count("Traceback (most recent call last):") == 1, err
    shown = _traceback_of(err)
    assert "blocks.py" in shown and 'return {}["x"]' in shown
    assert not any(ours in shown.split("KeyError")[0] for ours in OUR_FRAMES), shown
    assert "the block raised KeyError: 'x' 4 more time(s)" in err, err


def test_block_up_shows_on_data_errors():
    out = _run(["-m", "aios_fast", "block", "up", "--ports", "auto", "--block",
                "tests.blocks:KeyErrorBlock", "--traffic", "20", "--once", "--expect",
                "status"])  # fmt: skip
    assert "KeyError: 'x'" in out.stderr and "blocks.py" in out.stderr, out.stderr[-3000:]
    assert out.stderr.count("Traceback (most recent call last):") <= 2  # once per instance
