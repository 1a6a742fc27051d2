"""Issue 23 item 9: expectations written from MongoDB's manual and matcher/update source
(not from mongomock), case by case. Each filter case runs on both forms of a compiled
filter (generated source and closures) and on the store's indexed path.

Sources, as read for these cases:
- "Query for Null or Missing Fields" (manual) and src/mongo/db/matcher/path.cpp: a path
  through an array visits the array's object elements; elements that are not objects
  hold nothing there (so ``{"a.b": null}`` matches neither ``{a: []}`` nor ``{a: [5]}``),
  while an object element without the field, or a scalar met where an object was
  needed, is a missing field (null matches it). ``$ne: null`` is its negation.
- path.cpp, array offsets: an array reached through a position at the end of the path
  is a value of its own; its elements are not tried one by one.
- "$elemMatch (query)": the value form applies its conditions to each element as it
  is; an object holding $and/$or/$nor is the document form.
- "$all": members are values, or all of them {$elemMatch: ...}; "no $ expressions".
- "$mod", "$comment", "Projection" (an empty projection returns every field).
- "Update Operators, Behavior": since 5.0, fields are processed in lexicographic order
  (numbers in names by value). "$rename": PathNotViable through a non-object.
"""

from __future__ import annotations

import pytest

from registry_server.errors import QueryError, UpdateError
from registry_server.filters import compile_filter
from registry_server.options import apply_options, check_options
from registry_server.schemas import REGISTRIES
from registry_server.store import EmbeddedStore
from registry_server.update import apply_update

CASES = [
    # (filter, document, MongoDB's answer)
    # null and missing through arrays
    ({"a.b": None}, {"a": []}, False),
    ({"a.b": None}, {"a": [5]}, False),
    ({"a.b": None}, {"a": [{"c": 1}]}, True),
    ({"a.b": None}, {"a": 5}, True),
    ({"a.b": None}, {"x": 1}, True),
    ({"a.b": {"$ne": None}}, {"a": []}, True),
    ({"a.b": {"$ne": None}}, {"a": [5]}, True),
    ({"a.b": {"$ne": None}}, {"a": [{"c": 1}]}, False),
    ({"a.b": {"$in": [None]}}, {"a": [5]}, False),
    ({"a": None}, {"a": []}, False),
    ({"a.b.c": None}, {"a": [{"b": None}, {"b": {"c": 2}}]}, True),
    ({"a.b.c": None}, {"a": [{"b": {"c": 2}}]}, False),
    ({"a.b.c": {"$gte": None}}, {"a": [{"b": 7}]}, True),
    # positional leaf arrays
    ({"u.1": "y"}, {"u": ["x", ["y"]]}, False),
    ({"u.1": ["y"]}, {"u": ["x", ["y"]]}, True),
    ({"u.1": {"$size": 1}}, {"u": ["x", ["y"]]}, True),
    ({"u.0": "x"}, {"u": ["x", ["y"]]}, True),
    ({"u.1.0": "y"}, {"u": ["x", ["y"]]}, True),
    # $elemMatch's value form does not look inside nested arrays
    ({"a": {"$elemMatch": {"$gt": 5}}}, {"a": [[6]]}, False),
    ({"a": {"$elemMatch": {"$gt": 5}}}, {"a": [1, 6]}, True),
    ({"a": {"$elemMatch": {"$eq": 6}}}, {"a": [[6]]}, False),
    ({"a": {"$elemMatch": {"$eq": [6]}}}, {"a": [[6]]}, True),
    ({"a": {"$elemMatch": {"$in": [6]}}}, {"a": [[6]]}, False),
    ({"a": {"$elemMatch": {"$type": "number"}}}, {"a": [[6]]}, False),
    ({"a": {"$elemMatch": {"$size": 1}}}, {"a": [[6]]}, True),
    # $elemMatch holding $or / $and (the document form)
    ({"a": {"$elemMatch": {"$or": [{"x": 1}, {"y": 2}]}}}, {"a": [{"y": 2}]}, True),
    ({"a": {"$elemMatch": {"$or": [{"x": 1}, {"y": 2}]}}}, {"a": [{"y": 3}, 2]}, False),
    ({"a": {"$elemMatch": {"$and": [{"x": 1}, {"y": 2}]}}}, {"a": [{"x": 1}, {"y": 2}]}, False),
    ({"a": {"$elemMatch": {"$and": [{"x": 1}, {"y": 2}]}}}, {"a": [{"x": 1, "y": 2}]}, True),
    # $all with $elemMatch members
    (
        {"a": {"$all": [{"$elemMatch": {"x": 1}}, {"$elemMatch": {"y": {"$gt": 1}}}]}},
        {"a": [{"x": 1}, {"y": 5}]},
        True,
    ),
    (
        {"a": {"$all": [{"$elemMatch": {"x": 1}}, {"$elemMatch": {"y": 9}}]}},
        {"a": [{"x": 1}]},
        False,
    ),
    ({"a": {"$all": [[1, 2]]}}, {"a": [[1, 2], 3]}, True),
    ({"a": {"$all": []}}, {"a": [1]}, False),
    # $mod (C's remainder: the dividend's sign; doubles truncated)
    ({"n": {"$mod": [4, 0]}}, {"n": 8}, True),
    ({"n": {"$mod": [4, 1]}}, {"n": 9.9}, True),
    ({"n": {"$mod": [4, -1]}}, {"n": -5}, True),
    ({"n": {"$mod": [4, 3]}}, {"n": -5}, False),
    ({"n": {"$mod": [4.7, 1]}}, {"n": 5}, True),
    ({"n": {"$mod": [4, 0]}}, {"n": "8"}, False),
    ({"n": {"$mod": [4, 0]}}, {"n": [3, 12]}, True),
    ({"n": {"$not": {"$mod": [4, 0]}}}, {"n": 8}, False),
    # $comment matches everything and changes nothing
    ({"$comment": "who asked", "n": 1}, {"n": 1}, True),
    ({"$comment": "who asked", "n": 1}, {"n": 2}, False),
    ({"$comment": "only a note"}, {"n": 2}, True),
]


