"""Issue 23 items 6, 7 and 10: no read request can stall the store or grow without
bound. Every $regex is timed (a pattern judged "safe" too) within the request's budget
and never under the store's lock; every list and query route holds at most MAX_LIMIT
documents; an unindexed sort + limit takes a top-k pass that holds no writer; queries
cause a bounded number of indexes, and an admin can declare more."""

from __future__ import annotations

import asyncio
import copy
import json
import threading
from unittest import mock

import pytest
from aiohttp.test_utils import TestClient, TestServer

from registry_server import store as store_module
from registry_server.app import make_app
from registry_server.filters import closures, codegen, compile_filter
from registry_server.options import MAX_LIMIT, apply_options, check_options
from registry_server.schemas import REGISTRIES
from registry_server.store import MAX_AUTO_INDEXES, MAX_AUTO_SORT_INDEXES, EmbeddedStore

from .seed_docs import CLUSTER, fresh

HOSTILE = r".*.{0,99}.{0,99}.{0,99}\.\d"  # one unbounded quantifier: judged "safe" before


@pytest.fixture
def store(tmp_path):
    store = EmbeddedStore(tmp_path / "r.sqlite3", list(REGISTRIES))
    yield store
    store.close()


def run(store, fn):
    async def main():
        async with TestClient(TestServer(make_app(store))) as client:
            return await fn(client)

    return asyncio.run(main())


def clusters(n: int, **extra) -> dict[str, dict]:
    return {f"c{i:05d}": {**fresh(CLUSTER), "id": f"c{i:05d}", "n": i % 10, **extra}
            for i in range(n)}  # fmt: skip


# ------------------------------------------------------------------------- regexes (6)


def test_every_regex_search_is_timed(monkeypatch):
    """No pattern skips the timer, whatever it looks like: each search passes a
    timeout (the request's budget left, at most REGEX_SEARCH_S) and lets the GIL go."""
    calls = []

    class Spy:
        def __init__(self, pattern):
            self.pattern = pattern

        def search(self, value, **kw):
            calls.append(kw)
            return None

    monkeypatch.setattr(closures.regex, "compile", lambda pattern, flags=0: Spy(pattern))
    for pattern in ("^g", "a.*b", HOSTILE, "vision-00[1-3]$"):
        match = compile_filter({"s": {"$regex": pattern}}).match
        assert not match({"s": "short"})
        with closures.regex_budget(0.5):
            assert not match({"s": "x" * 10})
    assert len(calls) == 8
    for kw in calls:
        assert 0 < kw["timeout"] <= closures.REGEX_SEARCH_S and kw["concurrent"] is True


def test_a_spent_budget_refuses_the_next_search():
    """Once a request's budget is spent (exactly 0 left), every further search is
    refused with the 400 message, however cheap."""
    match = compile_filter({"s": {"$regex": "^a"}}).match
    with closures.regex_budget(0.0):
        with pytest.raises(ValueError, match="time budget"):
            match({"s": "abc"})
    with closures.regex_budget(1.0):
        assert match({"s": "abc"})


def test_the_hostile_pattern_is_a_400_and_others_go_on(store, monkeypatch):
    """The issue's pattern over many long strings spends the request's budget: a 400;
    an indexed query sent while it runs is answered before it ends (other query
    threads), and writes go on (no regex runs under the store's lock)."""
    monkeypatch.setattr(closures, "REGEX_BUDGET_S", 0.5)
    text = ("host-" + "x" * 40 + ".") * 8  # dots but never a digit after one: no match
    store.insert_many("clusters", clusters(3_000, note=text))
    order = []

    async def go(client):
        async def hostile():
            resp = await client.post("/clusters/query", json={"note": {"$regex": HOSTILE}})
            order.append("hostile")
            return resp.status, (await resp.json())["message"]

        async def indexed():
            await asyncio.sleep(0.05)
            resp = await client.post("/clusters/query", json={"id": "c00042"})
            order.append("indexed")
            return [d["id"] for d in (await resp.json())["data"]]

        async def write():
            await asyncio.sleep(0.05)
            resp = await client.put("/clusters/c00007", json={"$set": {"n": 99}})
            order.append("write")
            return resp.status

        assert (await client.post("/clusters/query", json={"id": "c00001"})).status == 200
        return await asyncio.gather(hostile(), indexed(), write())

    (status, message), found, written = run(store, go)
    assert status == 400 and "time budget" in message, message
    assert found == ["c00042"] and written == 200
    assert order[-1] == "hostile", order


