"""Sorted queries with a limit walk a sort index (registry_server/filters/sorted.py) and
the embedded store keeps documents encoded, decoding them when read: both must give
exactly what decoding everything and sorting every match gives."""

from __future__ import annotations

import copy
import math
from unittest import mock

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from registry_server import store as store_module
from registry_server.filters import compile_filter
from registry_server.options import apply_options, check_options
from registry_server.store import DECODED_CACHE_MB, MAX_AUTO_SORT_INDEXES, EmbeddedStore

from .test_query_differential import cluster, filters, paths
from .test_store import equalities, rewrite_some

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))

sorts = st.lists(st.tuples(st.one_of(paths, st.sampled_from(["id", "status"])),
                           st.sampled_from([1, -1])),
                 min_size=1, max_size=3, unique_by=lambda t: t[0]).map(dict)  # fmt: skip


def _sorted_query(store, flt, options):
    """What the HTTP layer runs for a sorted query with a limit."""
    skip = options.get("skip") or 0
    k = skip + options["limit"]
    pairs, skipped = store.find_sorted("clusters", compile_filter(flt), options["sort"], k, skip)
    assert skipped in (0, skip)
    if skipped:  # the walk: only what comes after skip, at most limit of it
        assert len(pairs) <= options["limit"]
    return apply_options(pairs, {**options, "skip": skip - skipped}, positioned=True)


@SETTINGS
@given(st.lists(cluster(0), min_size=1, max_size=15), st.one_of(st.just({}), equalities),
       filters(), sorts, st.integers(1, 8), st.integers(0, 3), st.data())  # fmt: skip
def test_sort_index_walk_equals_full_sort(tmp_path_factory, documents, equality, extra, sort,
                                          limit, skip, data):  # fmt: skip
    cache_mb = data.draw(st.sampled_from([0, DECODED_CACHE_MB]))  # decoded: never or all
    store = EmbeddedStore(tmp_path_factory.mktemp("s") / "db.sqlite3", ["clusters"], cache_mb)
    docs = {}
    try:
        for i, doc in enumerate(documents):
            doc = dict(doc, id=f"c{i}")
            docs[doc["id"]] = doc
        store.insert_many("clusters", copy.deepcopy(docs))
        combine = data.draw(st.booleans()) and not set(equality) & set(extra)
        flt = {**equality, **extra} if combine else data.draw(st.sampled_from([equality, extra]))
        options = check_options({"sort": sort, "limit": limit, "skip": skip})
        # no sort index (past what queries may cause): the top-k pass
        cap = data.draw(st.sampled_from([MAX_AUTO_SORT_INDEXES, 0]))

        def check():
            expected = apply_options([copy.deepcopy(d) for d in docs.values()
                                      if compile_filter(flt)(d)], options)  # fmt: skip
            with mock.patch.object(store_module, "MAX_AUTO_SORT_INDEXES", cap):
                assert _sorted_query(store, flt, options) == expected, (flt, options)

        check()  # builds the indexes
        rewrite_some(data, store, docs, check)
        for name in ("late", "b-late"):  # at the end of the insertion order: ties last
            new = dict(data.draw(cluster(0)), id=name)
            store.insert("clusters", name, copy.deepcopy(new))
            docs[name] = new
        check()
    finally:
        store.close()


