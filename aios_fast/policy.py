"""Loading and running user policies written to the seeds' ``AIOSv1PolicyRule`` interface.

A policy is a class ``AIOSv1PolicyRule(rule_id, settings, parameters)`` (the seeds also
spell it ``AIOsv1PolicyRule``; both are found) with ``eval(parameters, input_data,
context)`` and optionally ``management(action, data)``. The same loader serves the
load-balancer, auto-scaler and health-checker policies.

Where a policy comes from (``load_policy_class``):

- ``path/to/policy.py``: a Python file;
- ``path/to/policy_dir``: a directory holding ``function.py`` (the original's layout);
- ``package.module`` or ``package.module:ClassName``: an importable module;
- ``name:version`` (e.g. ``policies.load_balancer.sticky:v1.2.0``, as block documents
  write them): looked up in the directories of ``AIOS_POLICY_PATH`` (``os.pathsep``
  separated) as ``<dir>/<name with dots as folders>/<version>/function.py`` or
  ``<dir>/<name with dots as folders>/function.py``.

Defaults: a policy may define ``DEFAULT_PARAMETERS`` / ``DEFAULT_SETTINGS`` dicts on its
class (or module); the block's parameters and settings override them, key by key.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .errors import PolicyLoadError

__all__ = ["CLASS_NAMES", "PolicyRule", "load_policy_class", "no_metrics"]

CLASS_NAMES = ("AIOSv1PolicyRule", "AIOsv1PolicyRule")
_VERSION = re.compile(r"^(v?\d[\w.+-]*|latest)$")
_EMPTY_METRICS: dict[str, dict] = {"block_metrics": {}, "cluster_metrics": {}}


def no_metrics() -> dict:
    """The ``get_metrics`` a policy gets when the block has no metrics source yet."""
    return _EMPTY_METRICS


def _exec_file(path: Path):
    path = path.resolve()
    digest = hashlib.sha1(str(path).encode()).hexdigest()[:12]
    name = f"aios_policy_{path.stem}_{digest}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise PolicyLoadError(f"cannot load policy file {path}")
    module = importlib.util.module_from_spec(spec)
    folder = str(path.parent)
    sys.path.insert(0, folder)  # let the policy import helpers that sit beside it
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        raise PolicyLoadError(f"policy file {path} failed to import: {exc!r}") from exc
    finally:
        try:
            sys.path.remove(folder)
        except ValueError:
            pass
    return module


def _find_in_policy_path(name: str, version: str) -> Path | None:
    rel = Path(*name.split("."))
    for folder in filter(None, os.environ.get("AIOS_POLICY_PATH", "").split(os.pathsep)):
        for candidate in (
            Path(folder) / rel / version / "function.py",
            Path(folder) / rel / "function.py",
        ):
            if candidate.is_file():
                return candidate
    return None


def _module_for(uri: str) -> tuple[Any, str | None]:
    path = Path(uri[5:] if uri.startswith("file:") else uri)
    if path.suffix == ".py" or path.is_dir() or uri.startswith("file:"):
        if path.is_dir():
            path = path / "function.py"
        if not path.is_file():
            raise PolicyLoadError(f"policy {uri!r}: no such file {path}")
        return _exec_file(path), None
    name, _, tail = uri.partition(":")
    if tail and _VERSION.match(tail):
        found = _find_in_policy_path(name, tail)
        if found is None:
            raise PolicyLoadError(
                f"policy {uri!r} not found: looked for {name.replace('.', '/')}/{tail}/function.py"
                f" and {name.replace('.', '/')}/function.py under AIOS_POLICY_PATH="
                f"{os.environ.get('AIOS_POLICY_PATH', '')!r}"
            )
        return _exec_file(found), None
    try:
        return importlib.import_module(name), (tail or None)
    except ImportError as exc:
        raise PolicyLoadError(f"policy {uri!r}: cannot import module {name!r}: {exc}") from exc


def network_safe(uri: str) -> str | None:
    """Why a policy URI named in a network request must not be loaded (None: it may).
    Only ``builtin:*`` and ``name:version`` (resolved under the operator's
    AIOS_POLICY_PATH) are; a file, folder or module path would run whatever code it
    names inside the process."""
    uri = uri.strip() if isinstance(uri, str) else ""
    if uri.startswith("builtin:"):
        return None
    name, _, tail = uri.partition(":")
    if tail and _VERSION.match(tail) and re.fullmatch(r"\w[\w.-]*", name):
        return None  # dots become folders under AIOS_POLICY_PATH: nothing can climb out
    return (
        f"policy {uri!r} is not builtin:<name> or <name>:<version> under "
        "AIOS_POLICY_PATH; paths and modules cannot be loaded over the network"
    )


def load_policy_class(uri: str) -> type:
    """The policy class named by ``uri`` (see the module docstring for the forms)."""
    if not isinstance(uri, str) or not uri.strip():
        raise PolicyLoadError("policy URI must be a non-empty string")
    module, class_name = _module_for(uri.strip())
    names = (class_name,) if class_name else CLASS_NAMES
    for name in names:
        cls = getattr(module, name, None)
        if cls is not None:
            if not callable(getattr(cls, "eval", None)):
                raise PolicyLoadError(f"policy {uri!r}: {name} has no eval() method")
            return cls
    raise PolicyLoadError(f"policy {uri!r} defines none of {', '.join(names)}")


def _defaults(cls: type, attr: str) -> dict:
    value = getattr(cls, attr, None)
    if value is None:
        value = getattr(sys.modules.get(cls.__module__), attr, None)
    return dict(value) if isinstance(value, dict) else {}


class PolicyRule:
    """One constructed policy with its parameters, settings and persistent context dict."""

    def __init__(
        self,
        policy: type | str,
        rule_id: str | None = None,
        *,
        parameters: dict | None = None,
        settings: dict | None = None,
        get_metrics: Callable[[], dict] | None = None,
        block_data: dict | None = None,
        cluster_data: dict | None = None,
    ) -> None:
        cls = load_policy_class(policy) if isinstance(policy, str) else policy
        self.rule_id = rule_id or (policy if isinstance(policy, str) else cls.__name__)
        self.parameters = {**_defaults(cls, "DEFAULT_PARAMETERS"), **(parameters or {})}
        self.settings = {
            **_defaults(cls, "DEFAULT_SETTINGS"),
            **(settings or {}),
            "get_metrics": get_metrics or no_metrics,
            "block_data": block_data if block_data is not None else {},
            "cluster_data": cluster_data if cluster_data is not None else {},
        }
        self.context: dict = {}
        try:
            self.rule = cls(self.rule_id, self.settings, self.parameters)
        except Exception as exc:
            raise PolicyLoadError(f"policy {self.rule_id!r} failed to start: {exc!r}") from exc

    def eval(self, input_data: Any) -> Any:
        """``rule.eval(parameters, input_data, context)``; exceptions propagate to the caller."""
        return self.rule.eval(self.parameters, input_data, self.context)

    def management(self, action: str, data: dict) -> Any:
        fn = getattr(self.rule, "management", None)
        if fn is None:
            raise PolicyLoadError(f"policy {self.rule_id!r} has no management() method")
        return fn(action, data)
