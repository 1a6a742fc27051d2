"""The registry HTTP API (aiohttp): clusters, blocks, vDAGs and vDAG controllers.

Every answer is JSON: ``{"success": true, "data": ...}`` (201 on create, 200 otherwise)
or ``{"success": false, "message": ...}`` with 400 (malformed JSON, invalid filter,
update, option or document), 404 (unknown id), 409 (duplicate id). Bad input never
gets a 500.

Query bodies are a bare filter, or ``{"query": filter, "options": {sort, skip, limit,
projection}}`` (a body whose only keys are query/options is the second form). PUT takes
update operators; a bare document means $set. The id of a document cannot change.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import math
import re
import sys
import weakref
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from aiohttp import web

from .errors import Conflict, NotFound, QueryError, RegistryError, SchemaError, Stale
from .filters import compile_filter, regex_budget
from .openapi import build_spec
from .options import MAX_LIMIT, apply_options, check_options
from .schemas import REGISTRIES, Registry, validate
from .security import Security
from .store import EmbeddedStore
from .update import apply_update, normalize_update

__all__ = ["DEFAULT_PAGE", "MAX_BODY", "make_app"]

log = logging.getLogger("registry_server")


class _AsyncStore:
    """Gives the synchronous EmbeddedStore the async interface MongoStore has. Queries
    run in the app's query thread and writes in a write thread (an index build, a long
    scan or a commit's fsync never holds the event loop; the GIL lets the loop in every
    millisecond, see __main__); reads by id and counts are dictionary lookups, inline."""

    def __init__(self, store: EmbeddedStore, pool: ThreadPoolExecutor) -> None:
        self._store = store
        self._pool = pool  # queries (one thread: one busy thread besides the loop)
        self._writes = ThreadPoolExecutor(max_workers=1, thread_name_prefix="registry-write")

    async def _run(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    async def _write(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self._writes, fn, *args)

    def close(self) -> None:
        self._writes.shutdown(wait=True)

    async def insert(self, name, doc_id, doc):
        return await self._write(self._store.insert, name, doc_id, doc)

    async def get(self, name, doc_id):
        return self._store.get(name, doc_id)

    async def replace(self, name, doc_id, doc):
        return await self._write(self._store.replace, name, doc_id, doc)

    async def delete(self, name, doc_id):
        return await self._write(self._store.delete, name, doc_id)

    async def get_for_update(self, name, doc_id):
        return await self._write(self._store.get_for_update, name, doc_id)

    async def replace_if(self, name, doc_id, doc, rev, update=None):
        return await self._write(self._store.replace_if, name, doc_id, doc, rev, update)

    async def find(self, name, filter_, first=MAX_LIMIT):
        return await self._run(self._store.find_encoded, name, filter_, first)

    async def query(self, name, filter_, options):
        """find, then sort/skip/limit/projection, in the pool. ``options`` are checked,
        with a limit of 1 to MAX_LIMIT (``capped``): the scan stops at skip + limit
        hits, in insertion order, along a sort index, or in a top-k pass."""

        def run():
            skip, limit = options.get("skip") or 0, options["limit"]
            first = min(skip + limit, sys.maxsize)
            if options.get("sort"):  # ties by insertion position
                pairs, skipped = self._store.find_sorted(name, filter_, options["sort"],
                                                         first, min(skip, first))  # fmt: skip
                return apply_options(pairs, {**options, "skip": skip - skipped}, positioned=True)
            if not options.get("projection"):  # the stored JSON, never decoded to answer
                return self._store.find_encoded(name, filter_, first)[skip:]
            return apply_options(self._store.find(name, filter_, first), options)

        pairs = self._store.find_quick(name, filter_)  # a few candidates: here, at once
        if pairs is not None:
            return apply_options(pairs, options, positioned=True)
        return await self._run(run)

    async def indexes(self, name):
        return self._store.indexes(name)

    async def declare_index(self, name, spec):
        return await self._run(self._store.declare_index, name, spec)

    async def drop_index(self, name, spec):
        return await self._write(self._store.drop_index, name, spec)

    async def count(self, name):
        return self._store.count(name)


_STORE: web.AppKey[Any] = web.AppKey("store")
_POOL = web.AppKey("pool", ThreadPoolExecutor)
DEFAULT_PAGE = 100
"""GET on a registry's list answers this many documents when no limit is given, with a
``next`` link (and a Link header) to the following page."""
_ENCODE_INLINE = 200  # answers with more documents are encoded in the pool ...
_CHUNK = 500  # ... and streamed, this many documents a write
QUERY_THREADS = 4
"""Threads that run queries: a slow query (a regex within its budget, a top-k pass over
every document) leaves the others to the rest."""
_SPEC = web.AppKey("openapi", dict)
_LOCKS = web.AppKey("document_locks", weakref.WeakValueDictionary)
MAX_BODY = 1 << 20
"""The largest request body, in bytes (larger: 413). Registry documents are a few KB."""
_UPDATE_TRIES = 20  # compare-and-swap rounds before a 409 (only other servers can race)


_dumps = functools.partial(json.dumps, allow_nan=False)  # never an invalid JSON answer


def ok(data: Any, status: int = 200, **extra: Any) -> web.Response:
    body = {"success": True, "data": data, **extra}
    return web.json_response(body, status=status, dumps=_dumps)


def _encoded(doc: Any) -> bytes:
    """A document's JSON for an answer: a stored one as it is (unless a Python caller
    stored NaN or Infinity: then encoding refuses it, as for any answer)."""
    if type(doc) is bytes:
        if b"NaN" not in doc and b"Infinity" not in doc:
            return doc
        doc = json.loads(doc)
    return _dumps(doc).encode()


async def ok_docs(
    request: web.Request, docs: list, **extra: Any
) -> web.Response | web.StreamResponse:
    """ok() for a list of documents (decoded, or their stored JSON as bytes); a long
    one is encoded in the thread pool and streamed _CHUNK documents at a time (the
    answer is never held whole, encoded)."""
    head = _dumps({"success": True, **extra})[:-1].encode()  # without its closing brace

    def encode(start: int) -> bytes:  # one document at a time: the GIL is let go between
        parts = [head + b', "data": ['] if start == 0 else []
        for i in range(start, min(start + _CHUNK, len(docs))):
            if i:
                parts.append(b", ")
            parts.append(_encoded(docs[i]))
        if start + _CHUNK >= len(docs):
            parts.append(b"]}")
        return b"".join(parts)

    if len(docs) <= _ENCODE_INLINE:
        return web.Response(body=encode(0), content_type="application/json")
    loop = asyncio.get_running_loop()
    first = await loop.run_in_executor(request.app[_POOL], encode, 0)  # errors before headers
    response = web.StreamResponse(headers={"Content-Type": "application/json"})
    await response.prepare(request)
    await response.write(first)
    for start in range(_CHUNK, len(docs), _CHUNK):
        await response.write(await loop.run_in_executor(request.app[_POOL], encode, start))
    await response.write_eof()
    return response


def fail(status: int, message: str) -> web.Response:
    return web.json_response({"success": False, "message": message}, status=status)


@web.middleware
async def errors(request: web.Request, handler):
    try:
        return await handler(request)
    except RegistryError as exc:
        return fail(exc.status, str(exc))
    except web.HTTPException as exc:
        if exc.status == 413:
            return fail(413, f"the request body is larger than {MAX_BODY} bytes")
        if exc.status >= 400:
            return fail(exc.status, exc.reason)
        raise
    except RecursionError:  # only input nested absurdly deep gets here (JSON, filters)
        return fail(400, "the request is nested too deeply")
    except Exception:  # a bug: say so, without the details of the internals
        log.exception("unhandled error on %s %s", request.method, request.path)
        return fail(500, "internal error")


def _no_constant(name: str) -> Any:
    raise QueryError(f"{name} is not JSON: numbers must be finite")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e400 overflows to infinity
        raise QueryError(f"{text} is out of range: numbers must be finite")
    return value


_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def _check_unicode(value: Any) -> None:
    """QueryError for a lone surrogate (an unpaired \\ud800-\\udfff escape) in any
    string or key: it is not Unicode text, and could be neither stored nor compared."""
    stack = [value]
    while stack:
        item = stack.pop()
        if type(item) is str:
            strings: Any = (item,)
        elif type(item) is dict:
            strings = item.keys()
            stack.extend(item.values())
        elif type(item) is list:
            stack.extend(item)
            continue
        else:
            continue
        for text in strings:
            try:
                text.encode("utf-8")
            except UnicodeEncodeError:
                shown = text.encode("utf-8", "backslashreplace").decode()[:60]
                raise QueryError(
                    f"the request holds a lone surrogate ({shown!r}): strings must be valid Unicode"
                ) from None


def parse_json(raw: bytes) -> Any:
    """Strict JSON: NaN, Infinity and numbers that overflow to infinity are refused (a
    response carrying them would not be JSON), as are lone surrogates and anything
    malformed."""
    try:
        value = json.loads(raw, parse_constant=_no_constant, parse_float=_finite_float)
    except (ValueError, UnicodeDecodeError) as exc:
        if isinstance(exc, QueryError):
            raise
        raise QueryError(f"malformed JSON: {exc}") from None
    if _SURROGATE_ESCAPE.search(raw):  # only then can a string hold a surrogate
        _check_unicode(value)
    return value


async def _body(request: web.Request) -> Any:
    raw = await request.read()
    if not raw:
        raise QueryError("the request needs a JSON body")
    return parse_json(raw)


def _split_query(body: Any) -> tuple[dict, dict]:
    if isinstance(body, dict) and body and set(body) <= {"query", "options"}:
        query = body.get("query", {})
        options = check_options(body.get("options"))
    else:
        query, options = body, {}
    if not isinstance(query, dict):
        raise QueryError("the filter must be a JSON object")
    return query, options


def _budgeted_update(doc: dict, update: dict) -> dict:
    """apply_update with the request's regex budget ($pull conditions may hold $regex)."""
    with regex_budget():
        return apply_update(doc, update)


