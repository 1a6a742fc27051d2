"""vDAG chain benchmark: three echo blocks run block to block behind the vDAG controller,
against a client that calls the three blocks one after another, and each block alone.

    python -m bench.vdag [--quick] [--tasks 3000] [--rounds 3] [--write]

Each block is an executor with one echo instance (fresh processes on this machine); the
controller is its own process. The client runs in its own process (grpc.aio, not
counted). In the same run, rounds interleaved:

- (a) chain: ``vDAGInferenceService/infer`` on the controller (controller -> block 1 ->
  block 2 -> block 3 -> controller);
- (b) client-chained: ``InferenceProxy/infer_result`` on block 1, its output's data to
  block 2, then block 3;
- (c) alone: ``infer_result`` on each block by itself.

CPU per task is every server process's CPU (executors, instances, the controller: from
/proc, threads included) over the tasks; for (c) the three blocks' per-task CPU is
summed. Goals (issue 25): the chain's CPU per task at most 1.25x the sum of the blocks'
alone, its p50 at 1 task in flight below (b)'s, its tasks/s at saturation (64 in
flight) not below (b)'s. Then the digits pipeline example (``examples/vdag/digits*``,
ONNX Runtime; skipped without the ``[onnx]`` extra) through ``aios-fast vdag up
--traffic 450 --once``: its tasks/s and accuracy on the held-out images. The last line
(``--quick`` too): ``vdag chain cpu_ratio X p50_ratio Y tput_ratio Z``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import msgspec

from ._timing import progress, publish, thread_cpu_ns

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from tests.procs import Proc, start_executor, start_instance  # noqa: E402


def _client(mode: str, targets: list[str], tasks: int, concurrency: int, out) -> None:
    """In a process of its own: send ``tasks`` tasks, report (latencies, elapsed)."""
    import grpc

    from aios_fast import codec
    from aios_fast.protos import vdag_pb2

    async def main():
        channels = [grpc.aio.insecure_channel(t) for t in targets]
        lat: list[float] = []
        todo = iter(range(tasks))

        async def worker():
            for i in todo:
                data = json.dumps({"i": i, "pad": "x" * 16})
                t0 = time.perf_counter()
                if mode == "chain":
                    req = vdag_pb2.vDAGInferencePacket(session_id="b", seq_no=i, data=data)
                    reply = await channels[0].unary_unary("/vDAGInferenceService/infer")(
                        req.SerializeToString(), timeout=30
                    )
                    assert vdag_pb2.vDAGInferencePacket.FromString(reply).data == data
                else:  # one block, or the three one after another
                    for ch in channels:
                        msg = codec.encode_message(codec.Packet(session_id="b", seq_no=i,
                                                                data=data))  # fmt: skip
                        reply = await ch.unary_unary("/InferenceProxy/infer_result")(
                            msg, timeout=30
                        )
                        data = codec.decode_message(reply).data
                lat.append(time.perf_counter() - t0)

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - t0
        for ch in channels:
            await ch.close()
        return lat, elapsed

    out.put(asyncio.run(main()))


class Chain:
    """Three echo blocks (executor + 1 instance each) and a controller over them."""

    def __init__(self, tmp: Path) -> None:
        from aios_fast.vdag import compile_vdag, parse

        self.procs: list[Proc] = []
        self.blocks: list[tuple[str, list[int]]] = []  # (endpoint, pids)
        try:
            for _ in range(3):
                inst = start_instance("aios_fast.block:EchoBlock")
                executor, port = start_executor({"i0": inst.info})
                self.procs += [inst, executor]
                self.blocks.append((f"127.0.0.1:{port}", [inst.p.pid, executor.p.pid]))
            raw = {
                "vdagName": "bench-chain", "vdagVersion": {"version": "1", "releaseTag": "b"},
                "nodes": [{"nodeLabel": f"n{k}", "manualBlockId": f"b{k}"} for k in range(3)],
                "graph": {"input": [{"nodeLabel": "n0"}], "output": [{"nodeLabel": "n2"}],
                          "connections": [{"nodeLabel": f"n{k}",
                                           "inputs": [{"nodeLabel": f"n{k - 1}"}]}
                                          for k in (1, 2)]},
            }  # fmt: skip
            doc = parse(raw)
            endpoints = {f"b{k}": self.blocks[k][0] for k in range(3)}
            compile_vdag(doc, [{"id": b} for b in endpoints], endpoints=endpoints)
            path = tmp / "chain.json"
            path.write_bytes(msgspec.json.encode(doc))
            self.controller = Proc(["-m", "aios_fast.vdag.controller", str(path)])
            self.procs.append(self.controller)
        except BaseException:
            self.stop()
            raise
        self.controller_target = f"127.0.0.1:{self.controller.info['port']}"

    def roles(self, split: dict[int, float]) -> dict[str, float]:
        """CPU per task by role: the controller, the 3 executors, the 3 instances."""
        return {"controller": split.get(self.controller.p.pid, 0.0),
                "executors": sum(split.get(pids[1], 0.0) for _, pids in self.blocks),
                "instances": sum(split.get(pids[0], 0.0) for _, pids in self.blocks)}  # fmt: skip

    def all_pids(self) -> list[int]:
        return [self.controller.p.pid] + [p for _, pids in self.blocks for p in pids]

    def stop(self) -> None:
        for proc in reversed(self.procs):
            proc.stop()


def measure(mode: str, targets: list[str], pids: list[int], tasks: int, concurrency: int,
            split: dict | None = None):  # fmt: skip
    """(cpu s per task of ``pids``, p50 s, tasks/s); ``split``: pid -> its cpu s per task."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    cpu0 = {p: thread_cpu_ns(p) for p in pids}
    proc = ctx.Process(target=_client, args=(mode, targets, tasks, concurrency, queue))
    proc.start()
    lat, elapsed = queue.get(timeout=600)
    proc.join()
    each = {p: (thread_cpu_ns(p) - cpu0[p]) / 1e9 / tasks for p in pids}
    if split is not None:
        split.update(each)
    return sum(each.values()), statistics.median(lat), tasks / elapsed


