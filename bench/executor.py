"""Executor load benchmark: tasks/s and latency through aios_fast's executor against,
in the same run, the echo instance served directly (the Python gRPC ceiling here) and a
naive grpc.aio + protobuf proxy.

    python -m bench.executor [--duration 5] [--connections 4] [--streams 32] [--write]

Load comes from h2load (Debian's nghttp2-client; C, speaks HTTP/2 with gRPC framing)
sending infer_result calls with the small benchmark packet; every process runs on this
machine. Before each run a Python call checks the target answers correctly.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from aios_fast import codec

from . import payloads
from ._timing import progress, replace_section

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from tests.procs import Proc, free_port, start_executor, start_instance, wait_serving  # noqa: E402


def grpc_body(message: bytes) -> bytes:
    return b"\x00" + len(message).to_bytes(4, "big") + message


def h2load(port: int, body: Path, duration: float, conns: int, streams: int) -> dict:
    log = Path(tempfile.mkstemp(suffix=".log")[1])
    cmd = [
        "h2load", "-D", str(int(duration)), "--warm-up-time", "1", "-c", str(conns),
        "-m", str(streams), "-t", "1", "-d", str(body),
        "-H", "content-type: application/grpc", "-H", "te: trailers",
        "--log-file", str(log), f"http://127.0.0.1:{port}/InferenceProxy/infer_result",
    ]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 60)
    if out.returncode != 0:
        raise RuntimeError(out.stderr or out.stdout)
    lat = []
    codes = {}
    for line in log.read_text().splitlines():
        parts = line.split("\t")
        if len(parts) >= 3:
            codes[parts[1]] = codes.get(parts[1], 0) + 1
            lat.append(int(parts[2]))
    log.unlink()
    lat.sort()
    return {
        "tasks_s": len(lat) / duration,
        "p50_ms": lat[len(lat) // 2] / 1000 if lat else float("nan"),
        "p99_ms": lat[int(len(lat) * 0.99)] / 1000 if lat else float("nan"),
        "codes": codes,
    }


def check(port: int) -> None:
    import grpc

    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        out = ch.unary_unary("/InferenceProxy/infer_result")(payloads.small_message(), timeout=5)
    assert codec.decode_message(out).session_id == "session-0000123", "wrong answer"


def run(opts) -> list[dict]:
    if shutil.which("h2load") is None:
        raise SystemExit("h2load not found: apt-get install nghttp2-client")
    body = Path(tempfile.mkstemp(suffix=".bin")[1])
    body.write_bytes(grpc_body(payloads.small_message()))
    rows = []
    instance = start_instance()
    iport = instance.info["port"]
    try:
        targets = [("echo instance, direct", lambda: (None, iport))]

        def naive():
            proc = Proc(["-m", "bench.naive_proxy", "--instance", f"127.0.0.1:{iport}"])
            wait_serving(proc.info["port"])
            return proc, proc.info["port"]

        targets.append(("naive grpc.aio + protobuf proxy", naive))
        for workers in sorted({1, 2, os.cpu_count() or 1}):
            targets.append(
                (f"aios_fast executor, {workers} worker(s)",
                 lambda w=workers: start_executor({"i0": iport}, port=free_port(), workers=w))
            )  # fmt: skip
        for name, start in targets:
            progress(f"executor bench: {name} ...")
            proc, port = start()
            try:
                check(port)
                rows.append(
                    {
                        "target": name,
                        **h2load(port, body, opts.duration, opts.connections, opts.streams),
                    }
                )
            finally:
                if proc is not None:
                    proc.stop()
    finally:
        instance.stop()
        body.unlink()
    return rows


def render(rows: list[dict], opts) -> str:
    direct = rows[0]["tasks_s"]
    naive = rows[1]["tasks_s"]
    lines = [
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}. h2load, {opts.connections} connections x "
        f"{opts.streams} streams, {opts.duration:g} s after 1 s warm-up; one echo instance; "
        "client, proxy and instance share the machine.",
        "",
        "| target | tasks/s | p50 | p99 | vs direct | vs naive proxy |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['target']} | {r['tasks_s']:,.0f} | {r['p50_ms']:.2f} ms | "
            f"{r['p99_ms']:.2f} ms | {r['tasks_s'] / direct:.0%} | {r['tasks_s'] / naive:.2f}x |"
        )
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=5)
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--streams", type=int, default=32)
    parser.add_argument("--write", action="store_true")
    opts = parser.parse_args(argv)
    table = render(run(opts), opts)
    print(table)
    if opts.write:
        replace_section("Executor load", "Command: `python -m bench.executor --write`\n\n" + table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
