"""The ``aios-fast`` command end to end, as subprocesses (``python -m aios_fast`` is the
console script's entry point)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

import aios_fast

from .procs import ROOT, Proc, free_port, get_text, mgmt


def aios(*args: str, timeout: float = 120.0) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
    return subprocess.run(
        [sys.executable, "-m", "aios_fast", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture
def block():
    """``aios-fast block up`` on the echo example, every port picked free."""
    proc = Proc(["-m", "aios_fast", "block", "up", "--ports", "auto", "--json"])
    yield proc.info, proc
    proc.stop(60)


def test_block_up_serves_and_is_operable(block):
    info, proc = block
    assert set(info["instances"]) == {"echo-block-instance-0", "echo-block-instance-1"}
    out = aios("send", "--target", info["grpc"], "--data", '{"hello": "world"}', "--count", "3")
    assert out.returncode == 0, out.stderr
    answers = [json.loads(line) for line in out.stdout.splitlines()]
    assert [(a["seq_no"], a["data"]) for a in answers] == [
        (1, '{"hello": "world"}'),
        (2, '{"hello": "world"}'),
        (3, '{"hello": "world"}'),
    ]
    out = aios("send", "--target", info["grpc"], "--method", "infer")
    assert json.loads(out.stdout) == {"seq_no": 1, "accepted": True}

    # no token configured: block up generated one; management refuses callers without
    # it, and this user's `aios-fast mgmt` finds it in the 0600 hand-off file
    mgmt_port = int(info["executor_mgmt"].rsplit(":", 1)[1].split("/")[0])
    assert mgmt(mgmt_port, "get_policy")[0] == 401
    token_file = info["token_file"]
    assert os.stat(token_file).st_mode & 0o777 == 0o600
    token = json.loads(open(token_file).read())["token"]
    status, body = mgmt(mgmt_port, "get_policy", token=token)
    assert status == 200 and body["data"]["policyRuleURI"] == "builtin:least_outstanding"
    out = aios("mgmt", info["executor_mgmt"], "list_instances")
    assert out.returncode == 0 and len(json.loads(out.stdout)["data"]) == 2
    assert aios("mgmt", info["executor_mgmt"], "no_such_action").returncode == 1
    for key in ("health_checker_mgmt", "autoscaler_mgmt"):
        out = aios("mgmt", info[key], "status")
        assert out.returncode == 0 and json.loads(out.stdout)["success"] is True, out.stderr
    # every URL it announced works with no flags: the instances' management and gRPC too
    for instance in info["instances"].values():
        mgmt_url = instance["health"].removesuffix("/health")
        out = aios("mgmt", mgmt_url, "update_parameters", "{}")
        assert out.returncode == 0 and json.loads(out.stdout)["success"] is True, out.stderr
        out = aios("send", "--target", instance["grpc"], "--data", '"direct"')
        assert out.returncode == 0 and json.loads(out.stdout)["data"] == '"direct"', out
    deadline = time.monotonic() + 10  # the infer task's result arrives after its answer
    while 'aios_executor_tasks_total{event="completed"} 4.0' not in get_text(info["metrics"]):
        assert time.monotonic() < deadline  # 3 results + 1 infer
        time.sleep(0.05)

    out = aios(
        "bench",
        "--target",
        info["grpc"],
        "--tasks",
        "400",
        "--check",
        "--concurrency",
        "16",
        "--json",
    )
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout.splitlines()[-1])
    assert summary["completed"] == 400 and summary["wrong"] == 0 and not summary["errors"]
    assert "tasks/s" in out.stdout and "tasks," in out.stderr  # table and progress line

    proc.signal(signal.SIGTERM)
    assert proc.p.wait(60) == 0
    assert "stopped" in proc.p.stdout.read()
    assert not os.path.exists(token_file)  # handed back when the block stops


def test_block_up_with_traffic_once_exits_with_the_figures():
    out = aios("block", "up", "--ports", "auto", "--traffic", "500", "--once", timeout=180)
    assert out.returncode == 0, out.stderr
    assert (
        "block echo-block is up" in out.stdout and "completed                   500" in out.stdout
    )
    assert "wrong answers               0" in out.stdout and out.stdout.rstrip().endswith("stopped")


def test_block_up_refuses_bad_documents(tmp_path):
    cases = {
        "missing.json": (None, "cannot read the block document"),
        "nojson.json": ("{", "block document"),
        "noid.json": ({"policies": {}}, "missing required field 'id'"),
        "bounds.json": ({"id": "b", "minInstances": 3, "maxInstances": 2}, "minInstances"),
        "class.json": (
            {"id": "b", "initSettings": {"block": "aios_fast.block:Nope"}},
            "has no Nope",
        ),
        "ports.json": (
            {"id": "b", "initSettings": {"ports": {"grcp": 1}}},
            "initSettings.ports.grcp: unknown setting (did you mean 'grpc'?)",
        ),
        "typo.json": (
            {"id": "b", "initSettings": {"prots": {}}},
            "initSettings.prots: unknown setting (did you mean 'ports'?)",
        ),
        "bound.json": (
            {"id": "b", "initSettings": {"workers": 0}},
            "initSettings.workers: expected int >= 1, not 0",
        ),
    }
    for name, (content, message) in cases.items():
        path = tmp_path / name
        if content is not None:
            path.write_text(content if isinstance(content, str) else json.dumps(content))
        out = aios("block", "up", str(path), "--ports", "auto", "--once")
        assert out.returncode == 2 and message in out.stderr, (name, out.stderr)


def test_block_up_reports_a_policy_that_cannot_load(tmp_path):
    doc = {"id": "b", "policies": {"loadBalancer": {"policyRuleURI": "no.such.policy:v1"}}}
    path = tmp_path / "block.json"
    path.write_text(json.dumps(doc))
    out = aios("block", "up", str(path), "--ports", "auto", "--once")
    assert out.returncode == 2 and "the executor failed to start" in out.stderr
    assert "no.such.policy" in out.stderr


def test_registry_serve(tmp_path):
    port = free_port()
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "aios_fast",
            "registry",
            "serve",
            "--port",
            str(port),
            "--db",
            str(tmp_path / "r.sqlite3"),
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert f"registry on http://127.0.0.1:{port}" in proc.stdout.readline()
        deadline = time.monotonic() + 10
        while True:
            try:
                assert json.loads(get_text(f"http://127.0.0.1:{port}/health"))
                break
            except OSError:
                assert time.monotonic() < deadline
                time.sleep(0.1)
    finally:
        proc.terminate()
        proc.wait(15)


def test_block_up_stops_everything_when_the_executor_dies():
    proc = Proc(["-m", "aios_fast", "block", "up", "--ports", "auto", "--json"])
    try:
        info = proc.info
        os.kill(info["executor_pid"], signal.SIGKILL)
        assert proc.p.wait(60) == 1  # noticed, everything stopped, failure reported
        assert "the executor exited" in proc.p.stderr.read()
        for instance in info["instances"].values():
            deadline = time.monotonic() + 10
            while True:  # the instance processes are gone (reaped by block up)
                try:
                    os.kill(instance["pid"], 0)
                except ProcessLookupError:
                    break
                assert time.monotonic() < deadline, instance
                time.sleep(0.1)
    finally:
        proc.stop()


def test_block_up_with_two_executor_workers():
    out = aios("block", "up", "--ports", "auto", "--workers", "2", "--traffic", "300", "--once",
               timeout=180)  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "completed                   300" in out.stdout


def test_health_checker_runs_alone():
    """``python -m aios_fast.sidecars.healthcheck`` against an executor's management port."""
    from .procs import start_executor, start_instance

    instance = start_instance()
    executor, _ = start_executor({"i0": instance.info})
    checker = Proc(["-m", "aios_fast.sidecars.healthcheck", "--executor",
                    f"http://127.0.0.1:{executor.info['mgmt_port']}", "--port", "0",
                    "--interval", "0.2"])  # fmt: skip
    try:
        deadline = time.monotonic() + 15
        while True:
            status, body = mgmt(checker.info["mgmt_port"], "health")
            if status == 200 and body["data"].get("i0", {}).get("checked_at"):
                break
            assert time.monotonic() < deadline, body
            time.sleep(0.1)
        assert body["data"]["i0"]["healthy"] is True and body["data"]["i0"]["error"] is None
    finally:
        checker.stop()
        executor.stop()
        instance.stop()


