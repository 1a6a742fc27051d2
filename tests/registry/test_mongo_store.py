"""MongoStore's own logic (errors, copies, projections) on mongomock behind a small async
shim; the HTTP behaviour suite (test_api.py) runs on a real MongoDB when AIOS_MONGO_URL
is set."""

from __future__ import annotations

import asyncio

import pytest

from registry_server.errors import Conflict, NotFound, QueryError
from registry_server.mongo_store import MongoStore

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

    async def delete_one(self, *a):
        return self._c.delete_one(*a)

    async def count_documents(self, *a):
        return self._c.count_documents(*a)

    def find(self, *a):
        return _Cursor(self._c.find(*a))


class _Client:
    def __init__(self):
        self._db = mongomock.MongoClient().db

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
