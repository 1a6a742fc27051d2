"""Running executors: one process serving until SIGTERM/SIGINT (``serve``), or several
worker processes on one port (``run_workers``: forked before any gRPC object exists,
SO_REUSEPORT), with the parent serving the management and metrics ports in front of
them (``front.WorkerFront``)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import signal
import socket
import sys
import traceback
from collections.abc import Callable

from ..errors import AiosFastError
from ..service import runtime
from .config import ExecutorConfig
from .core import Executor
from .front import WorkerFront

__all__ = ["describe_start_error", "run_workers", "serve"]

log = logging.getLogger("aios_fast.executor")


READY_WAIT = 2.0  # seconds a starting executor waits for its instances' links


async def serve(config: ExecutorConfig, ready: Callable[[Executor], None] | None = None) -> None:
    """Run one executor until SIGTERM/SIGINT, then drain."""
    executor = Executor(config)
    await executor.start()
    try:  # announce once the configured instances' links are up (a native link asks
        # the instance where it listens first): a worker that announced before would
        # answer its first calls UNAVAILABLE while the others serve
        await executor.wait_ready(READY_WAIT)
    except TimeoutError as exc:  # an instance that is down: serve anyway, it may come
        log.warning("%s; serving anyway", exc)
    stop = runtime.signal_event()
    runtime.reload_on_sighup(config.auth)
    if ready is not None:
        ready(executor)
    await stop.wait()
    log.info("draining: %d tasks in flight", executor.inflight)
    await executor.stop()


def _worker(config: ExecutorConfig, announce: Callable[[dict], None]) -> None:
    """One executor process. ``announce(info)`` gets its ports once it serves."""

    def ready(executor: Executor) -> None:
        services = executor.services
        announce({
            "port": executor.port,
            "pid": os.getpid(),
            "mgmt_port": services.mgmt_port if services else None,
            "metrics_port": services.metrics_port if services else None,
            "http_port": executor.http.port if executor.http else None,
            "front": config.front,
        })  # fmt: skip

    runtime.run(serve(config, ready))


def describe_start_error(exc: Exception) -> str:
    """One line for a user's error (bad option, port taken); a traceback for a bug."""
    if isinstance(exc, (AiosFastError, OSError, ValueError)):
        return f"cannot start: {exc}"
    return "cannot start:\n" + "".join(traceback.format_exception(exc))


def run_workers(config: ExecutorConfig, workers: int) -> int:
    """Fork ``workers`` executor processes on one port (SO_REUSEPORT) before any gRPC
    object exists. With several workers, this process serves the management and metrics
    ports in front of them (``WorkerFront``), forwards SIGTERM/SIGINT and waits. Prints
    one JSON line once everything serves. Returns an exit status."""
    if workers <= 1:
        _worker(config, runtime.announce)
        return 0
    if config.port == 0:
        raise ValueError("several workers need a fixed --port (they share it)")
    if config.http_port == 0:
        raise ValueError("several workers need a fixed --http-port (they share it)")
    _check_port_free(config.host, config.port)
    # Workers serve their HTTP on one private port each; the front serves the public ones.
    # (plain HTTP there: private loopback ports, behind the front's TLS and tokens)
    worker_config = dataclasses.replace(
        config, reuse_port=True, http_host="127.0.0.1", mgmt_port=0, metrics_port=0,
        http_tls=False,
    )  # fmt: skip
    children, pipes = [], []
    for _ in range(workers):
        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:
            runtime.die_with_parent()  # a killed parent takes its workers along
            os.close(read_fd)
            status = 1
            try:

                def tell(info: dict, fd=write_fd) -> None:
                    os.write(fd, (json.dumps(info) + "\n").encode())
                    os.close(fd)

                _worker(worker_config, tell)
                status = 0
            except Exception as exc:  # the parent learns it from the closed pipe
                print(
                    f"executor worker {os.getpid()}: {describe_start_error(exc)}",
                    file=sys.stderr,
                    flush=True,
                )
            finally:
                os._exit(status)
        os.close(write_fd)
        children.append(pid)
        pipes.append(read_fd)
    return asyncio.run(_parent(config, children, pipes))


def _check_port_free(host: str, port: int) -> None:
    """Workers share their port through SO_REUSEPORT, which would as gladly share it
    with another executor already there (taking half its connections): bind it once
    without the option first, so a port in use is refused."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT is no user
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise OSError(f"cannot listen on {host}:{port}: {exc.strerror} (another "
                          "executor?)") from None  # fmt: skip


async def _parent(config: ExecutorConfig, children: list[int], pipes: list[int]) -> int:
    loop = asyncio.get_running_loop()

    def forward(signum: int) -> None:
        for pid in children:
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                pass

    for sig in runtime.STOP_SIGNALS:
        loop.add_signal_handler(sig, forward, sig)
    # SIGHUP: the front re-reads its tokens, each worker its own
    runtime.reload_on_sighup(config.auth, then=lambda: forward(signal.SIGHUP))

    def read_announce(fd: int) -> dict | None:
        with os.fdopen(fd, "rb") as f:
            line = f.readline()
        return json.loads(line) if line else None

    waits = [loop.run_in_executor(None, os.waitpid, pid, 0) for pid in children]
    infos = await asyncio.gather(*(loop.run_in_executor(None, read_announce, fd) for fd in pipes))
    front = None
    announced = [info for info in infos if info]
    if len(announced) == len(infos):
        front = WorkerFront([info["mgmt_port"] for info in announced], config.auth, config.tls)
        try:
            await front.start(config.http_host or config.host, config.mgmt_port,
                              config.metrics_port)  # fmt: skip
        except OSError as exc:
            log.error("cannot serve management/metrics: %s; stopping the workers", exc)
            forward(signal.SIGTERM)
        else:
            runtime.announce({
                "port": announced[0]["port"], "pid": os.getpid(), "mgmt_port": front.mgmt_port,
                "metrics_port": front.metrics_port, "workers": [i["pid"] for i in announced],
                "http_port": announced[0]["http_port"],
                "front": config.front,
            })  # fmt: skip
    else:
        log.error("a worker failed to start; stopping the others")
        forward(signal.SIGTERM)
    status = 0
    for waited in asyncio.as_completed(waits):
        _, code = await waited
        status = status or os.waitstatus_to_exitcode(code)
    if front is not None:
        await front.stop()
    return status if all(infos) else (status or 1)