@pytest.mark.parametrize(("flt", "doc", "expected"), CASES)
def test_filters_answer_as_mongodb(flt, doc, expected):
    compiled = compile_filter(flt)
    assert compiled.match(doc) is expected, "generated"
    assert compiled.closures(doc) is expected, "closures"


def test_indexed_and_sorted_paths_agree_with_the_matcher(tmp_path):
    """The store's indexes and sort keys follow the same rules (a positional leaf array
    is one value; an element without the path is null)."""
    store = EmbeddedStore(tmp_path / "r.sqlite3", list(REGISTRIES))
    try:
        docs = {f"d{i}": {"id": f"d{i}", **doc} for i, (_, doc, _) in enumerate(CASES)}
        store.insert_many("clusters", docs)
        for flt, _, _ in CASES:
            match = compile_filter(flt)
            expected = [d["id"] for d in docs.values() if match(d)]
            assert [d["id"] for d in store.find("clusters", flt, None)] == expected, flt
    finally:
        store.close()


def test_sort_keys_count_an_element_without_the_path_as_null():
    docs = [
        {"id": "p", "a": [{"b": None}, {"b": {"c": 2}}]},  # a.b.c: null and 2
        {"id": "q", "a": [{"b": {"c": 1}}]},
        {"id": "r", "a": [{"b": {"c": 3}}]},
    ]
    up = apply_options(docs, check_options({"sort": {"a.b.c": 1}}))
    down = apply_options(docs, check_options({"sort": {"a.b.c": -1}}))
    assert [d["id"] for d in up] == ["p", "q", "r"]  # null sorts first
    assert [d["id"] for d in down] == ["r", "p", "q"]  # its largest key: 2


@pytest.mark.parametrize(
    "flt",
    [
        {"a": {"$all": [{"$elemMatch": {"x": 1}}, 5]}},  # a mix
        {"a": {"$all": [{"$where": "1"}]}},
        {"a": {"$all": [{"$gt": 1}]}},
        {"n": {"$mod": [0, 1]}},
        {"n": {"$mod": [4]}},
        {"n": {"$mod": [4, "1"]}},
        {"n": {"$mod": "4,1"}},
        {"$comment": 5},
    ],
)
def test_invalid_queries_are_refused(flt):
    with pytest.raises(QueryError):
        compile_filter(flt)


def test_an_empty_projection_returns_every_field():
    docs = [{"id": "a", "x": 1}]
    assert apply_options(docs, check_options({"projection": {}})) == docs


def test_new_fields_are_added_in_lexicographic_order():
    got = apply_update({"id": "x"}, {"$set": {"b": 1, "a": 2, "a10": 3, "a9": 4}})
    assert list(got) == ["id", "a", "a9", "a10", "b"]
    got = apply_update({}, {"$set": {"m.z": 1}, "$inc": {"m.c": 1}, "$min": {"m.k": 0}})
    assert list(got["m"]) == ["c", "k", "z"]


def test_the_order_decides_whether_array_paths_succeed():
    """{"arr.9": ..., "arr.3.k": ...} on an empty array: arr.3.k goes first (3 < 9) and
    pads the array to an object at 3; in the request's order arr.9 would pad with
    nulls first and arr.3.k would then fail inside a null."""
    got = apply_update({"arr": []}, {"$set": {"arr.9": "z", "arr.3.k": 1}})
    assert got["arr"][3] == {"k": 1} and got["arr"][9] == "z" and len(got["arr"]) == 10


@pytest.mark.parametrize("path", ["w.$.x", "w.$[].x", "w.$[e].x", "w.$"])
def test_positional_update_operators_are_refused(path):
    """We choose the error (MongoDB errors too without a query that matched the array)."""
    with pytest.raises(UpdateError, match="positional operators"):
        apply_update({"w": [{"x": 1}]}, {"$set": {path: 7}})
    with pytest.raises(UpdateError, match="positional operators"):
        apply_update({"w": [{"x": 1}]}, {"$rename": {"w": path}})


@pytest.mark.parametrize(
    ("doc", "rename"),
    [
        ({"a": 5}, {"a.b": "c"}),  # source through a scalar
        ({"a": [{"b": 1}]}, {"a.b": "c"}),  # source through an array
        ({"a": [{"b": 1}]}, {"a.0.b": "c"}),
        ({"a": 1, "s": 2}, {"s": "a.b"}),  # target through a scalar
        ({"a": [], "s": 2}, {"s": "a.0"}),  # target through an array
    ],
)
def test_rename_through_a_non_object_is_path_not_viable(doc, rename):
    with pytest.raises(UpdateError, match="PathNotViable"):
        apply_update(doc, {"$rename": rename})


def test_rename_of_a_missing_source_is_a_no_op():
    assert apply_update({"a": {"x": 1}}, {"$rename": {"a.b": "c"}}) == {"a": {"x": 1}}
    assert apply_update({"a": {"b": 1}}, {"$rename": {"a.b": "c.d"}}) == {"a": {}, "c": {"d": 1}}