class RegistryRoutes:
    """CRUD + query routes for one registry."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry

    def store(self, request: web.Request):
        return request.app[_STORE]

    async def create(self, request: web.Request) -> web.Response:
        doc = validate(self.registry, await _body(request))
        await self.check_references(request, doc)
        await self.store(request).insert(self.registry.name, doc[self.registry.id_field], doc)
        return ok(doc, 201)

    async def check_references(self, request: web.Request, doc: dict) -> None:
        if self.registry.name == "vdag_controllers":
            try:
                await self.store(request).get("vdags", doc["vdag_uri"])
            except NotFound:
                raise SchemaError(
                    f"vdag_uri {doc['vdag_uri']!r}: no such vDAG (create it first)"
                ) from None

    async def get(self, request: web.Request) -> web.Response:
        return ok(await self.store(request).get(self.registry.name, request.match_info["id"]))

    async def list(self, request: web.Request) -> web.StreamResponse:
        options = {}
        for key in ("skip", "limit"):
            if key in request.query:
                try:
                    options[key] = int(request.query[key])
                except ValueError:
                    raise QueryError(f"{key} must be an integer") from None
        options.setdefault("limit", DEFAULT_PAGE)
        options = check_options(options)
        if options["limit"] == 0:  # MongoDB's "no limit": never the whole registry here
            raise QueryError(f"limit must be 1 to {MAX_LIMIT} (a page; follow next for more)")
        docs = await self.store(request).query(self.registry.name, compile_filter({}), options)
        skip, limit = options.get("skip") or 0, options["limit"]
        following = None
        if limit and len(docs) == limit:  # there may be more
            following = f"{request.path}?skip={skip + limit}&limit={limit}"
        response = await ok_docs(request, docs, next=following)
        if following:
            response.headers["Link"] = f'<{following}>; rel="next"'
        return response

    async def update(self, request: web.Request) -> web.Response:
        """Read, apply, check and write one document, atomically: the whole body is read
        first; then, under this document's lock (other requests in this server) and a
        compare-and-swap on its revision (other servers on one MongoDB), the update is
        applied to the current document and written only if nothing changed meanwhile."""
        doc_id = request.match_info["id"]
        update = normalize_update(await _body(request))
        store, name = self.store(request), self.registry.name
        locks = request.app[_LOCKS]
        lock = locks.get((name, doc_id))
        if lock is None:
            lock = locks[(name, doc_id)] = asyncio.Lock()
        loop = asyncio.get_running_loop()
        async with lock:
            for _ in range(_UPDATE_TRIES):
                current, rev = await store.get_for_update(name, doc_id)
                plain = await loop.run_in_executor(request.app[_POOL], _budgeted_update,
                                                   current, update)  # fmt: skip
                updated = dict(plain)
                if name == "vdags":
                    updated.pop("vdagURI", None)  # recomputed from name and version
                updated = validate(self.registry, updated)
                if updated[self.registry.id_field] != doc_id:
                    raise SchemaError(f"{self.registry.id_field} cannot change ({doc_id!r})")
                await self.check_references(request, updated)
                native = update if updated == plain else None  # operators MongoDB can apply
                try:
                    return ok(await store.replace_if(name, doc_id, updated, rev, native))
                except Stale:
                    continue
        raise Conflict(f"{name}: {doc_id!r} is changing too often to update; try again")

    async def delete(self, request: web.Request) -> web.Response:
        doc_id = request.match_info["id"]
        await self.store(request).delete(self.registry.name, doc_id)
        return ok({self.registry.id_field: doc_id})

    async def query(self, request: web.Request) -> web.Response | web.StreamResponse:
        """At most MAX_LIMIT documents (a limit of 0 or none means that many); when the
        answer is full, ``next`` holds the options of the following page (skip and
        limit), else null."""
        query, options = _split_query(await _body(request))
        filter_ = compile_filter(query)  # once per request; a bad filter is a 400 here
        skip, limit = options.get("skip") or 0, options.get("limit") or MAX_LIMIT
        options = {**options, "limit": limit}
        docs = await self.store(request).query(self.registry.name, filter_, options)
        following = {"skip": skip + limit, "limit": limit} if len(docs) == limit else None
        return await ok_docs(request, docs, next=following)

    async def indexes(self, request: web.Request) -> web.Response:
        return ok(await self.store(request).indexes(self.registry.name))

    async def declare_index(self, request: web.Request) -> web.Response:
        """An admin declares an index (``{"field": "a.b"}`` or ``{"sort": {...}}``): kept
        in the store, built now, never counted against what queries may cause."""
        spec = await _body(request)
        return ok(await self.store(request).declare_index(self.registry.name, spec), 201)

    async def drop_index(self, request: web.Request) -> web.Response:
        """An admin drops an index it declared (the same body as its declaration)."""
        spec = await _body(request)
        return ok(await self.store(request).drop_index(self.registry.name, spec))


async def health(request: web.Request) -> web.Response:
    store = request.app[_STORE]
    return ok({"status": "ok", "counts": {name: await store.count(name) for name in REGISTRIES}})


async def openapi(request: web.Request) -> web.Response:
    return web.json_response(request.app[_SPEC])


async def controllers_by_vdag(request: web.Request) -> web.Response | web.StreamResponse:
    """The vDAG's controllers (at most MAX_LIMIT)."""
    docs = await request.app[_STORE].find(
        "vdag_controllers", compile_filter({"vdag_uri": request.match_info["uri"]})
    )
    return await ok_docs(request, docs)


