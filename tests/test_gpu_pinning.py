"""GPU pinning (``sidecars.actuator.GpuPool``): instances get their own
CUDA_VISIBLE_DEVICES, new ones go on free GPUs, and the auto-scaler never starts more
than fit. No GPU here: "auto" reads a fake NVML list; pinned processes are real and
report the variable they were given in ``/stats``."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time

import pytest

from aios_fast.errors import AiosFastError
from aios_fast.sidecars.actuator import GpuPool, LocalActuator
from aios_fast.sidecars.autoscale import AutoScaler

from .procs import ROOT, http

GIB = 1 << 30


def pinned_to(health: str, token: str | None = None) -> str | None:
    """The instance's CUDA_VISIBLE_DEVICES as its /stats says (once readings exist)."""
    for _ in range(100):
        _, stats = http(f"{health}/stats", token=token)
        if stats:  # the first readings are taken within a second of the start
            return stats.get("cuda_visible_devices")
        time.sleep(0.05)
    raise AssertionError(f"{health}/stats stayed empty")


def fake_nvml(*free_gib):
    """gpu_readings() as NVML would answer on a machine with these GPUs."""
    return lambda: [
        {"index": k, "uuid": f"GPU-{k:04d}", "name": "Fake H100", "memory_free": f * GIB}
        for k, f in enumerate(free_gib)
    ]


def test_pool_places_on_the_least_used_then_emptiest_gpus():
    pool = GpuPool("auto", readings=fake_nvml(10, 70, 40))
    assert pool.devices == ["0", "1", "2"] and pool.capacity() == 3
    assert pool.assign("a") == "1"  # most free memory first
    assert pool.assign("b") == "2"
    assert pool.assign("c") == "0"
    assert pool.capacity() == 0
    with pytest.raises(AiosFastError, match="no free GPU for instance d"):
        pool.assign("d")
    pool.release("b")
    assert pool.capacity() == 1 and pool.assign("d") == "2"  # the freed one


def test_pool_sharing_and_several_gpus_per_instance():
    pool = GpuPool([0, 1, 2, 3], gpus_per_instance=2, readings=fake_nvml())
    assert pool.capacity() == 2
    assert pool.assign("a") == "0,1" and pool.assign("b") == "2,3"
    assert pool.capacity() == 0
    shared = GpuPool(["GPU-aaaa", "GPU-bbbb"], instances_per_gpu=2, readings=fake_nvml())
    placed = [shared.assign(i) for i in "wxyz"]
    assert sorted(placed) == ["GPU-aaaa", "GPU-aaaa", "GPU-bbbb", "GPU-bbbb"]
    assert placed[:2] == ["GPU-aaaa", "GPU-bbbb"]  # spread before sharing


@pytest.mark.parametrize(
    ("gpus", "kw", "message"),
    [
        ("auto", {}, "NVML sees no GPU"),
        ([], {}, "non-empty list"),
        ([-1], {}, "non-empty list"),
        (["0,1"], {}, "non-empty list"),
        ([True], {}, "non-empty list"),
        ("all", {}, "non-empty list"),
        ([0, 1], {"gpus_per_instance": 3}, "gpusPerInstance must be in 1..2"),
        ([0], {"instances_per_gpu": 0}, "instancesPerGpu >= 1"),
    ],
)
def test_pool_rejects_bad_settings(gpus, kw, message):
    with pytest.raises(AiosFastError, match=message.replace(".", r"\.")):
        GpuPool(gpus, readings=fake_nvml(), **kw)


