"""Timing helpers for the runnable benchmarks: interleaved rounds, medians, ratios.

The machine is shared and noisy, so every figure is a ratio against a baseline timed
in the same process, with baseline and candidate interleaved round by round.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

RESULTS = Path(__file__).with_name("RESULTS.md")


def per_op_ns(fn: Callable[[], object], number: int) -> float:
    start = time.perf_counter_ns()
    for _ in range(number):
        fn()
    return (time.perf_counter_ns() - start) / number


def calibrate(fn: Callable[[], object], target_s: float = 0.05) -> int:
    """Iterations per round so that one round takes about target_s."""
    number = 1
    while True:
        start = time.perf_counter()
        for _ in range(number):
            fn()
        elapsed = time.perf_counter() - start
        if elapsed >= target_s / 4 or number >= 1 << 24:
            return max(1, int(number * target_s / max(elapsed, 1e-9)))
        number *= 4


def compare(cases: dict[str, Callable[[], object]], rounds: int = 9) -> dict[str, float]:
    """Median ns/op of each case, rounds interleaved across cases."""
    numbers = {name: calibrate(fn) for name, fn in cases.items()}
    samples: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(rounds):
        for name, fn in cases.items():
            samples[name].append(per_op_ns(fn, numbers[name]))
    return {name: statistics.median(vals) for name, vals in samples.items()}


def fmt_ns(ns: float) -> str:
    if ns >= 1e6:
        return f"{ns / 1e6:.2f} ms"
    if ns >= 1e3:
        return f"{ns / 1e3:.2f} us"
    return f"{ns:.0f} ns"


def progress(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def replace_section(name: str, body: str) -> None:
    """Replace (or append) the '## name' section of bench/RESULTS.md."""
    text = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n"
    header = f"## {name}\n"
    start = text.find(header)
    if start < 0:
        text = text.rstrip("\n") + "\n\n" + header + body
    else:
        end = text.find("\n## ", start + len(header))
        rest = "\n" + text[end + 1 :] if end >= 0 else ""
        text = text[:start] + header + body.rstrip("\n") + "\n" + rest
    RESULTS.write_text(text.rstrip("\n") + "\n")


def publish(section: str, module: str, table: str, write: bool, argv: list[str] | None) -> None:
    """Print a benchmark's table; with --write, also put it in bench/RESULTS.md under
    '## section', headed by the command line that produced it (options included)."""
    print(table)
    if write:
        args = " ".join(sys.argv[1:] if argv is None else argv)
        replace_section(section, f"Command: `python -m {module} {args}`\n\n" + table)


def thread_cpu_ns(pid: int) -> int:
    """CPU nanoseconds the process's live threads ran (schedstat: ns resolution)."""
    total = 0
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return 0
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            pass
    return total
