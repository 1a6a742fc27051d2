"""Hypothesis: the registry's compiled filters and updates agree with mongomock on random
documents shaped like the seeds' clusters, and on random filters and updates.

One corner is left out on purpose: a dotted path *through* an empty array
(nodes.nodeData.id with nodeData = []). We treat it as missing everywhere; mongomock
treats it as missing for $exists/$ne/$nin but not for null equality or $not, which no
single rule reproduces, so generated nodeData lists are never empty."""

from __future__ import annotations

import copy
import json

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from registry_server.errors import QueryError, UpdateError
from registry_server.filters import compile_filter
from registry_server.update import apply_update

mongomock = pytest.importorskip("mongomock")

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))

words = st.sampled_from(["gpu", "cpu", "edge", "eu", "us", "a100", "h100", ""])
small_ints = st.integers(-5, 100)
# No booleans: mongomock (Python ==) matches false to 0 and true to 1, MongoDB does not;
# tests/registry/test_query.py checks our (MongoDB's) behaviour for them.
scalars = st.one_of(small_ints, words, st.none(),
                    st.floats(-10, 10, allow_nan=False).map(lambda f: round(f, 2)))  # fmt: skip


def maybe(key, strategy):
    return st.one_of(st.just({}), strategy.map(lambda v: {key: v}))


@st.composite
def cluster(draw, index):
    doc = {"id": f"cluster-{index}"}
    for key, strat in [
        ("status", st.sampled_from(["live", "draining", "down"])),
        ("reputation", small_ints),
        ("tags", st.lists(words, max_size=3)),
        ("config", st.fixed_dictionaries({}, optional={"region": words, "cost": scalars,
                                                       "flags": st.lists(small_ints, max_size=3)})),
        ("nodes", st.fixed_dictionaries({"count": small_ints}, optional={
            "nodeData": st.lists(st.fixed_dictionaries(
                {"id": words}, optional={"gpus": st.fixed_dictionaries({"count": small_ints}),
                                         "tags": st.lists(words, max_size=2)}),
                min_size=1, max_size=3)})),
        ("extra", scalars),
    ]:  # fmt: skip
        doc.update(draw(maybe(key, strat)))
    return doc


docs = st.integers(1, 12).flatmap(lambda n: st.tuples(*[cluster(i) for i in range(n)]))
paths = st.sampled_from(["status", "reputation", "tags", "config.region", "config.cost",
                         "config.flags", "nodes.count", "nodes.nodeData.id",
                         "nodes.nodeData.gpus.count", "nodes.nodeData.tags", "extra",
                         "missing", "nodes.nodeData.0.id"])  # fmt: skip
comparable = st.one_of(small_ints, words)


@st.composite
def condition(draw):
    op = draw(st.sampled_from(["eq", "$eq", "$ne", "$gt", "$gte", "$lt", "$lte", "$in", "$nin",
                               "$exists", "$size", "$all", "$regex", "$not", "$type"]))  # fmt: skip
    if op == "eq":
        return draw(st.one_of(scalars, st.lists(words, max_size=2)))
    if op in ("$eq", "$ne"):
        return {op: draw(scalars)}
    if op in ("$gt", "$gte", "$lt", "$lte"):
        return {op: draw(comparable)}
    if op in ("$in", "$nin"):
        return {op: draw(st.lists(scalars, max_size=3))}
    if op == "$exists":
        return {op: draw(st.booleans())}  # a flag, not a value: fine
    if op == "$size":
        return {op: draw(st.integers(0, 3))}
    if op == "$all":
        return {op: draw(st.lists(words, min_size=1, max_size=2))}
    if op == "$regex":
        return {op: draw(st.sampled_from(["^g", "u$", "a1", "E", "^$"])),
                "$options": draw(st.sampled_from(["", "i"]))}  # fmt: skip
    if op == "$type":
        return {op: draw(st.sampled_from(["string", "number", "array", "object", "bool", "null"]))}
    return {"$not": {draw(st.sampled_from(["$gt", "$lt"])): draw(small_ints)}}


@st.composite
def filters(draw, depth=0):
    kind = draw(st.sampled_from(["field", "field", "field", "and", "or", "nor", "elem"]
                                if depth < 2 else ["field"]))  # fmt: skip
    if kind == "field":
        path, cond = draw(paths), draw(condition())
        if isinstance(cond, dict) and "$size" in cond:
            # mongomock applies $size to strings too (MongoDB does not): keep to arrays
            path = draw(st.sampled_from(["tags", "config.flags", "nodes.nodeData.tags"]))
        if isinstance(cond, dict) and "$all" in cond:
            # mongomock's $all misses matches when some array element lacks the field
            path = draw(st.sampled_from(["tags", "config.flags"]))
        if isinstance(cond, dict) and "$exists" in cond and path.startswith("nodes.nodeData."):
            # mongomock counts an element's empty array as absent there; test_query.py
            # pins our behaviour (exists if any element has the field)
            path = draw(st.sampled_from(["status", "config.region", "nodes.count", "extra"]))
        return {path: cond}
    if kind == "elem":
        no_size = condition().filter(lambda c: not (isinstance(c, dict) and "$size" in c))
        return {"nodes.nodeData": {"$elemMatch": {draw(st.sampled_from(["id", "gpus.count"])):
                                                  draw(no_size)}}}  # fmt: skip
    subs = draw(st.lists(filters(depth + 1), min_size=1, max_size=3))
    return {f"${kind}": subs}


def mongo_ids(collection, flt):
    return sorted(d["id"] for d in collection.find(flt))


