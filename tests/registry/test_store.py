"""The embedded store: indexed queries give exactly what a full scan gives, through
inserts, replacements and deletes."""

from __future__ import annotations

import copy

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from registry_server.filters import compile_filter
from registry_server.store import EmbeddedStore

from .test_query_differential import cluster, filters

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))

equalities = st.one_of(
    st.fixed_dictionaries({"status": st.sampled_from(["live", "down", "draining"])}),
    st.fixed_dictionaries({"nodes.nodeData.id": st.sampled_from(["gpu", "cpu", "eu"])}),
    st.fixed_dictionaries({"reputation": st.one_of(st.integers(-5, 100),
                                                   st.floats(0, 100).map(round))}),
    st.fixed_dictionaries({"tags": st.sampled_from(["gpu", "eu", ""])}),
    st.fixed_dictionaries({"config.region": st.fixed_dictionaries(
        {"$in": st.lists(st.sampled_from(["eu", "us", "gpu"]), min_size=1, max_size=2)})}),
    # range conditions (the range index)
    st.fixed_dictionaries({"reputation": st.dictionaries(
        st.sampled_from(["$gt", "$gte", "$lt", "$lte"]),
        st.one_of(st.integers(-5, 100), st.floats(-10, 100, allow_nan=False)),
        min_size=1, max_size=2)}),
    st.tuples(st.sampled_from(["nodes.nodeData.gpus.count", "config.cost", "config.flags",
                               "extra"]),
              st.dictionaries(st.sampled_from(["$gt", "$gte", "$lt", "$lte"]),
                              st.one_of(st.integers(-5, 100),
                                        st.floats(-10, 10, allow_nan=False)),
                              min_size=1, max_size=2)).map(lambda t: {t[0]: t[1]}),
    st.tuples(st.sampled_from(["tags", "config.region", "nodes.nodeData.id"]),
              st.dictionaries(st.sampled_from(["$gt", "$gte", "$lt", "$lte"]),
                              st.sampled_from(["", "e", "eu", "gpu", "zz"]),
                              min_size=1, max_size=2)).map(lambda t: {t[0]: t[1]}),
)  # fmt: skip


def rewrite_some(data, store, docs: dict, check) -> None:
    """Up to 4 drawn documents deleted or replaced, in the store and in ``docs`` (the
    model) alike, with ``check()`` after each write."""
    for doc_id in data.draw(st.lists(st.sampled_from(sorted(docs)), max_size=4)):
        if doc_id not in docs:
            continue
        if data.draw(st.booleans()):
            store.delete("clusters", doc_id)
            del docs[doc_id]
        else:
            new = dict(data.draw(cluster(0)), id=doc_id)
            store.replace("clusters", doc_id, copy.deepcopy(new))
            docs[doc_id] = new
        check()


@SETTINGS
@given(st.lists(cluster(0), min_size=1, max_size=15), equalities, filters(), st.data())
def test_indexed_find_equals_full_scan(tmp_path_factory, documents, equality, extra, data):
    store = EmbeddedStore(tmp_path_factory.mktemp("s") / "db.sqlite3", ["clusters"])
    docs = {}
    try:
        for i, doc in enumerate(documents):
            doc = dict(doc, id=f"c{i}")
            docs[doc["id"]] = doc
        if data.draw(st.booleans()):
            store.insert_many("clusters", copy.deepcopy(docs))
        else:
            for doc_id, doc in docs.items():
                store.insert("clusters", doc_id, copy.deepcopy(doc))
        combine = data.draw(st.booleans()) and not set(equality) & set(extra)
        flt = {**equality, **extra} if combine else equality

        def check():
            match = compile_filter(flt)
            expected = [d["id"] for d in docs.values() if match(d)]
            assert [d["id"] for d in store.find("clusters", flt)] == expected, flt

        check()  # builds the index
        rewrite_some(data, store, docs, check)  # the index must follow the writes
        new = dict(data.draw(cluster(0)), id="late")
        store.insert("clusters", "late", copy.deepcopy(new))
        docs["late"] = new
        check()
    finally:
        store.close()


def test_insert_many_is_all_or_nothing(tmp_path):
    import pytest

    from registry_server.errors import Conflict

    store = EmbeddedStore(tmp_path / "db.sqlite3", ["blocks"])
    store.insert("blocks", "b1", {"id": "b1"})
    with pytest.raises(Conflict):
        store.insert_many("blocks", {"b2": {"id": "b2"}, "b1": {"id": "b1"}})
    assert [d["id"] for d in store.find("blocks", {})] == ["b1"]
    store.close()
    again = EmbeddedStore(tmp_path / "db.sqlite3", ["blocks"])
    assert again.count("blocks") == 1
    again.close()