def make_app(store, security: Security | None = None) -> web.Application:
    """The app over an EmbeddedStore or a MongoStore; ``security`` checks callers
    (tokens, JSON bodies, Host names, read-only) before anything else."""
    middlewares = [errors] if security is None else [security.middleware, errors]
    app = web.Application(middlewares=middlewares, client_max_size=MAX_BODY)
    pool = app[_POOL] = ThreadPoolExecutor(QUERY_THREADS, thread_name_prefix="registry")
    app[_STORE] = _AsyncStore(store, pool) if isinstance(store, EmbeddedStore) else store

    async def stop_pool(app):
        pool.shutdown(wait=True)
        if isinstance(app[_STORE], _AsyncStore):
            app[_STORE].close()

    app.on_cleanup.append(stop_pool)
    app[_SPEC] = build_spec()
    app[_LOCKS] = weakref.WeakValueDictionary()
    r = app.router
    r.add_get("/health", health)
    r.add_get("/openapi.json", openapi)
    for prefix, name in (("/clusters", "clusters"), ("/blocks", "blocks")):
        routes = RegistryRoutes(REGISTRIES[name])
        r.add_post(prefix, routes.create)
        r.add_get(prefix, routes.list)
        r.add_post(f"{prefix}/query", routes.query)
        r.add_get(f"/indexes{prefix}", routes.indexes)
        r.add_post(f"/indexes{prefix}", routes.declare_index)
        r.add_delete(f"/indexes{prefix}", routes.drop_index)
        r.add_get(prefix + "/{id}", routes.get)
        r.add_put(prefix + "/{id}", routes.update)
        r.add_delete(prefix + "/{id}", routes.delete)
    vdags = RegistryRoutes(REGISTRIES["vdags"])
    r.add_post("/vdag", vdags.create)
    r.add_get("/vdags", vdags.list)
    r.add_post("/vdags", vdags.query)
    r.add_get("/indexes/vdags", vdags.indexes)
    r.add_post("/indexes/vdags", vdags.declare_index)
    r.add_delete("/indexes/vdags", vdags.drop_index)
    r.add_get("/vdag/{id}", vdags.get)
    r.add_put("/vdag/{id}", vdags.update)
    r.add_delete("/vdag/{id}", vdags.delete)
    controllers = RegistryRoutes(REGISTRIES["vdag_controllers"])
    r.add_post("/vdag-controller", controllers.create)
    r.add_get("/vdag-controllers", controllers.list)
    r.add_post("/vdag-controllers", controllers.query)
    r.add_get("/indexes/vdag-controllers", controllers.indexes)
    r.add_post("/indexes/vdag-controllers", controllers.declare_index)
    r.add_delete("/indexes/vdag-controllers", controllers.drop_index)
    r.add_get("/vdag-controllers/by-vdag-uri/{uri}", controllers_by_vdag)
    r.add_get("/vdag-controller/{id}", controllers.get)
    r.add_put("/vdag-controller/{id}", controllers.update)
    r.add_delete("/vdag-controller/{id}", controllers.delete)
    return app
