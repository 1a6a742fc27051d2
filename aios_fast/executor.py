"""The executor: a block's gRPC front door, load-balancing tasks over its instances.

Per task: peel the caller's InferenceMessage and read the packet with the compiled
codec (malformed: INVALID_ARGUMENT), pick an instance with the block's policy (none
available: UNAVAILABLE), forward the caller's bytes unchanged over that instance's
link (``aios_fast.executor_link``), then answer:

- ``infer`` (the seeds' call): ``message=true`` once the instance has acknowledged the
  task; the result travels by output_ptr;
- ``infer_result``: the output packet, as rpc_data of an InferenceMessage;
- ``infer_stream``: one output message per task, as they finish; a task that fails
  ends the stream with its status (the details name the reason).

Guarantees: a task an instance never acknowledged is retried on another instance
(``max_retries``); a task acknowledged and then lost (instance died) fails its caller
with UNAVAILABLE, or, for ``infer``, which was already answered, is logged and counted
as ``lost``. Past ``max_inflight`` tasks in the executor, or ``instance_inflight`` on
every instance, callers get RESOURCE_EXHAUSTED. Deadlines are honoured. SIGTERM drains:
no new calls, in-flight ones finish (up to ``drain_timeout``).
"""

from __future__ import annotations

import asyncio
import logging
import sys
from dataclasses import dataclass, field
from time import perf_counter

import grpc

from . import codec, lb
from ._periodic import Periodic
from .errors import AiosFastError, NoInstanceError, PacketDecodeError
from .executor_link import InstanceLink, TaskFailed, TaskLost, TaskNotAccepted, UnaryLink
from .hardware import MetricsSnapshot
from .metrics import Histogram

__all__ = ["Executor", "ExecutorConfig", "InstanceSpec"]

log = logging.getLogger("aios_fast.executor")
_TRUE = b"\x08\x01"  # InferenceResponse(message=True), serialized


@dataclass
class InstanceSpec:
    id: str
    target: str  # host:port of the instance's gRPC server
    protocol: str = "stream"  # "stream" (aios_fast link) or "unary" (the seeds' infer only)
    health: str = ""  # host:port of the instance's management HTTP (GET /health), if any


@dataclass
class ExecutorConfig:
    host: str = "127.0.0.1"
    port: int = 50051
    instances: list[InstanceSpec] = field(default_factory=list)
    policy: dict = field(default_factory=dict)  # policies.loadBalancer of the block
    max_inflight: int = 10_000
    instance_inflight: int = 1_000
    max_retries: int = 2
    drain_timeout: float = 30.0
    reuse_port: bool = False
    link_linger: float = 0.002  # seconds a small task batch may wait while a link is busy
    discover: str = ""  # redis:// URL of instance registrations (aios_fast.discovery)
    block_id: str = "block"
    discover_interval: float = 1.0
    # HTTP services (aios_fast.executor_mgmt): None = not served, 0 = any free port.
    mgmt_port: int | None = None  # POST /mgmt (the seeds' 18001)
    metrics_port: int | None = None  # GET /metrics (the seeds' 18000)
    http_host: str = ""  # where those listen ("": host)
    block_data: dict | None = None  # the block document, handed to user policies
    metrics_interval: float = 1.0  # seconds between policy metrics refreshes


class _Reject(Exception):
    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        self.code = code
        self.message = message
        super().__init__(message)