def test_local_actuator_pins_each_instance_and_frees_gpus_it_stops():
    async def main():
        pool = GpuPool("auto", readings=fake_nvml(80, 80))
        actuator = LocalActuator("aios_fast.block:EchoBlock", gpus=pool)
        try:
            specs = await actuator.start(3)  # two GPUs: the third has none
            assert actuator.capacity() == 0
            seen = {}
            for spec in specs:
                seen[spec["id"]] = (spec["gpus"], pinned_to(f"http://{spec['health']}"))
            await actuator.stop(specs[0]["id"])
            assert actuator.capacity() == 1
            again = await actuator.start(1)
            return seen, specs[0]["gpus"], again[0]["gpus"]
        finally:
            await actuator.stop_all()
            assert pool.assigned == {}

    seen, stopped, again = asyncio.run(main())
    assert len(seen) == 2
    assert sorted(g for g, _ in seen.values()) == ["0", "1"]
    assert all(gpus == env for gpus, env in seen.values())  # the process got it
    assert again == stopped  # placed on the GPU that was given back


class _FakeActuator:
    def __init__(self, room):
        self.room = room
        self.started = 0
        self.procs = {}

    def capacity(self):
        return self.room

    async def start(self, count):
        self.started += count
        return [{"id": f"n{k}", "target": "x:1", "health": "x:2"} for k in range(count)]


def test_autoscaler_never_starts_more_instances_than_fit():
    async def main():
        actuator = _FakeActuator(room=1)
        scaler = AutoScaler("http://127.0.0.1:9", actuator, min_instances=1, max_instances=8)

        async def call(action, data=None):
            return {}

        scaler.executor.call = call
        out = await scaler.apply({"operation": "upscale", "instances_count": 4}, [{"id": "a"}])
        actuator.room = 0
        none = await scaler.apply({"operation": "upscale", "instances_count": 2}, [{"id": "a"}])
        return out, none, actuator.started

    out, none, started = asyncio.run(main())
    assert out["added"] == ["n0"] and out["bounded"] is True
    assert none["added"] == [] and started == 1


def _doc(tmp_path, **init):
    doc = {"id": "pinned", "minInstances": 2, "maxInstances": 2,
           "initSettings": {"block": "aios_fast.block:EchoBlock", **init}}  # fmt: skip
    path = tmp_path / "pinned.json"
    path.write_text(json.dumps(doc))
    return path


def test_block_document_gpu_settings_are_checked(tmp_path, monkeypatch):
    from aios_fast.devtools import block_up

    with pytest.raises(AiosFastError, match="1 instance\\(s\\) fit on GPUs 0, fewer than"):
        block_up.load_block_doc(str(_doc(tmp_path, gpus=[0])))
    monkeypatch.setattr("aios_fast.service.hardware.gpu_readings", lambda: [])
    with pytest.raises(AiosFastError, match="'auto' but NVML sees no GPU"):
        block_up.load_block_doc(str(_doc(tmp_path, gpus="auto")))
    monkeypatch.setattr("aios_fast.service.hardware.gpu_readings", fake_nvml(8, 8))
    doc, _ = block_up.load_block_doc(str(_doc(tmp_path, gpus="auto")))
    assert doc.initSettings.gpus == "auto"
    out = subprocess.run([sys.executable, "-m", "aios_fast", "block", "up",
                          str(_doc(tmp_path, gpus=[0, 1], gpusPerInstance=3))],
                         cwd=ROOT, capture_output=True, text=True, timeout=60)  # fmt: skip
    assert out.returncode == 2 and "gpusPerInstance must be in 1..2" in out.stderr
    assert "Traceback" not in out.stderr


def test_block_up_pins_each_instance_to_its_gpu(tmp_path):
    path = _doc(tmp_path, gpus=["0", "1"])
    proc = subprocess.Popen([sys.executable, "-m", "aios_fast", "block", "up", str(path),
                             "--ports", "auto", "--json"], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        info = json.loads(proc.stdout.readline())
        token = json.loads(open(info["token_file"]).read())["token"]  # block up's own
        pinned = []
        for instance in info["instances"].values():
            pinned.append(pinned_to(instance["health"].removesuffix("/health"), token))
        _, status = http(info["autoscaler_mgmt"], {"mgmt_action": "status", "mgmt_data": {}},
                         token=token)  # fmt: skip
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    assert sorted(pinned) == ["0", "1"]
    assert sorted(status["data"]["gpus"].values(), key=str) == [["0"], ["1"]]
