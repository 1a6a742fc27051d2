"""The MongoDB backend (``--mongo-url mongodb://...``): the same interface as
``EmbeddedStore``, async, on pymongo's AsyncMongoClient.

Filters arrive compiled (``registry_server.filters.Filter``: checked, and code-executing
operators refused, by our compiler), then run by MongoDB itself; options are applied the
same way as on the embedded store so both backends answer alike. A unique index on each
registry's id field is created at start.
"""

from __future__ import annotations

from typing import Any

from .errors import Conflict, NotFound
from .filters import Filter, compile_filter
from .schemas import REGISTRIES

__all__ = ["MongoStore"]


class MongoStore:
    def __init__(self, url: str, database: str = "aios_registry", client: Any = None) -> None:
        if client is None:
            from pymongo import AsyncMongoClient

            client = AsyncMongoClient(url)
        self.client = client
        self.db = client[database]

    def _coll(self, name: str):
        return self.db[name]

    def _id(self, name: str) -> str:
        return REGISTRIES[name].id_field

    async def start(self) -> None:
        for name, registry in REGISTRIES.items():
            await self._coll(name).create_index(registry.id_field, unique=True)

    async def close(self) -> None:
        await self.client.close()

    async def insert(self, name: str, doc_id: str, doc: dict) -> None:
        from pymongo.errors import DuplicateKeyError

        try:
            await self._coll(name).insert_one(dict(doc))  # a copy: Mongo adds _id to it
        except DuplicateKeyError:
            raise Conflict(f"{name}: {doc_id!r} already exists") from None

    async def get(self, name: str, doc_id: str) -> dict:
        doc = await self._coll(name).find_one({self._id(name): doc_id}, {"_id": 0})
        if doc is None:
            raise NotFound(f"{name}: no document {doc_id!r}")
        return doc

    async def replace(self, name: str, doc_id: str, doc: dict) -> None:
        result = await self._coll(name).replace_one({self._id(name): doc_id}, dict(doc))
        if result.matched_count == 0:
            raise NotFound(f"{name}: no document {doc_id!r}")

    async def delete(self, name: str, doc_id: str) -> None:
        result = await self._coll(name).delete_one({self._id(name): doc_id})
        if result.deleted_count == 0:
            raise NotFound(f"{name}: no document {doc_id!r}")

    async def find(self, name: str, filter_: Filter | dict) -> list[dict]:
        # A plain dict is compiled here: we refuse what we refuse before MongoDB sees it.
        spec = compile_filter(filter_).spec
        cursor = self._coll(name).find(spec, {"_id": 0})
        return [doc async for doc in cursor]

    async def count(self, name: str) -> int:
        return await self._coll(name).count_documents({})
