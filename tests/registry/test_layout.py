"""The registry's structure: a request's filter is compiled once, the modules import
each other without cycles, and no private name is imported from another module."""

from __future__ import annotations

import ast
import asyncio
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer

import registry_server
from registry_server.app import make_app
from registry_server.filters import Filter, closures, compile_filter
from registry_server.schemas import REGISTRIES
from registry_server.store import EmbeddedStore

from .seed_docs import CLUSTER, fresh

PACKAGE = Path(registry_server.__file__).parent


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _imports(name: str, path: Path) -> list[tuple[str, list[str]]]:
    """(module imported, names taken from it) for every import in the module."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(alias.name, []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package
            for _ in range(node.level - 1):
                base = base.rpartition(".")[0]
            module = f"{base}.{node.module}" if node.level and node.module else node.module or base
            found.append((module, [alias.name for alias in node.names]))
    return found


def test_no_import_cycles_and_no_private_names_across_packages():
    modules = _modules()
    graph: dict[str, set[str]] = {}
    private = []
    for name, path in modules.items():
        graph[name] = set()
        for module, names in _imports(name, path):
            targets = [module] + [f"{module}.{n}" for n in names]
            for target in targets:
                if target in modules and target != name:
                    graph[name].add(target)
            if module in modules:  # stricter than the rule: not even within a package
                private += [f"{name} imports {module}.{n}" for n in names if n.startswith("_")]
    assert not private, private
    # A package importing its own submodules is how packages work; any other cycle
    # (a module importing, directly or not, the module that imports it) is not.
    state: dict[str, str] = {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = "open"
        for nxt in graph[node]:
            if nxt.startswith(node + "."):
                continue
            if state.get(nxt) == "open":
                raise AssertionError(f"import cycle: {' -> '.join([*stack, nxt])}")
            if nxt not in state:
                visit(nxt, [*stack, nxt])
        state[node] = "done"

    for node in graph:
        if node not in state:
            visit(node, [node])
    for name in modules:
        assert "aios_fast" not in {m.split(".")[0] for m, _ in _imports(name, modules[name])}


@pytest.fixture
def compilations(monkeypatch):
    """How many Filters are built and how many times a filter is validated."""
    counts = {"validated": 0, "filters": [], "built": 0}
    validate, init = closures.compile_clauses, Filter.__init__

    def counting_validate(spec):
        counts["validated"] += 1
        counts["filters"].append(spec)
        return validate(spec)

    def counting_init(self, spec):
        counts["built"] += 1
        init(self, spec)

    monkeypatch.setattr(closures, "compile_clauses", counting_validate)
    monkeypatch.setattr(Filter, "__init__", counting_init)
    return counts


def test_a_request_compiles_its_filter_once(tmp_path, compilations):
    store = EmbeddedStore(tmp_path / "r.sqlite3", list(REGISTRIES))

    async def run():
        async with TestClient(TestServer(make_app(store))) as client:
            assert (await client.post("/clusters", json=fresh(CLUSTER))).status == 201
            assert compilations["validated"] == 0
            query = {"gpus.count": {"$gte": 2}, "status": "live", "tags": {"$regex": "^g"}}
            resp = await client.post("/clusters/query", json=query)
            body = await resp.json()
            assert resp.status == 200 and len(body["data"]) == 1, body
            assert (compilations["validated"], compilations["built"]) == (1, 1)
            assert compilations["filters"] == [query]
            # An update whose $pull takes a condition: one filter, compiled once.
            update = {"$pull": {"tags": {"$in": ["gpu"]}}}
            resp = await client.put("/clusters/cluster-west-vision-001", json=update)
            assert resp.status == 200, await resp.text()
            assert (compilations["validated"], compilations["built"]) == (2, 2)
            # A bad filter: refused by the one compilation, before anything is read.
            resp = await client.post("/clusters/query", json={"a": {"$where": "1"}})
            assert resp.status == 400
            assert compilations["validated"] == 3

    try:
        asyncio.run(run())
    finally:
        store.close()


def test_store_and_planner_take_the_compiled_filter(tmp_path, compilations):
    store = EmbeddedStore(tmp_path / "r.sqlite3", list(REGISTRIES))
    try:
        store.insert("clusters", "c1", fresh(CLUSTER))
        flt = compile_filter({"status": "live", "gpus.count": {"$gt": 1}})
        assert isinstance(flt, Filter) and flt(fresh(CLUSTER)) is True
        assert compile_filter(flt) is flt
        before = compilations["validated"]
        assert [d["id"] for d in store.find("clusters", flt)] == ["cluster-west-vision-001"]
        assert compilations["validated"] == before
    finally:
        store.close()


def test_mongo_backend_takes_the_compiled_filter(compilations):
    pytest.importorskip("mongomock")
    from registry_server.mongo_store import MongoStore

    from .test_mongo_store import _Client

    async def run():
        store = MongoStore("mongodb://unused", client=_Client())
        await store.start()
        await store.insert("clusters", "c1", fresh(CLUSTER))
        flt = compile_filter({"status": "live"})
        before = compilations["validated"]
        assert len(await store.find("clusters", flt)) == 1
        assert compilations["validated"] == before

    asyncio.run(run())
