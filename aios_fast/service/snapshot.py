"""The latest metrics in memory for policies: ``get_metrics()`` (which a policy may call
per task) never does I/O; the readings are refreshed off the event loop at an interval.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from .hardware import read_hardware
from .periodic import Periodic

__all__ = ["MetricsSnapshot"]

log = logging.getLogger("aios_fast.hardware")


class MetricsSnapshot:
    """The latest {"block_metrics", "cluster_metrics"}, refreshed in the background.

    ``collect`` (called on the event loop, so it may read loop-owned state; keep it
    cheap) returns the block metrics dict; the snapshot adds ``hardware`` (host and
    GPUs, read in a thread) and a ``timestamp``. ``get_metrics`` is what policies get.
    """

    def __init__(
        self,
        collect: Callable[[], dict] | None = None,
        interval: float = 1.0,
        cluster_metrics: Callable[[], dict] | None = None,
    ) -> None:
        self._collect = collect or dict
        self._cluster = cluster_metrics or dict
        self._snapshot: dict[str, Any] = {"block_metrics": {}, "cluster_metrics": {}}
        # A failing collector keeps the last snapshot.
        self._refreshes = Periodic(self._refresh_async, interval, log, "metrics refresh")
        self.refreshes = 0

    def get_metrics(self) -> dict:
        return self._snapshot

    @staticmethod
    def hardware() -> dict:
        """Host and GPU readings (blocking: NVML and /proc)."""
        return read_hardware()

    def refresh(self, hardware: dict | None = None) -> dict:
        """Take new readings now (reads hardware itself when not given: blocking)."""
        block = dict(self._collect())
        block["hardware"] = self.hardware() if hardware is None else hardware
        block["timestamp"] = time.time()
        self._snapshot = {"block_metrics": block, "cluster_metrics": dict(self._cluster())}
        self.refreshes += 1
        return self._snapshot

    async def _refresh_async(self) -> None:
        hardware = await asyncio.get_running_loop().run_in_executor(None, self.hardware)
        self.refresh(hardware)

    def start(self) -> None:
        self._refreshes.start()

    async def stop(self) -> None:
        await self._refreshes.stop()