def test_a_sorted_walk_matches_nothing_under_the_lock(store):
    """A sorted query walks its sort index from a copy, after letting the lock go: a
    writer waiting on the lock is never behind a regex."""
    store.insert_many("clusters", clusters(200))
    held = []
    real = closures.compile_regex

    def spying(pattern, options=""):
        search = real(pattern, options)

        def check(value):
            held.append(store._lock._is_owned())
            return search(value)

        return check

    with mock.patch.object(closures, "compile_regex", spying), \
         mock.patch.object(codegen, "compile_regex", spying):  # fmt: skip
        flt = compile_filter({"id": {"$regex": "7(?#unlocked)"}})
    for k in (1, 5, 200):
        pairs, _ = store.find_sorted("clusters", flt, {"n": -1}, k)
        assert pairs
    pairs = store.find_unordered("clusters", flt)
    assert held and not any(held)


# ----------------------------------------------------------------------- the caps (7)


def test_get_lists_refuse_limit_0_and_cap_at_max_limit(store):
    store.insert_many("clusters", clusters(3))

    async def go(client):
        out = []
        for query in ("limit=0", f"limit={MAX_LIMIT}", f"limit={MAX_LIMIT + 1}", "limit=1"):
            resp = await client.get(f"/clusters?{query}")
            body = await resp.json()
            out.append((resp.status, body.get("message", len(body.get("data", [])))))
        return out

    (s0, m0), (s1, n1), (s2, m2), (s3, n3) = run(store, go)
    assert s0 == 400 and "limit must be 1 to 10000" in m0
    assert (s1, n1) == (200, 3) and (s3, n3) == (200, 1)
    assert s2 == 400 and "at most 10000" in m2


def test_queries_hold_at_most_max_limit_documents(store):
    """A query with no limit, or MongoDB's limit 0, answers MAX_LIMIT documents and the
    options of the next page; exactly MAX_LIMIT matches give next too (a last, empty
    page), MAX_LIMIT - 1 give null. The long answer is streamed, and is valid JSON."""
    store.insert_many("clusters", clusters(MAX_LIMIT + 5))

    async def go(client):
        out = {}
        for name, body in {
            "none": {},
            "zero": {"query": {}, "options": {"limit": 0}},
            "sorted": {"query": {}, "options": {"sort": {"id": -1}, "limit": 0}},
            "sorted-no-limit": {"query": {"n": {"$gte": 0}}, "options": {"sort": {"n": 1}}},
            "next": {"query": {}, "options": {"skip": MAX_LIMIT, "limit": 0}},
            "at": {"query": {"id": {"$lt": f"c{MAX_LIMIT:05d}"}}, "options": {}},
            "below": {"query": {"id": {"$lt": f"c{MAX_LIMIT - 1:05d}"}}, "options": {}},
        }.items():
            resp = await client.post("/clusters/query", json=body)
            data = json.loads(await resp.read())
            out[name] = (resp.status, len(data["data"]), data["next"], data["data"][0]["id"])
        return out

    out = run(store, go)
    page = {"skip": MAX_LIMIT, "limit": MAX_LIMIT}
    assert out["none"] == (200, MAX_LIMIT, page, "c00000")
    assert out["zero"] == (200, MAX_LIMIT, page, "c00000")
    assert out["sorted"] == (200, MAX_LIMIT, page, f"c{MAX_LIMIT + 4:05d}")
    assert out["sorted-no-limit"][:3] == (200, MAX_LIMIT, page)
    assert out["next"] == (200, 5, None, f"c{MAX_LIMIT:05d}")
    assert out["at"] == (200, MAX_LIMIT, page, "c00000")
    assert out["below"] == (200, MAX_LIMIT - 1, None, "c00000")


def test_controllers_by_vdag_uri_are_capped(store):
    docs = {f"vc{i}": {"id": f"vc{i}", "vdag_uri": "v:1-a"} for i in range(MAX_LIMIT + 1)}
    store.insert_many("vdag_controllers", docs)

    async def go(client):
        resp = await client.get("/vdag-controllers/by-vdag-uri/v:1-a")
        return resp.status, len((await resp.json())["data"])

    assert run(store, go) == (200, MAX_LIMIT)


# ------------------------------------------------------------------- sort, indexes (10)


