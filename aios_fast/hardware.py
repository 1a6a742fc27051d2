"""Hardware readings for metrics and policies: GPUs through NVML (nvidia-ml-py, module
``pynvml``) and the host from /proc and os.

``gpu_readings()`` returns one dict per GPU (index, name, uuid, utilization %, memory
used/free/total in bytes, power in watts, temperature in Celsius); where there is no
NVML library, no driver or no GPU it returns [] without raising. A field one GPU does
not support is None rather than an error.

``MetricsSnapshot`` keeps the latest readings in memory, refreshed off the event loop at
an interval, so ``get_metrics()`` (handed to policies, which may call it per task) never
does I/O.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from typing import Any

from ._periodic import Periodic

__all__ = ["MetricsSnapshot", "gpu_readings", "host_readings"]

log = logging.getLogger("aios_fast.hardware")


def _field(read: Callable[[], Any], nvml) -> Any:
    try:
        return read()
    except nvml.NVMLError:  # NotSupported, NoPermission, GpuIsLost...: this field only
        return None


def _text(value: Any) -> Any:
    return value.decode() if isinstance(value, bytes) else value


def gpu_readings() -> list[dict]:
    """One reading per GPU; [] where NVML, a driver or a GPU is missing."""
    try:
        import pynvml as nvml
    except ImportError:
        return []
    try:
        nvml.nvmlInit()
    except nvml.NVMLError as exc:  # library not found, driver not loaded, no device
        log.debug("no GPU readings: %s", exc)
        return []
    try:
        readings = []
        for index in range(nvml.nvmlDeviceGetCount()):
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            util = _field(lambda h=handle: nvml.nvmlDeviceGetUtilizationRates(h), nvml)
            mem = _field(lambda h=handle: nvml.nvmlDeviceGetMemoryInfo(h), nvml)
            power = _field(lambda h=handle: nvml.nvmlDeviceGetPowerUsage(h), nvml)
            readings.append(
                {
                    "index": index,
                    "name": _text(_field(lambda h=handle: nvml.nvmlDeviceGetName(h), nvml)),
                    "uuid": _text(_field(lambda h=handle: nvml.nvmlDeviceGetUUID(h), nvml)),
                    "utilization_gpu": util.gpu if util is not None else None,
                    "utilization_memory": util.memory if util is not None else None,
                    "memory_total": mem.total if mem is not None else None,
                    "memory_used": mem.used if mem is not None else None,
                    "memory_free": mem.free if mem is not None else None,
                    "power_watts": power / 1000.0 if power is not None else None,
                    "temperature_c": _field(
                        lambda h=handle: nvml.nvmlDeviceGetTemperature(
                            h, nvml.NVML_TEMPERATURE_GPU
                        ),
                        nvml,
                    ),
                }
            )
        return readings
    except nvml.NVMLError as exc:  # e.g. the device count itself failed
        log.warning("GPU readings failed: %s", exc)
        return []
    finally:
        try:
            nvml.nvmlShutdown()
        except nvml.NVMLError:
            pass


def host_readings() -> dict:
    """CPU count, load averages and memory (bytes) of this host."""
    reading: dict[str, Any] = {"cpu_count": os.cpu_count()}
    try:
        reading["load_1m"], reading["load_5m"], reading["load_15m"] = os.getloadavg()
    except OSError:
        pass
    try:
        with open("/proc/meminfo") as f:
            info = {line.split(":")[0]: line.split()[1] for line in f if ":" in line}
        reading["memory_total"] = int(info["MemTotal"]) * 1024
        reading["memory_available"] = int(info["MemAvailable"]) * 1024
    except (OSError, KeyError, ValueError, IndexError):
        pass
    return reading


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
        self._snapshot = {"block_metrics": {}, "cluster_metrics": {}}
        # A failing collector keeps the last snapshot.
        self._refreshes = Periodic(self._refresh_async, interval, log, "metrics refresh")
        self.refreshes = 0

    def get_metrics(self) -> dict:
        return self._snapshot

    @staticmethod
    def hardware() -> dict:
        """Host and GPU readings (blocking: NVML and /proc)."""
        return {"host": host_readings(), "gpus": gpu_readings()}

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


_GPU_GAUGES = (
    ("utilization_gpu", "aios_gpu_utilization_percent", "GPU utilization, percent."),
    (
        "utilization_memory",
        "aios_gpu_memory_utilization_percent",
        "GPU memory controller utilization, percent.",
    ),
    ("memory_used", "aios_gpu_memory_used_bytes", "GPU memory used."),
    ("memory_free", "aios_gpu_memory_free_bytes", "GPU memory free."),
    ("memory_total", "aios_gpu_memory_total_bytes", "GPU memory in total."),
    ("power_watts", "aios_gpu_power_watts", "GPU power draw."),
    ("temperature_c", "aios_gpu_temperature_celsius", "GPU temperature."),
)
_HOST_GAUGES = (
    ("cpu_count", "aios_host_cpus", "CPUs of this host."),
    ("load_1m", "aios_host_load1", "Load average over 1 minute."),
    ("memory_total", "aios_host_memory_total_bytes", "Memory of this host."),
    ("memory_available", "aios_host_memory_available_bytes", "Memory available on this host."),
)


def hardware_families(hardware: dict):
    """Prometheus gauge families for a ``MetricsSnapshot.hardware()`` reading (fields a
    host or GPU does not report are left out, never exported as 0)."""
    from .metrics import gauge

    host = hardware.get("host") or {}
    for key, name, doc in _HOST_GAUGES:
        if host.get(key) is not None:
            yield gauge(name, doc, (), [(host[key],)])
    gpus = hardware.get("gpus") or []
    for key, name, doc in _GPU_GAUGES:
        rows = [
            (str(g["index"]), g.get("name") or "", g[key]) for g in gpus if g.get(key) is not None
        ]
        if rows:
            yield gauge(name, doc, ("gpu", "name"), rows)
