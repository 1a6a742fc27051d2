"""Issue 23 item 11: input that used to get a 500 (or a traceback) gets a clear status
and a one-line JSON message: lone surrogates, an integer past 4,300 digits, NUL in field
names, a lowercase ``bearer`` scheme, and a full disk (507)."""

from __future__ import annotations

import asyncio
import json

import pytest
from aiohttp.test_utils import TestClient, TestServer

from registry_server.app import make_app
from registry_server.schemas import REGISTRIES
from registry_server.security import Security
from registry_server.store import EmbeddedStore
from registry_server.update import MAX_INT_DIGITS, apply_update

from .seed_docs import CLUSTER, fresh


@pytest.fixture
def store(tmp_path):
    store = EmbeddedStore(tmp_path / "r.sqlite3", list(REGISTRIES))
    yield store
    store.close()


def run(store, fn, security: Security | None = None):
    async def main():
        async with TestClient(TestServer(make_app(store, security))) as client:
            return await fn(client)

    return asyncio.run(main())


async def send(client, method, path, raw: bytes | None = None, **headers):
    headers.setdefault("Content-Type", "application/json")
    resp = await client.request(method, path, data=raw, headers=headers)
    body = json.loads(await resp.text())  # always JSON, never a traceback
    if resp.status >= 400:
        assert body["success"] is False and "\n" not in body["message"], body
    return resp.status, body


def doc_json(**fields) -> bytes:
    return json.dumps({**fresh(CLUSTER), **fields}).encode()


def test_lone_surrogates_are_refused(store):
    async def go(client):
        for raw in (
            doc_json(id="c-\ud800"),  # json.dumps writes the escape \ud800
            doc_json(labels={"k\udfff": 1}),
            doc_json(note="x\udbff"),
        ):
            status, body = await send(client, "POST", "/clusters", raw)
            assert status == 400 and "lone surrogate" in body["message"], body
        # a valid pair (an emoji written as two escapes) is fine
        status, _ = await send(client, "POST", "/clusters", doc_json(id="c-\U0001f600"))
        assert status == 201
        status, body = await send(client, "POST", "/clusters/query", b'{"id": "\\udc00"}')
        assert status == 400 and "lone surrogate" in body["message"]
        status, body = await send(client, "PUT", "/clusters/c-x", b'{"$set": {"\\ud800": 1}}')
        assert status == 400
        status, body = await send(client, "GET", "/clusters/%ED%A0%80")  # not UTF-8 at all
        assert status == 404
        return (await send(client, "GET", "/health"))[0]

    assert run(store, go) == 200


def test_an_integer_past_4300_digits_is_refused():
    limit = 10**MAX_INT_DIGITS
    ok = apply_update({"n": limit - 2}, {"$inc": {"n": 1}})
    assert ok["n"] == limit - 1  # exactly at the limit: 4,300 digits
    assert len(str(ok["n"])) == MAX_INT_DIGITS
    with pytest.raises(ValueError, match="more than 4300 digits"):
        apply_update({"n": limit - 1}, {"$inc": {"n": 1}})  # just over
    with pytest.raises(ValueError, match="more than 4300 digits"):
        apply_update({"n": -(limit - 1)}, {"$inc": {"n": -1}})
    with pytest.raises(ValueError, match="more than 4300 digits"):
        apply_update({"n": 10**2200}, {"$mul": {"n": 10**2200}})


def test_mul_over_4300_digits_over_http(store):
    async def go(client):
        assert (await send(client, "POST", "/clusters", doc_json(n=10**1000)))[0] == 201
        path = f"/clusters/{CLUSTER['id']}"
        for _ in range(3):  # 10**4000
            status, _ = await send(client, "PUT", path, b'{"$mul": {"n": %d}}' % 10**1000)
            assert status == 200
        status, body = await send(client, "PUT", path, b'{"$mul": {"n": %d}}' % 10**1000)
        assert status == 400 and "4300 digits" in body["message"], body
        status, body = await send(client, "GET", path)
        return status, len(str(body["data"]["n"]))

    assert run(store, go) == (200, 4001)


def test_nul_in_field_names_is_refused(store):
    async def go(client):
        status, body = await send(client, "POST", "/clusters", doc_json(labels={"a\u0000b": 1}))
        assert status == 400 and "NUL" in body["message"], body
        nested = doc_json(deep=[{"ok": [{"x\u0000": 1}]}])
        assert (await send(client, "POST", "/clusters", nested))[0] == 400
        assert (await send(client, "POST", "/clusters", doc_json(v="NUL\u0000 in a value")))[
            0
        ] == 201
        path = f"/clusters/{CLUSTER['id']}"
        for update in ({"$set": {"a\u0000": 1}}, {"$rename": {"v": "w\u0000"}},
                       {"$set": {"m": {"k\u0000": 1}}}, {"a\u0000": 1}):  # fmt: skip
            status, body = await send(client, "PUT", path, json.dumps(update).encode())
            assert status == 400 and "NUL" in body["message"], (update, body)
        return (await send(client, "GET", path))[1]["data"]["v"]

    assert run(store, go) == "NUL\u0000 in a value"


def test_the_bearer_scheme_is_case_insensitive(store, monkeypatch):
    monkeypatch.setenv("AIOS_FAST_TOKEN", "t" * 32)
    security = Security.from_env(None)

    async def go(client):
        codes = []
        for scheme in ("Bearer", "bearer", "BEARER", "bEaReR", "Basic", "Bearer-x"):
            auth = f"{scheme} {'t' * 32}"
            codes.append((await send(client, "GET", "/clusters", Authorization=auth))[0])
        codes.append(
            (await send(client, "GET", "/clusters", Authorization="bearer  " + "t" * 32))[0]
        )
        return codes

    assert run(store, go, security) == [200, 200, 200, 200, 401, 401, 200]


def test_a_full_disk_is_507_and_changes_nothing(store):
    async def go(client):
        assert (await send(client, "POST", "/clusters", doc_json()))[0] == 201
        pages = store._db.execute("PRAGMA page_count").fetchone()[0]
        store._db.execute(f"PRAGMA max_page_count = {pages}")  # as if the disk were full
        big = "x" * 200_000
        status, body = await send(client, "POST", "/clusters", doc_json(id="c2", pad=big))
        assert status == 507 and "disk is full" in body["message"], body
        path = f"/clusters/{CLUSTER['id']}"
        status, body = await send(client, "PUT", path, json.dumps({"pad": big}).encode())
        assert status == 507, body
        assert (await send(client, "GET", "/clusters/c2"))[0] == 404
        assert "pad" not in (await send(client, "GET", path))[1]["data"]
        store._db.execute("PRAGMA max_page_count = 1073741823")  # space again: writes work
        assert (await send(client, "POST", "/clusters", doc_json(id="c2", pad=big)))[0] == 201
        return (await send(client, "GET", "/health"))[1]["data"]["counts"]["clusters"]

    assert run(store, go) == 2


def test_insert_many_on_a_full_disk_rolls_back(store):
    pages = store._db.execute("PRAGMA page_count").fetchone()[0]
    store._db.execute(f"PRAGMA max_page_count = {pages + 2}")
    docs = {f"c{i}": {"id": f"c{i}", "pad": "x" * 5000} for i in range(50)}
    with pytest.raises(Exception, match="disk is full") as err:
        store.insert_many("clusters", docs)
    assert err.value.status == 507
    assert store.count("clusters") == 0
    store._db.execute("PRAGMA max_page_count = 1073741823")
    store.insert_many("clusters", docs)
    assert store.count("clusters") == 50