class Executor:
    """One executor process: a grpc.aio server, a balancer and one link per instance."""

    def __init__(self, config: ExecutorConfig, *, block_data: dict | None = None) -> None:
        self.config = config
        self.block_data = block_data if block_data is not None else config.block_data
        # What user policies see through settings["get_metrics"]: served from memory.
        self.metrics = MetricsSnapshot(self._block_metrics, config.metrics_interval)
        # Each instance's GET /stats (those added with a health address), polled off the
        # hot path, so policies can weigh queue lengths and GPU load.
        self.instance_metrics: dict[str, dict] = {}
        self._instance_poll = Periodic(self._poll_instances, config.metrics_interval, log,
                                       "instance metrics poll")  # fmt: skip
        self._http = None  # aiohttp session of the poll
        self.policy_spec = dict(config.policy)
        self.balancer = self._make_balancer(self.policy_spec)
        self.links: dict[str, InstanceLink] = {}
        self.specs: dict[str, InstanceSpec] = {}
        self.unhealthy: set[str] = set()  # marked by the health checker
        # Seconds: received -> acknowledged by an instance, acknowledged -> result, and
        # received -> result (tasks that completed).
        self.latency = {"accept": Histogram(), "run": Histogram(), "total": Histogram()}
        self.inflight = 0
        self.stats = dict.fromkeys(
            ("received", "accepted", "completed", "failed", "retried", "rejected", "lost",
             "invalid"),
            0,
        )  # fmt: skip
        self._server: grpc.aio.Server | None = None
        self.port = config.port
        self.services = None  # aios_fast.executor_mgmt.ExecutorServices, when served

    # ------------------------------------------------------------------ instance set

    def add_instance(self, spec: InstanceSpec) -> None:
        if spec.id in self.links:
            raise ValueError(f"instance {spec.id!r} is already known")
        if spec.protocol not in ("stream", "unary"):
            raise ValueError(f"instance {spec.id!r}: unknown protocol {spec.protocol!r}")
        self.balancer.add(spec.id)
        self.balancer.set_healthy(spec.id, False)  # until its link is up
        link_cls = InstanceLink if spec.protocol == "stream" else UnaryLink
        link = link_cls(spec.id, spec.target, self._link_state, self.config.link_linger)
        self.links[spec.id] = link
        self.specs[spec.id] = spec
        link.start()

    async def remove_instance(self, instance_id: str, drain_timeout: float = 0.0) -> int:
        """Forget an instance and close its link. With ``drain_timeout`` > 0 it first gets
        no new tasks while its in-flight ones finish (up to that many seconds). Returns
        the tasks still in flight when the link closed (they fail as lost)."""
        if drain_timeout > 0:
            self.balancer.set_draining(instance_id, True)
            deadline = asyncio.get_running_loop().time() + drain_timeout
            await _until_idle([self.links[instance_id]], deadline)
            if instance_id not in self.links:  # removed meanwhile by another call
                return 0
        link = self.links.pop(instance_id)
        left = link.inflight
        self.specs.pop(instance_id, None)
        self.unhealthy.discard(instance_id)
        self.balancer.remove(instance_id)
        await link.close()
        return left

    def set_instance_health(self, instance_id: str, healthy: bool) -> None:
        """The health checker's verdict: an unhealthy instance gets no tasks (even with
        its link up) until it is marked healthy again."""
        if instance_id not in self.links:
            raise KeyError(instance_id)
        if healthy:
            self.unhealthy.discard(instance_id)
        else:
            self.unhealthy.add(instance_id)
        self._link_state(instance_id, self.links[instance_id].up)

    # ------------------------------------------------------------------ policy

    def _make_balancer(self, spec: dict):
        return lb.make_balancer(
            spec, (), block_data=self.block_data, get_metrics=self.metrics.get_metrics
        )

    def switch_policy(self, spec: dict) -> None:
        """Replace the balancer (a new policy, or new built-in parameters); the instance
        set, weights, health, draining and outstanding counts carry over."""
        new = self._make_balancer(spec)
        old = self.balancer
        for iid in old.instances():
            state = old.state(iid)
            new.add(iid, state["weight"])
            new.set_healthy(iid, state["healthy"])
            new.set_draining(iid, state["draining"])
            for _ in range(state["outstanding"]):
                new.on_dispatch(iid)
        self.balancer = new
        self.policy_spec = dict(spec)

    def _block_metrics(self) -> dict:
        """Executor state for policies (on the loop, every metrics interval)."""
        return {
            "executor": dict(self.stats),
            "inflight": self.inflight,
            "instances": {
                iid: {"up": link.up, "inflight": link.inflight,
                      "metrics": self.instance_metrics.get(iid)}
                for iid, link in self.links.items()
            },
        }  # fmt: skip

    async def _poll_instances(self) -> None:
        import aiohttp

        targets = {iid: spec.health for iid, spec in self.specs.items() if spec.health}
        for gone in set(self.instance_metrics) - set(targets):
            del self.instance_metrics[gone]
        if not targets:
            return
        if self._http is None:
            self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=1.0))

        async def one(iid: str, address: str) -> None:
            try:
                async with self._http.get(f"http://{address}/stats") as resp:
                    if resp.status == 200:
                        self.instance_metrics[iid] = await resp.json()
                        return
            except (aiohttp.ClientError, asyncio.TimeoutError, ValueError):
                pass
            self.instance_metrics.pop(iid, None)  # no stale readings

        await asyncio.gather(*(one(iid, address) for iid, address in targets.items()))

    def _link_state(self, instance_id: str, up: bool) -> None:
        if instance_id in self.balancer:
            self.balancer.set_healthy(instance_id, up and instance_id not in self.unhealthy)

    # ------------------------------------------------------------------ dispatch

    async def _dispatch(self, frame: bytes, packet, want_result: bool, t0: float):
        """Send one task; returns it once acknowledged. Retries unacknowledged tasks."""
        last: Exception | None = None
        for attempt in range(self.config.max_retries + 1):
            try:
                instance_id = self.balancer.pick(packet)
            except NoInstanceError:
                raise _Reject(grpc.StatusCode.UNAVAILABLE, "no instance available") from None
            link = self.links[instance_id]
            if link.inflight >= self.config.instance_inflight:
                link = self._least_loaded()
                if link is None:
                    raise _Reject(
                        grpc.StatusCode.RESOURCE_EXHAUSTED,
                        f"every instance has {self.config.instance_inflight} tasks in flight",
                    )
            self.balancer.on_dispatch(link.instance_id)
            task = link.submit(frame, None if want_result else self._unobserved_result)
            task.on_done = self._finished
            task.t0 = t0
            try:
                await task.accepted
                self.latency["accept"].observe(task.t_ack - t0)
                return task
            except TaskNotAccepted as exc:
                self.balancer.on_finish(link.instance_id)
                last = exc
                if attempt < self.config.max_retries:
                    self.stats["retried"] += 1
        raise _Reject(grpc.StatusCode.UNAVAILABLE, f"no instance accepted the task: {last}")

    def _least_loaded(self) -> InstanceLink | None:
        best = None
        for iid in self.balancer.available():
            link = self.links[iid]
            if link.inflight < self.config.instance_inflight and (
                best is None or link.inflight < best.inflight
            ):
                best = link
        return best

    def _finished(self, task, exc: Exception | None) -> None:
        self.balancer.on_finish(task.instance_id)
        if exc is None:
            now = perf_counter()
            self.latency["run"].observe(now - task.t_ack)
            self.latency["total"].observe(now - task.t0)

    async def _run(self, frame: bytes, context, want_result: bool):
        t0 = perf_counter()
        self.stats["received"] += 1
        try:
            packet = codec.decode_message(frame)
        except PacketDecodeError as exc:
            self.stats["invalid"] += 1
            raise _Reject(grpc.StatusCode.INVALID_ARGUMENT, str(exc)) from None
        if self.inflight >= self.config.max_inflight:
            self.stats["rejected"] += 1
            raise _Reject(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"executor has {self.config.max_inflight} tasks in flight; retry later",
            )
        self.inflight += 1
        try:
            task = await self._dispatch(frame, packet, want_result, t0)
            self.stats["accepted"] += 1
            if not want_result:
                return _TRUE
            try:
                out = await task.result
            except TaskLost as exc:
                self.stats["lost"] += 1
                raise _Reject(grpc.StatusCode.UNAVAILABLE, str(exc)) from None
            except TaskFailed as exc:
                self.stats["failed"] += 1
                raise _Reject(grpc.StatusCode.INTERNAL, str(exc)) from None
            self.stats["completed"] += 1
            return codec.encode_message(out)
        finally:
            self.inflight -= 1

    def _unobserved_result(self, task, exc: Exception | None) -> None:
        """Outcome of an ``infer`` task whose caller already has its answer."""
        if exc is None:
            self.stats["completed"] += 1
        elif isinstance(exc, TaskLost):
            self.stats["lost"] += 1
            log.error("task accepted by %s was lost: %s", task.instance_id, exc)
        else:
            self.stats["failed"] += 1
            log.error("task failed on %s: %s", task.instance_id, exc)

    # ------------------------------------------------------------------ gRPC handlers

    async def _unary(self, frame: bytes, context, want_result: bool) -> bytes:
        try:
            remaining = context.time_remaining()
            coro = self._run(frame, context, want_result)
            if remaining is not None:
                return await asyncio.wait_for(coro, remaining)
            return await coro
        except _Reject as exc:
            await context.abort(exc.code, exc.message)
        except asyncio.TimeoutError:
            await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, "deadline exceeded")

    async def _infer(self, frame: bytes, context) -> bytes:
        return await self._unary(frame, context, False)

    async def _infer_result(self, frame: bytes, context) -> bytes:
        return await self._unary(frame, context, True)

    async def _infer_stream(self, requests, context):
        results: asyncio.Queue = asyncio.Queue()
        pending: set[asyncio.Task] = set()

        async def one(frame: bytes) -> None:
            try:
                await results.put(await self._run(frame, context, True))
            except _Reject as exc:
                await results.put(exc)

        async def read() -> None:
            async for frame in requests:
                t = asyncio.ensure_future(one(frame))
                pending.add(t)
                t.add_done_callback(pending.discard)
            if pending:
                await asyncio.gather(*pending)
            await results.put(None)

        reader = asyncio.ensure_future(read())
        try:
            while (item := await results.get()) is not None:
                if isinstance(item, _Reject):
                    await context.abort(item.code, item.message)
                yield item
        finally:
            reader.cancel()

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        options = [("grpc.so_reuseport", 1 if self.config.reuse_port else 0)]
        server = grpc.aio.server(options=options)
        server.add_generic_rpc_handlers(
            (
                grpc.method_handlers_generic_handler(
                    "InferenceProxy",
                    {
                        "infer": grpc.unary_unary_rpc_method_handler(self._infer),
                        "infer_result": grpc.unary_unary_rpc_method_handler(self._infer_result),
                        "infer_stream": grpc.stream_stream_rpc_method_handler(self._infer_stream),
                    },
                ),
            )
        )
        self.port = server.add_insecure_port(f"{self.config.host}:{self.config.port}")
        if self.port == 0:
            raise OSError(f"cannot bind {self.config.host}:{self.config.port}")
        for spec in self.config.instances:
            self.add_instance(spec)
        self.discovery = None
        if self.config.discover:
            from .discovery import Discovery

            self.discovery = Discovery(
                self, self.config.discover, self.config.block_id, self.config.discover_interval
            )
            await self.discovery.sync_once()
            self.discovery.start()
        await server.start()
        self._server = server
        self.metrics.start()
        self._instance_poll.start()
        if self.config.mgmt_port is not None or self.config.metrics_port is not None:
            from .executor_mgmt import ExecutorServices

            self.services = ExecutorServices(self)
            await self.services.start(
                self.config.http_host or self.config.host,
                self.config.mgmt_port,
                self.config.metrics_port,
            )

    async def wait_ready(self, timeout: float = 10.0) -> None:
        """Until every configured instance's link is up (or timeout)."""
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        while loop.time() < end:
            if all(link.up for link in self.links.values()):
                return
            await asyncio.sleep(0.02)
        down = [iid for iid, link in self.links.items() if not link.up]
        raise TimeoutError(f"instance links not up after {timeout}s: {down}")

    async def stop(self, grace: float | None = None) -> None:
        """Drain: refuse new calls, let in-flight ones finish, then close the links."""
        grace = self.config.drain_timeout if grace is None else grace
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        if getattr(self, "discovery", None) is not None:
            await self.discovery.stop()
        if self._server is not None:
            await self._server.stop(grace)
        # infer calls were answered at acceptance: let their tasks finish before the links go
        await _until_idle(list(self.links.values()), deadline)
        for link in list(self.links.values()):
            await link.close()
        await self.metrics.stop()
        await self._instance_poll.stop()
        if self._http is not None:
            await self._http.close()
        if self.services is not None:
            await self.services.stop()