@SETTINGS
@given(docs, filters())
def test_filters_match_like_mongomock(documents, flt):
    collection = mongomock.MongoClient().db.clusters
    collection.insert_many(copy.deepcopy(list(documents)))
    try:
        expected = mongo_ids(collection, flt)
    except Exception:  # mongomock cannot evaluate it: nothing to compare against
        assume(False)
    match = compile_filter(flt)
    assert sorted(d["id"] for d in documents if match(d)) == expected, flt


updates = st.one_of(
    st.fixed_dictionaries({"$set": st.dictionaries(st.sampled_from(
        ["status", "config.region", "new.deep.field", "reputation"]), scalars, min_size=1)}),
    st.fixed_dictionaries({"$inc": st.dictionaries(st.sampled_from(
        ["reputation", "nodes.count", "counter"]), small_ints, min_size=1)}),
    st.fixed_dictionaries({"$unset": st.dictionaries(st.sampled_from(
        ["status", "config", "nodes.count", "absent"]), st.just(""), min_size=1)}),
    st.fixed_dictionaries({"$push": st.dictionaries(st.sampled_from(["tags", "newlist"]),
                                                    words, min_size=1)}),
    st.fixed_dictionaries({"$addToSet": st.dictionaries(st.sampled_from(["tags", "config.flags"]),
                                                        st.one_of(words, small_ints), min_size=1)}),
    st.fixed_dictionaries({"$pull": st.dictionaries(st.sampled_from(["tags", "config.flags"]),
                                                    st.one_of(words, small_ints), min_size=1)}),
    st.fixed_dictionaries({"$min": st.dictionaries(st.sampled_from(["reputation"]), small_ints,
                                                   min_size=1)}),
    st.fixed_dictionaries({"$max": st.dictionaries(st.sampled_from(["reputation"]), small_ints,
                                                   min_size=1)}),
    st.fixed_dictionaries({"$rename": st.dictionaries(st.sampled_from(["status", "extra"]),
                                                      st.sampled_from(["state", "misc"]),
                                                      min_size=1, max_size=1)}),
)  # fmt: skip


@SETTINGS
@given(cluster(0), updates)
def test_updates_apply_like_mongomock(document, update):
    collection = mongomock.MongoClient().db.clusters
    collection.insert_one(copy.deepcopy(document))
    try:
        collection.update_one({"id": document["id"]}, copy.deepcopy(update))
        expected = collection.find_one({"id": document["id"]}, {"_id": 0})
    except Exception:
        with pytest.raises((UpdateError, QueryError)):
            apply_update(document, update)
        return
    try:
        got = apply_update(document, update)
    except UpdateError:
        pytest.fail(f"mongomock applied {update} to {document}, we refused")
    assert got == expected


@SETTINGS
@given(docs, filters())
def test_generated_filters_agree_with_the_closures(documents, flt):
    """compile_filter generates source; compile_closures is the reference form."""
    from registry_server.filters.closures import compile_closures

    try:
        reference = compile_closures(flt)
    except QueryError:
        with pytest.raises(QueryError):
            compile_filter(flt)
        return
    generated = compile_filter(flt)
    assert [generated(d) for d in documents] == [reference(d) for d in documents], flt


ODD_DOCS = [
    {"a": True, "b": [1, [2, 3], {"c": 4}], "n": {"0": "key", "list": [{"x": 1}, {"x": [2]}]}},
    {"a": 1, "b": [{"c": [4, 5]}, {"c": None}], "n": [{"0": "k2"}, "s", [{"x": 3}]]},
    {"a": None, "b": [], "n": {"list": []}, "tags": ["gpu", 1.0, False]},
    {"b": "str", "n": None, "tags": [[["gpu"]]], "deep": [[{"x": 1}]]},
]
ODD_FILTERS = [
    {"a": True}, {"a": 1}, {"a": {"$gt": 0}}, {"a": {"$gte": False}}, {"a": None},
    {"b.c": 4}, {"b.c": None}, {"b.1": 2}, {"b.1": [2, 3]}, {"b.0.c": {"$in": [5, "x"]}},
    {"b.2.c": 4}, {"n.0": "key"}, {"n.0": "k2"}, {"n.list.x": 2}, {"n.list.x": {"$size": 1}},
    {"n.list.1.x": 2}, {"n.0.x": 3}, {"deep.x": 1}, {"deep.0.x": 1}, {"tags": 1},
    {"tags": {"$nin": ["gpu"]}}, {"tags": {"$type": "bool"}}, {"tags": {"$ne": 1}},
    {"b": {"$elemMatch": {"$gt": 1}}}, {"b": {"$elemMatch": {"c": {"$exists": True}}}},
    {"b.c": {"$exists": False}}, {"n": {"$not": {"$type": "object"}}},
    {"tags": {"$not": {"$regex": "^G", "$options": "i"}}}, {"tags": {"$all": ["gpu"]}},
    {"$nor": [{"a": True}, {"b": "str"}]}, {"$and": [{"a": {"$exists": True}}, {"b.c": 4}]},
    {"b": {"$gte": 1, "$lt": 2}}, {"a": {"$in": [True, None]}}, {"n.list": {"$size": 0}},
]  # fmt: skip


@pytest.mark.parametrize("flt", ODD_FILTERS, ids=[json.dumps(f) for f in ODD_FILTERS])
def test_generated_and_closure_forms_agree_on_odd_shapes(flt):
    """Booleans, numeric path parts, nested arrays: beyond what mongomock can referee."""
    from registry_server.filters.closures import compile_closures

    generated, reference = compile_filter(flt), compile_closures(flt)
    assert [generated(d) for d in ODD_DOCS] == [reference(d) for d in ODD_DOCS]