def run(opts) -> dict:
    rows: dict[str, dict[str, list[float]]] = {}

    def add(name: str, key: str, value: float) -> None:
        rows.setdefault(name, {}).setdefault(key, []).append(value)

    with tempfile.TemporaryDirectory() as tmp:
        chain = Chain(Path(tmp))
        try:
            blocks = [t for t, _ in chain.blocks]
            # warm-up: every path once
            measure("chain", [chain.controller_target], chain.all_pids(), 200, 8)
            measure("client", blocks, chain.all_pids(), 200, 8)
            for r in range(opts.rounds):
                progress(f"vdag bench: round {r + 1}/{opts.rounds}")
                for conc, tag in ((1, "1"), (64, "64")):
                    n = opts.tasks if conc > 1 else max(200, opts.tasks // 5)
                    split: dict[int, float] = {}
                    cpu, p50, tput = measure("chain", [chain.controller_target],
                                             chain.all_pids(), n, conc, split)  # fmt: skip
                    add("chain", f"cpu{tag}", cpu), add("chain", f"p50{tag}", p50)
                    add("chain", f"tput{tag}", tput)
                    for role, value in chain.roles(split).items():
                        add("chain", f"{role}{tag}", value)
                    split = {}
                    cpu, p50, tput = measure("client", blocks, chain.all_pids(), n, conc, split)
                    add("client", f"cpu{tag}", cpu), add("client", f"p50{tag}", p50)
                    add("client", f"tput{tag}", tput)
                    for role, value in chain.roles(split).items():
                        add("client", f"{role}{tag}", value)
                    total = 0.0
                    for k, (target, pids) in enumerate(chain.blocks):
                        cpu, p50, tput = measure("one", [target], pids, n, conc)
                        total += cpu
                        (
                            add(f"block{k + 1}", f"cpu{tag}", cpu),
                            add(f"block{k + 1}", f"p50{tag}", p50),
                        )
                        add(f"block{k + 1}", f"tput{tag}", tput)
                    add("alone", f"cpu{tag}", total)
        finally:
            chain.stop()
    return {name: {k: statistics.median(v) for k, v in cols.items()} for name, cols in rows.items()}


def digits_pipeline() -> dict | None:
    """The digits example through vdag up: its --traffic summary (None: no onnx)."""
    import subprocess

    try:
        import onnxruntime  # noqa: F401
        import sklearn  # noqa: F401
    except ImportError:
        return None
    ex = ROOT / "aios_fast" / "examples" / "vdag"
    blocks = [str(ex / f"digits-block-{x}.json") for x in ("normalize", "classifier",
                                                            "second", "combine")]  # fmt: skip
    out = subprocess.run(
        [sys.executable, "-m", "aios_fast", "vdag", "up", str(ex / "digits.json"), "--vdags",
         str(ex / "digits-ensemble.json"), "--blocks", *blocks, "--ports", "auto", "--json",
         "--traffic", "450", "--once"],
        cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)), capture_output=True, text=True,
        timeout=600,
    )  # fmt: skip
    lines = [json.loads(x) for x in out.stdout.splitlines() if x.startswith("{")]
    if out.returncode != 0 or len(lines) < 2:
        raise RuntimeError(f"the digits pipeline failed: {out.stderr[-1000:]}")
    return lines[1]


