"""``python -m aios_fast.executor``: run a block's executor (see ``executor.core``)."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from ..auth import Auth
from ..errors import AiosFastError, json_object
from ..service import runtime
from ..tls import TLS, add_tls_arguments
from ..wire import MAX_MESSAGE
from .config import FRONTS, ExecutorConfig, parse_instance
from .kube_discovery import parse_discover_url
from .native_front import resolve_front
from .workers import describe_start_error, run_workers


def _read_document(path: str) -> dict:
    try:
        with open(path, "rb") as f:
            return json_object(f.read().decode("utf-8", "replace"), f"block document {path}")
    except OSError as exc:
        raise AiosFastError(f"cannot read the block document: {exc}") from None


def _roles(text: str) -> tuple[str, ...]:
    return tuple(role.strip() for role in text.split(",") if role.strip())


def main(argv=None) -> int:
    runtime.adopt_parent_death()  # started by block up / an actuator: die with it
    parser = argparse.ArgumentParser(
        description="Run a block's executor.",
        prog="python -m aios_fast.executor",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--host", default="127.0.0.1", help="gRPC address")
    parser.add_argument(
        "--http-host",
        default="127.0.0.1",
        help="management and metrics address (not --host's: keep it private)",
    )
    parser.add_argument(
        "--auth-file",
        help="tokens, one 'role token' a line (roles: infer, "
        "admin, read, *); re-read on SIGHUP. AIOS_FAST_TOKEN: one token, "
        "every role",
    )
    parser.add_argument(
        "--insecure", action="store_true", help="allow a non-loopback address without any token"
    )
    parser.add_argument(
        "--open-roles",
        default="",
        help="roles callers have without a token, comma-separated (e.g. infer: the data "
        "plane open on loopback while management needs the token)",
    )
    parser.add_argument(
        "--allow-policy-paths",
        action="store_true",
        help="let switch_policy load files and modules (not only builtin:* "
        "and name:version under AIOS_POLICY_PATH)",
    )
    parser.add_argument(
        "--allowed-host",
        action="append",
        default=[],
        help="hosts add_instance may name (default: any)",
    )
    parser.add_argument("--port", type=int, default=50051)
    parser.add_argument(
        "--front",
        choices=FRONTS,
        default="auto",
        help="gRPC server: native (C over libnghttp2), grpcio (grpc.aio), or auto: native "
        "where it is built, grpcio elsewhere",
    )
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
    parser.add_argument(
        "--link-keepalive",
        type=float,
        default=2.0,
        help="seconds between pings on instance links (0: none); a ping "
        "unanswered as long takes the link down",
    )
    parser.add_argument(
        "--keepalive",
        type=float,
        default=7200.0,
        help="seconds a client connection may be silent before the front pings it "
        "(0: never; grpc servers' default, 2 hours)",
    )
    parser.add_argument(
        "--keepalive-timeout",
        type=float,
        default=20.0,
        help="seconds a pinged client has to answer before its connection is cut",
    )
    parser.add_argument(
        "--max-message",
        type=int,
        default=MAX_MESSAGE,
        help="bytes of the largest message a caller may send",
    )
    parser.add_argument(
        "--connection-budget",
        type=int,
        default=64 << 20,
        help="bytes one client connection may make the native front hold (requests "
        "buffered + answers not yet sent); over it the connection is not read and its "
        "new calls get RESOURCE_EXHAUSTED",
    )
    parser.add_argument(
        "--front-budget",
        type=int,
        default=1 << 30,
        help="the same, for all connections of one executor process",
    )
    parser.add_argument(
        "--max-connections",
        type=int,
        default=0,
        help="open client connections per process (native front; more are refused "
        "with GOAWAY); 0: the open-file limit less 256",
    )
    parser.add_argument(
        "--handshake-timeout",
        type=float,
        default=120.0,
        help="seconds a client connection has to send the HTTP/2 preface and SETTINGS "
        "(native front; grpc servers' default; 0: no limit)",
    )
    parser.add_argument(
        "--task-timeout",
        type=float,
        default=0.0,
        help="seconds an instance may run one task (0: no limit)",
    )
    parser.add_argument(
        "--eject-after",
        type=int,
        default=5,
        help="tasks lost or timed out in a row that eject an instance (0: never)",
    )
    parser.add_argument(
        "--eject-seconds",
        type=float,
        default=5.0,
        help="first ejection's length; each next one is longer",
    )
    parser.add_argument(
        "--eject-max-percent",
        type=int,
        default=50,
        help="share of the instances that may be ejected at once",
    )
    parser.add_argument(
        "--discover",
        default="",
        help="redis:// URL of registrations, or k8s://[NAMESPACE/]SERVICE: the ready "
        "endpoints of the instances' Service (EndpointSlices; kubeconfig or in-cluster)",
    )
    parser.add_argument("--block-id", default="block")
    parser.add_argument("--discover-interval", type=float, default=1.0)
    parser.add_argument("--mgmt-port", type=int, default=18001,
                        help="POST /mgmt port (0: any free one, -1: none)")  # fmt: skip
    parser.add_argument("--metrics-port", type=int, default=18000,
                        help="GET /metrics port (0: any free one, -1: none)")  # fmt: skip
    add_tls_arguments(parser)
    opts = parser.parse_args(argv)
    runtime.reserve_stdout()  # user policies may print; stdout carries the ports alone
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    try:
        parameters = json_object(opts.policy_parameters, "--policy-parameters")
        policy = {"policyRuleURI": opts.policy, "parameters": parameters}
        block_data = None
        if opts.block_doc:
            block_data = _read_document(opts.block_doc)
            policy = dict((block_data.get("policies") or {}).get("loadBalancer") or {})
        if not (0 <= opts.keepalive < 1e9 and 0 < opts.keepalive_timeout < 1e9):
            raise ValueError("--keepalive must be 0 (never) or seconds, and "
                             "--keepalive-timeout seconds > 0 (both under 1e9)")  # fmt: skip
        if not (opts.max_message <= opts.connection_budget <= opts.front_budget):
            raise ValueError("--connection-budget must be at least --max-message (one "
                             "message must fit) and at most --front-budget")  # fmt: skip
        if opts.max_connections < 0 or not 0 <= opts.handshake_timeout < 1e9:
            raise ValueError("--max-connections must be >= 0 (0: auto) and "
                             "--handshake-timeout seconds >= 0 (0: no limit)")  # fmt: skip
        if opts.discover.startswith("k8s://"):
            parse_discover_url(opts.discover)  # a bad one is a user mistake: exit 2
        config = ExecutorConfig(
            host=opts.host,
            http_host=opts.http_host,
            auth=Auth.from_env(opts.auth_file, open_roles=_roles(opts.open_roles)),
            tls=TLS.from_options(opts),
            insecure=opts.insecure,
            allow_policy_paths=opts.allow_policy_paths,
            allowed_hosts=tuple(opts.allowed_host),
            port=opts.port,
            front=opts.front,
            instances=[parse_instance(text) for text in opts.instance],
            policy=policy,
            block_data=block_data,
            max_inflight=opts.max_inflight,
            instance_inflight=opts.instance_inflight,
            max_retries=opts.max_retries,
            drain_timeout=opts.drain_timeout,
            link_linger=opts.link_linger,
            link_keepalive=opts.link_keepalive,
            keepalive=opts.keepalive,
            keepalive_timeout=opts.keepalive_timeout,
            max_message=opts.max_message,
            connection_budget=opts.connection_budget,
            front_budget=opts.front_budget,
            max_connections=opts.max_connections,
            handshake_timeout=opts.handshake_timeout,
            task_timeout=opts.task_timeout,
            eject_after=opts.eject_after,
            eject_seconds=opts.eject_seconds,
            eject_max_percent=opts.eject_max_percent,
            discover=opts.discover,
            block_id=opts.block_id,
            discover_interval=opts.discover_interval,
            mgmt_port=None if opts.mgmt_port < 0 else opts.mgmt_port,
            metrics_port=None if opts.metrics_port < 0 else opts.metrics_port,
        )
        config.front = resolve_front(config.front)  # as the workers' parent prints it
    except (AiosFastError, ValueError) as exc:  # a bad --instance, token file, ...
        print(f"executor: cannot start: {exc}", file=sys.stderr, flush=True)
        return 2
    try:
        return run_workers(config, opts.workers)
    except Exception as exc:
        print(f"executor: {describe_start_error(exc)}", file=sys.stderr, flush=True)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
