"""Issue 13: MongoDB's semantics where the registry differed (sort, projection,
comparisons, updates, numbers JSON cannot carry). Each test says whether its expectation
comes from mongomock (where it is right) or from MongoDB's documentation (where
mongomock is wrong or silent)."""

from __future__ import annotations

import copy

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from registry_server.options import apply_options, check_options

mongomock = pytest.importorskip("mongomock")

SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))


def _ids(docs):
    return [d["i"] for d in docs]


def _sorted(docs, sort):
    return _ids(apply_options(copy.deepcopy(docs), check_options({"sort": sort})))


# ---------------------------------------------------------------------------- sort (3)

# Values of every JSON type. Booleans are left to the written tests: mongomock's own
# comparison of True with 1 follows Python's.
sort_scalars = st.one_of(
    st.none(),
    st.integers(-3, 3),
    st.floats(-3, 3, allow_nan=False).map(lambda f: round(f, 1)),
    st.sampled_from(["", "a", "b", "ab", "B"]),
)
sort_objects = st.recursive(
    st.dictionaries(st.sampled_from(["a", "b", "c"]), sort_scalars, max_size=2),
    lambda inner: st.dictionaries(
        st.sampled_from(["a", "b", "c"]),
        st.one_of(sort_scalars, inner, st.lists(st.one_of(sort_scalars, inner), max_size=2)),
        max_size=2,
    ),
    max_leaves=5,
)
# No arrays as the sorted value here: mongomock picks the wrong element of [null, 0],
# [null, []] and ["", 0] (MongoDB takes the smallest ascending and the largest
# descending, in BSON order); arrays are in the written tests below.
sort_values = st.one_of(sort_scalars, sort_objects)


def _tie_class(value) -> str:
    from registry_server.filters.values import bson_key

    return "null" if value in ("missing", None) else repr(bson_key(value))


# Values are distinct in sort order, except null and missing (a tie both sides keep in
# insertion order): mongomock's order for two equal documents changed from one process
# to the next (MongoDB leaves the order of ties unspecified).
@SETTINGS
@given(st.lists(st.one_of(st.just("missing"), sort_values), min_size=1, max_size=8,
                unique_by=_tie_class).map(lambda vs: vs + ["missing", None][: len(vs) % 3]),
       st.sampled_from([1, -1]))  # fmt: skip
def test_sort_on_a_top_level_field_agrees_with_mongomock(values, direction):
    """Mixed types, null against missing, objects pair by pair (arrays inside them
    element by element): mongomock gets these right."""
    docs = [{"i": i} if v == "missing" else {"i": i, "a": v} for i, v in enumerate(values)]
    coll = mongomock.MongoClient().db.c
    coll.insert_many(copy.deepcopy(docs))
    expected = _ids(coll.find({}, {"_id": 0}).sort("a", direction))
    got = _sorted(docs, {"a": direction})
    assert got == expected, (ascii(values), direction, got, expected)


def test_sort_follows_mongodb_documentation():
    """Written from MongoDB's documentation (BSON comparison order; DOCS-2760's example):
    an empty array sorts below a missing field, missing and null are equal, arrays sort
    by their smallest element ascending and their largest descending."""
    docs = [{"i": 0}, {"i": 1, "a": 1}, {"i": 2, "a": []}, {"i": 3, "a": [1]},
            {"i": 4, "a": [0, 1]}]  # fmt: skip
    assert _sorted(docs, {"a": 1}) == [2, 0, 4, 1, 3]
    assert _sorted(docs, {"a": -1}) == [1, 3, 4, 0, 2]
    # null and missing (the HTTP 500 of issue 13): equal, below every number
    docs = [{"i": 0, "a": None}, {"i": 1}, {"i": 2, "a": -5}, {"i": 3, "a": "x"}]
    assert _sorted(docs, {"a": 1}) == [0, 1, 2, 3]
    assert _sorted(docs, {"a": -1}) == [3, 2, 0, 1]
    # type order: null < numbers < strings < objects < arrays < booleans
    docs = [{"i": 0, "a": True}, {"i": 1, "a": {"x": 1}}, {"i": 2, "a": "s"},
            {"i": 3, "a": 2.5}, {"i": 4, "a": None}, {"i": 5, "a": [[1]]},
            {"i": 6, "a": False}]  # fmt: skip
    assert _sorted(docs, {"a": 1}) == [4, 3, 2, 1, 5, 6, 0]
    # an array inside an array is one value (an array), above null
    docs = [{"i": 0}, {"i": 1, "a": [None, []]}, {"i": 2, "a": [None, 0]}]
    assert _sorted(docs, {"a": -1}) == [1, 2, 0]
    assert _sorted(docs, {"a": 1}) == [0, 1, 2]
    docs = [{"i": 0, "a": ["", 0]}, {"i": 1, "a": -1}, {"i": 2, "a": ["b", "a"]}]
    assert _sorted(docs, {"a": 1}) == [1, 0, 2]
    assert _sorted(docs, {"a": -1}) == [2, 0, 1]
    # embedded documents: pair by pair (value type, then field name, then value);
    # a document that is a prefix of another is less
    docs = [{"i": 0, "a": {"b": 1, "c": 1}}, {"i": 1, "a": {"b": 1}}, {"i": 2, "a": {"b": "x"}},
            {"i": 3, "a": {"a": 9}}, {"i": 4, "a": {"b": 0}}]  # fmt: skip
    assert _sorted(docs, {"a": 1}) == [3, 4, 1, 0, 2]