def render(rows: dict, opts) -> str:
    a, b, alone = rows["chain"], rows["client"], rows["alone"]
    cpu_ratio = a["cpu64"] / alone["cpu64"]
    p50_ratio = a["p501"] / b["p501"]
    tput_ratio = a["tput64"] / b["tput64"]
    lines = [
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}; median of {opts.rounds} interleaved rounds; "
        f"{opts.tasks:,} tasks at 64 in flight, {max(200, opts.tasks // 5):,} at 1; every "
        "process on this machine (client in its own process, not counted).",
        "",
        "| path | CPU/task (64 in flight) | p50 at 1 in flight | p50 at 64 | tasks/s at 64 |",
        "|---|---|---|---|---|",
    ]
    names = {"chain": "(a) chain through the vDAG controller",
             "client": "(b) client calls the 3 blocks in turn",
             "block1": "(c) block 1 alone", "block2": "(c) block 2 alone",
             "block3": "(c) block 3 alone"}  # fmt: skip
    for key, label in names.items():
        r = rows[key]
        lines.append(f"| {label} | {r['cpu64'] * 1e6:.0f} us | {r['p501'] * 1e3:.2f} ms | "
                     f"{r['p5064'] * 1e3:.2f} ms | {r['tput64']:,.0f} |")  # fmt: skip
    lines.append(f"| (c) sum of the 3 blocks alone | {alone['cpu64'] * 1e6:.0f} us | | | |")
    lines += [
        "",
        "Where the CPU goes (us a task, 64 in flight; 1 in flight in brackets):",
        "",
        "| path | controller | 3 executors | 3 instances |",
        "|---|---|---|---|",
    ]
    for key in ("chain", "client"):
        r = rows[key]
        lines.append(f"| {names[key]} | " + " | ".join(
            f"{r[role + '64'] * 1e6:.0f} ({r[role + '1'] * 1e6:.0f})"
            for role in ("controller", "executors", "instances")) + " |")  # fmt: skip

    def goal(ok: bool) -> str:
        return "met" if ok else "MISSED"

    lines += [
        "",
        f"- chain CPU / sum of the blocks alone: {cpu_ratio:.2f}x (goal <= 1.25x: "
        f"{goal(cpu_ratio <= 1.25)})",
        f"- chain p50 at 1 in flight / client-chained: {p50_ratio:.2f}x (goal < 1: "
        f"{goal(p50_ratio < 1)})",
        f"- chain tasks/s at 64 in flight / client-chained: {tput_ratio:.2f}x (goal >= 1: "
        f"{goal(tput_ratio >= 1)})",
        "",
        _digits_line(opts.digits),
        "",
        f"vdag chain cpu_ratio {cpu_ratio:.2f} p50_ratio {p50_ratio:.2f} "
        f"tput_ratio {tput_ratio:.2f}",
    ]
    return "\n".join(lines) + "\n"


def _digits_line(summary: dict | None) -> str:
    if summary is None:
        return "Digits pipeline: skipped (needs the [onnx] extra)."
    return (f"Digits pipeline (normalize -> nested ensemble: classifier, second model for "
            f"unsure images, fan-in combine; 450 held-out images, 32 in flight): "
            f"{summary['tasks_per_s']:,.0f} tasks/s, p50 {summary['p50_s'] * 1e3:.1f} ms, "
            f"accuracy {summary['agreement']:.3f}.")  # fmt: skip


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 round, 1,000 tasks")
    parser.add_argument("--tasks", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--write", action="store_true")
    opts = parser.parse_args(argv)
    if opts.quick:
        opts.rounds, opts.tasks = 1, 1000
    rows = run(opts)
    progress("vdag bench: the digits pipeline ...")
    opts.digits = digits_pipeline()
    publish("vDAG chain", "bench.vdag", render(rows, opts), opts.write, argv)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
