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

A block that implements ``on_batch`` gets its tasks in batches formed across all links
and unary calls (``instance.batcher``; settings: the ``batching`` argument, i.e. the
block document's ``initSettings.batching``, overridden key by key by the block's
``parameters.batching``; ``update_parameters`` may change them live). ``/stats`` then
has a ``batching`` object and ``/metrics`` the batch size and queue delay histograms.

Its parts, each in its own module: ``loading`` (the user's Block from ``module:Class``),
``output`` (on_data's result -> the output packet), ``gate`` (the concurrency gate),
``drain`` (stopping), ``outcomes`` (task counts, the block's error log), ``link_server``
(executor links), ``batcher`` (on_batch).

Run: ``python -m aios_fast.instance --block aios_fast.block:EchoBlock --port 0``; it
prints one JSON line with the ports it listens on.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
from time import perf_counter

import grpc
import msgspec
from aiohttp import web

from .. import codec
from ..auth import Auth, check_bind
from ..block import Block
from ..errors import AiosFastError, OutputTooLarge, PacketDecodeError, TaskExpired, TaskTimedOut
from ..framedb import FrameDB
from ..oip import ModelSpec
from ..service import runtime
from ..service.grpc_auth import TokenInterceptor
from ..service.hardware import hardware_families
from ..service.http import mgmt_route, new_app, start_site
from ..service.metrics import CONTENT_TYPE, Histogram, Registry, counter, gauge, histogram
from ..service.periodic import Periodic
from ..service.snapshot import MetricsSnapshot
from ..settings import InitSettings
from ..tls import TLS
from ..wire import (
    ACCEPTED,
    ENDPOINTS_METHOD,
    ENDPOINTS_RPC,
    INFER,
    INFER_RESULT,
    LINK_METHOD,
    LINK_RPC,
    LINK_SERVICE,
    MAX_MESSAGE,
    OIP,
    OIP_REST,
    RAISE_LIMIT,
    SERVICE,
    TASK,
    link_limit,
    max_output,
)
from .batcher import Batcher, BatchSettings
from .drain import Drain
from .gate import ConcurrencyGate
from .inline import InlineChooser
from .link_server import LinkServer, describe
from .loading import overrides
from .native_link import NativeLinkListener
from .outcomes import NOT_THE_BLOCKS, Outcomes
from .output import encode_output, make_output
from .routing import OutputRouter

__all__ = ["InstanceServer"]

# asyncio.timeout (3.11+): a run timeout as a timer on the running task
_TIMEOUT = getattr(asyncio, "timeout", None)
log = logging.getLogger("aios_fast.instance")


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
        max_message: int = MAX_MESSAGE,
        auth: Auth | None = None,
        insecure: bool = False,
        tls: TLS | None = None,
        batching: dict | None = None,
        inline_budget: float = InitSettings().instance.inlineBudget,
        link_port: int = 0,
        model: ModelSpec | None = None,
    ) -> None:
        self.block = block
        # the block as an OIP model (aios_fast.oip): its declared tensors check requests
        self.model = model or ModelSpec("block")
        if frames is not None:
            block.frames = frames
        self.host = host
        self.port = port
        self.mgmt_port = mgmt_port
        self.router = router or OutputRouter()
        self.max_message = max_message
        self.auth = auth or Auth()
        self.insecure = insecure
        self.tls = tls or TLS()
        self.max_output = max_output(max_message)
        self.gate = ConcurrencyGate(max_concurrency)
        self.outcomes = Outcomes(log)
        self.drain = Drain(self.busy, log)
        self._server: grpc.aio.Server | None = None
        self._runner: web.AppRunner | None = None
        self._background_tasks: set[asyncio.Task] = set()
        self._calls = 0  # infer_result calls in progress
        self._released_at = 0  # tasks ended when memory was last given back
        self._seen_at = 0  # ... and at the last check
        self._trim = Periodic(self._release_memory, 2.0, log, "memory release")
        self.on_data_seconds = Histogram()
        self.snapshot = MetricsSnapshot(self._block_metrics)  # hardware, read off the loop
        self.registry = Registry(self._collect, process=True)
        self._links = LinkServer(self.run_task, self.outcomes, self.max_message, self.queued)
        self._native = NativeLinkListener(self._links, self.auth, self.tls, host, max_message,
                                          port=link_port)  # fmt: skip
        # The default on_preprocess returns the packet: skip its thread hop.
        self._preprocess = overrides(block, "on_preprocess")
        self.inline_budget = inline_budget
        self._inline: dict[str, InlineChooser] = {}  # sync task hooks: on the loop or not
        self._async_hooks: set[str] = set()  # task hooks that are coroutine functions
        self._batching_base = batching
        self._gpus = os.environ.get("CUDA_VISIBLE_DEVICES")
        self.batcher = self._make_batcher(
            BatchSettings.parse(batching, block.parameters.get("batching"))
        )

    def _make_batcher(self, settings: BatchSettings) -> Batcher | None:
        """A batcher when the block implements on_batch and batching is not off."""
        if not overrides(self.block, "on_batch"):
            if self._batching_base or self.block.parameters.get("batching"):
                log.warning("batching settings ignored: %s has no on_batch()",
                            type(self.block).__name__)  # fmt: skip
            return None
        if settings.mode == "off":
            if overrides(self.block, "on_data"):
                return None
            settings = BatchSettings("adaptive", max_size=1)  # on_batch is all it has
        return Batcher(self._run_batch, settings)

    async def _run_batch(self, entries: list) -> list:
        if not getattr(self.block, "stack_tensors", False):
            return await self._call_task("on_batch", self.block.on_batch, entries)
        from .. import tensors  # (a block that stacks tensors has NumPy)

        merged, plan = tensors.merge(entries)  # OIP requests joined along dimension 0
        outputs = await self._call_task("on_batch", self.block.on_batch, merged)
        return tensors.unmerge(outputs, plan, entries, self.model)

    # ------------------------------------------------------------------ running a task

    async def _call(self, fn, *args):
        if inspect.iscoroutinefunction(fn):
            return await fn(*args)
        if getattr(self.block, "inline", False):  # declared cheap: no thread hop
            return fn(*args)
        work = asyncio.get_running_loop().run_in_executor(None, fn, *args)
        try:
            return await asyncio.shield(work)
        except asyncio.CancelledError:
            # A thread cannot be stopped: it keeps its concurrency slot until it ends.
            await asyncio.wait([work])
            raise

    def _on_loop(self, preprocess: bool) -> bool:
        """Whether a task's hooks all run on the event loop now (async, or sync and
        inline), so cancelling the task stops them at once."""
        if self.batcher is not None:
            return False
        hooks = ("on_preprocess", "on_data") if preprocess and self._preprocess else ("on_data",)
        for hook in hooks:
            chooser = self._inline.get(hook)
            if chooser is None:
                if hook not in self._async_hooks:
                    return False
            elif not chooser.inline:
                return False
        return True

    async def _call_task(self, hook: str, fn, *args):
        """A task's hook: async, or sync inline (declared or measured cheap,
        ``instance.inline``), or sync in a thread (timed, for that choice)."""
        chooser = self._inline.get(hook)
        if chooser is None:
            if inspect.iscoroutinefunction(fn):
                self._async_hooks.add(hook)
                return await fn(*args)
            declared = getattr(type(self.block), "inline", None)
            chooser = self._inline[hook] = InlineChooser(self.inline_budget, declared)
        t0 = perf_counter()
        if chooser.inline:
            try:
                return fn(*args)
            finally:
                chooser.observe(perf_counter() - t0)
        work = asyncio.get_running_loop().run_in_executor(None, _timed, chooser, fn, args)
        try:
            return await asyncio.shield(work)
        except asyncio.CancelledError:
            await asyncio.wait([work])  # a thread cannot be stopped: it keeps its slot
            raise

    async def run_task(self, frame: bytes, deadline: float | None = None,
                       limit: int | None = -1, run_timeout: float = 0.0,
                       kind: int = TASK) -> bytes:  # fmt: skip
        """Process one InferenceMessage frame; the serialized output packet (or b"").
        An OIP task (``wire.OIP``): a ModelInferRequest -> ModelInferResponse bytes."""
        if kind == OIP or kind == OIP_REST:
            return await self.run_oip(frame, deadline, limit, run_timeout, kind == OIP_REST)
        return await self.run_packet(codec.decode_message(frame), deadline, limit, run_timeout)

    async def run_oip(self, frame: bytes, deadline: float | None = None,
                      limit: int | None = -1, run_timeout: float = 0.0,
                      rest: bool = False) -> bytes:  # fmt: skip
        """One Open Inference Protocol request: its tensors (NumPy arrays viewing
        ``frame``, ``aios_fast.tensors``) to on_data / on_batch as an InferRequest (no
        on_preprocess: that hook takes packets), the result as a ModelInferResponse.
        InvalidTensor for inputs the declaration refuses; limits as ``run_packet``.
        ``rest``: the request and answer are the REST form (``tensors_json``)."""
        # (NumPy: imported by the instances that get OIP tasks)
        from .. import tensors, tensors_json

        if rest:
            request, binary = tensors_json.decode_json(frame, self.model)
        else:
            request = tensors.decode_request(frame, self.model)
        result = await self._guarded(request, deadline, run_timeout, preprocess=False)
        if rest:
            data = tensors_json.encode_json(request, result, self.model, binary)
        else:
            data = tensors.encode_response(request, result, self.model)
        limit = self.max_output if limit == -1 else limit
        if limit is not None and len(data) > limit:
            raise OutputTooLarge(f"output of {len(data):,} bytes is over the {limit:,}-byte "
                                 f"limit ({RAISE_LIMIT})")  # fmt: skip
        return data

    async def run_packet(self, packet: codec.Packet, deadline: float | None = None,
                         limit: int | None = -1, run_timeout: float = 0.0) -> bytes:  # fmt: skip
        """Process one decoded task; the serialized output packet (or b""). With a
        ``deadline`` (the loop's clock) a task that cannot start before it is skipped
        (TaskExpired). With ``run_timeout`` (the block's task timeout) a run longer than
        that raises TaskTimedOut; it is cancelled, and a sync hook's thread, which
        cannot be stopped, keeps its concurrency slot until it returns. An output over
        ``limit`` bytes (-1: this instance's own limit) raises OutputTooLarge; with
        ``limit`` None nobody waits for the output: it is routed by its output_ptr and
        b"" is returned."""
        if packet.output_ptr and self.router.is_vdag(packet):  # a vDAG node (routing.py)
            return await self.router.run_vdag(
                packet,
                deadline,
                run_timeout,
                lambda p, d, t: self.run_packet(p, d, -1, t),
                quiet=limit is None,
            )
        result = await self._guarded(packet, deadline, run_timeout)
        out = make_output(result, packet)
        if out is None:
            return b""
        data = encode_output(out, self.max_output if limit == -1 else limit)
        if out.output_ptr:
            await self.router.route(out)
        return data if limit is not None else b""

    async def _guarded(self, entry, deadline: float | None, run_timeout: float,
                       preprocess: bool = True):  # fmt: skip
        """The hooks' result for one task, in a concurrency slot, within the deadline
        (TaskExpired) and the run timeout (TaskTimedOut)."""
        me = asyncio.current_task()
        await self.gate.acquire(deadline, me)
        if run_timeout > 0 and _TIMEOUT is not None and self._on_loop(preprocess):
            # the hooks run on the loop (async, or sync inline): the timeout is a timer
            # that cancels this task, not a task more (a thread, which cannot be stopped,
            # would hold the answer until it returned: those keep the detached run below)
            limit = _TIMEOUT(run_timeout)
            try:
                async with limit:
                    result = await self._hooks(entry, deadline, me, preprocess)
            except Exception:
                if not limit.expired():
                    raise  # the block's own error (a TimeoutError of its own included)
                result = None  # over time, whatever the cancelled hook raised then
            if limit.expired():  # (also when the hook swallowed the cancellation)
                self.outcomes.timed_out += 1
                raise TaskTimedOut(f"the block ran the task over {run_timeout:g}s") from None
            return result
        if run_timeout > 0:  # (Python 3.10)
            run = asyncio.ensure_future(self._hooks(entry, deadline, me, preprocess))
            try:
                done, _ = await asyncio.wait((run,), timeout=run_timeout)
            except asyncio.CancelledError:
                run.cancel()  # its caller gave up (or it is given back): stop the run too
                raise
            if not done:
                run.cancel()
                self.outcomes.timed_out += 1
                raise TaskTimedOut(f"the block ran the task over {run_timeout:g}s")
            return run.result()
        return await self._hooks(entry, deadline, me, preprocess)

    async def _hooks(self, packet, deadline: float | None = None,
                     owner: asyncio.Task | None = None, preprocess: bool = True):  # fmt: skip
        """on_preprocess then on_data (or its item of an on_batch), in the concurrency
        slot the caller acquired."""
        self.gate.enter()
        t0 = perf_counter()
        try:
            entry = packet
            if preprocess and self._preprocess:
                entry = await self._call_task("on_preprocess", self.block.on_preprocess, packet)
            if self.batcher is not None:
                return await self.batcher.submit(entry, deadline, owner)
            return await self._call_task("on_data", self.block.on_data, entry)
        finally:
            self.on_data_seconds.observe(perf_counter() - t0)
            self.gate.release()

    def queued(self, task: asyncio.Task) -> bool:
        """Whether ``task`` has not started: it waits for a concurrency slot or for a
        batch to take it."""
        return self.gate.holds(task) or (self.batcher is not None and self.batcher.holds(task))

    # ------------------------------------------------------------------ gRPC handlers

    async def _infer(self, request: bytes, context) -> bytes:
        if self.drain.leaving:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "the instance is stopping")
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
            self.outcomes.completed += 1
        except Exception as exc:  # nobody waits for its answer: logged
            self.outcomes.fail(exc)
            if isinstance(exc, NOT_THE_BLOCKS):  # the block's own errors: logged by fail()
                log.error("task failed after it was accepted: %s", describe(exc))

    async def _infer_result(self, request: bytes, context) -> bytes:
        if self.drain.leaving:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "the instance is stopping")
        remaining = context.time_remaining()
        deadline = None if remaining is None else asyncio.get_running_loop().time() + remaining
        self._calls += 1
        try:
            out = await self.run_task(request, deadline)
        except PacketDecodeError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except TaskExpired as exc:
            await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, str(exc))
        except OutputTooLarge as exc:
            self.outcomes.fail(exc)
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))
        except Exception as exc:
            self.outcomes.fail(exc)
            await context.abort(grpc.StatusCode.INTERNAL, describe(exc))
        finally:
            self._calls -= 1
        self.outcomes.completed += 1
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
            batching = None
            if "batching" in data:
                batching = self._new_batching(data["batching"])
            result = await self._call(self.block.on_update, data)
            if batching is not None and self.batcher is not None:
                self.batcher.settings = batching
            return result
        return await self._call(self.block.management, action, data)

    def _new_batching(self, layer) -> BatchSettings | None:
        """update_parameters' batching settings, checked (ValueError: 400); None when
        the block does not batch (they are ignored, as at start)."""
        try:
            settings = BatchSettings.parse(self._batching_base, layer)
        except AiosFastError as exc:
            raise ValueError(str(exc)) from None
        if self.batcher is None:
            return None
        if settings.mode == "off" or settings.max_batches != self.batcher.settings.max_batches:
            raise ValueError("batching: turning batching off or changing "
                             "maxConcurrentBatches needs a restart")  # fmt: skip
        return settings

    @property
    def _expired(self) -> int:
        return self.gate.expired + (self.batcher.expired if self.batcher is not None else 0)

    def _block_metrics(self) -> dict:
        done = self.outcomes
        metrics: dict[str, object] = {"completed": done.completed, "failed": done.failed,
                   "expired": self._expired, "cancelled": done.cancelled,
                   "timed_out": done.timed_out,
                   "waiting": self.gate.waiting, "running": self.gate.running}  # fmt: skip
        if self.batcher is not None:
            metrics["batching"] = self.batcher.stats()
        if self._gpus is not None:  # pinned (CUDA_VISIBLE_DEVICES): the GPUs it may use
            metrics["cuda_visible_devices"] = self._gpus
        return metrics

    def _collect(self):
        done = self.outcomes
        yield counter("aios_instance_tasks", "Tasks by outcome.", ("outcome",),
                      [("completed", done.completed), ("failed", done.failed),
                       ("expired", self._expired), ("cancelled", done.cancelled)])  # fmt: skip
        yield gauge("aios_instance_queue_length", "Tasks waiting for a concurrency slot.", (),
                    [(self.gate.waiting,)])  # fmt: skip
        yield gauge("aios_instance_running", "Tasks in on_preprocess/on_data now.", (),
                    [(self.gate.running,)])  # fmt: skip
        yield histogram("aios_instance_on_data_seconds",
                        "Time in on_preprocess + on_data per task.", (),
                        [(self.on_data_seconds,)])  # fmt: skip
        if self.batcher is not None:
            yield from _batch_families(self.batcher)
        hardware = self.snapshot.get_metrics()["block_metrics"].get("hardware")
        if hardware:
            yield from hardware_families(hardware)

    async def _stats(self, request: web.Request) -> web.Response:
        """The instance's latest readings as JSON (what executors hand to policies)."""
        return web.json_response(self.snapshot.get_metrics()["block_metrics"])

    async def _metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=self.registry.exposition(), headers={"Content-Type": CONTENT_TYPE})

    # ------------------------------------------------------------------ lifecycle

    def _server_options(self) -> list[tuple[str, int]]:
        limit = link_limit(self.max_message)  # a link's batch, or one caller's message
        return [("grpc.so_reuseport", 0),
                ("grpc.max_receive_message_length", limit),
                ("grpc.max_send_message_length", limit),
                # executors ping their links (keepalive): let them, however often
                ("grpc.keepalive_permit_without_calls", 1),
                ("grpc.http2.min_ping_interval_without_data_ms", 100),
                ("grpc.http2.max_ping_strikes", 0),
                ("grpc.server.max_pending_requests", 20_000),
                ("grpc.server.max_pending_requests_hard_limit", 20_000)]  # fmt: skip

    async def start(self) -> None:
        check_bind(self.host, self.auth, self.insecure, "instance")
        interceptors = []
        if self.auth.enabled:
            roles = {INFER: "infer", INFER_RESULT: "infer", LINK_METHOD: "infer",
                     ENDPOINTS_METHOD: "infer"}  # fmt: skip
            interceptors.append(TokenInterceptor(self.auth, roles, frozenset({LINK_METHOD})))
        server = grpc.aio.server(options=self._server_options(), interceptors=interceptors)
        handlers = {
            "infer": grpc.unary_unary_rpc_method_handler(self._infer),
            "infer_result": grpc.unary_unary_rpc_method_handler(self._infer_result),
        }
        server.add_generic_rpc_handlers(
            (
                grpc.method_handlers_generic_handler(SERVICE, handlers),
                grpc.method_handlers_generic_handler(
                    LINK_SERVICE,
                    {
                        LINK_RPC: grpc.stream_stream_rpc_method_handler(self._links.serve),
                        ENDPOINTS_RPC: grpc.unary_unary_rpc_method_handler(self._endpoints),
                    },
                ),
            )
        )
        self.port = self.tls.bind(server, f"{self.host}:{self.port}")
        await self._native.start()
        await server.start()
        self._server = server
        app = new_app(self.auth, self.host)
        app.router.add_get("/health", self._health)
        app.router.add_post("/mgmt", mgmt_route(self._mgmt, "instance"))
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/stats", self._stats)
        self._runner, self.mgmt_port = await start_site(app, self.host, self.mgmt_port,
                                                        self.tls.server_context())  # fmt: skip
        self.snapshot.start()
        self._trim.start()

    async def _endpoints(self, request: bytes, context) -> bytes:
        """Where this instance's native link listens (``aios_fast.wire``)."""
        return msgspec.msgpack.encode(self._native.endpoints())

    async def _release_memory(self) -> None:
        """Once quiet after tasks ran (none ended for a whole period), give freed memory
        back (runtime.release_memory); not at every idle instant of a light load."""
        ended = self.outcomes.completed + self.outcomes.failed
        quiet, self._seen_at = ended == self._seen_at, ended
        if quiet and ended != self._released_at and not self.busy():
            self._released_at = ended
            runtime.release_memory()

    def busy(self) -> int:
        """Tasks taken and not finished: on links, infer (background), infer_result, and
        vDAG nodes running detached."""
        return (self._links.inflight + len(self._background_tasks) + self._calls
                + self.router.nodes_running())  # fmt: skip

    async def stop(self, grace: float = 30.0) -> None:
        """Drain: tell executors the instance is leaving and take nothing new (links
        answer REFUSED, direct calls UNAVAILABLE: both retried elsewhere), finish what
        was taken (up to ``grace`` seconds), end the links, then stop serving."""
        self.drain.begin()
        self._links.leave()
        left = await self.drain.wait(grace)
        await self._links.close(left)
        await self._native.close()
        if self.batcher is not None:
            await self.batcher.close()
        if self._server is not None:
            await self._server.stop(1.0)
        await self._trim.stop()
        if self._runner is not None:
            await self._runner.cleanup()
        await self.snapshot.stop()
        await self.router.close()
        await self.block.frames.close()
        self.outcomes.errors.flush()


def _timed(chooser: InlineChooser, fn, args):
    t0 = perf_counter()
    try:
        return fn(*args)
    finally:
        chooser.observe(perf_counter() - t0)


def _batch_families(batcher: Batcher):
    yield counter("aios_instance_batches", "Batches run through on_batch.", (),
                  [(batcher.batches,)])  # fmt: skip
    yield counter("aios_instance_batch_items", "Tasks run in batches (rate: items/s).", (),
                  [(batcher.items,)])  # fmt: skip
    yield gauge("aios_instance_batch_queue_length", "Tasks queued for a batch.", (),
                [(batcher.queued,)])  # fmt: skip
    yield histogram("aios_instance_batch_size", "Tasks per batch.", (), [(batcher.sizes,)])
    yield histogram("aios_instance_batch_queue_delay_seconds",
                    "Time a task waited in the batch queue.", (), [(batcher.delays,)])  # fmt: skip