async def _until_idle(links: list, deadline: float) -> None:
    """Until none of the links has a task in flight, or the loop's clock passes deadline."""
    loop = asyncio.get_running_loop()
    while any(link.inflight for link in links) and loop.time() < deadline:
        await asyncio.sleep(0.01)


# ---------------------------------------------------------------------- command line


def _parse_instance(text: str) -> InstanceSpec:
    """``id=host:port`` (aios_fast stream link) or ``id=unary:host:port`` (seeds' infer),
    optionally followed by ``@host:port``, the instance's management HTTP (/health)."""
    iid, sep, target = text.partition("=")
    target, _, health = target.partition("@")
    protocol = "stream"
    if target.startswith("unary:"):
        protocol, target = "unary", target[len("unary:") :]
    if not sep or not iid or ":" not in target or (health and ":" not in health):
        raise ValueError(
            f"--instance wants id=[unary:]host:port[@mgmt_host:mgmt_port], not {text!r}"
        )
    return InstanceSpec(iid, target, protocol, health)


async def serve(config: ExecutorConfig, ready=None) -> None:
    """Run one executor until SIGTERM/SIGINT, then drain."""
    import signal

    executor = Executor(config)
    await executor.start()
    if ready is not None:
        ready(executor)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("draining: %d tasks in flight", executor.inflight)
    await executor.stop()