def test_the_top_k_pass_equals_a_full_sort(store):
    """With no sort index (past what queries may cause), a sorted query with a limit
    keeps only k entries and answers what sorting every match answers, for mixed
    directions, ties, arrays, nulls and every skip."""
    values = [None, 3, 3.0, "a", [5, 1], [], {"k": 1}, True, -2, [None, 7]]
    docs = {f"d{i:03d}": {"id": f"d{i:03d}", "v": values[i % 10], "w": i % 4, "s": "xy"[i % 2]}
            for i in range(300)}  # fmt: skip
    docs["d007"].pop("v")
    store.insert_many("clusters", copy.deepcopy(docs))
    with mock.patch.object(store_module, "MAX_AUTO_SORT_INDEXES", 0):
        for flt in ({}, {"s": "x"}, {"w": {"$gte": 2}}):
            for sort in ({"v": 1}, {"v": -1}, {"w": -1, "v": 1}, {"v": -1, "w": 1, "id": -1}):
                for skip, limit in ((0, 1), (0, 10), (13, 7), (290, 20), (0, 300)):
                    options = check_options({"sort": sort, "skip": skip, "limit": limit})
                    match = compile_filter(flt)
                    expected = apply_options([d for d in docs.values() if match(d)], options)
                    pairs, skipped = store.find_sorted("clusters", match, sort, skip + limit, skip)
                    got = apply_options(pairs, {**options, "skip": skip - skipped},
                                        positioned=True)  # fmt: skip
                    assert got == expected, (flt, sort, skip, limit)
        assert store._sorts["clusters"] == {}


def test_queries_cause_a_bounded_number_of_indexes(store):
    """Distinct paths (``a.0.x``, ``a.00.x``, ...) build at most MAX_AUTO_INDEXES
    equality/range indexes and MAX_AUTO_SORT_INDEXES sort indexes; the queries past
    them still answer right (the matcher, the top-k pass)."""
    docs = {f"d{i}": {"id": f"d{i}", "a": [{"x": i % 5}], "n": i} for i in range(100)}
    store.insert_many("clusters", docs)
    for j in range(MAX_AUTO_INDEXES + 5):
        path = "a." + "0" * (j + 1) + ".x"
        found = store.find("clusters", {path: 3})
        assert [d["id"] for d in found] == [f"d{i}" for i in range(3, 100, 5)], path
    assert len(store._indexes["clusters"].all) == MAX_AUTO_INDEXES
    for j in range(MAX_AUTO_SORT_INDEXES + 3):
        sort = {"n": -1, "id": 1, "a.x": 1} if j % 2 else {"n": 1}
        sort = {**sort, f"f{j}": 1}
        pairs, _ = store.find_sorted("clusters", compile_filter({}), sort, 3)
        assert [d["n"] for _, d in pairs] == ([99, 98, 97] if j % 2 else [0, 1, 2])
    assert len(store._sorts["clusters"]) == MAX_AUTO_SORT_INDEXES


def test_an_admin_declares_indexes(tmp_path):
    """POST /indexes/clusters (admin) declares an index: built at once, kept past the
    caps and across a restart, listed by GET; a bad declaration is a 400."""
    path = tmp_path / "r.sqlite3"
    store = EmbeddedStore(path, list(REGISTRIES))
    store.insert_many("clusters", clusters(50))
    for j in range(MAX_AUTO_SORT_INDEXES):  # the queries' share is used up
        store.find_sorted("clusters", compile_filter({}), {f"f{j}": 1}, 1)

    async def go(client):
        out = []
        for body in ({"sort": {"n": -1, "id": 1}}, {"field": "gpus.count"},
                     {"sort": {"n": 2}}, {"field": ""}, {"other": 1}):  # fmt: skip
            resp = await client.post("/indexes/clusters", json=body)
            out.append((resp.status, (await resp.json()).get("data")))
        listed = await (await client.get("/indexes/clusters")).json()
        return out, listed["data"]

    try:
        out, listed = run(store, go)
        declared = ["field gpus.count (equality)", "field gpus.count (range)", "sort n:-1,id:1"]
        assert out[0][0] == 201 and out[1] == (201, declared)
        assert [s for s, _ in out[2:]] == [400, 400, 400]
        assert listed["declared"] == declared and "sort n:-1,id:1" in listed["built"]
        assert len(store._sorts["clusters"]) == MAX_AUTO_SORT_INDEXES + 1
    finally:
        store.close()
    again = EmbeddedStore(path, list(REGISTRIES))
    try:
        assert again.indexes("clusters")["declared"] == declared
        pairs, _ = again.find_sorted("clusters", compile_filter({}), {"n": -1, "id": 1}, 2)
        assert [d["id"] for _, d in pairs] == ["c00009", "c00019"]
        assert "sort n:-1,id:1" in again.indexes("clusters")["built"]

        async def drop(client):
            body = {"sort": {"n": -1, "id": 1}}
            first = await client.delete("/indexes/clusters", json=body)
            second = await client.delete("/indexes/clusters", json=body)
            return first.status, (await first.json())["data"], second.status

        assert run(again, drop) == (200, declared[:2], 404)
        assert "sort n:-1,id:1" not in again.indexes("clusters")["built"]
    finally:
        again.close()


