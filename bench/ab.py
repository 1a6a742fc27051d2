"""A/B of two revisions on one benchmark, interleaved on the same machine in one run.

    python -m bench.ab --base REV [--rounds 3] [--write TITLE] -- bench.front --quick

Checks ``REV`` out into ``build/ab/<rev>`` (a git worktree; its Cython extensions built
in place with this interpreter), then runs ``python -m <bench> <args>`` alternately in
that tree and in this one, ``--rounds`` times each (base, head, base, head, ...). The
benchmark's last output line is read as ``label key value key value ...`` (what every
``--quick`` mode prints); the medians of each value, base vs head, and their ratio are
printed as a Markdown table (``--write TITLE``: appended to bench/RESULTS.md under that
title, with this command).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
from pathlib import Path

from ._timing import progress, publish

ROOT = Path(__file__).resolve().parent.parent


def _worktree(rev: str) -> Path:
    sha = subprocess.run(["git", "rev-parse", "--short", rev], cwd=ROOT, check=True,
                         capture_output=True, text=True).stdout.strip()  # fmt: skip
    path = ROOT / "build" / "ab" / sha
    if not path.exists():
        progress(f"ab: checking out {sha} into {path} ...")
        subprocess.run(["git", "worktree", "add", "--detach", str(path), sha], cwd=ROOT,
                       check=True, capture_output=True)  # fmt: skip
        progress(f"ab: building {sha}'s extensions ...")
        subprocess.run([sys.executable, "setup.py", "-q", "build_ext", "--inplace"], cwd=path,
                       check=True, capture_output=True)  # fmt: skip
    return path


def _last_values(out: str) -> tuple[str, dict[str, float]]:
    line = out.strip().splitlines()[-1].split()
    values = {}
    for key, value in zip(line[1::2], line[2::2], strict=False):
        try:
            values[key] = float(value)
        except ValueError:
            pass
    return line[0], values


def _run(tree: Path, bench: list[str]) -> tuple[str, dict[str, float]]:
    out = subprocess.run([sys.executable, "-m", *bench], cwd=tree, check=True,
                         capture_output=True, text=True, timeout=1800)  # fmt: skip
    return _last_values(out.stdout)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    split = argv.index("--") if "--" in argv else len(argv)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", required=True, help="the revision to compare with")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--write", metavar="TITLE", help="append to bench/RESULTS.md")
    opts = parser.parse_args(argv[:split])
    bench = argv[split + 1 :]
    if not bench:
        parser.error("name the benchmark after --, e.g. -- bench.front --quick")
    base = _worktree(opts.base)
    rows: dict[str, dict[str, list[float]]] = {"base": {}, "head": {}}
    label = ""
    for k in range(opts.rounds):
        for side, tree in (("base", base), ("head", ROOT)):
            progress(f"ab: round {k + 1}/{opts.rounds}: {side} ...")
            label, values = _run(tree, bench)
            for key, value in values.items():
                rows[side].setdefault(key, []).append(value)
    keys = [key for key in rows["head"] if key in rows["base"]]
    lines = [
        f"`{' '.join(bench)}` ({label}), {opts.rounds} interleaved rounds, medians; base "
        f"{opts.base}, head the working tree.",
        "",
        "| value | base | head | head / base |",
        "|---|---|---|---|",
    ]
    for key in keys:
        b, h = statistics.median(rows["base"][key]), statistics.median(rows["head"][key])
        lines.append(f"| {key} | {b:.1f} | {h:.1f} | {h / b if b else float('nan'):.2f} |")
    lines.append("")
    lines.append("Per round: " + "; ".join(
        f"{key} base {rows['base'][key]} head {rows['head'][key]}" for key in keys))  # fmt: skip
    text = "\n".join(lines) + "\n"
    if opts.write:
        publish(opts.write, "bench.ab", text, True, argv)
    else:
        print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
