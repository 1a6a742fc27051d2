"""The main job until ``aios-fast block up`` lands: a local block serving real traffic.

Starts N echo-block instances and an executor as separate processes on 127.0.0.1, sends
traffic through the executor's gRPC API (``infer`` as the seeds' client does, and
``infer_result`` with results checked), prints progress and a summary, and stops
everything. ``python -m aios_fast.demo [--instances 2] [--tasks 5000] [--block mod:Class]``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time

import grpc

from . import codec


def _spawn(args: list[str]) -> tuple[subprocess.Popen, dict]:
    proc = subprocess.Popen([sys.executable, *args], stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    if not line:
        raise SystemExit(f"failed to start: {' '.join(args)}")
    return proc, json.loads(line)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def _traffic(port: int, tasks: int, concurrency: int) -> dict:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
        infer = ch.unary_unary("/InferenceProxy/infer")
        result = ch.unary_unary("/InferenceProxy/infer_result")
        for _ in range(100):  # wait for the instances' links
            try:
                await result(codec.encode_message(codec.Packet(session_id="probe")), timeout=2)
                break
            except grpc.aio.AioRpcError:
                await asyncio.sleep(0.1)
        assert await infer(codec.encode_message(codec.Packet(session_id="hello"))) == b"\x08\x01"
        sem = asyncio.Semaphore(concurrency)
        done = errors = 0
        latencies: list[float] = []
        start = time.perf_counter()

        async def one(i: int) -> None:
            nonlocal done, errors
            data = json.dumps({"task": i})
            frame = codec.encode_message(
                codec.Packet(session_id=f"session-{i % 50}", seq_no=i, data=data, ts=time.time())
            )
            async with sem:
                t0 = time.perf_counter()
                try:
                    out = codec.decode_message(await result(frame, timeout=30))
                    assert out.seq_no == i and out.data == data
                    done += 1
                except grpc.aio.AioRpcError as exc:
                    errors += 1
                    print(f"task {i}: {exc.code().name} {exc.details()}", file=sys.stderr)
                latencies.append(time.perf_counter() - t0)
            if (done + errors) % max(1, tasks // 10) == 0:
                print(f"  {done + errors}/{tasks} tasks", flush=True)

        await asyncio.gather(*[one(i) for i in range(tasks)])
        elapsed = time.perf_counter() - start
    latencies.sort()
    return {
        "tasks": tasks,
        "completed": done,
        "errors": errors,
        "tasks_per_s": round(tasks / elapsed),
        "p50_ms": round(latencies[len(latencies) // 2] * 1000, 2),
        "p99_ms": round(latencies[int(len(latencies) * 0.99)] * 1000, 2),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", type=int, default=2)
    parser.add_argument("--tasks", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--block", default="aios_fast.block:EchoBlock")
    opts = parser.parse_args(argv)
    procs = []
    try:
        args = ["-m", "aios_fast.executor", "--port", str(_free_port()), "--workers", "1"]
        for k in range(opts.instances):
            proc, info = _spawn(["-m", "aios_fast.instance", "--block", opts.block])
            procs.append(proc)
            args += ["--instance", f"instance-{k}=127.0.0.1:{info['port']}"]
            print(f"instance-{k}: gRPC 127.0.0.1:{info['port']}, "
                  f"health http://127.0.0.1:{info['mgmt_port']}/health")  # fmt: skip
        proc, info = _spawn(args)
        procs.append(proc)
        print(f"executor: gRPC 127.0.0.1:{info['port']} (InferenceProxy.infer / infer_result / "
              "infer_stream)")  # fmt: skip
        print(f"sending {opts.tasks} tasks, {opts.concurrency} at a time ...", flush=True)
        summary = asyncio.run(_traffic(info["port"], opts.tasks, opts.concurrency))
        print(json.dumps(summary))
        return 0 if summary["errors"] == 0 else 1
    finally:
        for proc in reversed(procs):
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
        print("stopped", flush=True)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
