"""The package layout's rules, read from the source with ``ast`` (nothing is imported):

- no import cycles among the modules of ``aios_fast`` and ``registry_server``, counting
  imports inside functions too (they hide cycles, they do not remove them);
- no underscore-prefixed name (module, function, class, constant) imported from another
  subpackage: each subpackage's private parts stay its own;
- ``registry_server`` never imports ``aios_fast``.
"""

from __future__ import annotations

import ast
import functools
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("aios_fast", "registry_server")
GENERATED = ("aios_fast.protos.",)  # protoc output: not ours to arrange


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            name = ".".join(parts)
            if not name.startswith(GENERATED):
                found[name] = path
    return found


MODULES = _modules()


def _is_package(name: str) -> bool:
    return (ROOT / Path(*name.split(".")) / "__init__.py").exists()


def _resolve(module: str, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".")
    if not _is_package(module):
        base = base[:-1]  # relative to the module's package
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


@functools.cache
def _parse(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), str(path))


def _imports(module: str) -> list[tuple[str, str | None]]:
    """(imported module, name taken from it or None) for every import in ``module``."""
    tree = _parse(MODULES[module])
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(alias.name, None) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            target = _resolve(module, node)
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                if sub in MODULES:  # `from pkg import module`
                    out.append((sub, None))
                else:
                    out.append((target, alias.name))
    return out


def _graph() -> dict[str, set[str]]:
    return {
        module: {target for target, _ in _imports(module) if target in MODULES and target != module}
        for module in MODULES
    }


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def _subpackage(module: str) -> str:
    """The room a module lives in: ``aios_fast.executor`` for aios_fast/executor/*, the
    top-level package itself for its top-level modules."""
    parts = module.split(".")
    if len(parts) >= 2 and _is_package(".".join(parts[:2])):
        return ".".join(parts[:2])
    return parts[0]


def test_the_checker_sees_the_packages():
    assert {"aios_fast.executor.core", "aios_fast.instance.server", "aios_fast.wire",
            "registry_server.app"} <= set(MODULES)  # fmt: skip
    graph = _graph()
    assert "aios_fast.executor.config" in graph["aios_fast.executor.core"]
    assert "aios_fast.wire" in graph["aios_fast.instance.link_server"]


def test_the_cycle_finder_finds_cycles():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert _cycles(graph) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles():
    assert _cycles(_graph()) == []


def test_no_private_name_crosses_a_subpackage():
    crossings = []
    for module in MODULES:
        for target, name in _imports(module):
            if target not in MODULES and not target.startswith(PACKAGES):
                continue  # another library
            private = (name or target.rsplit(".", 1)[-1]).startswith("_")
            dunder = (name or "").startswith("__")
            if private and not dunder and _subpackage(target) != _subpackage(module):
                crossings.append(f"{module} imports {target}{'.' + name if name else ''}")
    assert crossings == []


def test_the_registry_does_not_import_aios_fast():
    offenders = [
        f"{module} imports {target}"
        for module in MODULES
        if module.startswith("registry_server")
        for target, _ in _imports(module)
        if target == "aios_fast" or target.startswith("aios_fast.")
    ]
    assert offenders == []


# Parameters through which one part hands itself (or another) to a collaborator: each
# must be typed (a class or a Protocol naming what the collaborator uses), never Any or
# left open, so no collaborator silently receives the whole executor.
COLLABORATORS = {"executor", "ex", "router", "hosts", "counters", "dispatch", "outliers"}


def _collaborator_params() -> list[str]:
    bad = []
    for module, path in MODULES.items():
        tree = _parse(path)
        for node in ast.walk(tree):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            args = node.args
            for arg in args.posonlyargs + args.args + args.kwonlyargs:
                if arg.arg not in COLLABORATORS:
                    continue
                note = arg.annotation
                if note is None or (isinstance(note, ast.Name) and note.id == "Any"):
                    bad.append(f"{module}.{node.name}({arg.arg})")
    return bad


def test_collaborators_get_typed_interfaces():
    assert _collaborator_params() == []


def test_the_collaborator_check_can_fail(monkeypatch, tmp_path):
    path = tmp_path / "probe.py"
    path.write_text("from typing import Any\n\ndef f(executor: Any, counters): ...\n")
    monkeypatch.setitem(MODULES, "aios_fast.probe", path)
    assert _collaborator_params() == ["aios_fast.probe.f(executor)", "aios_fast.probe.f(counters)"]
