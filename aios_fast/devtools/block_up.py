"""``aios-fast block up <block.json>``: a whole block on this machine.

From a block document (the seeds' block schema: id, policies, minInstances,
maxInstances, parameters, blockInitData; plus ``initSettings``, below) it starts:

- the executor (``python -m aios_fast.executor``, ``workers`` processes) with the
  block's ``loadBalancer`` policy, gRPC on ``ports.grpc`` (50051), management on
  ``ports.mgmt`` (18001), metrics on ``ports.metrics`` (18000);
- ``minInstances`` instances of the block class (the local actuator: processes on
  127.0.0.1, free ports), added to the executor;
- the health checker (``stabilityChecker`` policy, management on 19001) and the
  auto-scaler (``autoscaler`` policy, local actuator, management on 10000), in this
  process;

prints where everything listens, and runs until SIGINT/SIGTERM (or, with ``--traffic
N --once``, until N checked tasks went through), then stops it all: sidecars first, the
executor drains, instances last.

``initSettings`` (all optional): ``block`` ("module:Class", default the echo block),
``workers`` (executor processes, default 1), ``ports`` {grpc, metrics, mgmt,
autoscaler, healthChecker}, ``healthChecker`` {interval, timeout, unhealthyAfter,
healthyAfter}, ``autoscaler`` {interval, drainTimeout}, ``taskTimeout`` (seconds an
instance may run one task, 0: no limit), ``maxMessageBytes`` (the largest task or
output, default 4 MiB), ``outlierDetection`` {consecutiveFailures, baseEjectionSeconds,
maxEjectionPercent}, ``batching`` (for a block with ``on_batch``: mode, maxBatchSize,
maxQueueDelayMs, preferredBatchSizes, maxConcurrentBatches; ``aios_fast.instance.batcher``),
``gpus`` ("auto" or a list of GPU indices/UUIDs: each instance is pinned through
CUDA_VISIBLE_DEVICES to ``gpusPerInstance`` of them, default 1, each GPU shared by at
most ``instancesPerGpu``, default 1; the auto-scaler starts new instances on free GPUs
only).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import msgspec

from ..auth import ENV_TOKEN, ROLES, Auth, TokenHandoff, new_token, prune_stale
from ..errors import AiosFastError
from ..instance.batcher import BatchSettings
from ..service import runtime
from ..service.runtime import say
from ..settings import ECHO, BlockDocument, Ports, document_json, load_document, read_document
from ..sidecars.actuator import GpuPool, LocalActuator
from ..sidecars.autoscale import AutoScaler
from ..sidecars.base import ExecutorClient
from ..sidecars.healthcheck import HealthChecker
from ..tls import TLS
from .loadgen import drive, format_summary
from .traffic import traffic_plan

__all__ = ["BlockDoc", "LocalBlock", "load_block_doc", "up", "use_free_ports"]

log = logging.getLogger("aios_fast.block")


BlockDoc = BlockDocument  # the contract's block document (aios_fast.settings)


def load_block_doc(path: str) -> tuple[BlockDoc, dict]:
    """The checked document and the raw one (handed to policies as block_data)."""
    doc, document = read_document(path)
    try:
        batching = doc.initSettings.batching
        BatchSettings.parse(msgspec.to_builtins(batching) if batching else None,
                            doc.parameters.get("batching"))  # fmt: skip
        _gpu_pool(doc)  # checked here; "auto" reads the GPUs again when the block starts
    except AiosFastError as exc:
        raise AiosFastError(f"block document {path}: {exc}") from None
    module, _, cls = doc.initSettings.block.partition(":")
    try:
        if not hasattr(importlib.import_module(module), cls):
            raise AiosFastError(f"{module} has no {cls}")
    except ImportError as exc:
        raise AiosFastError(f"block class {doc.initSettings.block!r}: {exc}") from None
    except AiosFastError as exc:
        raise AiosFastError(f"block class {doc.initSettings.block!r}: {exc}") from None
    return doc, document


def _gpu_pool(doc: BlockDoc, readings=None) -> GpuPool | None:
    """The GPUs the block's instances are pinned to (None: no pinning)."""
    s = doc.initSettings
    if s.gpus is None:
        return None
    pool = GpuPool(s.gpus, gpus_per_instance=s.gpusPerInstance,
                   instances_per_gpu=s.instancesPerGpu, readings=readings)  # fmt: skip
    if pool.capacity() < doc.minInstances:
        raise AiosFastError(f"initSettings.gpus: {pool.capacity()} instance(s) fit on GPUs "
                            f"{','.join(pool.devices)}, fewer than minInstances "
                            f"{doc.minInstances}")  # fmt: skip
    return pool


