"""MongoStore's own logic (errors, copies, projections) on mongomock behind a small async
shim; the HTTP behaviour suite (test_api.py) runs on a real MongoDB when AIOS_MONGO_URL
is set."""

from __future__ import annotations

import asyncio

import pytest

from registry_server.errors import Conflict, NotFound, QueryError, Stale
from registry_server.mongo_store import REV, MongoStore

from .seed_docs import BLOCK, fresh

mongomock = pytest.importorskip("mongomock")
pytest.importorskip("pymongo")


class _Cursor:
    def __init__(self, docs):
        self._docs = list(docs)

    def __aiter__(self):
        self._it = iter(self._docs)
        return self

    async def __anext__(self):
        try:
            return next(self._it)
        except StopIteration:
            raise StopAsyncIteration from None


class _Coll:
    def __init__(self, coll):
        self._c = coll

    async def create_index(self, *a, **k):
        return self._c.create_index(*a, **k)

    async def insert_one(self, doc):
        return self._c.insert_one(doc)

    async def find_one(self, *a):
        return self._c.find_one(*a)

    async def replace_one(self, *a):
        return self._c.replace_one(*a)

    async def find_one_and_update(self, *a, **k):
        return self._c.find_one_and_update(*a, **k)

    async def delete_one(self, *a):
        return self._c.delete_one(*a)

    async def count_documents(self, *a):
        return self._c.count_documents(*a)

    def find(self, *a):
        return _Cursor(self._c.find(*a))


class _Client:
    def __init__(self):
        self._db = mongomock.MongoClient().db
        self.raw = self._db  # the collections without the shim (another server's view)

    def __getitem__(self, name):
        return _DB(self._db)

    async def close(self):
        pass


class _DB:
    def __init__(self, db):
        self._db = db

    def __getitem__(self, name):
        return _Coll(self._db[name])


def test_mongo_store_semantics():
    async def run():
        store = MongoStore("mongodb://unused", client=_Client())
        await store.start()
        doc = fresh(BLOCK)
        await store.insert("blocks", doc["id"], doc)
        assert "_id" not in doc  # the caller's document is not touched
        with pytest.raises(Conflict):
            await store.insert("blocks", doc["id"], fresh(BLOCK))
        got = await store.get("blocks", doc["id"])
        assert got == doc and "_id" not in got
        await store.replace("blocks", doc["id"], dict(doc, minInstances=3))
        assert (await store.find("blocks", {"minInstances": {"$gte": 3}}))[0]["id"] == doc["id"]
        with pytest.raises(QueryError):
            await store.find("blocks", {"$where": "1"})
        assert await store.count("blocks") == 1
        await store.delete("blocks", doc["id"])
        for call in (store.get, store.delete):
            with pytest.raises(NotFound):
                await call("blocks", doc["id"])
        with pytest.raises(NotFound):
            await store.replace("blocks", doc["id"], doc)
        await store.close()

    asyncio.run(run())


class _RacingColl(_Coll):
    """Another server writes the document right after each of our first ``races`` reads:
    the write that follows such a read must not overwrite it."""

    def __init__(self, coll, races):
        super().__init__(coll)
        self.races = races

    async def find_one(self, *a):
        doc = self._c.find_one(*a)
        if self.races and doc is not None:
            self.races -= 1
            self._c.update_one(a[0], {"$inc": {"hits": 1, REV: 1}})
        return doc


def test_mongo_updates_are_compare_and_swap():
    """Issue 13 (1), MongoDB backend: an update computed from a document another server
    changed meanwhile is not written; the app reads again and applies it to the new one."""
    from aiohttp.test_utils import TestClient, TestServer

    from registry_server.app import make_app

    client = _Client()
    store = MongoStore("mongodb://unused", client=client)
    racing = _RacingColl(client.raw["blocks"], races=3)
    store._coll = lambda name: racing if name == "blocks" else _Coll(client.raw[name])

    async def run():
        await store.start()
        doc = fresh(BLOCK)
        doc["hits"] = 0
        await store.insert("blocks", doc["id"], doc)
        async with TestClient(TestServer(make_app(store))) as http:
            resp = await http.put(f"/blocks/{doc['id']}", json={"$inc": {"hits": 1}})
            body = await resp.json()
            assert resp.status == 200, body
            # 3 writes by "another server" + ours: none lost; the revision is hidden.
            assert body["data"]["hits"] == 4 and REV not in body["data"]
            got = await (await http.get(f"/blocks/{doc['id']}")).json()
            assert got["data"]["hits"] == 4 and REV not in got["data"]
            assert racing.races == 0

        # The replace path (no operators to hand MongoDB): a stale revision is refused.
        current, rev = await store.get_for_update("blocks", doc["id"])
        client.raw["blocks"].update_one({"id": doc["id"]}, {"$inc": {REV: 1}})
        with pytest.raises(Stale):
            await store.replace_if("blocks", doc["id"], dict(current, hits=0), rev)
        current, rev = await store.get_for_update("blocks", doc["id"])
        assert await store.replace_if("blocks", doc["id"], dict(current, hits=9), rev)
        assert (await store.get("blocks", doc["id"]))["hits"] == 9
        await store.delete("blocks", doc["id"])
        with pytest.raises(NotFound):
            await store.replace_if("blocks", doc["id"], current, rev)

    asyncio.run(run())
