"""A coroutine run at an interval on the event loop (heartbeats, scans, metrics)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

__all__ = ["Periodic"]


class Periodic:
    """Awaits ``step()`` every ``interval`` seconds until stopped. A failing step is
    logged (``what`` names it) and tried again at the next tick; it never ends the loop."""

    def __init__(self, step: Callable[[], Awaitable[object]], interval: float,
                 logger: logging.Logger, what: str) -> None:  # fmt: skip
        self.step = step
        self.interval = interval
        self._log = logger
        self._what = what
        self._task: asyncio.Task | None = None

    async def _loop(self) -> None:
        while True:
            try:
                await self.step()
            except Exception as exc:
                self._log.error("%s failed: %s", self._what, exc)
            await asyncio.sleep(self.interval)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.ensure_future(self._loop())

    async def stop(self) -> None:
        """Cancel and wait, so no step runs after this returns."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