def test_declaring_an_index_needs_the_admin_role(store, monkeypatch):
    from registry_server.security import Security

    monkeypatch.delenv("AIOS_FAST_TOKEN", raising=False)
    tokens = {"read": "r" * 32, "admin": "a" * 32}

    async def go(client):
        codes = []
        for token in ("r" * 32, "a" * 32):
            headers = {"Authorization": f"Bearer {token}"}
            post = await client.post("/indexes/clusters", json={"field": "n"}, headers=headers)
            get = await client.get("/indexes/clusters", headers=headers)
            codes.append((post.status, get.status))
        return codes

    path = store.path + ".tokens"
    with open(path, "w") as f:
        f.write("".join(f"{role} {token}\n" for role, token in tokens.items()))
    security = Security.from_env(path)

    async def main():
        async with TestClient(TestServer(make_app(store, security))) as client:
            return await go(client)

    assert asyncio.run(main()) == [(403, 200), (201, 403)]  # roles are apart (README)


def test_index_builds_hold_no_writer_and_miss_no_write(store):
    """An index is built from a snapshot without the lock; writes made meanwhile (here:
    from inside the build, as a racing writer would) are caught up before it is used."""
    store.insert_many("clusters", clusters(300))
    real = store_module._collector_paused
    writes = []

    def racing(documents=0):
        if not writes:  # the first build: write while it runs, from another thread

            def write():
                store.replace("clusters", "c00003", {"id": "c00003", "n": 7})
                store.delete("clusters", "c00004")
                store.insert("clusters", "late", {"id": "late", "n": 7})

            t = threading.Thread(target=write)
            t.start()
            t.join(10)
            writes.append(not t.is_alive())  # done: the lock was free
        return real(documents)

    with mock.patch.object(store_module, "_collector_paused", racing):
        found = store.find("clusters", {"n": 7})
        pairs, _ = store.find_sorted("clusters", compile_filter({}), {"n": -1, "id": 1}, 400)
    assert writes == [True]
    ids = [d["id"] for d in found]
    assert "c00003" in ids and "late" in ids and "c00004" not in ids
    assert ids == [d["id"] for d in store.find("clusters", {"n": 7}, None)]
    assert [d["id"] for d in store.find("clusters", {"n": {"$gte": 7}})] == [
        d["id"] for d in store.find("clusters", {"n": {"$gte": 7}, "id": {"$type": "string"}})
    ]
    everything = store.find("clusters", {}, None)
    expected = apply_options(everything, {"sort": {"n": -1, "id": 1}})
    assert [d for _, d in pairs] == expected and len(expected) == 300


def test_a_sorted_query_holds_no_decoded_document_per_match(tmp_path):
    """Sorted, skipping past most matches, with an index that leaves them all as
    candidates: the query keeps k keys and stored JSON, never every match decoded (the
    answer's 10 documents are decoded at the end)."""
    import tracemalloc

    store = EmbeddedStore(tmp_path / "r.sqlite3", ["clusters"], cache_mb=0)
    try:
        pad = {f"k{j}": [j, {"x": "y" * 20}] for j in range(60)}  # ~2 KB of JSON, ~25 decoded
        docs = {f"c{i:05d}": {"id": f"c{i:05d}", "s": "live", "n": i % 97, **pad}
                for i in range(4_000)}  # fmt: skip
        store.insert_many("clusters", docs)
        flt = compile_filter({"s": "live"})
        store.find("clusters", flt, 1)  # the equality index, built before measuring
        tracemalloc.start()
        pairs, skipped = store.find_sorted("clusters", flt, {"n": 1, "id": 1}, 4_000, 3_990)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        expected = apply_options(list(docs.values()), {"sort": {"n": 1, "id": 1}})[3_990:]
        assert [d for _, d in pairs] == expected and skipped == 3_990
        held_if_decoded = 4_000 * 20_000  # every match decoded: ~80 MB
        assert peak < held_if_decoded / 8, peak
    finally:
        store.close()


def test_a_pull_condition_regex_is_within_the_budget(store):
    """An update's $pull condition holding a catastrophic $regex: a 400 within the
    budget (it runs in a query thread, not on the event loop), the document unchanged."""
    doc = {**fresh(CLUSTER), "tags": ["a" * 40 + "b", "keep"]}
    store.insert("clusters", doc["id"], doc)

    async def go(client):
        path = f"/clusters/{doc['id']}"
        resp = await client.put(path, json={"$pull": {"tags": {"$regex": "(a|aa)+$"}}})
        body = await resp.json()
        health = (await client.get("/health")).status
        return resp.status, body["message"], health, (await (await client.get(path)).json())

    status, message, health, after = run(store, go)
    assert status == 400 and "time budget" in message and health == 200
    assert after["data"]["tags"] == doc["tags"]