def test_block_up_says_when_a_port_is_taken(tmp_path):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        doc = {
            "id": "b",
            "initSettings": {
                "ports": {
                    "grpc": 0,
                    "metrics": 0,
                    "mgmt": 0,
                    "autoscaler": 0,
                    "healthChecker": port,
                }
            },
        }
        path = tmp_path / "block.json"
        path.write_text(json.dumps(doc))
        out = aios("block", "up", str(path), "--once")
        assert out.returncode == 2 and "address already in use" in out.stderr, out.stderr
        assert "Traceback" not in out.stderr


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie is gone
    except FileNotFoundError:
        return False


def test_a_killed_block_up_leaves_no_process_behind():
    """SIGKILL on ``block up`` (no chance to stop anything): its executor, the
    executor's workers and the instances go with it (PR_SET_PDEATHSIG)."""
    proc = Proc(["-m", "aios_fast", "block", "up", "--ports", "auto", "--json",
                 "--workers", "2"])  # fmt: skip
    info = proc.info
    pids = [info["executor_pid"], *(i["pid"] for i in info["instances"].values())]
    with open(f"/proc/{info['executor_pid']}/task/{info['executor_pid']}/children") as f:
        pids += [int(p) for p in f.read().split()]  # the executor's workers
    assert len(pids) == 5 and all(_alive(pid) for pid in pids)
    proc.p.kill()
    proc.p.wait()
    deadline = time.monotonic() + 30
    while any(_alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert [pid for pid in pids if _alive(pid)] == []


def test_a_child_whose_parent_is_already_gone_exits():
    """The parent died between fork and the child's start (the child-side PDEATHSIG
    race): the instance sees a parent other than the one named and exits at once."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), AIOS_FAST_PARENT_PID="1")
    out = subprocess.run([sys.executable, "-m", "aios_fast.instance", "--port", "0"],
                         cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=60)  # fmt: skip
    assert out.returncode == 1 and out.stderr.strip() == "parent process is gone; exiting"


def test_help_shows_the_defaults():
    for args in (["send", "--help"], ["block", "up", "--help"], ["bench", "--help"]):
        out = aios(*args)
        assert out.returncode == 0 and "(default: " in out.stdout, (args, out.stdout[-500:])
        text = " ".join(out.stdout.split())  # argparse wraps lines
        assert "(default: None)" not in text and "(default: )" not in text, text
        assert "for the address) (default" not in text, text  # --token's default, twice
    out = aios("--help")
    assert out.returncode == 0 and "``" not in out.stdout  # no RST markup
    out = aios("--version")
    assert out.returncode == 0 and out.stdout.strip() == f"aios-fast {aios_fast.__version__}"
    for module in ("aios_fast.executor", "aios_fast.instance", "aios_fast.sidecars.healthcheck"):
        out = subprocess.run([sys.executable, "-m", module, "--help"], cwd=ROOT,
                             capture_output=True, text=True, timeout=60)  # fmt: skip
        assert out.returncode == 0 and f"usage: python -m {module}" in out.stdout
        assert "(default: " in out.stdout


def test_a_block_in_the_working_directory_is_found(tmp_path):
    (tmp_path / "myblocks.py").write_text(
        "from aios_fast.block import Block\n\n"
        "class UpperBlock(Block):\n"
        "    inline = True\n\n"
        "    def on_data(self, entry):\n"
        "        return entry.data.upper()\n"
    )
    script = tmp_path / "bin" / "aios-fast"  # as the console script: sys.path[0] is bin/
    script.parent.mkdir()
    script.write_text("from aios_fast.cli import main\nraise SystemExit(main())\n")
    env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
    out = subprocess.run(
        [sys.executable, str(script), "block", "up", "--ports", "auto", "--block",
         "myblocks:UpperBlock", "--json", "--once", "--traffic", "0"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]


def test_a_block_printing_to_stdout_does_not_break_start_up():
    out = aios("block", "up", "--ports", "auto", "--block", "tests.blocks:ChattyBlock",
               "--traffic", "50", "--once")  # fmt: skip
    assert out.returncode == 0, out.stdout[-1500:] + out.stderr[-1500:]
    assert "loading the model" in out.stderr  # the block's prints go to stderr


@pytest.mark.parametrize("delay", [0.5, 1.5])
def test_ctrl_c_during_block_up_is_a_clean_stop(delay):
    """Ctrl-C (SIGINT to the terminal's process group) while block up starts or
    serves: it stops everything in order, with no traceback from it or its children."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-m", "aios_fast", "block", "up", "--ports",
                             "auto"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)  # fmt: skip
    time.sleep(delay)
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=90)
    assert proc.returncode in (0, 130), err[-2000:]
    assert "Traceback" not in err, err[-3000:]


