"""pytest-benchmark view of bench.registry_filter: one query over 2,000 cluster documents
per round, by the generated matcher, the reference closures and the store (indexes, then
the matcher) (``python -m pytest bench --benchmark-enable``)."""

from __future__ import annotations

import copy
import random

import pytest

from registry_server.filters import compile_filter
from registry_server.filters.closures import compile_closures
from registry_server.store import EmbeddedStore

from .registry_filter import FILTERS, make_cluster

DOCS = [make_cluster(i, random.Random(i)) for i in range(2_000)]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    store = EmbeddedStore(tmp_path_factory.mktemp("bench") / "r.sqlite3", ["clusters"])
    store.insert_many("clusters", {d["id"]: copy.deepcopy(d) for d in DOCS})
    yield store
    store.close()


@pytest.mark.parametrize("form", ["generated", "closures", "store"])
@pytest.mark.parametrize("name", list(FILTERS))
def test_filter(benchmark, store, name, form):
    flt = FILTERS[name]
    compile_ = compile_filter if form == "generated" else compile_closures

    def run():
        if form == "store":
            return store.find("clusters", flt)
        match = compile_(flt)  # once per query, as the server does
        return [d for d in DOCS if match(d)]

    expected = [d["id"] for d in DOCS if compile_closures(flt)(d)]
    assert [d["id"] for d in run()] == expected
    benchmark(run)
