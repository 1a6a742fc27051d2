"""The executor-to-instance link (issue 27): executor + instance CPU per task and p50
for the grpc.aio link, the native link over TCP and the native link over a Unix
socket, at 1 task in flight, at an equal offered load and at saturation.

    python -m bench.front --links [--duration 5] [--rounds 3] [--rate 740] [--base REV]
                                  [--quick] [--write]

One echo instance and one executor (native front, 1 worker) per link kind, started
side by side; h2load sends infer_result calls with the small benchmark packet: 1
connection x 1 stream (1 in flight), 4 connections offering ``--rate`` tasks/s in all
(h2load --rps), and 4 connections x 32 streams (saturation). CPU: utime + stime of the
executor and the instance processes from /proc over the measured run, divided by the
calls h2load completed. ``--base REV`` adds "today": the grpc.aio link of that
revision (a git worktree built as bench.ab does), the issue's baseline. Kinds are
measured round by round, interleaved; figures are medians over rounds. ``--quick``
(one 2 s round) ends with the line
``links cpu_us_1inflight grpcaio A tcp B uds C p50_ms_1inflight grpcaio D tcp E uds F``.
"""

from __future__ import annotations

import os
import platform
import statistics
import tempfile
from pathlib import Path

from . import payloads
from ._timing import progress, publish
from .executor import check, grpc_body
from .front import measure
from .front import start_executor as _start_executor  # (tests.procs, path set up there)
from .front import start_instance as _start_instance

KINDS = (("grpcaio", "grpc"), ("tcp", "tcp"), ("uds", "native"))
LOADS = ("1inflight", "rate", "saturation")
EXPECT = {"grpcaio": "grpc", "tcp": "tcp", "uds": "unix"}


def _transport(mgmt_port: int) -> str:
    from tests.procs import mgmt

    _, reply = mgmt(mgmt_port, "list_instances")
    return reply["data"][0]["transport"]


def _start_base(rev: str) -> tuple:
    """An echo instance and an executor (native front) of revision ``rev``."""
    from tests.procs import Proc, free_port

    from .ab import _worktree

    tree = _worktree(rev)
    instance = Proc(["-m", "aios_fast.instance", "--block", "aios_fast.block:EchoBlock"],
                    root=tree)  # fmt: skip
    port = free_port()
    executor = Proc(["-m", "aios_fast.executor", "--port", str(port), "--workers", "1",
                     "--mgmt-port", "0", "--metrics-port", "0", "--front", "native",
                     "--instance", f"i0=127.0.0.1:{instance.info['port']}"], root=tree)  # fmt: skip
    return instance, executor, port, [executor.p.pid, instance.p.pid]


def run(opts) -> dict[str, dict[str, dict]]:
    body = Path(tempfile.mkstemp(suffix=".bin")[1])
    body.write_bytes(grpc_body(payloads.small_message()))
    setups: dict[str, tuple] = {}
    try:
        if opts.base:
            progress(f"links bench: starting today's ({opts.base}) executor and instance ...")
            setups["today"] = _start_base(opts.base)
        for name, link in KINDS:
            instance = _start_instance()
            executor, port = _start_executor({"i0": instance.info["port"]}, "--front", "native",
                                             "--link", link)  # fmt: skip
            setups[name] = (instance, executor, port, [executor.p.pid, instance.p.pid])
        for name, (_, executor, port, _) in setups.items():
            check(port)
            if name == "today":
                continue
            got = _transport(executor.info["mgmt_port"])
            if got != EXPECT[name]:
                raise SystemExit(f"links bench: {name} runs over {got}, not {EXPECT[name]}")
        samples: dict[str, dict[str, list]] = {n: {load: [] for load in LOADS} for n in setups}
        shapes = {"1inflight": (1, 1, 0.0), "rate": (4, 32, opts.rate / 4),
                  "saturation": (4, 32, 0.0)}  # fmt: skip
        for k in range(opts.rounds):
            for load in LOADS:
                conns, streams, rps = shapes[load]
                for name, (_, _, port, pids) in setups.items():
                    progress(f"links bench: round {k + 1}/{opts.rounds}: {load}: {name} ...")
                    samples[name][load].append(measure(port, pids, body, opts, rps,
                                                       (conns, streams)))  # fmt: skip
    finally:
        for instance, executor, _, _ in setups.values():
            executor.stop()
            instance.stop()
        body.unlink()
    return {
        name: {load: {key: statistics.median(s[key] for s in rows) for key in rows[0]}
               for load, rows in loads.items()}
        for name, loads in samples.items()
    }  # fmt: skip


def render(res: dict[str, dict[str, dict]], opts) -> str:
    lines = [
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}. One echo instance and one executor (native front, 1 "
        "worker) per link kind; h2load infer_result with the small packet, "
        f"{opts.duration:g} s per run, {opts.rounds} interleaved round(s), medians. CPU: the "
        "executor and the instance processes, from /proc (h2load not counted).",
        "",
        "| link | load | executor + instance CPU per task | tasks/s | p50 | p99 |",
        "|---|---|---|---|---|---|",
    ]
    labels = {"grpcaio": "grpc.aio stream", "tcp": "native, TCP", "uds": "native, Unix socket"}
    if "today" in res:
        labels = {"today": f"today: grpc.aio stream at {opts.base}", **labels}
    loads = {"1inflight": "1 in flight", "rate": f"{opts.rate:,.0f} tasks/s offered",
             "saturation": "4 x 32 (saturation)"}  # fmt: skip
    for load in LOADS:
        for name in labels:
            r = res[name][load]
            lines.append(
                f"| {labels[name]} | {loads[load]} | {r['cpu_us']:.1f} us | "
                f"{r['tasks_s']:,.0f} | {r['p50_ms']:.3f} ms | {r['p99_ms']:.2f} ms |"
            )
    base, uds = res.get("today", res["grpcaio"]), res["uds"]
    than = f"today's ({opts.base})" if "today" in res else "the grpc.aio link's"
    one, rate, sat = (uds[x]["cpu_us"] for x in LOADS)
    lines += [
        "",
        f"Native link over a Unix socket vs {than}: at 1 in flight "
        f"{one:.1f} us of CPU per task (goal <= 150; there "
        f"{base['1inflight']['cpu_us']:.1f}) and p50 {uds['1inflight']['p50_ms']:.3f} ms (goal "
        f"<= 0.25; there {base['1inflight']['p50_ms']:.3f}); at equal load "
        f"{rate / base['rate']['cpu_us']:.2f}x the CPU per task (goal <= 0.5); at "
        f"saturation {uds['saturation']['tasks_s'] / base['saturation']['tasks_s']:.2f}x "
        f"the tasks/s (goal >= 1.3) at {sat / base['saturation']['cpu_us']:.2f}x the CPU "
        "per task (goal <= 1).",
    ]
    return "\n".join(lines) + "\n"


def quick_line(res: dict[str, dict[str, dict]]) -> str:
    cpu = " ".join(f"{n} {res[n]['1inflight']['cpu_us']:.1f}" for n, _ in KINDS)
    p50 = " ".join(f"{n} {res[n]['1inflight']['p50_ms']:.3f}" for n, _ in KINDS)
    return f"links cpu_us_1inflight {cpu} p50_ms_1inflight {p50}"


def main(opts, argv) -> int:
    res = run(opts)
    publish("Executor-instance links", "bench.front", render(res, opts), opts.write, argv)
    if opts.quick:
        print(quick_line(res))
    return 0
