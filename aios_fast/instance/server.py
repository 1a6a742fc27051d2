"""Instance runtime: serves one user Block to executors and plain gRPC callers.

gRPC (raw bytes, no protobuf objects):
- ``/aios.InstanceLink/Tasks``: the executor's batched bidirectional stream
  (``aios_fast.wire``, served by ``link_server``);
- ``/InferenceProxy/infer``: the seeds' call; true once the task is taken, the output
  then travels by output_ptr;
- ``/InferenceProxy/infer_result``: runs the task and returns the output packet.

HTTP (aiohttp, management port): ``GET /health`` answers from ``Block.health()``
(200 healthy, 503 not), ``POST /mgmt`` {"mgmt_action", "mgmt_data"} goes to
``Block.management`` (``update_parameters`` goes to ``Block.on_update``; the shape of
``aios_fast.service.http``), ``GET /metrics``: tasks, on_data latency, queue length, process
and host CPU/memory and GPUs (Prometheus text), ``GET /stats``: the same readings as
JSON (executors poll it for their policies' ``get_metrics()``).

Run: ``python -m aios_fast.instance --block aios_fast.block:EchoBlock --port 0``; it
prints one JSON line with the ports it listens on.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import json
import logging
import time
from time import perf_counter

import grpc
from aiohttp import web

from .. import codec
from ..block import Block
from ..errors import AiosFastError, PacketDecodeError
from ..framedb import FrameDB
from ..service.hardware import hardware_families
from ..service.http import mgmt_route, start_site
from ..service.metrics import CONTENT_TYPE, Histogram, Registry, counter, gauge, histogram
from ..service.snapshot import MetricsSnapshot
from ..wire import ACCEPTED, LINK_RPC, LINK_SERVICE, SERVICE
from .link_server import LinkServer, describe
from .routing import OutputRouter

__all__ = ["InstanceServer", "load_block", "make_output"]

log = logging.getLogger("aios_fast.instance")


def load_block(spec: str, init_data: dict | None = None, parameters: dict | None = None) -> Block:
    """``module:Class`` -> an instance of that Block subclass."""
    module_name, _, class_name = spec.partition(":")
    if not class_name:
        raise AiosFastError(f"block spec {spec!r} must be 'module:Class'")
    cls = getattr(importlib.import_module(module_name), class_name, None)
    if cls is None:
        raise AiosFastError(f"block spec {spec!r}: {module_name} has no {class_name}")
    return cls(init_data, parameters)


def make_output(result, packet) -> codec.Packet | None:
    """The output packet for on_data's result (see aios_fast.block)."""
    if result is None:
        return None
    if isinstance(result, codec.Packet):
        return result
    if isinstance(result, (bytes, bytearray, memoryview)):
        data = bytes(result).decode("utf-8")
    elif isinstance(result, str):
        data = result
    else:
        data = json.dumps(result)
    return codec.Packet(
        session_id=packet.session_id,
        seq_no=packet.seq_no,
        data=data,
        ts=time.time(),
        output_ptr=packet.output_ptr,
    )