def _worker(config: ExecutorConfig, announce) -> None:
    """One executor process. ``announce(info)`` gets its ports once it serves."""
    import os

    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass

    def ready(executor: Executor) -> None:
        services = executor.services
        announce({
            "port": executor.port,
            "pid": os.getpid(),
            "mgmt_port": services.mgmt_port if services else None,
            "metrics_port": services.metrics_port if services else None,
        })  # fmt: skip

    asyncio.run(serve(config, ready))


def _describe_start_error(exc: Exception) -> str:
    if isinstance(exc, (AiosFastError, OSError, ValueError)):
        return f"cannot start: {exc}"
    import traceback

    return "cannot start:\n" + "".join(traceback.format_exception(exc))


def _print_line(info: dict) -> None:
    import json

    print(json.dumps(info), flush=True)


def run_workers(config: ExecutorConfig, workers: int) -> int:
    """Fork ``workers`` executor processes on one port (SO_REUSEPORT) before any gRPC
    object exists. With several workers, this process serves the management and metrics
    ports in front of them (``aios_fast.executor_front``), forwards SIGTERM/SIGINT and
    waits. Prints one JSON line once everything serves. Returns an exit status."""
    import dataclasses
    import json
    import os

    if workers <= 1:
        _worker(config, _print_line)
        return 0
    if config.port == 0:
        raise ValueError("several workers need a fixed --port (they share it)")
    # Workers serve their HTTP on one private port each; the front serves the public ones.
    worker_config = dataclasses.replace(
        config, reuse_port=True, http_host="127.0.0.1", mgmt_port=0, metrics_port=0
    )
    children, pipes = [], []
    for _ in range(workers):
        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:
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
                    f"executor worker {os.getpid()}: {_describe_start_error(exc)}",
                    file=sys.stderr,
                    flush=True,
                )
            finally:
                os._exit(status)
        os.close(write_fd)
        children.append(pid)
        pipes.append(read_fd)
    return asyncio.run(_parent(config, children, pipes))