def use_free_ports(doc: BlockDoc) -> None:
    """Every service of the block on a free port (0; the executor's gRPC port, which its
    workers share, is picked before they start)."""
    http = None if doc.initSettings.ports.http is None else 0  # served only when asked for
    doc.initSettings.ports = Ports(grpc=0, metrics=0, mgmt=0, autoscaler=0, healthChecker=0,
                                   http=http)  # fmt: skip


def _tls_args(tls: TLS) -> tuple[str, ...]:
    """The TLS options, as every process of the block takes them."""
    pairs = (("--tls-cert", tls.cert), ("--tls-key", tls.key), ("--tls-ca", tls.ca))
    return tuple(arg for flag, path in pairs if path for arg in (flag, path))


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def start_sidecars(
    doc: BlockDoc, document: dict, executor_url: str, actuator, host: str, auth: Auth, tls: TLS
) -> tuple[HealthChecker, AutoScaler]:
    """A block's health checker and auto-scaler, configured from its document and
    serving on ``host`` (block up, and ``block up --actuator kubernetes``)."""
    settings, policies = doc.initSettings, doc.policies
    common: dict[str, Any] = {"block_data": document, "cluster_data": doc.cluster,
                              "auth": auth, "tls": tls}  # fmt: skip
    hs = settings.healthChecker
    checker = HealthChecker(
        executor_url,
        interval=hs.interval,
        timeout=hs.timeout,
        unhealthy_after=hs.unhealthyAfter,
        healthy_after=hs.healthyAfter,
        policy=policies.get("stabilityChecker"),
        **common,
    )
    await checker.start(host, settings.ports.healthChecker)
    ss = settings.autoscaler
    scaler = AutoScaler(
        executor_url,
        actuator,
        min_instances=doc.minInstances,
        max_instances=doc.maxInstances or max(doc.minInstances, 1),
        interval=ss.interval,
        drain_timeout=ss.drainTimeout,
        policy=policies.get("autoscaler"),
        **common,
    )
    try:
        await scaler.start(host, settings.ports.autoscaler)
    except BaseException:
        await checker.stop()
        raise
    return checker, scaler


