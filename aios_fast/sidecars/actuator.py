"""Actuators: how the auto-scaler (and ``aios-fast block up``) start and stop instances.

An actuator has ``async start(count) -> [spec]`` (spec: {"id", "target", "health"},
what the executor's ``add_instance`` takes), ``async stop(instance_id)`` and
``reap() -> [instance ids whose process ended by itself]``.

``LocalActuator`` runs instances as processes on this machine
(``python -m aios_fast.instance``), each on free ports of 127.0.0.1 (or ``host``).

GPU pinning: with a ``GpuPool`` each instance it starts gets its own
``CUDA_VISIBLE_DEVICES`` (``gpus_per_instance`` devices, each shared by at most
``instances_per_gpu`` instances), placed on the least used GPUs first (ties: the most
free memory, as NVML reads it); ``capacity()`` says how many more instances fit, so
the auto-scaler never starts one that has no GPU. A stopped or crashed instance gives
its GPUs back.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable

from ..errors import AiosFastError
from ..service import runtime

__all__ = ["BlockLoadFailed", "GpuPool", "LocalActuator"]

log = logging.getLogger("aios_fast.actuator")


class BlockLoadFailed(AiosFastError):
    """An instance could not load its block; ``error`` is what the block raised (the
    user's traceback, their frames only)."""

    def __init__(self, instance_id: str, error: str) -> None:
        super().__init__(f"instance {instance_id} failed to load its block (error above)")
        self.error = error


class GpuPool:
    """The GPUs instances are pinned to: ``gpus`` is a list of device indices or UUIDs
    (as CUDA_VISIBLE_DEVICES takes them) or "auto" (every GPU NVML sees, read through
    ``readings``, by default ``service.hardware.gpu_readings``)."""

    def __init__(self, gpus: list | str, *, gpus_per_instance: int = 1,
                 instances_per_gpu: int = 1, readings=None) -> None:  # fmt: skip
        if readings is None:
            from ..service.hardware import gpu_readings as readings
        self.readings = readings
        if gpus == "auto":
            found = readings()
            if not found:
                raise AiosFastError("gpus is 'auto' but NVML sees no GPU on this machine")
            gpus = [r["index"] for r in found]
        if (
            not isinstance(gpus, list)
            or not gpus
            or not all(
                (isinstance(g, int) and not isinstance(g, bool) and g >= 0)
                or (isinstance(g, str) and g and "," not in g and g.strip() == g)
                for g in gpus
            )
        ):
            raise AiosFastError(f"gpus must be \"auto\" or a non-empty list of GPU indices or "
                                f"UUIDs, not {gpus!r}")  # fmt: skip
        self.devices = [str(g) for g in dict.fromkeys(gpus)]
        if not 1 <= gpus_per_instance <= len(self.devices) or instances_per_gpu < 1:
            raise AiosFastError(f"gpusPerInstance must be in 1..{len(self.devices)} (the GPUs "
                                f"given) and instancesPerGpu >= 1")  # fmt: skip
        self.per_instance = gpus_per_instance
        self.share = instances_per_gpu
        self.assigned: dict[str, list[str]] = {}  # instance id -> its devices

    def _load(self) -> dict[str, int]:
        load = dict.fromkeys(self.devices, 0)
        for devices in self.assigned.values():
            for d in devices:
                load[d] += 1
        return load

    def capacity(self) -> int:
        """How many more instances fit."""
        free = sum(self.share - n for n in self._load().values())
        return max(0, free // self.per_instance)

    def assign(self, instance_id: str) -> str:
        """CUDA_VISIBLE_DEVICES for a new instance: the least used GPUs (ties: the most
        free memory, then the order given); AiosFastError when none is free."""
        load = self._load()
        open_ = [d for d in self.devices if load[d] < self.share]
        if len(open_) < self.per_instance:
            raise AiosFastError(f"no free GPU for instance {instance_id} (GPUs "
                                f"{','.join(self.devices)} all taken)")  # fmt: skip
        free_memory: dict[str, float] = {}
        try:
            for r in self.readings():
                for key in (str(r.get("index")), r.get("uuid")):
                    if key and r.get("memory_free") is not None:
                        free_memory[key] = r["memory_free"]
        except Exception:  # readings are a tie-break only
            pass
        order = {d: k for k, d in enumerate(self.devices)}
        open_.sort(key=lambda d: (load[d], -free_memory.get(d, 0), order[d]))
        self.assigned[instance_id] = open_[: self.per_instance]
        return ",".join(self.assigned[instance_id])

    def release(self, instance_id: str) -> None:
        self.assigned.pop(instance_id, None)


class LocalActuator:
    def __init__(
        self,
        block: str,
        *,
        block_id: str = "block",
        init_data: dict | None = None,
        parameters: dict | None = None,
        host: str = "127.0.0.1",
        extra_args: tuple[str, ...] = (),
        stop_timeout: float = 30.0,
        env: dict[str, str] | None = None,
        gpus: GpuPool | None = None,
        block_doc: str | None = None,
    ) -> None:
        self.block = block
        # a block document file: the instances take their settings from it (block up)
        self.block_doc = block_doc
        self.block_id = block_id
        self.init_data = init_data or {}
        self.parameters = parameters or {}
        self.host = host
        self.extra_args = tuple(extra_args)
        self.stop_timeout = stop_timeout
        self.env = dict(env or {})  # added to the instances' environment (tokens)
        self.gpus = gpus
        self.procs: dict[str, subprocess.Popen] = {}
        self._numbers = itertools.count()
        # told the specs of the instances each start() started (block up hands its
        # token out for their ports)
        self.on_started: Callable[[list[dict]], object] | None = None

    def capacity(self) -> int | None:
        """How many more instances can start (None: no limit here)."""
        return None if self.gpus is None else self.gpus.capacity()

    def instance_args(self) -> list[str]:
        """An instance's command line."""
        if self.block_doc:  # the Block, its data and settings: all from the document
            block_args: tuple[str, ...] = ("--block-doc", self.block_doc)
        else:
            block_args = ("--block", self.block, "--block-id", self.block_id,
                          "--init-data", json.dumps(self.init_data),
                          "--parameters", json.dumps(self.parameters))  # fmt: skip
        return [
            sys.executable, "-m", "aios_fast.instance", *block_args,
            "--host", self.host, "--port", "0", "--mgmt-port", "0", *self.extra_args,
        ]  # fmt: skip

    def _spawn(self, instance_id: str, devices: str | None = None) -> dict:
        args = self.instance_args()
        env = runtime.child_env(dict(os.environ, PYTHONUNBUFFERED="1", **self.env))
        if devices is not None:
            env["CUDA_VISIBLE_DEVICES"] = devices
        # Its own session: a Ctrl-C at the terminal reaches whoever started it, which
        # stops it in order; it still dies with its parent.
        proc = subprocess.Popen(args, stdout=subprocess.PIPE, text=True, env=env,
                                start_new_session=True)  # fmt: skip
        assert proc.stdout is not None  # stdout=PIPE
        line = proc.stdout.readline()
        if not line:
            code = proc.wait()
            raise AiosFastError(
                f"instance {instance_id} ({self.block}) failed to start "
                f"(exit status {code}; its error is above)"
            )
        info = json.loads(line)
        if "error" in info:  # the block failed to load: its own error, told once by start()
            proc.wait()
            raise BlockLoadFailed(instance_id, info["error"])
        # Whatever the block prints later goes on to our stderr (a full pipe would block it).
        threading.Thread(target=_forward, args=(proc.stdout,), daemon=True).start()
        self.procs[instance_id] = proc
        spec = {
            "id": instance_id,
            "target": f"{self.host}:{info['port']}",
            "health": f"{self.host}:{info['mgmt_port']}",
            "pid": proc.pid,
        }
        if devices is not None:
            spec["gpus"] = devices
        return spec

    async def start(self, count: int) -> list[dict]:
        """Start ``count`` instances (in parallel); the specs of those that started. An
        instance that fails to start is logged; the others are still returned."""
        loop = asyncio.get_running_loop()
        ids = [f"{self.block_id}-instance-{next(self._numbers)}" for _ in range(count)]
        placed: dict[str, str | None] = {}
        for iid in ids:
            try:
                placed[iid] = self.gpus.assign(iid) if self.gpus is not None else None
            except AiosFastError as exc:
                log.error("%s", exc)
        results = await asyncio.gather(
            *(loop.run_in_executor(None, self._spawn, iid, gpu) for iid, gpu in placed.items()),
            return_exceptions=True,
        )
        started = []
        told: set[str] = set()  # the same load error, from several instances: once
        for iid, result in zip(placed, results, strict=True):
            if isinstance(result, BlockLoadFailed):
                if result.error not in told:
                    told.add(result.error)
                    sys.stderr.write(result.error.rstrip("\n") + "\n")
                log.error("%s", result)
                self._release(iid)
            elif isinstance(result, BaseException):
                log.error("%s", result)
                self._release(iid)
            else:
                started.append(result)
        if started and self.on_started is not None:
            self.on_started(started)
        return started

    def _release(self, instance_id: str) -> None:
        if self.gpus is not None:
            self.gpus.release(instance_id)

    def _terminate(self, proc: subprocess.Popen) -> int:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(self.stop_timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            return proc.wait()

    async def stop(self, instance_id: str) -> None:
        proc = self.procs.pop(instance_id, None)
        if proc is None:
            raise AiosFastError(f"no local instance {instance_id!r}")
        try:
            await asyncio.get_running_loop().run_in_executor(None, self._terminate, proc)
        finally:
            self._release(instance_id)

    def reap(self) -> list[str]:
        """Instances whose process ended without being stopped (crashed, killed)."""
        gone = [iid for iid, proc in self.procs.items() if proc.poll() is not None]
        for iid in gone:
            log.error("instance %s exited with status %s", iid, self.procs.pop(iid).returncode)
            self._release(iid)
        return gone

    async def stop_all(self) -> None:
        await asyncio.gather(*(self.stop(iid) for iid in list(self.procs)))


def _forward(stream) -> None:
    for line in stream:
        sys.stderr.write(line)