def test_sort_on_paths_through_arrays_of_subdocuments():
    """Written from MongoDB's documentation, where mongomock is wrong (it sorts
    [{b: 3}, {b: 1}] after [{b: 2}] ascending): the values reached through the array
    are the candidates, an element without the field counts as null."""
    docs = [{"i": 0, "a": [{"b": 3}, {"b": 1}]}, {"i": 1, "a": [{"b": 2}]},
            {"i": 2, "a": [{"b": 0}, {}]}, {"i": 3, "a": {"b": [5, -1]}}]  # fmt: skip
    assert _sorted(docs, {"a.b": 1}) == [2, 3, 0, 1]
    assert _sorted(docs, {"a.b": -1}) == [3, 0, 1, 2]
    # positions in the path, and compound sorts with mixed directions
    docs = [{"i": 0, "a": [1, 5], "k": "x"}, {"i": 1, "a": [2], "k": "x"},
            {"i": 2, "a": [0, 9], "k": "y"}]  # fmt: skip
    assert _sorted(docs, {"a.0": -1}) == [1, 0, 2]
    assert _sorted(docs, {"k": -1, "a": 1}) == [2, 0, 1]


# ---------------------------------------------------------------------- projection (4)


def _project(doc, projection):
    return apply_options([copy.deepcopy(doc)], check_options({"projection": projection}))[0]


def test_projection_through_arrays_of_subdocuments():
    """Written from MongoDB's documentation ("Projection on Embedded Documents in an
    Array": {"instock.qty": 1} keeps qty in every element): the examples of issue 13,
    and elements that are not documents (dropped by an inclusion, kept by an
    exclusion; mongomock crashes on them)."""
    doc = {"n": {"d": [{"i": 1, "j": 2}]}}
    assert _project(doc, {"n.d.i": 1}) == {"n": {"d": [{"i": 1}]}}
    assert _project(doc, {"n.d.i": 0}) == {"n": {"d": [{"j": 2}]}}
    doc = {"id": "x", "a": [{"b": 1, "c": 2}, {"c": 3}, 5, [{"b": 4, "c": 5}]], "z": 1}
    assert _project(doc, {"a.b": 1}) == {"a": [{"b": 1}, {}, [{"b": 4}]]}
    assert _project(doc, {"a.b": 0}) == {"id": "x", "a": [{"c": 2}, {"c": 3}, 5, [{"c": 5}]],
                                         "z": 1}  # fmt: skip
    assert _project(doc, {"a.b": 1, "z": 1}) == {"a": [{"b": 1}, {}, [{"b": 4}]], "z": 1}
    # a scalar on the way: an inclusion drops it, an exclusion keeps it
    assert _project({"a": 5, "b": 1}, {"a.x": 1}) == {}
    assert _project({"a": 5, "b": 1}, {"a.x": 0}) == {"a": 5, "b": 1}
    # the document's own field order, not the projection's
    assert list(_project({"a": 1, "b": 2, "c": 3}, {"c": 1, "a": 1})) == ["a", "c"]


def test_projection_path_collisions_are_refused():
    """MongoDB refuses {"a": 1, "a.b": 1} (path collision); so do we, with a 400."""
    from registry_server.errors import QueryError

    for projection in ({"a": 1, "a.b": 1}, {"a.b": 0, "a": 0}, {"a..b": 1}):
        with pytest.raises(QueryError):
            check_options({"projection": projection})


