"""GPU and host readings: [] without a GPU, every field through a fake NVML, and the
policies' get_metrics served from memory."""

from __future__ import annotations

import asyncio
import sys
import types
from collections import namedtuple

from aios_fast.service import hardware
from aios_fast.service.snapshot import MetricsSnapshot


def test_no_gpu_means_an_empty_list_and_no_error():
    # This machine has no NVIDIA driver (pynvml raises LibraryNotFound / DriverNotLoaded).
    assert hardware.gpu_readings() == []


def fake_nvml(count: int = 2, power_supported: bool = True, init_error: bool = False):
    nvml = types.ModuleType("pynvml")

    class NVMLError(Exception):
        pass

    class NVMLError_NotSupported(NVMLError):
        pass

    calls = {"init": 0, "shutdown": 0}
    util = namedtuple("Util", "gpu memory")
    mem = namedtuple("Mem", "total free used")

    def init():
        calls["init"] += 1
        if init_error:
            raise NVMLError("Driver Not Loaded")

    def power(handle):
        if not power_supported or handle == 1:
            raise NVMLError_NotSupported("Not Supported")
        return 250_500

    nvml.NVMLError = NVMLError
    nvml.NVML_TEMPERATURE_GPU = 0
    nvml.nvmlInit = init
    nvml.nvmlShutdown = lambda: calls.__setitem__("shutdown", calls["shutdown"] + 1)
    nvml.nvmlDeviceGetCount = lambda: count
    nvml.nvmlDeviceGetHandleByIndex = lambda i: i
    nvml.nvmlDeviceGetName = lambda h: b"NVIDIA H100 80GB HBM3"
    nvml.nvmlDeviceGetUUID = lambda h: f"GPU-{h}"
    nvml.nvmlDeviceGetUtilizationRates = lambda h: util(37 + h, 12)
    nvml.nvmlDeviceGetMemoryInfo = lambda h: mem(80 << 30, 60 << 30, 20 << 30)
    nvml.nvmlDeviceGetPowerUsage = power
    nvml.nvmlDeviceGetTemperature = lambda h, sensor: 41
    return nvml, calls


def test_readings_through_nvml(monkeypatch):
    nvml, calls = fake_nvml()
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    gpus = hardware.gpu_readings()
    assert gpus[0] == {
        "index": 0,
        "name": "NVIDIA H100 80GB HBM3",
        "uuid": "GPU-0",
        "utilization_gpu": 37,
        "utilization_memory": 12,
        "memory_total": 80 << 30,
        "memory_used": 20 << 30,
        "memory_free": 60 << 30,
        "power_watts": 250.5,
        "temperature_c": 41,
    }
    assert gpus[1]["power_watts"] is None  # not supported on that GPU: that field only
    assert gpus[1]["utilization_gpu"] == 38
    assert calls == {"init": 1, "shutdown": 1}


def test_driver_missing_through_nvml(monkeypatch):
    nvml, _ = fake_nvml(init_error=True)
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    assert hardware.gpu_readings() == []


def test_host_readings():
    host = hardware.host_readings()
    assert host["cpu_count"] >= 1
    if sys.platform.startswith("linux"):
        assert 0 < host["memory_available"] <= host["memory_total"]


def test_get_metrics_is_served_from_memory(monkeypatch):
    collected = []
    snap = MetricsSnapshot(lambda: collected.append(1) or {"queue_length": 3},
                           interval=0.05)  # fmt: skip

    async def run():
        assert snap.get_metrics() == {"block_metrics": {}, "cluster_metrics": {}}
        snap.start()
        await asyncio.sleep(0.2)
        before = len(collected)
        for _ in range(10_000):  # a policy asking per task
            metrics = snap.get_metrics()
        assert len(collected) - before <= 1  # no collection per call
        await snap.stop()
        return metrics

    metrics = asyncio.run(run())
    assert metrics["block_metrics"]["queue_length"] == 3
    assert metrics["block_metrics"]["hardware"]["gpus"] == []
    assert snap.refreshes >= 2


def test_failing_collector_keeps_the_last_snapshot(caplog):
    state = {"fail": False}

    def collect():
        if state["fail"]:
            raise RuntimeError("collector down")
        return {"ok": 1}

    snap = MetricsSnapshot(collect, interval=0.02)

    async def run():
        snap.start()
        await asyncio.sleep(0.1)
        state["fail"] = True
        await asyncio.sleep(0.1)
        await snap.stop()

    asyncio.run(run())
    assert snap.get_metrics()["block_metrics"]["ok"] == 1
    assert any("collector down" in r.getMessage() for r in caplog.records)
