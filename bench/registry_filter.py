"""Registry filter evaluation: compiled filters vs mongomock's find, over 10,000 cluster
documents shaped like seeds/cluster-registry.txt's example (values varied).

    python -m bench.registry_filter [--docs 10000] [--rounds 5] [--write]

Both sides return the matching ids for the same filter over the same documents; the
compile step is included in our time (a query compiles once per request).
"""

from __future__ import annotations

import argparse
import copy
import platform
import random
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from registry_server.filters import compile_filter
from registry_server.store import EmbeddedStore

from ._timing import fmt_ns, progress, publish

GPUS = ["NVIDIA A100", "NVIDIA V100", "NVIDIA H100", "NVIDIA T4"]
FILTERS = {
    "status equality": {"status": "live"},
    "range on a nested number": {"nodes.gpus.count": {"$gte": 4}},
    "array of objects (dotted)": {"nodes.nodeData.gpus.modelNames": "NVIDIA H100"},
    "$elemMatch": {"nodes.nodeData": {"$elemMatch": {"gpus.count": {"$gte": 2},
                                                     "vcpus.count": {"$gte": 32}}}},
    "$or + $in + $regex": {"$or": [{"regionId": {"$in": ["us-west-2", "eu-central-1"]}},
                                   {"id": {"$regex": "vision-00[1-3]$"}}]},
    "compound (seed query)": {"status": "live", "reputation": {"$gt": 90},
                              "config.policyExecutionMode": {"$ne": ""}},
}  # fmt: skip


def make_cluster(i: int, rnd: random.Random) -> dict:
    nodes = []
    for n in range(rnd.randint(1, 4)):
        models = rnd.sample(GPUS, rnd.randint(1, 2))
        nodes.append({
            "id": f"node-{n}",
            "gpus": {"count": rnd.randint(0, 8), "memory": 16384 * rnd.randint(1, 4),
                     "gpus": [{"modelName": m, "memory": 16384} for m in models],
                     "features": rnd.sample(["fp16", "tensor_cores", "int8"], 2),
                     "modelNames": models},
            "vcpus": {"count": rnd.choice([8, 16, 32, 64])},
            "memory": 65536 * rnd.randint(1, 4), "swap": 4096,
            "storage": {"disks": rnd.randint(1, 4), "size": 524288},
            "network": {"interfaces": 2, "txBandwidth": 10000, "rxBandwidth": 10000},
        })  # fmt: skip
    return {
        "id": f"cluster-{rnd.choice(['west', 'east', 'eu'])}-vision-{i:03d}",
        "regionId": rnd.choice(["us-west-2", "us-east-1", "eu-central-1", "ap-south-1"]),
        "status": rnd.choice(["live", "live", "draining", "down"]),
        "reputation": rnd.randint(50, 100),
        "nodes": {"count": len(nodes), "nodeData": nodes,
                  "gpus": {"count": sum(x["gpus"]["count"] for x in nodes)}},
        "config": {"policyExecutorId": f"policy-exec-{i % 10:03d}",
                   "policyExecutionMode": rnd.choice(["local", "remote", ""])},
        "tags": rnd.sample(["gpu", "vision", "edge", "prod"], 2),
    }  # fmt: skip


def run(n_docs: int, rounds: int) -> list[dict]:
    import mongomock

    rnd = random.Random(7)
    docs = [make_cluster(i, rnd) for i in range(n_docs)]
    collection = mongomock.MongoClient().db.clusters
    collection.insert_many(copy.deepcopy(docs))
    tmp = tempfile.mkdtemp()
    store = EmbeddedStore(Path(tmp) / "registry.sqlite3", ["clusters"])
    store.insert_many("clusters", {d["id"]: copy.deepcopy(d) for d in docs})
    rows = []
    for name, flt in FILTERS.items():
        progress(f"registry filter: {name} ...")

        def ours(flt=flt):
            match = compile_filter(flt)
            return [d["id"] for d in docs if match(d)]

        def theirs(flt=flt):
            return [d["id"] for d in collection.find(flt, {"id": 1})]

        def stored(flt=flt):
            return [d["id"] for d in store.find("clusters", flt)]

        assert sorted(ours()) == sorted(theirs()) == sorted(stored()), name  # + warms indexes
        times: dict[str, list[int]] = {"ours": [], "store": [], "mongomock": []}
        for _ in range(rounds):
            for key, fn in (("ours", ours), ("store", stored), ("mongomock", theirs)):
                start = time.perf_counter_ns()
                hits = fn()
                times[key].append(time.perf_counter_ns() - start)
        rows.append({"filter": name, "hits": len(hits),
                     **{k: statistics.median(v) for k, v in times.items()}})  # fmt: skip
    store.close()
    shutil.rmtree(tmp, ignore_errors=True)
    return rows


def render(rows: list[dict], n_docs: int, rounds: int) -> str:
    lines = [
        f"Machine: {platform.machine()}, Python {platform.python_version()}; {n_docs:,} "
        f"documents, median of {rounds} interleaved rounds; goal >= 10x mongomock.",
        "`compiled filter` is the matcher alone (generated source, "
        "registry_server/filters/codegen.py)",
        "over every document; `store query` is what the server runs (EmbeddedStore.find:",
        "equality and range indexes answer the clauses they can, the matcher runs the rest",
        "over the candidates); the goal is judged on the store query. Indexes are built by",
        "the first query that uses them (the correctness check below), then kept by writes.",
        "The store keeps each document's JSON and, this store being under its decoded-cache",
        "limit (registry_server.store.DECODED_CACHE_MB), the documents once decoded too.",
        "",
        "| filter | matches | compiled filter | store query | mongomock find | filter vs "
        "mongomock | store vs mongomock | goal |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ratio = r["mongomock"] / r["store"]
        lines.append(
            f"| {r['filter']} | {r['hits']:,} | {fmt_ns(r['ours'])} | {fmt_ns(r['store'])} | "
            f"{fmt_ns(r['mongomock'])} | {r['mongomock'] / r['ours']:.0f}x | {ratio:.0f}x | "
            f"{'met' if ratio >= 10 else 'MISSED'} |"
        )
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--write", action="store_true")
    opts = parser.parse_args(argv)
    table = render(run(opts.docs, opts.rounds), opts.docs, opts.rounds)
    publish("Registry filters", "bench.registry_filter", table, opts.write, argv)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
