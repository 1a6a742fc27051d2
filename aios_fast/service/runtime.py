"""How every aios-fast process runs: uvloop when installed, and one way to wait for
SIGTERM/SIGINT so each service stops through its own ``stop()``, in order."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Coroutine
from typing import Any, TypeVar

__all__ = ["STOP_SIGNALS", "install_uvloop", "run", "signal_event", "until_signalled"]

T = TypeVar("T")
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def install_uvloop() -> None:
    """Make new event loops uvloop ones (a plain asyncio loop where it is missing)."""
    try:
        import uvloop
    except ImportError:
        return
    uvloop.install()


def run(main: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run(main)`` on uvloop: the entry point of every aios-fast process."""
    install_uvloop()
    return asyncio.run(main)


def signal_event() -> asyncio.Event:
    """An event the running loop sets on SIGTERM or SIGINT (instead of raising)."""
    event = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in STOP_SIGNALS:
        loop.add_signal_handler(sig, event.set)
    return event


async def until_signalled() -> None:
    """Until SIGTERM or SIGINT; the caller then stops its services."""
    await signal_event().wait()
