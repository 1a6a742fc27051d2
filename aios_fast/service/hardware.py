"""Hardware readings for metrics and policies: GPUs through NVML (nvidia-ml-py, module
``pynvml``) and the host from /proc and os.

``gpu_readings()`` returns one dict per GPU (index, name, uuid, utilization %, memory
used/free/total in bytes, power in watts, temperature in Celsius); where there is no
NVML library, no driver or no GPU it returns [] without raising. A field one GPU does
not support is None rather than an error.

``hardware_families`` turns a reading into Prometheus gauges; ``aios_fast.service.snapshot``
keeps readings in memory for policies.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from functools import partial
from typing import Any

from .metrics import gauge

__all__ = ["gpu_readings", "hardware_families", "host_readings", "read_hardware"]

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
            util = _field(partial(nvml.nvmlDeviceGetUtilizationRates, handle), nvml)
            mem = _field(partial(nvml.nvmlDeviceGetMemoryInfo, handle), nvml)
            power = _field(partial(nvml.nvmlDeviceGetPowerUsage, handle), nvml)
            readings.append(
                {
                    "index": index,
                    "name": _text(_field(partial(nvml.nvmlDeviceGetName, handle), nvml)),
                    "uuid": _text(_field(partial(nvml.nvmlDeviceGetUUID, handle), nvml)),
                    "utilization_gpu": util.gpu if util is not None else None,
                    "utilization_memory": util.memory if util is not None else None,
                    "memory_total": mem.total if mem is not None else None,
                    "memory_used": mem.used if mem is not None else None,
                    "memory_free": mem.free if mem is not None else None,
                    "power_watts": power / 1000.0 if power is not None else None,
                    "temperature_c": _field(
                        partial(nvml.nvmlDeviceGetTemperature, handle, nvml.NVML_TEMPERATURE_GPU),
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


def read_hardware() -> dict:
    """Host and GPU readings (blocking: NVML and /proc)."""
    return {"host": host_readings(), "gpus": gpu_readings()}


def hardware_families(hardware: dict):
    """Prometheus gauge families for a ``read_hardware()`` reading (fields a
    host or GPU does not report are left out, never exported as 0)."""
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
