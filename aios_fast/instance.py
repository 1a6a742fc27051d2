"""Instance runtime: serves one user Block to executors and plain gRPC callers.

gRPC (raw bytes, no protobuf objects):
- ``/aios.InstanceLink/Tasks``: the executor's batched bidirectional stream (``link``);
- ``/InferenceProxy/infer``: the seeds' call; true once the task is taken, the output
  then travels by output_ptr;
- ``/InferenceProxy/infer_result``: runs the task and returns the output packet.

HTTP (aiohttp, management port): ``GET /health`` answers from ``Block.health()``
(200 healthy, 503 not), ``POST /mgmt`` {"mgmt_action", "mgmt_data"} goes to
``Block.management`` (``update_parameters`` goes to ``Block.on_update``; the shape of
``aios_fast.mgmt``), ``GET /metrics``: tasks, on_data latency, queue length, process
and host CPU/memory and GPUs (Prometheus text), ``GET /stats``: the same readings as
JSON (executors poll it for their policies' ``get_metrics()``).

Run: ``python -m aios_fast.instance --block aios_fast.block:EchoBlock --port 0``; it
prints one JSON line with the ports it listens on.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import inspect
import json
import logging
import os
import signal
import sys
import time
from time import perf_counter

import grpc
from aiohttp import web

from . import codec
from .block import Block
from .errors import AiosFastError, PacketDecodeError
from .framedb import FrameDB
from .hardware import MetricsSnapshot, hardware_families
from .link import (
    ACK,
    ERROR,
    LINK_RPC,
    LINK_SERVICE,
    RESULT,
    BatchWriter,
    decode_tasks,
    encode_replies,
)
from .metrics import CONTENT_TYPE, Histogram, Registry, counter, gauge, histogram
from .mgmt import mgmt_route, start_site
from .routing import OutputRouter

__all__ = ["InstanceServer", "load_block", "make_output"]

log = logging.getLogger("aios_fast.instance")
_TRUE = b"\x08\x01"  # InferenceResponse(message=True)


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

    # ------------------------------------------------------------------ running a task

    async def _call(self, fn, *args):
        if inspect.iscoroutinefunction(fn):
            return await fn(*args)
        if getattr(self.block, "inline", False):  # declared cheap: no thread hop
            return fn(*args)
        return await asyncio.get_running_loop().run_in_executor(None, fn, *args)

    async def run_task(self, frame: bytes) -> bytes:
        """Process one InferenceMessage frame; the serialized output packet (or b"")."""
        packet = codec.decode_message(frame)
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

    async def _link(self, requests, context):
        """The executor's stream: ack every task at once, reply with results as they end."""
        writer = BatchWriter()
        pending: set[asyncio.Task] = set()

        async def work(task_id: int, frame: bytes) -> None:
            try:
                writer.put((task_id, RESULT, await self.run_task(frame)))
                self.completed += 1
            except Exception as exc:  # reported to the executor, never dropped
                self.failed += 1
                writer.put((task_id, ERROR, _describe(exc).encode()))

        async def read() -> None:
            try:
                async for message in requests:
                    for task_id, frame in decode_tasks(message):
                        writer.put((task_id, ACK, b""))
                        t = asyncio.ensure_future(work(task_id, frame))
                        pending.add(t)
                        t.add_done_callback(pending.discard)
            finally:
                if pending:
                    await asyncio.gather(*pending, return_exceptions=True)
                writer.close()

        reader = asyncio.ensure_future(read())
        try:
            while (batch := await writer.next_batch()) is not None:
                yield encode_replies(_drop_answered_acks(batch))
        finally:
            reader.cancel()

    async def _infer(self, request: bytes, context) -> bytes:
        try:
            codec.decode_message(request)
        except PacketDecodeError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        task = asyncio.ensure_future(self._background(request))
        self._background_tasks.add(task)
        task.add_done_callback(self._background_tasks.discard)
        return _TRUE

    async def _background(self, request: bytes) -> None:
        try:
            await self.run_task(request)
            self.completed += 1
        except Exception as exc:
            self.failed += 1
            log.error("task failed after it was accepted: %s", _describe(exc))

    async def _infer_result(self, request: bytes, context) -> bytes:
        try:
            out = await self.run_task(request)
        except PacketDecodeError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except Exception as exc:
            self.failed += 1
            await context.abort(grpc.StatusCode.INTERNAL, _describe(exc))
        self.completed += 1
        return codec.encode_message(out)

    # ------------------------------------------------------------------ management

    async def _health(self, request: web.Request) -> web.Response:
        try:
            state = await self._call(self.block.health)
        except Exception as exc:
            return web.json_response({"healthy": False, "error": _describe(exc)}, status=503)
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
                grpc.method_handlers_generic_handler("InferenceProxy", handlers),
                grpc.method_handlers_generic_handler(
                    LINK_SERVICE, {LINK_RPC: grpc.stream_stream_rpc_method_handler(self._link)}
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


def _drop_answered_acks(batch: list) -> list:
    """A result implies acceptance: drop ACKs whose task's result is in the same batch."""
    done = {item[0] for item in batch if item[1] != ACK}
    if not done:
        return batch
    return [item for item in batch if item[1] != ACK or item[0] not in done]


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


async def _serve(opts) -> None:
    block = load_block(opts.block, json.loads(opts.init_data), json.loads(opts.parameters))
    server = InstanceServer(
        block, host=opts.host, port=opts.port, mgmt_port=opts.mgmt_port,
        max_concurrency=opts.max_concurrency, frames=FrameDB(json.loads(opts.framedb)),
    )  # fmt: skip
    await server.start()
    registration = None
    if opts.register:
        from .discovery import Registration

        advertise = opts.advertise or opts.host
        registration = Registration(
            opts.register, opts.block_id, opts.instance_id or f"{advertise}-{server.port}",
            f"{advertise}:{server.port}", f"{advertise}:{server.mgmt_port}", opts.ttl,
        )  # fmt: skip
        await registration.start()
    print(json.dumps({"port": server.port, "mgmt_port": server.mgmt_port}), flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    if registration is not None:
        await registration.stop()  # leave first: no new tasks come while we drain
    await server.stop()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Serve one Block instance.")
    parser.add_argument("--block", default="aios_fast.block:EchoBlock", help="module:Class")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="gRPC port (0: any free one)")
    parser.add_argument("--mgmt-port", type=int, default=0, help="HTTP management port")
    parser.add_argument("--max-concurrency", type=int, default=256)
    parser.add_argument("--init-data", default="{}", help="JSON blockInitData")
    parser.add_argument("--parameters", default="{}", help="JSON block parameters")
    parser.add_argument("--framedb", default=os.environ.get("AIOS_FRAMEDB", "{}"),
                        help='JSON {framedb_id: "redis://host:port/db" | "memory"}')  # fmt: skip
    parser.add_argument("--register", help="redis:// URL to register in (heartbeat + TTL)")
    parser.add_argument("--block-id", default="block")
    parser.add_argument("--instance-id", help="default: <advertise host>-<port>")
    parser.add_argument("--advertise", help="host executors reach this instance at")
    parser.add_argument("--ttl", type=float, default=3.0, help="registration TTL, seconds")
    opts = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    try:
        asyncio.run(_serve(opts))
    except (AiosFastError, OSError) as exc:  # other errors: the traceback says more
        print(f"instance: cannot start: {exc}", file=sys.stderr, flush=True)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
