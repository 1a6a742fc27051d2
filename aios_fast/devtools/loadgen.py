"""A load generator for a block's gRPC API (``aios-fast bench`` and ``block up --traffic``).

Client processes (``procs``, spawned, each with its own event loop and channel) send
AIOSPacket tasks with ``infer_result`` (or the seeds' ``infer``), ``concurrency`` at a
time in all, until ``tasks`` were sent or ``duration`` seconds passed. The parent prints
a live progress line and returns a summary: completed, errors by status code, wrong
answers (with ``check``: the echo block's output must carry the task's session, seq_no
and data), throughput and latency percentiles.

Tasks carry the generator's own JSON (``{"task": i, "pad": ...}``, ``size`` pad bytes),
or, with ``samples`` (a list of ``(data, expected)`` pairs, e.g. a block's
``traffic_samples``), task i carries ``samples[i % len]``'s data; where expected is a
dict, the answer must be a JSON object with those fields and values: the summary counts
the answers checked and matched (``agreement``).
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import sys
import time
from collections.abc import MutableSequence

from .. import codec
from ..auth import ENV_TOKEN
from ..service import runtime
from ..tls import TLS
from ..wire import ACCEPTED, SERVICE

__all__ = ["drive", "format_summary"]


def _child(index: int, opts: dict, counters: MutableSequence[int], queue, stop) -> None:
    import asyncio
    import signal

    from ..client import AsyncClient, ClientError

    # Ctrl-C reaches every process of the terminal's group: the parent decides (stop).
    signal.signal(signal.SIGINT, signal.SIG_IGN)

    async def run() -> dict:
        errors: dict[str, int] = {}
        latencies: list[float] = []
        wrong = checked = matched = 0
        samples = opts["samples"]
        payload = "x" * opts["size"]
        share = opts["concurrency"] // opts["procs"] + (index < opts["concurrency"] % opts["procs"])
        deadline = time.monotonic() + opts["duration"] if opts["duration"] else None
        next_task = index
        tls = TLS(*opts["tls"])
        client = AsyncClient(opts["target"], token=opts["token"] or "", tls=tls, retries=0,
                             timeout=opts["timeout"])  # fmt: skip
        async with client:
            call, method = client.call, f"/{SERVICE}/{opts['method']}"
            started = time.monotonic()  # the clock all processes share (CLOCK_MONOTONIC)

            async def worker() -> None:
                nonlocal next_task, wrong, checked, matched
                while True:
                    i = next_task
                    if opts["tasks"] and i >= opts["tasks"]:
                        return
                    if deadline is not None and time.monotonic() >= deadline:
                        return
                    if stop.is_set():  # interrupted: finish what is in flight, report
                        return
                    next_task += opts["procs"]
                    expected = None
                    if samples:
                        data, expected = samples[i % len(samples)]
                    else:
                        data = f'{{"task": {i}, "pad": "{payload}"}}'
                    frame = codec.encode_message(
                        codec.Packet(
                            session_id=f"session-{i % 64}", seq_no=i, data=data, ts=time.time()
                        )
                    )
                    t0 = time.perf_counter()
                    try:
                        reply = await call(method, frame)
                    except ClientError as exc:
                        name = exc.code.name
                        errors[name] = errors.get(name, 0) + 1
                        counters[2 * index + 1] += 1
                        continue
                    latencies.append(time.perf_counter() - t0)
                    if expected is not None and opts["method"] == "infer_result":
                        checked += 1
                        matched += _matches(codec.decode_message(reply).data, expected)
                    elif opts["check"]:
                        if opts["method"] == "infer":
                            ok = reply == ACCEPTED
                        else:
                            out = codec.decode_message(reply)
                            ok = (out.seq_no, out.session_id, out.data) == (
                                i,
                                f"session-{i % 64}",
                                data,
                            )
                        wrong += not ok
                    counters[2 * index] += 1

            await asyncio.gather(*(worker() for _ in range(max(1, share))))
        return {"latencies": latencies, "errors": errors, "wrong": wrong,
                "checked": checked, "matched": matched,
                "started": started, "ended": time.monotonic()}  # fmt: skip

    try:
        queue.put(runtime.run(run()))
    except BaseException as exc:  # reported, never a silent hang of the parent
        queue.put({"crash": f"{type(exc).__name__}: {exc}"})


def _matches(data: str, expected: dict) -> bool:
    """Whether an answer's data is a JSON object carrying ``expected``'s fields."""
    try:
        answer = json.loads(data)
    except ValueError:
        return False
    return isinstance(answer, dict) and all(
        k in answer and answer[k] == v for k, v in expected.items()
    )


def drive(
    target: str,
    *,
    tasks: int = 0,
    duration: float = 0.0,
    concurrency: int = 64,
    procs: int | None = None,
    method: str = "infer_result",
    size: int = 16,
    check: bool = False,
    timeout: float = 30.0,
    progress: bool = True,
    token: str | None = None,
    tls: TLS | None = None,
    samples: list[tuple[str, dict | None]] | None = None,
) -> dict:
    """Send load to ``target`` (host:port); the summary dict (see ``format_summary``).
    ``token``: sent as ``authorization: Bearer`` (default: AIOS_FAST_TOKEN, if set).
    ``samples``: the tasks' data and expected fields (plain data: the clients are
    separate processes); answers are checked against them (infer_result only)."""
    if not tasks and not duration:
        raise ValueError("give tasks or duration")
    if method not in ("infer", "infer_result"):
        raise ValueError(f"method must be infer or infer_result, not {method!r}")
    procs = max(1, min(procs or max(1, (os.cpu_count() or 2) // 2), concurrency))
    ctx = mp.get_context("spawn")
    counters = ctx.Array("q", 2 * procs, lock=False)
    queue = ctx.Queue()
    opts = {
        "target": target,
        "tasks": tasks,
        "duration": duration,
        "concurrency": concurrency,
        "procs": procs,
        "method": method,
        "size": size,
        "check": check,
        "token": token if token is not None else os.environ.get(ENV_TOKEN) or None,
        "tls": ((tls.cert, tls.key, tls.ca) if tls else ("", "", "")),
        "timeout": timeout,
        "samples": [(data, expected) for data, expected in samples] if samples else None,
    }
    stop = ctx.Event()
    children = [
        ctx.Process(target=_child, args=(k, opts, counters, queue, stop), daemon=True)
        for k in range(procs)
    ]
    start = time.perf_counter()
    for child in children:
        child.start()
    results: list[dict] = []
    last_print = 0.0
    interrupted = False
    while len(results) < procs:
        try:
            results.append(queue.get(timeout=0.25))
        except KeyboardInterrupt:  # Ctrl-C: the clients stop, the summary is partial
            if interrupted:
                raise
            interrupted = True
            stop.set()
            sys.stderr.write("\n  interrupted: waiting for the tasks in flight ...\n")
        except Exception:  # queue.Empty: nothing yet
            if not any(c.is_alive() for c in children) and queue.empty():
                results.append({"crash": "a client process died"})
        now = time.perf_counter()
        if progress and now - last_print >= 0.5:
            last_print = now
            done, failed = sum(counters[0::2]), sum(counters[1::2])
            total = f"/{tasks:,}" if tasks else ""
            rate = done / (now - start) if now > start else 0.0
            sys.stderr.write(
                f"\r  {done + failed:,}{total} tasks, {rate:,.0f}/s, {failed:,} errors   "
            )
            sys.stderr.flush()
    # From the first client's first task to the last one's end: process start-up excluded.
    spans = [r for r in results if "started" in r]
    elapsed = (max(r["ended"] for r in spans) - min(r["started"] for r in spans)) if spans else 0.0
    for child in children:
        child.join(5)
    if progress:
        sys.stderr.write("\n")
    crashes = [r["crash"] for r in results if "crash" in r]
    latencies = sorted(x for r in results for x in r.get("latencies", ()))
    errors: dict[str, int] = {}
    for r in results:
        for name, n in r.get("errors", {}).items():
            errors[name] = errors.get(name, 0) + n

    checked = sum(r.get("checked", 0) for r in results)
    matched = sum(r.get("matched", 0) for r in results)

    def pct(q: float) -> float | None:
        if not latencies:
            return None
        return round(latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000, 3)

    return {
        "target": target,
        "method": method,
        "completed": len(latencies),
        "errors": errors,
        "wrong": sum(r.get("wrong", 0) for r in results),
        "checked": checked,
        "matched": matched,
        "agreement": round(matched / checked, 4) if checked else None,
        "client_crashes": crashes,
        "seconds": round(elapsed, 3),
        "tasks_per_s": round(len(latencies) / elapsed, 1) if elapsed else 0.0,
        "p50_ms": pct(0.50),
        "p90_ms": pct(0.90),
        "p99_ms": pct(0.99),
        "max_ms": round(latencies[-1] * 1000, 3) if latencies else None,
        "concurrency": concurrency,
        "procs": procs,
        "interrupted": interrupted,
    }


def format_summary(summary: dict) -> str:
    """The summary as an aligned two-column table."""
    rows = [
        ("target", f"{summary['target']} ({summary['method']})"),
        ("completed", f"{summary['completed']:,}"),
        ("errors", ", ".join(f"{k} {v:,}" for k, v in summary["errors"].items()) or "0"),
        ("wrong answers", f"{summary['wrong']:,}"),
    ]
    if summary.get("checked"):
        rows.append(("agreement", f"{summary['agreement']:.3f} ({summary['matched']:,} of "
                                  f"{summary['checked']:,} answers as expected)"))  # fmt: skip
    rows += [
        ("seconds", f"{summary['seconds']}"),
        ("tasks/s", f"{summary['tasks_per_s']:,.0f}"),
        (
            "latency p50/p90/p99/max ms",
            "/".join(
                "-" if summary[k] is None else f"{summary[k]:.2f}"
                for k in ("p50_ms", "p90_ms", "p99_ms", "max_ms")
            ),
        ),
        ("concurrency (client procs)", f"{summary['concurrency']} ({summary['procs']})"),
    ]
    if summary["client_crashes"]:
        rows.append(("client crashes", "; ".join(summary["client_crashes"])))
    if summary.get("interrupted"):
        rows.append(("interrupted", "yes (Ctrl-C): the figures cover what ran until then"))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"  {k.ljust(width)}  {v}" for k, v in rows)
