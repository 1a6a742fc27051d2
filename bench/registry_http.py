"""Registry HTTP load: GET /clusters/:id and POST /clusters/query under concurrent load,
against GET /health (the aiohttp server's own ceiling here) in the same run.

    python -m bench.registry_http [--docs 10000] [--duration 5] [--connections 32] [--write]

A server process serves an embedded store pre-filled with seed-shaped clusters;
h2load (HTTP/1.1 mode) drives it with a fixed number of connections and logs every
request's latency.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import sys
import tempfile
from pathlib import Path

from registry_server.schemas import REGISTRIES
from registry_server.store import EmbeddedStore

from . import _h2load
from ._timing import progress, publish
from .registry_filter import make_cluster

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from tests.registry.test_api import Server  # noqa: E402


def run(opts) -> list[dict]:
    _h2load.require()
    tmp = Path(tempfile.mkdtemp())
    store = EmbeddedStore(tmp / "registry.sqlite3", list(REGISTRIES))
    rnd = random.Random(7)
    progress(f"registry http: loading {opts.docs} clusters ...")
    for i in range(opts.docs):
        doc = make_cluster(i, rnd)
        doc["id"] = f"cluster-{i:05d}"
        store.insert("clusters", doc["id"], doc)
    store.close()
    query = tmp / "query.json"
    query.write_text(json.dumps({"query": {"status": "live", "reputation": {"$gt": 95},
                                           "regionId": "us-west-2"},
                                 "options": {"limit": 10, "projection": {"id": 1}}}))  # fmt: skip
    server = Server(tmp / "registry.sqlite3")
    base = f"http://127.0.0.1:{server.port}"
    cases = [
        ("GET /health (baseline)", f"{base}/health", None),
        ("GET /clusters/:id", f"{base}/clusters/cluster-04242", None),
        ("POST /clusters/query (3 conditions, 10,000 docs)", f"{base}/clusters/query", query),
    ]
    rows = []
    try:
        for name, url, body in cases:
            progress(f"registry http: {name} ...")
            result = _h2load.run(url, opts.duration, opts.connections, body=body, h1=True,
                                 headers=("content-type: application/json",))  # fmt: skip
            rows.append({"case": name, **result})
    finally:
        server.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    return rows


def render(rows: list[dict], opts) -> str:
    base = rows[0]["req_s"]
    lines = [
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}; one server process (aiohttp, embedded store, "
        f"{opts.docs:,} clusters); h2load --h1, {opts.connections} connections, "
        f"{opts.duration} s after 1 s warm-up, on the same machine.",
        "",
        "| request | req/s | p50 | p99 | vs /health | HTTP status |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['case']} | {r['req_s']:,.0f} | {r['p50_ms']:.2f} ms | "
            f"{r['p99_ms']:.2f} ms | {r['req_s'] / base:.0%} | {r['codes']} |"
        )
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=10_000)
    parser.add_argument("--duration", type=int, default=5)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--write", action="store_true")
    opts = parser.parse_args(argv)
    table = render(run(opts), opts)
    publish("Registry HTTP", "bench.registry_http", table, opts.write, argv)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