async def _parent(config: ExecutorConfig, children: list[int], pipes: list[int]) -> int:
    import json
    import os
    import signal

    from .executor_front import WorkerFront

    loop = asyncio.get_running_loop()

    def forward(signum: int) -> None:
        for pid in children:
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                pass

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, forward, sig)

    def read_announce(fd: int) -> dict | None:
        with os.fdopen(fd, "rb") as f:
            line = f.readline()
        return json.loads(line) if line else None

    waits = [loop.run_in_executor(None, os.waitpid, pid, 0) for pid in children]
    infos = await asyncio.gather(*(loop.run_in_executor(None, read_announce, fd) for fd in pipes))
    front = None
    if all(infos):
        front = WorkerFront([info["mgmt_port"] for info in infos])
        try:
            await front.start(config.http_host or config.host, config.mgmt_port,
                              config.metrics_port)  # fmt: skip
        except OSError as exc:
            log.error("cannot serve management/metrics: %s; stopping the workers", exc)
            forward(signal.SIGTERM)
        else:
            _print_line({
                "port": infos[0]["port"], "pid": os.getpid(), "mgmt_port": front.mgmt_port,
                "metrics_port": front.metrics_port, "workers": [i["pid"] for i in infos],
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


def main(argv=None) -> int:
    import argparse
    import json
    import os

    parser = argparse.ArgumentParser(description="Run a block's executor.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=50051)
    parser.add_argument("--instance", action="append", default=[],
                        metavar="ID=[unary:]HOST:PORT")  # fmt: skip
    parser.add_argument("--policy", default="builtin:round_robin", help="policyRuleURI")
    parser.add_argument("--policy-parameters", default="{}", help="JSON")
    parser.add_argument(
        "--block-doc",
        help="block document (JSON file): its policies."
        "loadBalancer replaces --policy*, and policies get it as block_data",
    )
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--max-inflight", type=int, default=10_000)
    parser.add_argument("--instance-inflight", type=int, default=1_000)
    parser.add_argument("--max-retries", type=int, default=2)
    parser.add_argument("--drain-timeout", type=float, default=30.0)
    parser.add_argument(
        "--link-linger",
        type=float,
        default=0.002,
        help="seconds a small task batch may wait while a link is busy",
    )
    parser.add_argument("--discover", default="", help="redis:// URL of registrations")
    parser.add_argument("--block-id", default="block")
    parser.add_argument("--discover-interval", type=float, default=1.0)
    parser.add_argument("--mgmt-port", type=int, default=18001,
                        help="POST /mgmt port (0: any free one, -1: none)")  # fmt: skip
    parser.add_argument("--metrics-port", type=int, default=18000,
                        help="GET /metrics port (0: any free one, -1: none)")  # fmt: skip
    opts = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    policy = {"policyRuleURI": opts.policy, "parameters": json.loads(opts.policy_parameters)}
    block_data = None
    if opts.block_doc:
        with open(opts.block_doc) as f:
            block_data = json.load(f)
        policy = dict((block_data.get("policies") or {}).get("loadBalancer") or {})
    config = ExecutorConfig(
        host=opts.host,
        port=opts.port,
        instances=[_parse_instance(text) for text in opts.instance],
        policy=policy,
        block_data=block_data,
        max_inflight=opts.max_inflight,
        instance_inflight=opts.instance_inflight,
        max_retries=opts.max_retries,
        drain_timeout=opts.drain_timeout,
        link_linger=opts.link_linger,
        discover=opts.discover,
        block_id=opts.block_id,
        discover_interval=opts.discover_interval,
        mgmt_port=None if opts.mgmt_port < 0 else opts.mgmt_port,
        metrics_port=None if opts.metrics_port < 0 else opts.metrics_port,
    )
    try:
        return run_workers(config, opts.workers)
    except Exception as exc:
        print(f"executor: {_describe_start_error(exc)}", file=sys.stderr, flush=True)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
