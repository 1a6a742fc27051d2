"""Drain: once the instance is leaving it takes nothing new, and waits (up to a grace
period) for what it took to finish."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

__all__ = ["Drain"]


class Drain:
    """``leaving`` turns on with ``begin()``; ``wait(grace)`` waits until ``busy()``
    (tasks taken and unfinished) is 0 or ``grace`` seconds passed, saying what it waits
    for, and returns the seconds left of the grace."""

    def __init__(self, busy: Callable[[], int], log: logging.Logger) -> None:
        self.busy = busy
        self.leaving = False
        self._log = log

    def begin(self) -> None:
        self.leaving = True

    async def wait(self, grace: float) -> float:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        if self.busy():
            self._log.info("stopping: waiting up to %.0fs for %d task(s) to finish",
                           grace, self.busy())  # fmt: skip
        while self.busy() and loop.time() < deadline:
            await asyncio.sleep(0.01)
        if self.busy():
            self._log.error("stopping with %d tasks unfinished after %.0fs", self.busy(), grace)
        return max(0.0, deadline - loop.time())
