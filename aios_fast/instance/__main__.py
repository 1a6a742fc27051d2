"""``python -m aios_fast.instance``: serve one Block (see ``instance.server``); prints
one JSON line with the ports it listens on once it serves."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from typing import Any

import msgspec

from ..auth import Auth
from ..errors import AiosFastError, json_object
from ..framedb import FrameDB
from ..oip import ModelSpec
from ..service import runtime
from ..settings import ECHO, BlockDocument, InitSettings, read_document
from ..tls import TLS, add_tls_arguments
from .loading import BlockLoadError, load_block
from .loading_health import LoadingHealth
from .registration import Registration
from .routing import OutputRouter
from .server import InstanceServer

log = logging.getLogger("aios_fast.instance")

_S = InitSettings()  # the contract's defaults
_I = _S.instance


def settings_of(opts: argparse.Namespace) -> dict:
    """The instance's settings: the contract's defaults, the block document's
    (``--block-doc``), then the flags given."""
    doc, raw = BlockDocument(id="block"), None
    if opts.block_doc:
        doc, raw = read_document(opts.block_doc)
    s = doc.initSettings
    chosen: dict[str, Any] = {
        "block": s.block,
        "block_id": doc.id,
        "init_data": doc.blockInitData,
        "parameters": doc.parameters,
        "batching": msgspec.to_builtins(s.batching) if s.batching is not None else None,
        "max_message": s.maxMessageBytes,
        "max_concurrency": s.instance.maxConcurrency,
        "drain_timeout": s.instance.drainTimeout,
        "inline_budget": s.instance.inlineBudget,
        # the block as an Open Inference Protocol model: its declared tensors
        "model": ModelSpec.from_document(raw, doc.id),
    }
    for key, value in vars(opts).items():
        if key in chosen and value is not None:
            chosen[key] = value
    for key, flag in (("init_data", "--init-data"), ("parameters", "--parameters"),
                      ("batching", "--batching")):  # fmt: skip
        if isinstance(chosen[key], str):
            chosen[key] = json_object(chosen[key], flag)
    return chosen


async def _serve(opts) -> None:
    chosen = settings_of(opts)
    framedb = json_object(opts.framedb, "--framedb")
    auth = Auth.from_env(opts.auth_file)
    tls = TLS.from_options(opts)
    block = _load(opts, chosen, tls)
    server = InstanceServer(
        block, host=opts.host, port=opts.port, mgmt_port=opts.mgmt_port,
        max_concurrency=chosen["max_concurrency"], frames=FrameDB(framedb),
        max_message=chosen["max_message"], auth=auth, insecure=opts.insecure, tls=tls,
        router=OutputRouter(auth.any_token("infer"), tls), batching=chosen["batching"],
        inline_budget=chosen["inline_budget"], link_port=opts.link_port,
        model=chosen["model"],
    )  # fmt: skip
    await server.start()
    runtime.reload_on_sighup(auth)
    registration = None
    if opts.register:
        advertise = opts.advertise or opts.host
        registration = Registration(
            opts.register, chosen["block_id"], opts.instance_id or f"{advertise}-{server.port}",
            f"{advertise}:{server.port}", f"{advertise}:{server.mgmt_port}", opts.ttl,
        )  # fmt: skip
        await registration.start()
    runtime.announce({"port": server.port, "mgmt_port": server.mgmt_port})
    await runtime.until_signalled()
    if registration is not None:
        await registration.stop()  # leave first: no new tasks come while we drain
    await server.stop(chosen["drain_timeout"])


def _load(opts, chosen: dict, tls: TLS):
    """The Block, loaded with a line before and after (a model may take minutes); on a
    fixed management port, /health answers "loading" meanwhile."""
    spec = chosen["block"]
    loading = LoadingHealth(opts.host, opts.mgmt_port, tls) if opts.mgmt_port else None
    if loading is not None:
        loading.start()
    log.info("loading block %s ...", spec)
    started = time.monotonic()
    try:
        block = load_block(spec, chosen["init_data"], chosen["parameters"])
    finally:
        if loading is not None:
            loading.stop()
    log.info("block %s loaded in %.1fs", spec, time.monotonic() - started)
    return block


def build_parser() -> argparse.ArgumentParser:
    """The process's command line (tests read what block up and the manifests pass)."""
    parser = argparse.ArgumentParser(
        description="Serve one Block instance.",
        prog="python -m aios_fast.instance",
    )
    parser.add_argument(
        "--block-doc",
        help="block document (JSON file): its Block, blockInitData, parameters and "
        "initSettings are this instance's (the flags below override them)",
    )
    parser.add_argument("--block", help=f"module:Class (default: {ECHO})")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="gRPC port (0: any free one)")
    parser.add_argument("--mgmt-port", type=int, default=0, help="HTTP management port")
    parser.add_argument("--link-port", type=int, default=0,
                        help="the native link's TCP port (0: any free one; executors ask "
                        "the gRPC port where it is)")  # fmt: skip
    parser.add_argument("--max-concurrency", type=int,
                        help=f"tasks run at once (default: {_I.maxConcurrency})")  # fmt: skip
    parser.add_argument("--init-data", help="JSON blockInitData (default: {})")
    parser.add_argument("--parameters", help="JSON block parameters (default: {})")
    parser.add_argument("--framedb", default=os.environ.get("AIOS_FRAMEDB", "{}"),
                        help='JSON {framedb_id: "redis://host:port/db" | "memory"}')  # fmt: skip
    parser.add_argument("--batching",
                        help="JSON batching settings for a block with on_batch (mode, "
                        "maxBatchSize, maxQueueDelayMs, preferredBatchSizes, "
                        "maxConcurrentBatches); the block's parameters.batching wins")  # fmt: skip
    parser.add_argument("--register", help="redis:// URL to register in (heartbeat + TTL)")
    parser.add_argument("--block-id", help="the block's id (default: block)")
    parser.add_argument("--instance-id", help="default: <advertise host>-<port>")
    parser.add_argument("--advertise", help="host executors reach this instance at")
    parser.add_argument("--ttl", type=float, default=3.0, help="registration TTL, seconds")
    parser.add_argument(
        "--max-message",
        type=int,
        help="bytes of the largest task (and output) it takes; as the executor's "
        f"(default: {_S.maxMessageBytes})",
    )
    parser.add_argument("--auth-file", help="tokens, one 'role token' a line; re-read on "
                        "SIGHUP (AIOS_FAST_TOKEN: one token, every role)")  # fmt: skip
    parser.add_argument("--insecure", action="store_true",
                        help="allow a non-loopback --host without any token")  # fmt: skip
    parser.add_argument(
        "--drain-timeout",
        type=float,
        help="on SIGTERM, seconds the tasks it took may take to finish "
        f"(default: {_I.drainTimeout})",
    )
    parser.add_argument(
        "--inline-budget",
        type=float,
        help="seconds: a sync hook measured at most this long runs on the event loop "
        f"(0: never unless the Block says inline = True; default: {_I.inlineBudget})",
    )
    add_tls_arguments(parser)
    return parser


def main(argv=None) -> int:
    managed = runtime.PARENT_ENV in os.environ  # started by block up / an actuator ...
    runtime.adopt_parent_death()  # ... die with it
    opts = build_parser().parse_args(argv)
    runtime.reserve_stdout()  # before the block (and what it imports) can print
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    try:
        runtime.run(_serve(opts))
    except BlockLoadError as exc:  # the user's traceback (their frames), then which block
        if managed:  # its actuator tells it (once for all the instances that fail alike)
            runtime.announce({"error": str(exc)})
        else:
            print(exc, file=sys.stderr, flush=True)
        return 2
    except (AiosFastError, OSError) as exc:  # other errors: the traceback says more
        print(f"instance: cannot start: {exc}", file=sys.stderr, flush=True)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