proj_docs = st.recursive(
    st.one_of(st.integers(0, 3), st.sampled_from(["x", "y"])),
    lambda inner: st.one_of(
        st.dictionaries(st.sampled_from(["a", "b", "c"]), inner, max_size=3),
        st.lists(st.dictionaries(st.sampled_from(["a", "b", "c"]), inner, max_size=3), max_size=3),
    ),
    max_leaves=10,
)
proj_paths = st.lists(
    st.lists(st.sampled_from(["a", "b", "c"]), min_size=1, max_size=3).map(".".join),
    min_size=1, max_size=3, unique=True,
).filter(lambda ps: not any(q.startswith(p + ".") for p in ps for q in ps))  # fmt: skip


def _scalar_on_the_way(value, parts) -> bool:
    if type(value) is list:
        return any(_scalar_on_the_way(e, parts) for e in value)
    if not parts:
        return False
    if type(value) is not dict:
        return True
    return parts[0] in value and len(parts) > 1 and _scalar_on_the_way(value[parts[0]], parts[1:])


@SETTINGS
@given(st.dictionaries(st.sampled_from(["a", "b", "c"]), proj_docs, max_size=3), proj_paths,
       st.sampled_from([0, 1]))  # fmt: skip
def test_projection_agrees_with_mongomock_on_arrays_of_documents(doc, paths, include):
    """Arrays holding documents only (mongomock crashes on scalars there); for an
    exclusion, no scalar on the way to an excluded path (mongomock drops {"a": 0} for
    {"a.b": 0}; MongoDB keeps it, see the written test above)."""
    if not include:
        assume(not any(_scalar_on_the_way(doc, p.split(".")) for p in paths))
    projection = dict.fromkeys(paths, include)
    coll = mongomock.MongoClient().db.c
    coll.insert_one(copy.deepcopy(doc))
    expected = coll.find_one({}, {"_id": 0, **projection})
    assert _project(doc, projection) == expected


# -------------------------------------------------------------------- comparisons (5)

cmp_scalars = st.one_of(st.integers(-2, 2), st.sampled_from(["a", "b"]))


def _sorted_keys(d: dict) -> dict:
    # Documents with the same fields in another order: mongomock compares them with
    # Python's == (equal), MongoDB field by field in order (not equal): that case is in
    # the written test_embedded_document_equality_is_key_order_sensitive below.
    return dict(sorted(d.items()))


cmp_objects = st.recursive(
    st.dictionaries(st.sampled_from(["x", "y"]), cmp_scalars, max_size=2).map(_sorted_keys),
    lambda inner: st.dictionaries(
        st.sampled_from(["x", "y"]), st.one_of(cmp_scalars, inner), max_size=2
    ).map(_sorted_keys),
    max_leaves=4,
)
# No array directly inside an array: mongomock does not compare such elements with an
# array operand ([[]] $lt [0]), which MongoDB's rule for array fields (each element,
# then the whole array) would.
cmp_arrays = st.lists(st.one_of(cmp_scalars, cmp_objects), max_size=3)
cmp_values = st.one_of(cmp_scalars, cmp_objects, cmp_arrays)


@SETTINGS
@given(
    st.lists(cmp_values, min_size=1, max_size=6),
    st.sampled_from(["$gt", "$gte", "$lt", "$lte"]),
    st.one_of(cmp_objects, cmp_arrays),
)
def test_comparisons_with_array_and_document_operands_agree_with_mongomock(values, op, arg):
    """MongoDB evaluates $gt/$gte/$lt/$lte with an array or a document operand (BSON
    order within the operand's type; an array field is compared whole and by its
    elements); mongomock agrees."""
    from registry_server.filters import compile_filter

    docs = [{"i": i, "a": v} for i, v in enumerate(values)]
    coll = mongomock.MongoClient().db.c
    coll.insert_many(copy.deepcopy(docs))
    flt = {"a": {op: arg}}
    expected = [d["i"] for d in coll.find(copy.deepcopy(flt))]
    match = compile_filter(flt)
    assert [d["i"] for d in docs if match(d)] == expected


def test_comparisons_with_null_follow_mongodb_documentation():
    """Written from MongoDB's documentation (null equals only null; a missing field and
    an array element without the field count as null): $gte/$lte null match what
    {"f": null} matches, $gt/$lt null match nothing. mongomock leaves missing fields out
    of $lte null."""
    from registry_server.filters import compile_filter

    docs = [{"a": [{"b": 1}, {}]}, {"a": [{"b": 1}]}, {"a": {"b": None}}, {}, {"a": 1}]
    for flt in ({"a.b": {"$lte": None}}, {"a.b": {"$gte": None}}):
        expected = [compile_filter({"a.b": None})(d) for d in docs]
        assert [compile_filter(flt)(d) for d in docs] == expected == [True, False, True, True,
                                                                      True]  # fmt: skip
    for flt in ({"a.b": {"$lt": None}}, {"a.b": {"$gt": None}}):
        assert not any(compile_filter(flt)(d) for d in docs)
    # embedded documents and arrays as operands, element by element
    assert compile_filter({"a": {"$gt": {"x": 1}}})({"a": [{"x": 2}]})
    assert not compile_filter({"a": {"$gt": {"x": 1}}})({"a": {"x": 1}})
    assert compile_filter({"a": {"$lt": [2]}})({"a": [1, 5]})
    assert compile_filter({"a": {"$gte": []}})({"a": []})