class InstanceServer:
    """One Block behind gRPC and a management HTTP port."""

    def __init__(
        self,
        block: Block,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        mgmt_port: int = 0,
        max_concurrency: int = 256,
        router: OutputRouter | None = None,
        frames: FrameDB | None = None,
    ) -> None:
        self.block = block
        if frames is not None:
            block.frames = frames
        self.host = host
        self.port = port
        self.mgmt_port = mgmt_port
        self.router = router or OutputRouter()
        self._sem = asyncio.Semaphore(max_concurrency)
        self._server: grpc.aio.Server | None = None
        self._runner: web.AppRunner | None = None
        self.completed = 0
        self.failed = 0
        self.waiting = 0  # tasks queued for a concurrency slot
        self.running = 0  # tasks in on_preprocess / on_data
        self.on_data_seconds = Histogram()
        self.snapshot = MetricsSnapshot(self._block_metrics)  # hardware, read off the loop
        self.registry = Registry(self._collect, process=True)
        self._links = LinkServer(self.run_task, self)

    # ------------------------------------------------------------------ running a task

    async def _call(self, fn, *args):
        if inspect.iscoroutinefunction(fn):
            return await fn(*args)
        if getattr(self.block, "inline", False):  # declared cheap: no thread hop
            return fn(*args)
        return await asyncio.get_running_loop().run_in_executor(None, fn, *args)

    async def run_task(self, frame: bytes) -> bytes:
        """Process one InferenceMessage frame; the serialized output packet (or b"")."""
        return await self.run_packet(codec.decode_message(frame))

    async def run_packet(self, packet: codec.Packet) -> bytes:
        """Process one decoded task; the serialized output packet (or b"")."""
        self.waiting += 1
        try:
            await self._sem.acquire()
        finally:
            self.waiting -= 1
        self.running += 1
        t0 = perf_counter()
        try:
            entry = await self._call(self.block.on_preprocess, packet)
            result = await self._call(self.block.on_data, entry)
        finally:
            self.on_data_seconds.observe(perf_counter() - t0)
            self.running -= 1
            self._sem.release()
        out = make_output(result, packet)
        if out is None:
            return b""
        if out.output_ptr:
            await self.router.route(out)
        return codec.encode_packet(out)

    # ------------------------------------------------------------------ gRPC handlers

    async def _infer(self, request: bytes, context) -> bytes:
        try:
            packet = codec.decode_message(request)
        except PacketDecodeError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        task = asyncio.ensure_future(self._background(packet))
        self._background_tasks.add(task)
        task.add_done_callback(self._background_tasks.discard)
        return ACCEPTED

    async def _background(self, packet: codec.Packet) -> None:
        try:
            await self.run_packet(packet)
            self.completed += 1
        except Exception as exc:
            self.failed += 1
            log.error("task failed after it was accepted: %s", describe(exc))

    async def _infer_result(self, request: bytes, context) -> bytes:
        try:
            out = await self.run_task(request)
        except PacketDecodeError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except Exception as exc:
            self.failed += 1
            await context.abort(grpc.StatusCode.INTERNAL, describe(exc))
        self.completed += 1
        return codec.encode_message(out)

    # ------------------------------------------------------------------ management

    async def _health(self, request: web.Request) -> web.Response:
        try:
            state = await self._call(self.block.health)
        except Exception as exc:
            return web.json_response({"healthy": False, "error": describe(exc)}, status=503)
        healthy = bool(state)
        body = state if isinstance(state, dict) else {"healthy": healthy}
        return web.json_response(body, status=200 if healthy else 503)

    async def _mgmt(self, action: str, data: dict):
        """A block's own actions (ValueError: 400, any other exception: 500)."""
        if action == "update_parameters":
            return await self._call(self.block.on_update, data)
        return await self._call(self.block.management, action, data)

    def _block_metrics(self) -> dict:
        return {"completed": self.completed, "failed": self.failed,
                "waiting": self.waiting, "running": self.running}  # fmt: skip

    def _collect(self):
        yield counter("aios_instance_tasks", "Tasks by outcome.", ("outcome",),
                      [("completed", self.completed), ("failed", self.failed)])  # fmt: skip
        yield gauge("aios_instance_queue_length", "Tasks waiting for a concurrency slot.", (),
                    [(self.waiting,)])  # fmt: skip
        yield gauge("aios_instance_running", "Tasks in on_preprocess/on_data now.", (),
                    [(self.running,)])  # fmt: skip
        yield histogram("aios_instance_on_data_seconds",
                        "Time in on_preprocess + on_data per task.", (),
                        [(self.on_data_seconds,)])  # fmt: skip
        hardware = self.snapshot.get_metrics()["block_metrics"].get("hardware")
        if hardware:
            yield from hardware_families(hardware)

    async def _stats(self, request: web.Request) -> web.Response:
        """The instance's latest readings as JSON (what executors hand to policies)."""
        return web.json_response(self.snapshot.get_metrics()["block_metrics"])

    async def _metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=self.registry.exposition(), headers={"Content-Type": CONTENT_TYPE})

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        self._background_tasks: set[asyncio.Task] = set()
        server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
        handlers = {
            "infer": grpc.unary_unary_rpc_method_handler(self._infer),
            "infer_result": grpc.unary_unary_rpc_method_handler(self._infer_result),
        }
        server.add_generic_rpc_handlers(
            (
                grpc.method_handlers_generic_handler(SERVICE, handlers),
                grpc.method_handlers_generic_handler(
                    LINK_SERVICE,
                    {LINK_RPC: grpc.stream_stream_rpc_method_handler(self._links.serve)},
                ),
            )
        )
        self.port = server.add_insecure_port(f"{self.host}:{self.port}")
        await server.start()
        self._server = server
        app = web.Application()
        app.router.add_get("/health", self._health)
        app.router.add_post("/mgmt", mgmt_route(self._mgmt, "instance"))
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/stats", self._stats)
        self._runner, self.mgmt_port = await start_site(app, self.host, self.mgmt_port)
        self.snapshot.start()

    async def stop(self, grace: float = 5.0) -> None:
        if self._server is not None:
            await self._server.stop(grace)
        if self._background_tasks:
            await asyncio.wait(self._background_tasks, timeout=grace)
        if self._runner is not None:
            await self._runner.cleanup()
        await self.snapshot.stop()
        await self.router.close()
        await self.block.frames.close()
