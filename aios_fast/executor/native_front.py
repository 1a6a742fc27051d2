"""The executor's native gRPC front (``--front native``): HTTP/2 and gRPC framing in C
(``aios_fast._front``, Cython over libnghttp2, declared in native/aios_fast/_front.pxd)
as an asyncio Protocol. This module says whether it can be used here (``resolve_front``,
importable without the extension); ``executor.native_server`` is its Python side (the
listener, ``NativeServer``, a subclass of the compiled ``Server``).
"""

from __future__ import annotations

import importlib
import logging
from types import ModuleType

from ..errors import AiosFastError

__all__ = ["REBUILD", "load_front", "resolve_front", "unavailable"]

log = logging.getLogger("aios_fast.executor")


# How to get the native front where the build left it out (its headers were missing).
REBUILD = ("install libnghttp2-dev (apt-get install libnghttp2-dev) and rebuild with "
           "`make setup` (a clone) or install the aios-fast wheel, which carries it")  # fmt: skip


def load_front() -> ModuleType:
    """The compiled front, or AiosFastError saying why it is not there."""
    from .._select import use_extensions

    if not use_extensions():
        raise AiosFastError("--front native needs the compiled extensions "
                            "(AIOS_FAST_NO_EXTENSIONS is set)")  # fmt: skip
    try:
        return importlib.import_module("aios_fast._front")
    except ImportError as exc:
        raise AiosFastError(
            f"--front native: aios_fast._front is not built ({exc}); {REBUILD}, or use "
            "--front grpcio"
        ) from None


def resolve_front(front: str) -> str:
    """``--front`` as it will serve: "auto" is native where it is built, grpcio
    elsewhere; "native" where it is not built is AiosFastError (one line)."""
    if front == "auto":
        why = unavailable()
        if why and "not built" in why:  # a build choice nobody made on purpose: said loudly
            log.warning(
                "WARNING: the native gRPC front is not built here: serving with grpcio, "
                "10-18x more CPU per task; %s", REBUILD)  # fmt: skip
        return "grpcio" if why else "native"
    if front == "native" and (why := unavailable()):
        raise AiosFastError(why)
    return front


def unavailable() -> str | None:
    """Why the native front cannot be used here, or None."""
    try:
        load_front()
    except AiosFastError as exc:
        return str(exc)
    return None
