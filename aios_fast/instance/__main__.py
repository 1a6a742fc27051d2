"""``python -m aios_fast.instance``: serve one Block (see ``instance.server``); prints
one JSON line with the ports it listens on once it serves."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time

from ..auth import Auth
from ..errors import AiosFastError, json_object
from ..framedb import FrameDB
from ..service import runtime
from ..tls import TLS, add_tls_arguments
from ..wire import MAX_MESSAGE
from .loading import BlockLoadError, load_block
from .loading_health import LoadingHealth
from .registration import Registration
from .routing import OutputRouter
from .server import InstanceServer

log = logging.getLogger("aios_fast.instance")


async def _serve(opts) -> None:
    init_data = json_object(opts.init_data, "--init-data")
    parameters = json_object(opts.parameters, "--parameters")
    framedb = json_object(opts.framedb, "--framedb")
    batching = json_object(opts.batching, "--batching")
    auth = Auth.from_env(opts.auth_file)
    tls = TLS.from_options(opts)
    block = _load(opts, init_data, parameters, tls)
    server = InstanceServer(
        block, host=opts.host, port=opts.port, mgmt_port=opts.mgmt_port,
        max_concurrency=opts.max_concurrency, frames=FrameDB(framedb),
        max_message=opts.max_message, auth=auth, insecure=opts.insecure, tls=tls,
        router=OutputRouter(auth.any_token("infer"), tls), batching=batching,
    )  # fmt: skip
    await server.start()
    runtime.reload_on_sighup(auth)
    registration = None
    if opts.register:
        advertise = opts.advertise or opts.host
        registration = Registration(
            opts.register, opts.block_id, opts.instance_id or f"{advertise}-{server.port}",
            f"{advertise}:{server.port}", f"{advertise}:{server.mgmt_port}", opts.ttl,
        )  # fmt: skip
        await registration.start()
    runtime.announce({"port": server.port, "mgmt_port": server.mgmt_port})
    await runtime.until_signalled()
    if registration is not None:
        await registration.stop()  # leave first: no new tasks come while we drain
    await server.stop(opts.drain_timeout)


def _load(opts, init_data: dict, parameters: dict, tls: TLS):
    """The Block, loaded with a line before and after (a model may take minutes); on a
    fixed management port, /health answers "loading" meanwhile."""
    loading = LoadingHealth(opts.host, opts.mgmt_port, tls) if opts.mgmt_port else None
    if loading is not None:
        loading.start()
    log.info("loading block %s ...", opts.block)
    started = time.monotonic()
    try:
        block = load_block(opts.block, init_data, parameters)
    finally:
        if loading is not None:
            loading.stop()
    log.info("block %s loaded in %.1fs", opts.block, time.monotonic() - started)
    return block


def main(argv=None) -> int:
    managed = runtime.PARENT_ENV in os.environ  # started by block up / an actuator ...
    runtime.adopt_parent_death()  # ... die with it
    parser = argparse.ArgumentParser(
        description="Serve one Block instance.",
        prog="python -m aios_fast.instance",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--block", default="aios_fast.block:EchoBlock", help="module:Class")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="gRPC port (0: any free one)")
    parser.add_argument("--mgmt-port", type=int, default=0, help="HTTP management port")
    parser.add_argument("--max-concurrency", type=int, default=256)
    parser.add_argument("--init-data", default="{}", help="JSON blockInitData")
    parser.add_argument("--parameters", default="{}", help="JSON block parameters")
    parser.add_argument("--framedb", default=os.environ.get("AIOS_FRAMEDB", "{}"),
                        help='JSON {framedb_id: "redis://host:port/db" | "memory"}')  # fmt: skip
    parser.add_argument("--batching", default="{}",
                        help="JSON batching settings for a block with on_batch (mode, "
                        "maxBatchSize, maxQueueDelayMs, preferredBatchSizes, "
                        "maxConcurrentBatches); the block's parameters.batching wins")  # fmt: skip
    parser.add_argument("--register", help="redis:// URL to register in (heartbeat + TTL)")
    parser.add_argument("--block-id", default="block")
    parser.add_argument("--instance-id", help="default: <advertise host>-<port>")
    parser.add_argument("--advertise", help="host executors reach this instance at")
    parser.add_argument("--ttl", type=float, default=3.0, help="registration TTL, seconds")
    parser.add_argument(
        "--max-message",
        type=int,
        default=MAX_MESSAGE,
        help="bytes of the largest task (and output) it takes; as the executor's",
    )
    parser.add_argument("--auth-file", help="tokens, one 'role token' a line; re-read on "
                        "SIGHUP (AIOS_FAST_TOKEN: one token, every role)")  # fmt: skip
    parser.add_argument("--insecure", action="store_true",
                        help="allow a non-loopback --host without any token")  # fmt: skip
    parser.add_argument(
        "--drain-timeout",
        type=float,
        default=30.0,
        help="on SIGTERM, seconds the tasks it took may take to finish",
    )
    add_tls_arguments(parser)
    opts = parser.parse_args(argv)
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