def _one_line_failure(args: list[str], cwd=ROOT) -> str:
    env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
    out = subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True,
                         text=True, timeout=60)  # fmt: skip
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert out.returncode == 2, (args, out.returncode, out.stderr[-1500:])
    assert "Traceback" not in out.stderr, (args, out.stderr[-3000:])
    return lines[-1] if lines else ""


def test_user_errors_are_one_line(tmp_path):
    """Bad input to every command: exit 2, one line saying what is wrong, no traceback
    (argparse's own errors end with a usage line and the error; that counts too)."""
    taken = free_port()
    import socket

    holder = socket.socket()
    holder.bind(("127.0.0.1", taken))
    holder.listen()
    bad_json = tmp_path / "bad.json"
    bad_json.write_text("{nope")
    cases = [
        (["-m", "aios_fast", "bench", "--tasks", "-5", "--target", "127.0.0.1:1"], ">= 0"),
        (["-m", "aios_fast", "bench", "--concurrency", "0", "--target", "127.0.0.1:1"], ">= 1"),
        (
            ["-m", "aios_fast", "send", "--frame-ptr", "notjson", "--target", "127.0.0.1:1"],
            "--frame-ptr is not JSON",
        ),
        (["-m", "aios_fast", "mgmt", "http://127.0.0.1:1", "stats", "{nope"], "DATA is not JSON"),
        (
            ["-m", "aios_fast", "mgmt", f"http://127.0.0.1:{free_port()}", "stats"],
            "no management answer",
        ),
        (
            ["-m", "aios_fast.executor", "--instance", "garbage", "--workers", "1"],
            "--instance wants",
        ),
        (
            ["-m", "aios_fast.executor", "--block-doc", str(tmp_path / "missing.json")],
            "cannot read the block document",
        ),
        (["-m", "aios_fast.executor", "--block-doc", str(bad_json)], "is not JSON"),
        (["-m", "aios_fast.executor", "--policy-parameters", "[1]"], "must be a JSON object"),
        (
            ["-m", "aios_fast.executor", "--workers", "1", "--port", "0", "--link", "bogus"],
            "link must be auto, native, tcp or grpc, not 'bogus'",
        ),
        (["-m", "aios_fast.instance", "--parameters", "{nope"], "--parameters is not JSON"),
        (["-m", "aios_fast.instance", "--block", "nosuch:Class"], "no module named 'nosuch'"),
        (["-m", "aios_fast.instance", "--port", str(taken)], "cannot start"),
        (
            ["-m", "aios_fast.sidecars.healthcheck", "--block", str(tmp_path / "missing.json")],
            "No such file",
        ),
        (["-m", "aios_fast.sidecars.healthcheck", "--port", str(taken)], "cannot start"),
        (["-m", "aios_fast", "mgmt", "notaurl", "list_instances"], "is not a management URL"),
        (["-m", "aios_fast", "block", "up", "--traffic", "-5"], "must be >= 0, not -5"),
        (["-m", "aios_fast", "block", "up", "--workers", "0"], "must be >= 1, not 0"),
        (["-m", "aios_fast", "send", "--timeout", "0"], "must be > 0, not 0"),
        (["-m", "aios_fast", "bench", "--duration", "-1"], "must be >= 0, not -1"),
        (["-m", "aios_fast", "bench", "--size", "-1"], "must be >= 0, not -1"),
    ]
    try:
        for args, expected in cases:
            assert expected in _one_line_failure(args), args
    finally:
        holder.close()