def test_walks_through_mixed_kinds_ties_and_many_documents(tmp_path):
    """Values of every kind at the sort path (arrays by their smallest or largest
    element, missing and null, objects), many ties, and enough documents that the
    equality and range indexes leave more candidates than the walk needs."""
    values = [None, 3, 3.0, -1, 2**60, "a", "b", "", [], [5, "x"], [2, 9], {"k": 1}, True,
              False, [[1]], 0.5, [None]]  # fmt: skip
    store = EmbeddedStore(tmp_path / "db.sqlite3", ["clusters"])
    docs = {}
    try:
        for i in range(600):
            doc = {"id": f"d{i:03d}", "s": ["x", "y", "z"][i % 3], "n": i % 17}
            if i % 11:
                doc["v"] = values[i % len(values)]
            docs[doc["id"]] = doc
        store.insert_many("clusters", copy.deepcopy(docs))
        flts = ({}, {"s": "x"}, {"n": {"$gte": 3}}, {"n": {"$lt": 2}}, {"s": "y", "n": 4},
                {"v": {"$type": "array"}},
                {"n": {"$gt": 1, "$lt": 16}, "s": {"$in": ["x", "z"]}})  # fmt: skip
        sorts = ({"v": 1}, {"v": -1}, {"v": -1, "n": 1}, {"n": 1, "v": -1, "id": -1}, {"s": -1})
        for round_ in range(2):
            for flt in flts:
                for sort in sorts:
                    for limit, skip in ((1, 0), (10, 0), (7, 30), (200, 0)):
                        options = check_options({"sort": sort, "limit": limit, "skip": skip})
                        match = compile_filter(flt)
                        expected = apply_options([d for d in docs.values() if match(d)], options)
                        got = _sorted_query(store, flt, options)
                        assert got == expected, (round_, flt, sort, limit, skip)
            for i in range(0, 600, 9):  # then writes, and everything again
                doc_id = f"d{i:03d}"
                if doc_id not in docs:
                    continue
                if i % 2:
                    store.delete("clusters", doc_id)
                    del docs[doc_id]
                else:
                    new = {"id": doc_id, "s": "x", "n": (i * 7) % 17, "v": values[i % 5]}
                    store.replace("clusters", doc_id, copy.deepcopy(new))
                    docs[doc_id] = new
    finally:
        store.close()


def test_sort_indexes_are_bounded(tmp_path):
    """Queries cause at most MAX_AUTO_SORT_INDEXES sort indexes, kept (no thrash); other
    sorts take the top-k pass and answer the same."""
    store = EmbeddedStore(tmp_path / "db.sqlite3", ["clusters"])
    try:
        docs = {f"d{i}": {"id": f"d{i}", **{f"f{j}": (i * (j + 3)) % 7 for j in range(12)}}
                for i in range(50)}  # fmt: skip
        store.insert_many("clusters", copy.deepcopy(docs))
        for j in [*range(12), 0, 11]:
            for sort in ({f"f{j}": -1}, {f"f{j}": 1, "id": -1}):
                options = check_options({"sort": sort, "limit": 5, "skip": j % 3})
                expected = apply_options(list(docs.values()), options)
                assert _sorted_query(store, {}, options) == expected
                assert len(store._sorts["clusters"]) <= MAX_AUTO_SORT_INDEXES
        first = sorted(store._sorts["clusters"])
        assert len(first) == MAX_AUTO_SORT_INDEXES
    finally:
        store.close()


def test_documents_read_back_from_their_encoded_form(tmp_path):
    """Documents are kept as their JSON and decoded when read: the same values after a
    restart (big ints exact, floats, unicode, NaN stored by a Python caller), and a read
    by id is a fresh copy (changing it changes nothing stored)."""
    path = tmp_path / "db.sqlite3"
    docs = {
        "a": {"id": "a", "big": 2**70 + 1, "f": 0.1, "neg": -0.0, "u": "é\u2028😀", "l": [1, [2]]},
        "b": {"id": "b", "nan": float("nan"), "inf": float("inf")},
        "c": {"id": "c", "nested": {"x": {"y": None}}, "t": True},
    }
    store = EmbeddedStore(path, ["clusters"])
    store.insert_many("clusters", copy.deepcopy({k: docs[k] for k in "ab"}))
    store.insert("clusters", "c", copy.deepcopy(docs["c"]))
    store.close()
    for cache_mb in (0, DECODED_CACHE_MB):
        store = EmbeddedStore(path, ["clusters"], cache_mb)
        try:
            for _ in range(2):  # the second time from the cache, when there is one
                assert [d["id"] for d in store.find("clusters", {})] == ["a", "b", "c"]
                for doc_id, doc in docs.items():
                    got = store.get("clusters", doc_id)
                    if doc_id == "b":
                        assert math.isnan(got["nan"]) and got["inf"] == float("inf")
                    else:
                        assert got == doc and repr(got) == repr(doc)
                    got["changed"] = True
                    assert "changed" not in store.get("clusters", doc_id)
                assert [d["id"] for d in store.find("clusters", {"big": 2**70 + 1})] == ["a"]
                assert [d["id"] for d in store.find("clusters", {"big": 2**70})] == []
        finally:
            store.close()


