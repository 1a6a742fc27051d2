"""Real processes for the data-plane tests: instances and executors on 127.0.0.1."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import grpc

from aios_fast import codec

ROOT = Path(__file__).resolve().parent.parent
# AIOS_FAST_TEST_FRONT=native runs every executor the tests start with --front native
# AIOS_FAST_TEST_LINK=grpc|native|tcp: the executors' instance links (default: auto)
LINK_ARGS = (
    ("--link", os.environ["AIOS_FAST_TEST_LINK"]) if os.environ.get("AIOS_FAST_TEST_LINK") else ()
)
FRONT_ARGS = ("--front", os.environ["AIOS_FAST_TEST_FRONT"]) if os.environ.get(
    "AIOS_FAST_TEST_FRONT") else ()  # fmt: skip


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Proc:
    """``python <args>`` in this checkout (``root``: another one, e.g. a benchmark's
    base revision), reading the JSON line it announces itself with."""

    def __init__(self, args: list[str], announce: bool = True, root: Path = ROOT) -> None:
        env = dict(os.environ, PYTHONPATH=str(root), PYTHONUNBUFFERED="1")
        self.p = subprocess.Popen(
            [sys.executable, *args], cwd=root, env=env, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        self.info = json.loads(self._line()) if announce else {}

    def _line(self) -> str:
        line = self.p.stdout.readline()
        if not line:
            raise RuntimeError(f"process failed to start: {self.p.stderr.read()[-2000:]}")
        return line

    def signal(self, sig=signal.SIGTERM) -> None:
        if self.p.poll() is None:
            self.p.send_signal(sig)

    def stop(self, timeout: float = 15.0) -> int:
        self.signal(signal.SIGTERM)
        try:
            return self.p.wait(timeout)
        except subprocess.TimeoutExpired:
            self.p.kill()
            return self.p.wait()


def start_instance(block: str = "aios_fast.block:EchoBlock", parameters: dict | None = None,
                   *extra: str):  # fmt: skip
    return Proc(["-m", "aios_fast.instance", "--block", block,
                 "--parameters", json.dumps(parameters or {}), *extra])  # fmt: skip


def start_executor(instances: dict[str, int | dict], *extra: str, port: int | None = None,
                   workers: int = 1, token: str | None = None) -> tuple[Proc, int]:  # fmt: skip
    """An executor process serving the instances; a free port is picked (again, if another
    process took it between the pick and the bind) unless ``port`` is given."""
    for attempt in range(3):  # a picked port may be taken before the executor binds it
        chosen = port or free_port()
        args = ["-m", "aios_fast.executor", "--port", str(chosen), "--workers", str(workers),
                "--mgmt-port", "0", "--metrics-port", "0", *FRONT_ARGS, *LINK_ARGS]  # fmt: skip
        for iid, where in instances.items():  # a gRPC port, or an instance's info
            if isinstance(where, dict):
                where = f"{where['port']}@127.0.0.1:{where['mgmt_port']}"
            args += ["--instance", f"{iid}=127.0.0.1:{where}"]
        try:
            proc = Proc([*args, *extra])
        except RuntimeError as exc:
            if port is None and "in use" in str(exc) and attempt < 2:
                continue
            raise
        try:
            if instances:  # (it announced its ports once serving: nothing else to wait for)
                wait_serving(chosen, token=token)
        except BaseException:
            proc.stop()
            raise
        return proc, chosen
    raise RuntimeError("no free port could be bound in 3 tries")


def frame(session_id: str = "s", seq_no: int = 1, data: str = "{}", **kw) -> bytes:
    return codec.encode_message(
        codec.Packet(session_id=session_id, seq_no=seq_no, data=data, ts=time.time(), **kw)
    )


def wait_serving(port: int, timeout: float = 20.0, token: str | None = None) -> None:
    """Until the executor answers for an instance (its link is up), or fail. The probe is
    ``infer``, answered at acceptance, so slow test blocks do not slow it down."""
    end = time.monotonic() + timeout
    last = None
    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        call = ch.unary_unary("/InferenceProxy/infer")
        while time.monotonic() < end:
            try:
                metadata = (("authorization", f"Bearer {token}"),) if token else None
                call(frame("probe"), timeout=2, metadata=metadata)
                return
            except grpc.RpcError as exc:
                if exc.code() not in (grpc.StatusCode.UNAVAILABLE,
                                      grpc.StatusCode.DEADLINE_EXCEEDED):  # fmt: skip
                    return  # an answer from the block: the path is up
                last = exc
                time.sleep(0.1)
    raise TimeoutError(f"executor on {port} not serving: {last}")


def http(url: str, body: dict | bytes | None = None, timeout: float = 10.0,
         token: str | None = None) -> tuple[int, dict]:  # fmt: skip
    """POST ``body`` (JSON-encoded unless bytes) or GET when None; (status, JSON reply)."""
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(url, data=data, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def get_text(url: str, timeout: float = 10.0) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return resp.read().decode()


def mgmt(port: int, action: str, data: dict | None = None,
         token: str | None = None) -> tuple[int, dict]:  # fmt: skip
    """POST /mgmt {"mgmt_action", "mgmt_data"} on 127.0.0.1:port."""
    body = {"mgmt_action": action, "mgmt_data": data or {}}
    return http(f"http://127.0.0.1:{port}/mgmt", body, token=token)


def wait_stats(mgmt_port: int, ready, timeout: float = 20.0) -> None:
    """Until the executor's books (``mgmt stats``) satisfy ``ready(tasks, inflight)``."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        data = mgmt(mgmt_port, "stats")[1]["data"]
        if ready(data["tasks"], data["inflight"]):
            return
        time.sleep(0.05)
    raise TimeoutError("the executor's books never got there")
