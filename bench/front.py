"""The executor's gRPC front: executor CPU per task and tasks/s for the grpcio front, the
native front (``--front native``) and nghttpx forwarding the same gRPC calls straight to
the instance (a C HTTP/2 proxy: the native limit), one echo instance behind all three.

    python -m bench.front [--duration 5] [--rounds 3] [--connections 4] [--streams 32]
                          [--quick] [--write]
    python -m bench.front --links ...   (the executor-instance links: bench.front_links)

Load: h2load (infer_result with the small benchmark packet), closed loop, the same
connections x streams for every target. CPU: utime + stime of the target's processes
from /proc (the executor process only; nghttpx: its master and worker), over the
measured run, divided by the calls h2load completed. Targets are measured round by round,
interleaved; figures are medians over rounds. ``--quick`` (one 2 s round) ends with the
line ``cpu_us_per_task native N grpcio M nghttpx K``.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from . import payloads
from ._timing import progress, publish
from .executor import check, grpc_body

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from tests.procs import free_port, start_executor, start_instance  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")
HEADERS = ("content-type: application/grpc", "te: trailers")


def cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / TICK


def children(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        out.append(int(entry))
            except OSError:
                pass
    return out


def h2load(port: int, body: Path, seconds: float, conns: int, streams: int,
           rps: float = 0) -> tuple[int, list]:  # fmt: skip
    """(calls that succeeded, latencies in us) of one h2load run (``rps``: calls per
    second per connection; 0: as fast as answers come)."""
    log = Path(tempfile.mkstemp(suffix=".log")[1])
    cmd = ["h2load", "-D", str(int(seconds)), "-c", str(conns), "-m", str(streams), "-t", "1",
           "-d", str(body), "--log-file", str(log)]  # fmt: skip
    for header in HEADERS:
        cmd += ["-H", header]
    if rps:
        cmd.append(f"--rps={rps:.0f}")
    try:
        out = subprocess.run([*cmd, f"http://127.0.0.1:{port}/InferenceProxy/infer_result"],
                             capture_output=True, text=True, timeout=seconds + 60)  # fmt: skip
        if out.returncode != 0:
            raise RuntimeError(out.stderr or out.stdout)
        rows = [line.split("\t") for line in log.read_text().splitlines()]
    finally:
        log.unlink(missing_ok=True)
    ok = [int(r[2]) for r in rows if len(r) >= 3 and r[1] == "200"]
    return len(ok), sorted(ok)


def start_nghttpx(instance_port: int):
    port = free_port()
    proc = subprocess.Popen(
        ["nghttpx", "--conf=/dev/null", f"--frontend=127.0.0.1,{port};no-tls",
         f"--backend=127.0.0.1,{instance_port};;proto=h2", "--workers=1",
         "--errorlog-file=/dev/null", "--log-level=ERROR", "--no-ocsp"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    return proc, port


def measure(port: int, pids: list[int], body: Path, opts, rps: float = 0,
            shape: tuple[int, int] | None = None) -> dict:  # fmt: skip
    """One h2load run after a 1 s warm-up: CPU per task of ``pids``, tasks/s, p50, p99
    (``shape``: connections x streams, else the options')."""
    conns, streams = shape or (opts.connections, opts.streams)
    h2load(port, body, 1, conns, streams, rps)  # warm-up
    cpu0, t0 = cpu_seconds(pids), time.perf_counter()
    done, lat = h2load(port, body, opts.duration, conns, streams, rps)
    cpu, wall = cpu_seconds(pids) - cpu0, time.perf_counter() - t0
    return {
        "cpu_us": cpu / max(done, 1) * 1e6,
        "tasks_s": done / wall,
        "p50_ms": lat[len(lat) // 2] / 1000 if lat else float("nan"),
        "p99_ms": lat[int(len(lat) * 0.99)] / 1000 if lat else float("nan"),
    }


def run(opts) -> dict[str, dict]:
    if shutil.which("h2load") is None:
        raise SystemExit("h2load not found: apt-get install nghttp2-client")
    proxy = shutil.which("nghttpx") is not None  # (nghttp2-proxy): its row is left out without
    body = Path(tempfile.mkstemp(suffix=".bin")[1])
    body.write_bytes(grpc_body(payloads.small_message()))
    instance = start_instance()
    iport = instance.info["port"]
    procs = {}
    try:
        for front in ("grpcio", "native"):
            proc, port = start_executor({"i0": iport}, "--front", front, port=free_port())
            procs[front] = (proc, port, [proc.p.pid])
        nghttpx = None
        if proxy:
            nghttpx, nport = start_nghttpx(iport)
            time.sleep(0.5)
            procs["nghttpx"] = (None, nport, [nghttpx.pid, *children(nghttpx.pid)])
        samples: dict[str, list[dict]] = {name: [] for name in procs}
        for _, port, _ in procs.values():
            check(port)
        for k in range(opts.rounds):
            for name, (_, port, pids) in procs.items():
                progress(f"front bench: round {k + 1}/{opts.rounds}: {name} ...")
                samples[name].append(measure(port, pids, body, opts))
        # equal load: both fronts offered half of what the slower one (grpcio) sustained
        rate = 0.5 * statistics.median(s["tasks_s"] for s in samples["grpcio"])
        opts.offered = rate
        for name in ("grpcio", "native"):
            _, port, pids = procs[name]
            progress(f"front bench: {name} at {rate:,.0f} tasks/s ...")
            samples[f"{name}@rate"] = [measure(port, pids, body, opts,
                                               rate / opts.connections)]  # fmt: skip
        if nghttpx is not None:
            nghttpx.terminate()
            nghttpx.wait(10)
    finally:
        for proc, _, _ in procs.values():
            if proc is not None:
                proc.stop()
        instance.stop()
        body.unlink()
    return {name: {key: statistics.median(s[key] for s in rows) for key in rows[0]}
            for name, rows in samples.items()}  # fmt: skip


def render(res: dict[str, dict], opts) -> str:
    native, grpcio, proxy = res["native"], res["grpcio"], res.get("nghttpx")
    lines = [
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}. h2load {opts.connections} connections x {opts.streams} "
        f"streams, infer_result, {opts.duration:g} s per run, {opts.rounds} interleaved "
        "round(s), medians; one echo instance; the executor runs 1 worker. CPU: the "
        "executor process only (nghttpx: its processes), from /proc.",
        "",
        "| front | executor CPU per task | tasks/s | p50 | p99 |",
        "|---|---|---|---|---|",
    ]
    for name, label in (("grpcio", "grpcio (grpc.aio)"), ("native", "native (nghttp2, Cython)"),
                        ("nghttpx", "nghttpx -> instance (no executor)")):  # fmt: skip
        if name not in res:
            continue  # nghttpx not installed
        r = res[name]
        lines.append(f"| {label} | {r['cpu_us']:.1f} us | {r['tasks_s']:,.0f} | "
                     f"{r['p50_ms']:.2f} ms | {r['p99_ms']:.2f} ms |")  # fmt: skip
    at = [res["grpcio@rate"], res["native@rate"]]
    lines += [
        "",
        f"At equal load (h2load --rps offering {opts.offered:,.0f} tasks/s, half the grpcio "
        f"front's rate above; served {at[0]['tasks_s']:,.0f} grpcio, {at[1]['tasks_s']:,.0f} "
        "native): CPU per task "
        f"{at[0]['cpu_us']:.1f} us grpcio vs {at[1]['cpu_us']:.1f} us native; p50 "
        f"{at[0]['p50_ms']:.2f} / {at[1]['p50_ms']:.2f} ms; p99 {at[0]['p99_ms']:.2f} ms "
        f"grpcio vs {at[1]['p99_ms']:.2f} ms native.",
        "",
        f"Native vs grpcio: {grpcio['cpu_us'] / native['cpu_us']:.1f}x less CPU per task "
        "(goal >= 6x, and <= 40 us); "
        + (
            f"native vs nghttpx: {native['cpu_us'] / proxy['cpu_us']:.1f}x nghttpx's CPU per "
            "request (goal <= 5x); "
            if proxy
            else "nghttpx not installed (no proxy row); "
        )
        + "p99 at the same concurrency "
        f"{native['p99_ms']:.2f} ms native vs {grpcio['p99_ms']:.2f} ms grpcio.",
        "",
        "nghttpx sends each call to the instance as its own HTTP/2 stream, so its rate "
        "here is the instance's grpc.aio unary rate, and its CPU per request is what it "
        "spends at that rate, not at saturation (the executor batches tasks onto its link "
        "instead).",
        "",
        "At low load a task costs more CPU on both fronts: each one wakes the loop alone and "
        "travels to the instance in a link message of its own (no batching), and the "
        "link is a grpc.aio stream.",
    ]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--streams", type=int, default=32)
    parser.add_argument("--quick", action="store_true", help="one 2 s round")
    parser.add_argument("--write", action="store_true")
    parser.add_argument(
        "--links",
        action="store_true",
        help="compare the executor-instance links instead (bench.front_links)",
    )
    parser.add_argument("--rate", type=float, default=740.0,
                        help="--links: the equal offered load, tasks/s")  # fmt: skip
    parser.add_argument("--base", help="--links: also measure this revision's grpc.aio link")
    opts = parser.parse_args(argv)
    if opts.quick:
        opts.duration, opts.rounds = 2, 1
    if opts.links:
        from . import front_links

        return front_links.main(opts, argv)
    res = run(opts)
    publish("Executor front", "bench.front", render(res, opts), opts.write, argv)
    if opts.quick:
        names = [n for n in ("native", "grpcio", "nghttpx") if n in res]
        print("cpu_us_per_task " + " ".join(f"{n} {res[n]['cpu_us']:.1f}" for n in names))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
