"""The MongoDB backend (``--mongo-url mongodb://...``): the same interface as
``EmbeddedStore``, async, on pymongo's AsyncMongoClient.

Filters arrive compiled (``registry_server.filters.Filter``: checked, and code-executing
operators refused, by our compiler), then run by MongoDB itself; options are applied the
same way as on the embedded store so both backends answer alike. A unique index on each
registry's id field is created at start.

Updates are atomic per document across any number of servers: each write bumps a
revision field (``_registry_rev``, never returned), and an update is written only if
the revision it was computed from is still there (compare-and-swap; the app reads again
and retries otherwise). Where the update is plain operators whose result our engine
reproduces, MongoDB applies them itself (``find_one_and_update``); otherwise the checked
document replaces the stored one, on the same condition.
"""

from __future__ import annotations

from typing import Any

from .errors import Conflict, NotFound, Stale
from .filters import Filter, compile_filter
from .options import apply_options
from .schemas import REGISTRIES
from .store import index_keys

__all__ = ["REV", "MongoStore"]

REV = "_registry_rev"


def _hidden() -> dict:
    """The projection that hides MongoDB's _id and our revision (a new dict each time:
    drivers and mongomock may add to the one they are given)."""
    return {"_id": 0, REV: 0}


_NATIVE = {"$set", "$unset", "$inc", "$mul", "$min", "$max", "$rename", "$push",
           "$addToSet", "$pull", "$pop"}  # fmt: skip


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
        doc = await self._coll(name).find_one({self._id(name): doc_id}, _hidden())
        if doc is None:
            raise NotFound(f"{name}: no document {doc_id!r}")
        return doc

    async def get_for_update(self, name: str, doc_id: str) -> tuple[dict, int | None]:
        """The document and its revision (None: never updated), for ``replace_if``."""
        doc = await self._coll(name).find_one({self._id(name): doc_id}, {"_id": 0})
        if doc is None:
            raise NotFound(f"{name}: no document {doc_id!r}")
        return doc, doc.pop(REV, None)

    async def replace_if(
        self, name: str, doc_id: str, doc: dict, rev: int | None, update: dict | None = None
    ) -> dict:
        """Write ``doc`` (computed from the revision ``rev``) if that revision is still
        the stored one, else Stale. ``update``: the operators that produced ``doc``; when
        given, MongoDB applies them itself and its result is returned."""
        cond = {self._id(name): doc_id, REV: rev if rev is not None else {"$exists": False}}
        coll = self._coll(name)
        if update is not None and set(update) <= _NATIVE:
            from pymongo import ReturnDocument

            native = {op: dict(fields) for op, fields in update.items()}
            native.setdefault("$inc", {})[REV] = 1
            result = await coll.find_one_and_update(
                cond, native, return_document=ReturnDocument.AFTER
            )
            if result is not None:
                result.pop("_id", None)
                result.pop(REV, None)
                return result
        else:
            stored = dict(doc)
            stored[REV] = (rev or 0) + 1
            if (await coll.replace_one(cond, stored)).matched_count:
                return doc
        await self.get(name, doc_id)  # NotFound if it was deleted meanwhile
        raise Stale(f"{name}: {doc_id!r} changed while it was being updated")

    async def replace(self, name: str, doc_id: str, doc: dict) -> None:
        result = await self._coll(name).replace_one({self._id(name): doc_id}, dict(doc))
        if result.matched_count == 0:
            raise NotFound(f"{name}: no document {doc_id!r}")

    async def delete(self, name: str, doc_id: str) -> None:
        result = await self._coll(name).delete_one({self._id(name): doc_id})
        if result.deleted_count == 0:
            raise NotFound(f"{name}: no document {doc_id!r}")

    async def find(self, name: str, filter_: Filter | dict, first: int | None = None) -> list[dict]:
        # A plain dict is compiled here: we refuse what we refuse before MongoDB sees it.
        spec = compile_filter(filter_).spec
        cursor = self._coll(name).find(spec, _hidden())
        if first:
            cursor = cursor.limit(first)
        return [doc async for doc in cursor]

    async def query(self, name: str, filter_: Filter | dict, options: dict) -> list[dict]:
        """find, then sort/skip/limit/projection as the embedded store applies them
        (unsorted: MongoDB stops at skip + limit)."""
        first = None
        if not options.get("sort") and options.get("limit"):
            first = (options.get("skip") or 0) + options["limit"]
        return apply_options(await self.find(name, filter_, first), options)

    async def indexes(self, name: str) -> dict:
        found = [info async for info in await self._coll(name).list_indexes()]
        return {"declared": sorted(str(info.get("key")) for info in found), "built": []}

    async def declare_index(self, name: str, spec: Any) -> list[str]:
        """An admin's index, created in MongoDB ({"field": ...} or {"sort": {...}})."""
        index_keys(spec)  # the same checks as the embedded store's
        keys = [(spec["field"], 1)] if "field" in spec else list(spec["sort"].items())
        await self._coll(name).create_index(keys)
        return (await self.indexes(name))["declared"]

    async def drop_index(self, name: str, spec: Any) -> list[str]:
        index_keys(spec)
        keys = [(spec["field"], 1)] if "field" in spec else list(spec["sort"].items())
        try:
            await self._coll(name).drop_index(keys)
        except Exception as exc:  # pymongo's OperationFailure: no such index
            raise NotFound(f"{name}: no declared index {spec}") from exc
        return (await self.indexes(name))["declared"]

    async def count(self, name: str) -> int:
        return await self._coll(name).count_documents({})
