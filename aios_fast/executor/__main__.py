"""``python -m aios_fast.executor``: run a block's executor (see ``executor.core``)."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from ..auth import Auth
from ..errors import AiosFastError, json_object
from ..service import runtime
from ..settings import InitSettings, read_document
from ..tls import TLS, add_tls_arguments
from .config import FRONTS, ExecutorConfig, parse_instance, settings_fields
from .kube_discovery import parse_discover_url
from .native_front import resolve_front
from .workers import describe_start_error, run_workers


def _roles(text: str) -> tuple[str, ...]:
    return tuple(role.strip() for role in text.split(",") if role.strip())


# Settings a flag may override: (flag, ExecutorConfig field, type, help). Defaults are
# the settings contract's (aios_fast.settings), through ExecutorConfig's.
_OVERRIDES = (
    ("--port", "port", int, "gRPC port"),
    ("--mgmt-port", "mgmt_port", int, "POST /mgmt port (0: any free one, -1: none)"),
    ("--metrics-port", "metrics_port", int, "GET /metrics port (0: any free one, -1: none)"),
    ("--http-port", "http_port", int,
     "HTTP/JSON API port, POST /v1/blocks/{id}/infer (0: any free one, -1: none)"),
    ("--block-id", "block_id", str, "the block's id"),
    ("--max-inflight", "max_inflight", int, "tasks in the executor at once"),
    ("--instance-inflight", "instance_inflight", int, "tasks on one instance at once"),
    ("--max-retries", "max_retries", int, "other instances a refused task is tried on"),
    ("--drain-timeout", "drain_timeout", float, "on SIGTERM, seconds in-flight tasks may take"),
    ("--link-linger", "link_linger", float,
     "seconds a small task batch may wait while a link is busy"),
    ("--link-keepalive", "link_keepalive", float,
     "seconds between pings on instance links (0: none); a ping unanswered as long takes "
     "the link down"),
    ("--link", "link", str,
     "instance links: native (our framing; a Unix socket on this host, else TCP), tcp "
     "(native, TCP only), grpc (a grpc.aio stream), or auto (native where compiled)"),
    ("--keepalive", "keepalive", float,
     "seconds a client connection may be silent before the front pings it (0: never)"),
    ("--keepalive-timeout", "keepalive_timeout", float,
     "seconds a pinged client has to answer before its connection is cut"),
    ("--max-message", "max_message", int, "bytes of the largest message a caller may send"),
    # the native front's limits (issue 23; flags only, not yet in the settings contract)
    ("--connection-budget", "connection_budget", int,
     "bytes one client connection may make the native front hold (requests buffered + "
     "answers not yet sent); over it the connection is not read and its new calls get "
     "RESOURCE_EXHAUSTED (default 64 MiB)"),
    ("--front-budget", "front_budget", int,
     "the same, for all connections of one executor process (default 1 GiB)"),
    ("--max-connections", "max_connections", int,
     "open client connections per process (native front; more get GOAWAY); 0, the "
     "default: the open-file limit less 256"),
    ("--handshake-timeout", "handshake_timeout", float,
     "seconds a client connection has to send the HTTP/2 preface and SETTINGS (native "
     "front; default 120, grpc servers'; 0: no limit)"),
    ("--task-timeout", "task_timeout", float,
     "seconds an instance may run one task (0: no limit)"),
    ("--eject-after", "eject_after", int,
     "tasks lost or timed out in a row that eject an instance (0: never)"),
    ("--eject-seconds", "eject_seconds", float, "first ejection's length; each next one is longer"),
    ("--eject-max-percent", "eject_max_percent", int,
     "share of the instances that may be ejected at once"),
    ("--discover-interval", "discover_interval", float, "seconds between discovery reconciles"),
)  # fmt: skip
_PORTS = InitSettings().ports  # the contract's (the seeds' 18001, 18000)
_DEFAULTS = ExecutorConfig(mgmt_port=_PORTS.mgmt, metrics_port=_PORTS.metrics)


def config_of(opts: argparse.Namespace) -> tuple[ExecutorConfig, int]:
    """The executor's settings: the contract's defaults, the block document's settings,
    then the flags given; and the worker count."""
    fields: dict = {}
    block_data = None
    workers = os.cpu_count() or 1
    if opts.block_doc:
        doc, block_data = read_document(opts.block_doc)
        fields = settings_fields(doc)
        workers = doc.initSettings.workers
    else:
        parameters = json_object(opts.policy_parameters, "--policy-parameters")
        fields["policy"] = {"policyRuleURI": opts.policy, "parameters": parameters}
        fields["mgmt_port"], fields["metrics_port"] = _DEFAULTS.mgmt_port, _DEFAULTS.metrics_port
    for _, field, _, _ in _OVERRIDES:
        if getattr(opts, field) is not None:
            fields[field] = getattr(opts, field)
    if opts.front is not None:
        fields["front"] = opts.front
    if opts.workers is not None:
        workers = opts.workers
    for port in ("mgmt_port", "metrics_port", "http_port"):
        if fields.get(port) is not None and fields[port] < 0:
            fields[port] = None
    keepalive = fields.get("keepalive", _DEFAULTS.keepalive)
    timeout = fields.get("keepalive_timeout", _DEFAULTS.keepalive_timeout)
    if not (0 <= keepalive < 1e9 and 0 < timeout < 1e9):
        raise ValueError("--keepalive must be 0 (never) or seconds, and "
                         "--keepalive-timeout seconds > 0 (both under 1e9)")  # fmt: skip
    # the budgets' defaults grow with a large --max-message (one message must fit, twice)
    message = fields.get("max_message", _DEFAULTS.max_message)
    fields.setdefault("connection_budget", max(_DEFAULTS.connection_budget, 2 * message))
    fields.setdefault("front_budget", max(_DEFAULTS.front_budget, fields["connection_budget"]))
    limit = {key: fields.get(key, getattr(_DEFAULTS, key)) for key in (
        "max_message", "connection_budget", "front_budget", "max_connections",
        "handshake_timeout")}  # fmt: skip
    if not limit["max_message"] <= limit["connection_budget"] <= limit["front_budget"]:
        raise ValueError("--connection-budget must be at least --max-message (one "
                         "message must fit) and at most --front-budget")  # fmt: skip
    if limit["max_connections"] < 0 or not 0 <= limit["handshake_timeout"] < 1e9:
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
        instances=[parse_instance(text) for text in opts.instance],
        block_data=block_data,
        discover=opts.discover,
        **fields,
    )
    return config, workers


def build_parser() -> argparse.ArgumentParser:
    """The process's command line (tests read what block up and the manifests pass)."""
    parser = argparse.ArgumentParser(
        description="Run a block's executor.",
        prog="python -m aios_fast.executor",
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
    parser.add_argument(
        "--front",
        choices=FRONTS,
        help="gRPC server: native (C over libnghttp2), grpcio (grpc.aio), or auto: native "
        "where it is built, grpcio elsewhere",
    )
    parser.add_argument("--instance", action="append", default=[],
                        metavar="ID=[unary:]HOST:PORT")  # fmt: skip
    parser.add_argument("--policy", default="builtin:round_robin", help="policyRuleURI")
    parser.add_argument("--policy-parameters", default="{}", help="JSON")
    parser.add_argument(
        "--block-doc",
        help="block document (JSON file): its initSettings are this executor's settings "
        "(the flags below override them), its policies.loadBalancer replaces --policy*, "
        "and policies get it as block_data",
    )
    parser.add_argument("--workers", type=int,
                        help="processes (default: initSettings.workers with --block-doc, "
                        "else one per CPU)")  # fmt: skip
    parser.add_argument(
        "--discover",
        default="",
        help="redis:// URL of registrations, or k8s://[NAMESPACE/]SERVICE: the ready "
        "endpoints of the instances' Service (EndpointSlices; kubeconfig or in-cluster)",
    )
    for flag, field, kind, text in _OVERRIDES:
        default = getattr(_DEFAULTS, field)
        parser.add_argument(flag, dest=field, type=kind, help=f"{text} (default: {default})")
    add_tls_arguments(parser)
    return parser


def main(argv=None) -> int:
    runtime.adopt_parent_death()  # started by block up / an actuator: die with it
    opts = build_parser().parse_args(argv)
    runtime.reserve_stdout()  # user policies may print; stdout carries the ports alone
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    try:
        config, workers = config_of(opts)
        config.front = resolve_front(config.front)  # as the workers' parent prints it
    except (AiosFastError, ValueError) as exc:  # a bad --instance, token file, ...
        print(f"executor: cannot start: {exc}", file=sys.stderr, flush=True)
        return 2
    try:
        return run_workers(config, workers)
    except Exception as exc:
        print(f"executor: {describe_start_error(exc)}", file=sys.stderr, flush=True)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
