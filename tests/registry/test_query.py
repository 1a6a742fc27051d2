"""Filter and update semantics that the mongomock oracle cannot check, and every error."""

from __future__ import annotations

import pytest

from registry_server.errors import QueryError, UpdateError
from registry_server.filters import compile_filter
from registry_server.update import apply_update, normalize_update

CLUSTER = {
    "id": "c1",
    "status": "live",
    "reputation": 95,
    "flag": True,
    "zero": 0,
    "tags": ["gpu", "eu"],
    "nodes": {
        "count": 2,
        "nodeData": [{"id": "n1", "gpus": {"count": 4}}, {"id": "n2", "gpus": {"count": 0}}],
    },
    "config": {"region": "eu-west", "cost": None},
}


@pytest.mark.parametrize(
    ("flt", "expected"),
    [
        ({"status": "live"}, True),
        ({"reputation": {"$gt": 90, "$lte": 95}}, True),
        ({"reputation": {"$gt": "a"}}, False),  # no cross-type comparison
        ({"flag": 1}, False),  # true is not 1
        ({"zero": False}, False),  # 0 is not false
        ({"flag": True}, True),
        ({"tags": "gpu"}, True),  # an element
        ({"tags": ["gpu", "eu"]}, True),  # the whole array
        ({"tags": ["eu", "gpu"]}, False),  # order matters
        ({"tags": {"$all": ["eu", "gpu"]}}, True),
        ({"tags": {"$size": 2}}, True),
        ({"nodes.nodeData.id": "n2"}, True),
        ({"nodes.nodeData.1.id": "n2"}, True),
        ({"nodes.nodeData.0.id": "n2"}, False),
        ({"nodes.nodeData.gpus.count": {"$gte": 4}}, True),
        ({"nodes.nodeData": {"$elemMatch": {"id": "n2", "gpus.count": {"$gt": 0}}}}, False),
        ({"nodes.nodeData": {"$elemMatch": {"id": "n1", "gpus.count": {"$gt": 0}}}}, True),
        ({"config.cost": None}, True),
        ({"config.missing": None}, True),
        ({"config.missing": {"$exists": False}}, True),
        ({"config.cost": {"$exists": True}}, True),
        ({"status": {"$ne": "down"}}, True),
        ({"missing": {"$ne": 5}}, True),
        ({"status": {"$in": ["down", "live"]}}, True),
        ({"status": {"$nin": ["down", "live"]}}, False),
        ({"config.region": {"$regex": "^EU", "$options": "i"}}, True),
        ({"config.region": {"$not": {"$regex": "west"}}}, False),
        ({"reputation": {"$not": {"$gt": 99}}}, True),
        ({"$or": [{"status": "down"}, {"tags": "eu"}]}, True),
        ({"$and": [{"status": "live"}, {"reputation": {"$lt": 50}}]}, False),
        ({"$nor": [{"status": "down"}]}, True),
        ({"reputation": {"$type": "number"}, "tags": {"$type": "array"}}, True),
        ({"config": {"region": "eu-west", "cost": None}}, True),
    ],
)
def test_filter_semantics(flt, expected):
    assert compile_filter(flt)(CLUSTER) is expected


@pytest.mark.parametrize(
    ("flt", "message"),
    [
        ({"$where": "this.a > 1"}, "executes code"),
        ({"a": {"$where": "1"}}, "executes code"),
        ({"$expr": {"$gt": ["$a", 1]}}, "executes code"),
        ({"a": {"$function": {}}}, "executes code"),
        ({"a": {"$accumulator": {}}}, "executes code"),
        ({"a": {"$bogus": 1}}, "unknown operator"),
        ({"$bogus": []}, "unknown top-level"),
        ({"$or": []}, "non-empty array"),
        ({"$and": {}}, "non-empty array"),
        ({"a": {"$in": 5}}, "needs an array"),
        ({"a": {"$regex": "("}}, "bad \\$regex"),
        ({"a": {"$regex": "x", "$options": "q"}}, "\\$options"),
        ({"a": {"$size": -1}}, "non-negative"),
        ({"a": {"$type": "weird"}}, "unknown \\$type"),
        # {"a": {"$gt": {"x": 1}}} is no longer refused: MongoDB compares documents and
        # arrays in BSON order (issue 13, item 5; test_semantics.py checks it).
        ({"a": {"$gt": 1, "b": 2}}, "do not mix"),
        ([1, 2], "must be an object"),
    ],
)
def test_invalid_filters_are_refused_before_any_document(flt, message):
    with pytest.raises(QueryError, match=message):
        compile_filter(flt)


