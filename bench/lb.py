"""Load-balancer pick benchmark: compiled built-ins vs their pure twin vs the seeds'
sample Python policy (random + session cache, run through PolicyBalancer as the
executor runs it), for instance sets of 4, 64 and 1024.

    python -m bench.lb [--rounds 9] [--sizes 4,64,1024] [--write]

Each pick gets a decoded Packet, as in the executor. The table gives median ns per
pick and the compiled pick's speed-up over the sample policy in the same run. One
packet is picked over and over (the ring lines it touches stay in cache), except in
the consistent_hash row marked "sessions in turn": 65,536 packets of distinct
sessions, one after the other, so each pick reads the ring where the cache is cold.
"""

from __future__ import annotations

import argparse
import functools
import itertools
import platform
from pathlib import Path

from aios_fast import _lb_py, codec, lb
from aios_fast.policy import PolicyRule

from . import payloads
from ._timing import compare, fmt_ns, progress, publish

SAMPLE = Path(__file__).resolve().parent.parent / "tests" / "policies" / "seed_lb_sample"
SESSIONS = 65536


def _in_turn(pick, packets):
    """A callable picking for the next packet of packets each time (cycling)."""
    nxt = itertools.cycle(packets).__next__
    return lambda: pick(nxt())


GOAL_NS = 200.0
GOAL_RATIO = 10.0


def sample_balancer(ids):
    return lb.PolicyBalancer(PolicyRule(str(SAMPLE), "seed-sample"), lb.builtin("round_robin", ids))


def run(rounds: int, sizes: list[int]) -> list[dict]:
    try:
        from aios_fast import _lb as compiled
    except ImportError:
        compiled = None
        progress("aios_fast._lb is not built: reporting the pure twin only")
    packet = codec.decode_message(payloads.small_message())
    sessions = [
        codec.decode_packet(codec.encode_packet(codec.Packet(session_id=f"session-{k:08x}")))
        for k in range(SESSIONS)
    ]
    rows = []
    for n in sizes:
        ids = [f"instance-{i:04d}" for i in range(n)]
        sample = sample_balancer(ids).pick
        # WRR costs O(log G) for G distinct weights: measure equal weights and all distinct.
        distinct = {"weights": {iid: 1.0 + i / n for i, iid in enumerate(ids)}}
        variants = [(name, name, {}) for name in _lb_py.BUILTINS]
        variants.insert(
            2, ("weighted_round_robin (all weights distinct)", "weighted_round_robin", distinct)
        )
        for label, name, params in variants:
            progress(f"lb: {label}, {n} instances ...")
            cases = {"py": _lb_py.BUILTINS[name](ids, seed=1, **params).pick, "sample": sample}
            if compiled is not None:
                cases["c"] = compiled.BUILTINS[name](ids, seed=1, **params).pick
            medians = compare({k: functools.partial(f, packet) for k, f in cases.items()}, rounds)
            rows.append({"policy": label, "n": n, **medians})
        label = f"consistent_hash ({SESSIONS:,} sessions in turn)"
        progress(f"lb: {label}, {n} instances ...")
        cases = {"py": _lb_py.ConsistentHash(ids, seed=1).pick, "sample": sample_balancer(ids).pick}
        if compiled is not None:
            cases["c"] = compiled.ConsistentHash(ids, seed=1).pick
        medians = compare({k: _in_turn(f, sessions) for k, f in cases.items()}, rounds)
        rows.append({"policy": label, "n": n, **medians})
    return rows


def render(rows: list[dict], rounds: int) -> str:
    lines = [
        f"Machine: {platform.machine()}, Python {platform.python_version()}; median ns per "
        f"pick over {rounds} interleaved rounds, including the Python call of `pick(packet)`.",
        f"Goal per compiled pick: <= {GOAL_NS:.0f} ns and >= {GOAL_RATIO:.0f}x the seeds' "
        "sample policy.",
        "",
        "| policy | instances | compiled | pure twin | seeds' sample policy | c vs sample | goal |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        c = r.get("c")
        ratio = r["sample"] / c if c else None
        met = c is not None and c <= GOAL_NS and ratio >= GOAL_RATIO
        goal = "met" if met else "MISSED"
        if "in turn" in r["policy"]:
            goal = "(cold cache: no goal)"
        lines.append(
            f"| {r['policy']} | {r['n']} | {fmt_ns(c) if c else 'n/a'} | {fmt_ns(r['py'])} | "
            f"{fmt_ns(r['sample'])} | {f'{ratio:.0f}x' if ratio else 'n/a'} | "
            f"{goal} |"
        )
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--sizes", default="4,64,1024")
    parser.add_argument("--write", action="store_true", help="update bench/RESULTS.md")
    opts = parser.parse_args(argv)
    sizes = [int(s) for s in opts.sizes.split(",")]
    table = render(run(opts.rounds, sizes), opts.rounds)
    publish("Load balancer picks", "bench.lb", table, opts.write, argv)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