# ------------------------------------------------------------------------ updates (6)


def _update(doc, update):
    from registry_server.update import apply_update

    return apply_update(doc, update)


def test_min_max_compare_across_types_in_bson_order():
    """Written from MongoDB's documentation ($min/$max compare any two values in BSON
    comparison order); mongomock raises TypeError on every one of these."""
    assert _update({"a": None}, {"$min": {"a": 1}}) == {"a": None}  # null < numbers
    assert _update({"a": None}, {"$max": {"a": 1}}) == {"a": 1}
    assert _update({"a": "x"}, {"$min": {"a": 1}}) == {"a": 1}  # numbers < strings
    assert _update({"a": "x"}, {"$max": {"a": [1]}}) == {"a": [1]}  # strings < arrays
    assert _update({"a": {"b": 1}}, {"$max": {"a": {"b": 2}}}) == {"a": {"b": 2}}
    assert _update({"a": True}, {"$min": {"a": "s"}}) == {"a": "s"}  # strings < booleans
    assert _update({}, {"$max": {"a": None}}) == {"a": None}  # missing: set


def test_set_past_the_end_of_an_array_pads_with_nulls():
    """Written from MongoDB's documentation ($set on an array position past its end pads
    with nulls); mongomock crashes (IndexError) on the nested case."""
    assert _update({"a": [1]}, {"$set": {"a.3": 2}}) == {"a": [1, None, None, 2]}
    assert _update({"a": [1]}, {"$set": {"a.2.b": 2}}) == {"a": [1, None, {"b": 2}]}
    assert _update({"a": [1]}, {"$inc": {"a.1": 2}}) == {"a": [1, 2]}


def test_embedded_document_equality_is_key_order_sensitive():
    """The decision (MongoDB's, from its documentation: BSON documents are ordered and
    {a: 1, b: 2} does not equal {b: 2, a: 1}): equality of embedded documents, in
    filters, $addToSet and $pull, looks at field order. mongomock (Python ==) does not."""
    from registry_server.filters import compile_filter

    doc = {"a": {"x": 1, "y": 2}, "l": [{"x": 1, "y": 2}]}
    assert compile_filter({"a": {"x": 1, "y": 2}})(doc)
    assert not compile_filter({"a": {"y": 2, "x": 1}})(doc)
    assert not compile_filter({"l": {"y": 2, "x": 1}})(doc)
    assert compile_filter({"a": {"$ne": {"y": 2, "x": 1}}})(doc)
    # comparisons too: field by field in order, names before values ("y" > "x")
    assert compile_filter({"a": {"$lt": {"y": 2, "x": 1}}})(doc)
    assert not compile_filter({"a": {"$gte": {"y": 2, "x": 1}}})(doc)
    assert compile_filter({"a": {"$gt": {"x": 1, "y": 1}}})(doc)
    assert _update(doc, {"$addToSet": {"l": {"y": 2, "x": 1}}})["l"] == [
        {"x": 1, "y": 2}, {"y": 2, "x": 1}]  # fmt: skip
    assert _update(doc, {"$pull": {"l": {"x": 1, "y": 2}}})["l"] == []  # a sub-filter


push_arrays = st.lists(st.integers(-3, 3), max_size=4)


@SETTINGS
@given(push_arrays, push_arrays,
       st.fixed_dictionaries({}, optional={"$position": st.integers(-4, 4),
                                           "$slice": st.integers(-4, 4),
                                           "$sort": st.sampled_from([1, -1])}),
       st.sampled_from([None, 1, -1]))  # fmt: skip
def test_push_modifiers_and_pop_agree_with_mongomock(current, each, modifiers, pop):
    update = {"$push": {"a": {"$each": each, **modifiers}}}
    if pop is not None:
        update = {"$push": {"a": {"$each": each, **modifiers}}, "$pop": {"b": pop}}
    doc = {"i": 0, "a": current, "b": list(current)}
    coll = mongomock.MongoClient().db.c
    coll.insert_one(copy.deepcopy(doc))
    coll.update_one({"i": 0}, copy.deepcopy(update))
    assert _update(doc, update) == coll.find_one({}, {"_id": 0})