def test_the_decoded_cache_follows_writes_and_its_limit(tmp_path):
    """Cached documents are replaced by writes; an entry decoded from bytes that are no
    longer the document's (a query racing a write leaves one) is never used; past its
    limit the store's documents are not cached at all."""
    store = EmbeddedStore(tmp_path / "db.sqlite3", ["clusters"], cache_mb=0.01)  # 10 kB
    try:
        for i in range(20):
            store.insert("clusters", f"d{i}", {"id": f"d{i}", "n": i})
        assert len(store.find("clusters", {"n": {"$gte": 0}})) == 20  # all cached now
        assert len(store._cache["clusters"]) == 20
        store.replace("clusters", "d3", {"id": "d3", "n": 103})
        store._cache["clusters"]["d4"] = (b'{"id": "d4", "n": 104}', {"id": "d4", "n": 104})
        found = {d["id"]: d["n"] for d in store.find("clusters", {})}
        assert found == {f"d{i}": 103 if i == 3 else i for i in range(20)}
        store.delete("clusters", "d5")
        assert "d5" not in store._cache["clusters"]
        assert [d["id"] for d in store.find("clusters", {"n": 5})] == []
        big = "x" * 20_000  # past the limit: the cache is emptied and stays empty
        store.insert("clusters", "big", {"id": "big", "n": -1, "s": big})
        assert store._cache["clusters"] == {}
        assert [d["id"] for d in store.find("clusters", {"n": {"$lt": 0}})] == ["big"]
        assert store._cache["clusters"] == {}
    finally:
        store.close()


def test_index_builds_pause_the_collector_and_restore_it():
    """Builds pause the cyclic collector (counted: nested or concurrent builds end with
    the last) and leave it as they found it, enabled or not."""
    import gc

    from registry_server.store import _collector_paused

    assert gc.isenabled()
    with _collector_paused():
        assert not gc.isenabled()
        with _collector_paused():
            assert not gc.isenabled()
        assert not gc.isenabled()
    assert gc.isenabled()
    gc.disable()
    try:
        with _collector_paused():
            assert not gc.isenabled()
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_index_builds_make_no_reference_cycles(tmp_path):
    """Builds run with the collector paused, so they must leave no cyclic garbage (a
    walker made per document did: 200 MB at 100,000 documents)."""
    import gc

    from registry_server.filters.sorted import sort_spec

    store = EmbeddedStore(tmp_path / "db.sqlite3", ["clusters"], cache_mb=0)
    try:
        for i in range(300):
            doc = {"id": f"d{i}", "s": "xy"[i % 2], "a": [{"n": i % 7}, {"n": [i, {"m": 1}]}]}
            store.insert("clusters", f"d{i}", doc)
        flt = compile_filter({"a.n": {"$gte": 3}, "s": "x", "a.n.m": 1})  # 3 indexes
        spec = sort_spec({"a.n": -1, "a.n.m": 1})
        gc.collect()
        gc.disable()
        try:
            store._ensure("clusters", flt, spec)
            assert gc.collect() == 0
        finally:
            gc.enable()
        assert len(store._indexes["clusters"].all) == 3
    finally:
        store.close()