def test_updates():
    doc = apply_update(CLUSTER, {"$set": {"status": "down", "config.new.deep": 1},
                                 "$inc": {"reputation": -5}, "$push": {"tags": {"$each": ["x"]}},
                                 "$unset": {"flag": ""}, "$rename": {"zero": "nil"}})  # fmt: skip
    assert doc["status"] == "down" and doc["config"]["new"] == {"deep": 1}
    assert doc["reputation"] == 90 and doc["tags"] == ["gpu", "eu", "x"]
    assert "flag" not in doc and doc["nil"] == 0 and "zero" not in doc
    assert CLUSTER["status"] == "live"  # the input is untouched
    assert apply_update(CLUSTER, {"status": "down"})["status"] == "down"  # bare doc = $set
    assert normalize_update({"a": 1}) == {"$set": {"a": 1}}
    update = {
        "$addToSet": {"tags": {"$each": ["eu", "us"]}},
        "$pull": {"nodes.nodeData": {"id": "n1"}},
        "$min": {"reputation": 10},
        "$max": {"nodes.count": 7},
    }
    doc = apply_update(CLUSTER, update)
    assert doc["tags"] == ["gpu", "eu", "us"] and [n["id"] for n in doc["nodes"]["nodeData"]] == [
        "n2"
    ]
    assert doc["reputation"] == 10 and doc["nodes"]["count"] == 7
    assert apply_update({"v": [1, 5, 9]}, {"$pull": {"v": {"$gte": 5}}}) == {"v": [1]}


@pytest.mark.parametrize(
    ("update", "message"),
    [
        ({}, "non-empty"),
        ({"$set": {"a": 1}, "b": 2}, "do not mix"),
        ({"$bogus": {"a": 1}}, "unknown update operator"),
        ({"$set": {}}, "non-empty object"),
        ({"$set": {"a": 1}, "$inc": {"a": 1}}, "conflicting"),
        ({"$set": {"config": 1}, "$unset": {"config.region": ""}}, "conflicting"),
        ({"$inc": {"status": 1}}, "needs a number"),
        ({"$inc": {"reputation": "x"}}, "needs a number"),
        ({"$push": {"status": "x"}}, "not an array"),
        ({"$set": {"status.sub": 1}}, "cannot set a field inside a string"),
        # {"$min": {"status": 3}} ("cannot compare") now applies: MongoDB compares any two
        # values in BSON order (issue 13, item 6; test_semantics.py checks it).
        ({"$pop": {"tags": 2}}, "needs 1"),
        ({"$push": {"tags": {"$each": ["x"], "$slice": "x"}}}, "integer"),
        ({"$push": {"tags": {"$slice": 1}}}, "need \\$each"),
        ({"$pop": {"status": 1}}, "not an array"),
    ],
)
def test_invalid_updates_are_refused(update, message):
    with pytest.raises(UpdateError, match=message):
        apply_update(CLUSTER, update)


def test_unicode_digits_are_field_names_not_indexes():
    # "¹" and "٣" are digits to str.isdigit() but not array positions (found by schemathesis)
    assert compile_filter({"¹": ["¹", "¹"]})({"¹": ["¹", "¹"]}) is True
    assert compile_filter({"a.٣": 1})({"a": [{"٣": 1}]}) is True
    assert apply_update({"a": {}}, {"$set": {"a.¹": 2}}) == {"a": {"¹": 2}}


@pytest.mark.parametrize("projection", [{"a": 1, "b": 0}, {"a": "yes"}, {"a": 2}, ["a"]])
def test_bad_projections_are_refused(projection):
    from registry_server.options import check_options

    with pytest.raises(QueryError, match="projection"):
        check_options({"projection": projection})


def test_good_projections_pass():
    from registry_server.options import check_options

    for projection in ({"a": 1, "b.c": 1}, {"a": 0}, {"a": True}):
        assert check_options({"projection": projection})["projection"] == projection
