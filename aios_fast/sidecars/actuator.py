"""Actuators: how the auto-scaler (and ``aios-fast block up``) start and stop instances.

An actuator has ``async start(count) -> [spec]`` (spec: {"id", "target", "health"},
what the executor's ``add_instance`` takes), ``async stop(instance_id)`` and
``reap() -> [instance ids whose process ended by itself]``.

``LocalActuator`` runs instances as processes on this machine
(``python -m aios_fast.instance``), each on free ports of 127.0.0.1 (or ``host``).
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

from ..errors import AiosFastError
from ..service import runtime

__all__ = ["LocalActuator"]

log = logging.getLogger("aios_fast.actuator")


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
    ) -> None:
        self.block = block
        self.block_id = block_id
        self.init_data = init_data or {}
        self.parameters = parameters or {}
        self.host = host
        self.extra_args = tuple(extra_args)
        self.stop_timeout = stop_timeout
        self.env = dict(env or {})  # added to the instances' environment (tokens)
        self.procs: dict[str, subprocess.Popen] = {}
        self._numbers = itertools.count()

    def _spawn(self, instance_id: str) -> dict:
        args = [
            sys.executable, "-m", "aios_fast.instance", "--block", self.block,
            "--host", self.host, "--port", "0", "--mgmt-port", "0",
            "--init-data", json.dumps(self.init_data),
            "--parameters", json.dumps(self.parameters), *self.extra_args,
        ]  # fmt: skip
        env = runtime.child_env(dict(os.environ, PYTHONUNBUFFERED="1", **self.env))
        # Its own session: a Ctrl-C at the terminal reaches whoever started it, which
        # stops it in order; it still dies with its parent.
        proc = subprocess.Popen(args, stdout=subprocess.PIPE, text=True, env=env,
                                start_new_session=True)  # fmt: skip
        line = proc.stdout.readline()
        if not line:
            code = proc.wait()
            raise AiosFastError(
                f"instance {instance_id} ({self.block}) failed to start "
                f"(exit status {code}; its error is above)"
            )
        info = json.loads(line)
        # Whatever the block prints later goes on to our stderr (a full pipe would block it).
        threading.Thread(target=_forward, args=(proc.stdout,), daemon=True).start()
        self.procs[instance_id] = proc
        return {
            "id": instance_id,
            "target": f"{self.host}:{info['port']}",
            "health": f"{self.host}:{info['mgmt_port']}",
            "pid": proc.pid,
        }

    async def start(self, count: int) -> list[dict]:
        """Start ``count`` instances (in parallel); the specs of those that started. An
        instance that fails to start is logged; the others are still returned."""
        loop = asyncio.get_running_loop()
        ids = [f"{self.block_id}-instance-{next(self._numbers)}" for _ in range(count)]
        results = await asyncio.gather(
            *(loop.run_in_executor(None, self._spawn, iid) for iid in ids),
            return_exceptions=True,
        )
        started = []
        for result in results:
            if isinstance(result, BaseException):
                log.error("%s", result)
            else:
                started.append(result)
        return started

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
        await asyncio.get_running_loop().run_in_executor(None, self._terminate, proc)

    def reap(self) -> list[str]:
        """Instances whose process ended without being stopped (crashed, killed)."""
        gone = [iid for iid, proc in self.procs.items() if proc.poll() is not None]
        for iid in gone:
            log.error("instance %s exited with status %s", iid, self.procs.pop(iid).returncode)
        return gone

    async def stop_all(self) -> None:
        await asyncio.gather(*(self.stop(iid) for iid in list(self.procs)))


def _forward(stream) -> None:
    for line in stream:
        sys.stderr.write(line)