def test_index_equality_is_exact_for_odd_numbers_and_shapes(tmp_path):
    """The index answers its condition without the matcher, so its keys must be equal
    exactly when the matcher's values are: 1 == 1.0, big ints not rounded, true != 1."""
    values = [2**53 + 1, 2**53, 1.0, 1, True, [1, {"a": 1}], {"a": 1}, [[1]], "1", None,
              [2**53 + 1, "x"], 0.5]  # fmt: skip
    store = EmbeddedStore(tmp_path / "db.sqlite3", ["clusters"])
    try:
        docs = {f"d{i}": {"id": f"d{i}", "v": v, "w": i % 2} for i, v in enumerate(values)}
        store.insert_many("clusters", copy.deepcopy(docs))
        for flt in ({"v": 2**53}, {"v": 2**53 + 1}, {"v": 1}, {"v": 1.0}, {"v": "1"},
                    {"v": {"$in": [1, "x"]}}, {"v": 0.5, "w": 0}, {"v": {"$eq": 1}, "w": 1},
                    {"v": 1, "w": {"$ne": 1}}):  # fmt: skip
            match = compile_filter(flt)
            expected = [d["id"] for d in docs.values() if match(d)]
            assert [d["id"] for d in store.find("clusters", flt)] == expected, flt
        for flt in ({"v": {"$gt": 2**53}}, {"v": {"$gte": 1}}, {"v": {"$lt": 1}},
                    {"v": {"$lte": 1.0, "$gt": 0}}, {"v": {"$gt": "0"}}, {"v": {"$lt": "x"}},
                    {"v": {"$gte": float("-inf")}}, {"v": {"$gt": 0}, "w": 1},
                    {"v": {"$gt": 0}, "w": {"$lt": 1}}, {"v": 1, "w": {"$gte": 0}}):  # fmt: skip
            match = compile_filter(flt)
            expected = [d["id"] for d in docs.values() if match(d)]
            assert [d["id"] for d in store.find("clusters", flt)] == expected, flt
        # Writes keep the range index right.
        store.replace("clusters", "d2", {"id": "d2", "v": [7, float("nan")], "w": 1})
        store.delete("clusters", "d0")
        docs["d2"] = {"id": "d2", "v": [7, float("nan")], "w": 1}
        del docs["d0"]
        for flt in ({"v": {"$gt": 5}}, {"v": {"$gte": 1, "$lt": 10}}, {"v": {"$gt": 2**53}}):
            match = compile_filter(flt)
            expected = [d["id"] for d in docs.values() if match(d)]
            assert [d["id"] for d in store.find("clusters", flt)] == expected, flt
        assert [d["id"] for d in store.find("clusters", {"v": 2**53})] == ["d1"]
        assert [d["id"] for d in store.find("clusters", {"v": 1})] == ["d3", "d5"]
    finally:
        store.close()


def test_replace_if_is_a_compare_and_swap(tmp_path):
    """Issue 13 (1): a write computed from an old revision is refused (Stale)."""
    import pytest

    from registry_server.errors import NotFound, Stale

    store = EmbeddedStore(tmp_path / "db.sqlite3", ["blocks"])
    store.insert("blocks", "b1", {"id": "b1", "n": 0})
    doc, rev = store.get_for_update("blocks", "b1")
    store.replace("blocks", "b1", {"id": "b1", "n": 5})  # another writer
    with pytest.raises(Stale):
        store.replace_if("blocks", "b1", {"id": "b1", "n": 1}, rev)
    doc, rev = store.get_for_update("blocks", "b1")
    assert store.replace_if("blocks", "b1", {"id": "b1", "n": doc["n"] + 1}, rev)["n"] == 6
    store.delete("blocks", "b1")
    store.insert("blocks", "b1", {"id": "b1", "n": 0})  # deleted and created again
    with pytest.raises(Stale):
        store.replace_if("blocks", "b1", {"id": "b1", "n": 7}, rev)
    store.delete("blocks", "b1")
    with pytest.raises(NotFound):
        store.replace_if("blocks", "b1", {"id": "b1"}, rev)
    store.close()