class LocalBlock:
    """The running pieces of one block; ``start`` then ``stop``."""

    def __init__(self, doc: BlockDoc, document: dict, *, host: str = "127.0.0.1",
                 auth_file: str | None = None, tls: TLS | None = None) -> None:  # fmt: skip
        self.doc = doc
        self.document = document
        self.host = host
        # Tokens: AIOS_FAST_TOKEN (inherited by every process) and/or --auth-file (given
        # to every process); the sidecars present the admin token to the executor. With
        # neither, a generated internal token guards management, the instances and the
        # sidecars, the executor's data plane stays open on loopback (the seeds' client
        # sends no token), and the same user's clients find the token (TokenHandoff).
        self.auth_file = auth_file
        self.auth = Auth.from_env(auth_file)
        self.env: dict[str, str] = {}
        self.handoff: TokenHandoff | None = None
        if not self.auth.enabled:
            token = new_token()
            self.env = {ENV_TOKEN: token}
            self.auth = Auth({token: ROLES})
            self.handoff = TokenHandoff(token)
        self.tls = tls or TLS()
        auth_args: tuple[str, ...] = ("--auth-file", auth_file) if auth_file else ()
        auth_args += _tls_args(self.tls)
        self.executor_proc: subprocess.Popen | None = None
        self.info: dict = {}
        self.actuator = LocalActuator(
            doc.initSettings.block,
            block_id=doc.id,
            host=host,
            extra_args=auth_args,
            gpus=_gpu_pool(doc),
            env=self.env,
        )
        self.checker: HealthChecker | None = None
        self.scaler: AutoScaler | None = None
        self._doc_file: str | None = None
        self._endpoints: set[str] = set()  # what the token is handed out for

    def _write_document(self) -> str:
        """The document every process of the block reads its settings from: the
        effective one (block up's overrides applied). A port left to be free-picked (0)
        is picked here only when several executor workers must share it; one worker binds
        port 0 itself, so no other process can take the number between a pick and the
        bind (which, with tests running side by side, happened)."""
        ports = self.doc.initSettings.ports
        if self.doc.initSettings.workers > 1:
            if not ports.grpc:
                ports.grpc = _free_port()
            if ports.http == 0:
                ports.http = _free_port()
        # named with our pid, so the next block up removes it after a kill -9
        folder = Path(tempfile.gettempdir())
        prune_stale(folder, "aios-block-*.json")
        prefix, suffix = f"aios-block-{self.doc.id}-", f"-{os.getpid()}.json"
        fd, self._doc_file = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=folder)
        with os.fdopen(fd, "w") as f:
            f.write(document_json(self.doc, self.document))
        return self._doc_file

    def executor_args(self) -> list[str]:
        """The executor's command line: its settings come from the document."""
        return [
            sys.executable,
            "-m",
            "aios_fast.executor",
            "--host",
            self.host,
            "--block-doc",
            self._doc_file or self._write_document(),
            *(("--auth-file", self.auth_file) if self.auth_file else ()),
            *(("--open-roles", "infer") if self.handoff else ()),
            *_tls_args(self.tls),
        ]

    def _start_executor(self) -> dict:
        args = self.executor_args()
        env = runtime.child_env({**os.environ, **self.env})  # it dies with block up
        proc = subprocess.Popen(args, stdout=subprocess.PIPE, text=True, env=env,
                                start_new_session=True)  # fmt: skip
        self.executor_proc = proc
        assert proc.stdout is not None  # a pipe, as asked
        line = proc.stdout.readline()
        if not line:
            code = proc.wait()
            raise AiosFastError(
                f"the executor failed to start (exit status {code}; its error is above)"
            )
        return json.loads(line)

    async def start(self) -> dict:
        loop = asyncio.get_running_loop()
        info = await loop.run_in_executor(None, self._start_executor)
        scheme = self.tls.scheme
        executor_url = f"{scheme}://{self.host}:{info['mgmt_port']}"
        client = ExecutorClient(executor_url, token=self.auth.any_token("admin"), tls=self.tls)
        self.actuator.block_doc = self._doc_file  # the instances read the same settings
        try:
            specs = await self.actuator.start(self.doc.minInstances)
            if len(specs) < self.doc.minInstances:
                raise AiosFastError(
                    f"only {len(specs)} of {self.doc.minInstances} instances started"
                )
            for spec in specs:
                await client.call("add_instance", {k: spec[k] for k in ("id", "target", "health")})
            await _until_available(client, [spec["id"] for spec in specs])
        finally:
            await client.close()
        self.checker, self.scaler = await start_sidecars(
            self.doc, self.document, executor_url, self.actuator, self.host, self.auth, self.tls
        )
        self.info = {
            "block": self.doc.id,
            "grpc": f"{self.host}:{info['port']}",
            "executor_mgmt": f"{scheme}://{self.host}:{info['mgmt_port']}/mgmt",
            "metrics": f"{scheme}://{self.host}:{info['metrics_port']}/metrics",
            "health_checker_mgmt": f"{scheme}://{self.host}:{self.checker.port}/mgmt",
            "autoscaler_mgmt": f"{scheme}://{self.host}:{self.scaler.port}/mgmt",
            "instances": {
                s["id"]: {
                    "grpc": s["target"],
                    "health": f"{scheme}://{s['health']}/health",
                    "pid": s["pid"],
                }
                for s in specs
            },
            "executor_pid": self._executor().pid,
            "front": info.get("front"),
        }
        if info.get("http_port") is not None:  # the HTTP/JSON API (executor.http_front)
            self.info["http"] = (
                f"{scheme}://{self.host}:{info['http_port']}/v1/blocks/{self.doc.id}/infer"
            )
        if self.handoff is not None:
            keys: tuple[str, ...] = ("grpc", "executor_mgmt", "metrics", "health_checker_mgmt",
                                     "autoscaler_mgmt")  # fmt: skip
            keys += ("http",) if "http" in self.info else ()
            self._endpoints = {self.info[k] for k in keys}
            self.info["token_file"] = str(self._hand_out(specs))
            self.actuator.on_started = self._hand_out  # instances the auto-scaler adds too
        return self.info

    def _hand_out(self, specs: list[dict]):
        """(Re)write the token file: every endpoint announced, the instances' included
        (their gRPC and management ports), so this user's CLI needs no flags."""
        assert self.handoff is not None
        self._endpoints.update(a for s in specs for a in (s["target"], s["health"]))
        return self.handoff.write(self._endpoints)

    async def stop(self) -> None:
        if self.handoff is not None:
            self.handoff.remove()
        for sidecar in (self.scaler, self.checker):
            if sidecar is not None:
                await sidecar.stop()
        if self.executor_proc is not None and self.executor_proc.poll() is None:
            self.executor_proc.send_signal(signal.SIGTERM)
            await asyncio.get_running_loop().run_in_executor(None, self._wait_executor)
        await self.actuator.stop_all()
        if self._doc_file:
            os.unlink(self._doc_file)
            self._doc_file = None

    def kill_now(self) -> None:
        """A second Ctrl-C: SIGKILL every process of the block (the executor with its
        workers, the instances), remove its files, exit 130 at once."""
        procs = [self.executor_proc, *self.actuator.procs.values()]
        for proc in procs:
            if proc is not None and proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)  # each leads its own session
                except OSError:
                    proc.kill()
        if self.handoff is not None:
            self.handoff.remove()
        if self._doc_file:
            with contextlib.suppress(OSError):
                os.unlink(self._doc_file)
        sys.stderr.write("stopped at once (a second Ctrl-C): every process of the block "
                         "killed\n")  # fmt: skip
        os._exit(130)

    def _executor(self) -> subprocess.Popen:
        if self.executor_proc is None:
            raise AiosFastError("the block's executor is not started")
        return self.executor_proc

    def _wait_executor(self) -> None:
        proc = self._executor()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def _until_available(client: ExecutorClient, ids: list[str],
                           timeout: float = 30.0) -> None:  # fmt: skip
    """Wait until the executor (every worker) has a link up to each instance, so the
    first call after "is up" finds them; after ``timeout`` say which are not."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        rows = {row["id"]: row for row in await client.call("list_instances")}
        waiting = [iid for iid in ids if not rows.get(iid, {}).get("available")]
        if not waiting:
            return
        if asyncio.get_running_loop().time() > deadline:
            log.warning("instances not reachable from the executor after %.0f s: %s",
                        timeout, ", ".join(waiting))  # fmt: skip
            return
        await asyncio.sleep(0.05)


async def _until_stopped_or_dead(stop: asyncio.Event, proc: subprocess.Popen) -> bool:
    """Wait for a stop signal; True if the executor process ended first."""
    while not stop.is_set():
        if proc.poll() is not None:
            return True
        try:
            await asyncio.wait_for(stop.wait(), 0.5)
        except asyncio.TimeoutError:
            pass
    return False


def _print_info(info: dict) -> None:
    say(f"block {info['block']} is up:")
    rows = [
        ("gRPC inference", f"{info['grpc']} ({info['front']} front)"),
        ("executor management", info["executor_mgmt"]),
        ("executor metrics", info["metrics"]),
        ("health checker", info["health_checker_mgmt"]),
        ("auto-scaler", info["autoscaler_mgmt"]),
    ]
    if "http" in info:
        rows.append(("HTTP/JSON inference", info["http"]))
    rows += [
        (f"instance {iid}", f"{v['grpc']} (health {v['health']})")
        for iid, v in info["instances"].items()
    ]
    if info.get("token_file"):  # aios-fast mgmt/send/bench of this user find it there
        rows.append(("internal token", f"{info['token_file']} (management needs it)"))
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        say(f"  {key.ljust(width)}  {value}")


async def _traffic(info: dict, block: LocalBlock, plan: tuple[list | None, float],
                   traffic: int, expect: str) -> int:  # fmt: skip
    """Send ``traffic`` checked tasks through the running block; its exit status."""
    samples, floor = plan
    if expect == "echo":
        samples = None  # the generator's own payload, echoed
    echo = expect == "echo" or (
        expect == "auto" and samples is None and block.doc.initSettings.block == ECHO
    )
    if expect == "status" and samples is not None:  # sent, answers not compared
        samples = [(data, None) for data, _ in samples]
    if samples is not None and any(e is not None for _, e in samples):
        share = "every answer" if floor >= 1 else f"at least {floor:.0%} of the answers"
        what = f"tasks (the block's {len(samples):,} samples; {share} must be as expected)"
    elif samples is not None:
        what = f"tasks (the block's {len(samples):,} samples; statuses checked)"
    else:
        what = "tasks (outputs checked as echoes)" if echo else "tasks (statuses checked)"
    say(f"sending {traffic:,} {what} through {info['grpc']} ...")
    summary = await asyncio.get_running_loop().run_in_executor(
        None,
        lambda: drive(
            info["grpc"],
            tasks=traffic,
            concurrency=64,
            check=echo,
            token=block.auth.any_token("infer") or "",
            tls=block.tls,
            samples=samples,
        ),
    )
    say(format_summary(summary))
    ok = not summary["errors"] and not summary["wrong"] and not summary["client_crashes"]
    ok = ok and summary["completed"] == traffic
    if summary["checked"] and summary["agreement"] < floor:
        say(f"agreement {summary['agreement']:.3f} is below the block's "
            f"traffic_min_agreement {floor:g}")  # fmt: skip
        ok = False
    return 0 if ok else 1


async def up(
    path: str,
    *,
    ports: str = "default",
    workers: int | None = None,
    front: str | None = None,
    block_class: str | None = None,
    traffic: int = 0,
    expect: str = "auto",
    once: bool = False,
    as_json: bool = False,
    auth_file: str | None = None,
    tls: TLS | None = None,
) -> int:
    doc, document = load_block_doc(path)
    overrides: dict[str, Any] = {"block": block_class, "workers": workers, "front": front}
    if any(overrides.values()):  # checked by the contract as the document's own settings
        raw = msgspec.to_builtins(doc)
        raw["initSettings"].update({k: v for k, v in overrides.items() if v})
        doc = load_document(raw)
    if ports == "auto":  # every port free-picked (tests, several blocks on one machine)
        use_free_ports(doc)
    elif ports != "default":
        raise AiosFastError(f"--ports must be 'default' or 'auto', not {ports!r}")
    # the block's sample tasks, checked before anything starts (a bad hook: one line)
    plan = traffic_plan(doc.initSettings.block, doc.parameters) if traffic else (None, 1.0)
    block = LocalBlock(doc, document, auth_file=auth_file, tls=tls)
    stop = _stop_signals(block)
    status = 0
    try:
        info = await _unless_stopped(block.start(), stop)
        if as_json:
            say(json.dumps(info))
        else:
            _print_info(info)
        if traffic:
            status = await _traffic(info, block, plan, traffic, expect)
        if not once:
            say("serving; Ctrl-C stops the block")
            executor = block._executor()
            if await _until_stopped_or_dead(stop, executor):
                log.error("the executor exited (status %s); stopping the block",
                          executor.returncode)  # fmt: skip
                status = 1
    except _Interrupted:
        status = 130
    finally:
        log.info("stopping: the executor finishes the tasks in flight, then the instances "
                 "theirs (Ctrl-C again stops at once)")  # fmt: skip
        await block.stop()
        say("stopped")
    return status


class _Interrupted(Exception):
    """Ctrl-C (or SIGTERM) while the block was starting."""


def _stop_signals(block: LocalBlock) -> asyncio.Event:
    """An event set by the first SIGINT/SIGTERM; the second stops everything at once."""
    stop = asyncio.Event()

    def signalled() -> None:
        if stop.is_set():
            block.kill_now()
        stop.set()

    loop = asyncio.get_running_loop()
    for sig in runtime.STOP_SIGNALS:
        loop.add_signal_handler(sig, signalled)
    return stop


async def _unless_stopped(start, stop: asyncio.Event):
    """``start``'s result, or _Interrupted (``start`` cancelled) once ``stop`` is set."""
    starting = asyncio.ensure_future(start)
    stopped = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait((starting, stopped), return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopped.cancel()
    if not starting.done():
        starting.cancel()
        await asyncio.gather(starting, return_exceptions=True)
        raise _Interrupted
    return starting.result()