def test_block_up_traffic_through_another_block_checks_statuses():
    """--traffic through a block that is not the echo block counts OK answers, not
    'wrong' ones (its outputs are its own)."""
    out = aios("block", "up", "--ports", "auto", "--block", "aios_fast.block:HashBlock",
               "--traffic", "100", "--once")  # fmt: skip
    assert out.returncode == 0, out.stdout[-1500:] + out.stderr[-1500:]
    assert "statuses checked" in out.stdout


def test_a_second_executor_cannot_share_a_served_port():
    """Workers share their port with SO_REUSEPORT; a second executor on the same port
    would silently take half the connections: it is refused instead."""
    port = free_port()
    first = Proc(["-m", "aios_fast.executor", "--port", str(port), "--workers", "2",
                  "--mgmt-port", "0", "--metrics-port", "0"])  # fmt: skip
    try:
        line = _one_line_failure(["-m", "aios_fast.executor", "--port", str(port), "--workers",
                                  "2", "--mgmt-port", "0", "--metrics-port", "0"])  # fmt: skip
        assert f"cannot listen on 127.0.0.1:{port}" in line and "another executor" in line
    finally:
        first.stop()


def test_ctrl_c_during_bench_prints_the_partial_summary():
    instance = Proc(["-m", "aios_fast.instance", "--port", "0"])
    executor = Proc(["-m", "aios_fast.executor", "--port", str(free_port()), "--workers", "1",
                     "--mgmt-port", "-1", "--metrics-port", "-1", "--instance",
                     f"i=127.0.0.1:{instance.info['port']}"])  # fmt: skip
    env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
    try:
        bench = subprocess.Popen(
            [sys.executable, "-m", "aios_fast", "bench", "--target",
             f"127.0.0.1:{executor.info['port']}", "--duration", "60", "--procs", "1"],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            start_new_session=True,
        )  # fmt: skip
        time.sleep(4)
        os.killpg(bench.pid, signal.SIGINT)  # as the terminal's Ctrl-C does
        out, err = bench.communicate(timeout=60)
    finally:
        executor.stop()
        instance.stop()
    assert bench.returncode == 130, err[-2000:]
    assert "interrupted" in out and "tasks/s" in out, out
    assert "Traceback" not in err, err[-3000:]
