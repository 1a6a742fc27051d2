"""Choose between a compiled module and its pure-Python twin.

``AIOS_FAST_NO_EXTENSIONS=1`` selects the twins explicitly. Otherwise a missing
extension is an error that says how to build it: there is no silent fallback.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType

__all__ = ["load", "use_extensions"]


def use_extensions() -> bool:
    flag = os.environ.get("AIOS_FAST_NO_EXTENSIONS", "").strip().lower()
    return flag not in {"1", "true", "yes", "on"}


def load(name: str) -> ModuleType:
    """Import ``aios_fast.<name>`` (compiled) or ``aios_fast.<name>_py`` (twin)."""
    if not use_extensions():
        return importlib.import_module(f"aios_fast.{name}_py")
    try:
        return importlib.import_module(f"aios_fast.{name}")
    except ImportError as exc:
        raise ImportError(
            f"aios_fast.{name} is not compiled ({exc}). Build it with `pip install -e .` "
            "(needs a C compiler and Cython>=3.1), or set AIOS_FAST_NO_EXTENSIONS=1 "
            "to use the pure-Python twins."
        ) from exc
