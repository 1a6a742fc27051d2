"""The ``aios-fast`` command.

aios-fast block up BLOCK.json [--traffic N] [--once]   a whole block on this machine
aios-fast block manifests BLOCK.json [--image IMG]   the block's Kubernetes YAML
aios-fast block image BLOCK.json [--base IMG]        a Dockerfile of the block's image
aios-fast bench [--target HOST:PORT] [--tasks N | --duration S]   load with a live line
aios-fast send --target HOST:PORT [--data JSON] ...   submit packets, print the outputs
aios-fast mgmt URL ACTION [DATA]                      POST /mgmt to a block service
aios-fast probe [URL]                                 GET /health: exit 0 when healthy
aios-fast registry serve [--port 8080] ...            the registry server
aios-fast vdag check VDAG.json [--blocks A.json ...]  validate (and compile) a vDAG
aios-fast vdag up VDAG.json --blocks A.json ...       its blocks and controller, locally
aios-fast vdag manifests VDAG.json --blocks A.json ... its Kubernetes YAML
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import os
import sys

from . import __version__
from .auth import ENV_TOKEN, bearer, local_token
from .errors import AiosFastError, json_object
from .executor.config import FRONTS
from .service import runtime
from .tls import TLS, add_tls_arguments
from .wire import ACCEPTED, RAISE_LIMIT, SERVICE

__all__ = ["main"]


class DEFAULTS(argparse.ArgumentDefaultsHelpFormatter):
    """Shows an option's default unless its help already says it or there is none."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if "default" in text or action.default in (None, "", [], False, argparse.SUPPRESS):
            return text
        return super()._get_help_string(action)


TOKEN_HELP = (
    "bearer token to send (default: AIOS_FAST_TOKEN, else the token a running "
    "`block up` of yours handed out for the address)"
)
EXAMPLE_BLOCK = os.path.join(os.path.dirname(__file__), "examples", "echo-block.json")


def _block_up(opts) -> int:
    # Its stdout is its own (the --json line first): whatever the block's module or a
    # policy prints, in this process too, goes to stderr from here on.
    runtime.reserve_stdout()
    from .devtools.block_up import up

    if opts.actuator == "kubernetes":  # the sidecars alone, scaling a Deployment
        from .devtools.kube_up import up_kubernetes

        return runtime.run(
            up_kubernetes(
                opts.document,
                ports=opts.ports,
                executor_url=opts.executor_url,
                namespace=opts.namespace,
                kubeconfig=opts.kubeconfig,
                host=opts.host,
                as_json=opts.json,
                auth_file=opts.auth_file,
                tls=TLS.from_options(opts),
            )
        )
    if opts.host != "127.0.0.1" or opts.executor_url or opts.namespace or opts.kubeconfig:
        raise AiosFastError("--host, --executor-url, --namespace and --kubeconfig go with "
                            "--actuator kubernetes")  # fmt: skip
    return runtime.run(
        up(
            opts.document,
            ports=opts.ports,
            workers=opts.workers,
            front=opts.front,
            block_class=opts.block,
            traffic=opts.traffic,
            expect=opts.expect,
            once=opts.once,
            as_json=opts.json,
            auth_file=opts.auth_file,
            tls=TLS.from_options(opts),
        )
    )


def _block_manifests(opts) -> int:
    from .devtools.block_up import load_block_doc
    from .devtools.manifests import manifests, render

    runtime.reserve_stdout()  # the YAML alone: the block module's prints go to stderr
    doc, document = load_block_doc(opts.document)
    text = render(manifests(doc, document, image=opts.image, namespace=opts.namespace))
    runtime.say(text.rstrip("\n"))
    return 0


def _block_image(opts) -> int:
    from .devtools.block_up import load_block_doc
    from .devtools.image import dockerfile

    runtime.reserve_stdout()  # the Dockerfile alone: the block module's prints go to stderr
    doc, _ = load_block_doc(opts.document)
    runtime.say(dockerfile(opts.document, doc.initSettings.block, opts.base).rstrip("\n"))
    return 0


def _probe(opts) -> int:
    import urllib.error
    import urllib.request

    url = opts.url or f"http://127.0.0.1:{os.environ.get('AIOS_FAST_HEALTH_PORT', '18001')}/health"
    try:
        context = TLS.from_options(opts).client_context()
        with urllib.request.urlopen(url, timeout=opts.timeout, context=context) as resp:
            print(f"{url}: {resp.status} {resp.read().decode(errors='replace')}")
            return 0
    except urllib.error.HTTPError as exc:
        print(f"{url}: {exc.code} {exc.read().decode(errors='replace')}", file=sys.stderr)
        return 1
    except (urllib.error.URLError, OSError, ValueError) as exc:
        print(f"{url}: no answer ({getattr(exc, 'reason', exc)})", file=sys.stderr)
        return 1


def _bench(opts) -> int:
    from .devtools.loadgen import drive, format_summary

    if not opts.tasks and not opts.duration:
        opts.tasks = 20_000

    def run(target: str) -> dict:
        print(
            f"bench: {opts.method} to {target}, "
            + (f"{opts.tasks:,} tasks" if opts.tasks else f"{opts.duration}s")
            + f", {opts.concurrency} at a time",
            flush=True,
        )
        return drive(
            target,
            tasks=opts.tasks,
            duration=opts.duration,
            concurrency=opts.concurrency,
            procs=opts.procs,
            method=opts.method,
            size=opts.size,
            check=opts.check,
            timeout=opts.timeout,
            token=_token(opts, target),
            tls=TLS.from_options(opts),
        )

    if opts.target:
        summary = run(opts.target)
    else:  # a local block to measure, stopped afterwards
        summary = runtime.run(_bench_local(opts, run))
    print(format_summary(summary))
    if opts.json:
        print(json.dumps(summary))
    if summary.get("interrupted"):
        return 130
    failed = summary["errors"] or summary["wrong"] or summary["client_crashes"]
    return 1 if failed else 0


async def _bench_local(opts, run) -> dict:
    from .devtools.block_up import LocalBlock, load_block_doc, use_free_ports

    doc, document = load_block_doc(opts.block_doc)
    use_free_ports(doc)
    if opts.workers:
        doc.initSettings.workers = opts.workers
    block = LocalBlock(doc, document)
    try:
        info = await block.start()
        print(
            f"bench: started block {doc.id} ({len(info['instances'])} instances, "
            f"{doc.initSettings.workers} executor worker(s))",
            flush=True,
        )
        return await asyncio.get_running_loop().run_in_executor(None, run, info["grpc"])
    finally:
        await block.stop()


def _token(opts, target: str) -> str | None:
    """The caller's token: --token, else AIOS_FAST_TOKEN, else the one a running
    ``block up`` of this user handed out for ``target``."""
    return opts.token or os.environ.get(ENV_TOKEN) or local_token(target)


def _auth_metadata(opts, target: str, key: str = "authorization") -> tuple[tuple[str, str], ...]:
    token = _token(opts, target)
    return ((key, bearer(token)),) if token else ()


def _count(minimum: int):
    """An argparse type: an integer >= minimum."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, not {value}")
        return value

    return parse


def _float(minimum: float, inclusive: bool):
    """An argparse type: a number of seconds > minimum (>= with ``inclusive``)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if value != value or value < minimum or (value == minimum and not inclusive):
            raise argparse.ArgumentTypeError(f"must be {'>=' if inclusive else '>'} "
                                             f"{minimum:g}, not {text}")  # fmt: skip
        return value

    return parse


_seconds = _float(0.0, inclusive=False)
_seconds0 = _float(0.0, inclusive=True)


def _read_data(text: str) -> str:
    if text.startswith("@"):
        with open(text[1:]) as f:
            return f.read()
    return text


def _send(opts) -> int:
    from . import codec
    from .client import Client, ClientError

    files = []
    for spec in opts.file:
        with open(spec, "rb") as f:
            files.append(codec.FileInfo(json.dumps({"name": os.path.basename(spec)}), f.read()))
    status = 0
    method = f"/{SERVICE}/{opts.method}"
    token = _token(opts, opts.target) or ""
    limit = opts.max_message or 2**31 - 1  # no limit unless given (gRPC's largest)
    with Client(opts.target, token=token, tls=TLS.from_options(opts), timeout=opts.timeout,
                max_message=limit) as client:  # fmt: skip
        for k in range(opts.count):
            if opts.frame_ptr:
                json_object(opts.frame_ptr, "--frame-ptr")
            packet = codec.Packet(
                session_id=opts.session,
                seq_no=opts.seq + k,
                data=_read_data(opts.data),
                frame_ptr=opts.frame_ptr.encode(),
                output_ptr=opts.output_ptr,
                files=files,
            )
            try:
                reply = client.call(method, codec.encode_message(packet))
            except ClientError as exc:
                details = exc.message
                if exc.code.name == "RESOURCE_EXHAUSTED":
                    details = _too_large_hint(details)
                print(json.dumps({"seq_no": packet.seq_no, "error": exc.code.name,
                                  "details": details}))  # fmt: skip
                status = 1
                continue
            if opts.method == "infer":
                print(json.dumps({"seq_no": packet.seq_no, "accepted": reply == ACCEPTED}))
            else:
                out = codec.decode_message(reply)
                print(
                    json.dumps(
                        {
                            "session_id": out.session_id,
                            "seq_no": out.seq_no,
                            "data": out.data,
                            "ts": out.ts,
                            "output_ptr": out.output_ptr,
                            "files": len(out.files),
                        }
                    )
                )
    return status


def _too_large_hint(details: str) -> str:
    """A message over a limit names the setting to raise: gRPC's own words say neither."""
    if "larger than max" not in details:
        return details  # the data plane's own answers name it already
    if details.startswith("CLIENT:"):  # this command's own limit
        return f"{details} (raise --max-message)"
    return f"{details} ({RAISE_LIMIT})"


def _mgmt(opts) -> int:
    import urllib.error
    import urllib.request

    if not opts.url.startswith(("http://", "https://")):
        raise AiosFastError(f"{opts.url!r} is not a management URL (e.g. http://127.0.0.1:18001)")
    url = opts.url if opts.url.endswith("/mgmt") else opts.url.rstrip("/") + "/mgmt"
    body = json.dumps({"mgmt_action": opts.action, "mgmt_data": json_object(opts.data, "DATA")})
    auth = dict(_auth_metadata(opts, url, "Authorization"))
    headers = {"Content-Type": "application/json", **auth}
    req = urllib.request.Request(url, body.encode(), headers)
    try:
        context = TLS.from_options(opts).client_context()
        with urllib.request.urlopen(req, timeout=opts.timeout, context=context) as resp:
            print(json.dumps(json.loads(resp.read()), indent=2))
            return 0
    except urllib.error.HTTPError as exc:
        print(f"{exc.code}: {exc.read().decode(errors='replace')}", file=sys.stderr)
        return 1
    except (urllib.error.URLError, ValueError, http.client.HTTPException) as exc:
        reason = getattr(exc, "reason", exc)
        raise AiosFastError(f"no management answer from {url}: {reason}") from None


def _vdag_check(opts) -> int:
    from .devtools.vdag_up import check

    return check(opts.document, opts.blocks, opts.vdags, as_json=opts.json)


def _vdag_up(opts) -> int:
    from .devtools.vdag_up import up

    return runtime.run(
        up(opts.document, opts.blocks, vdags=opts.vdags, ports=opts.ports,
           traffic=opts.traffic, once=opts.once, as_json=opts.json,
           auth_file=opts.auth_file, tls=TLS.from_options(opts), registry=opts.registry)
    )  # fmt: skip


def _vdag_manifests(opts) -> int:
    from .devtools.manifests import render
    from .devtools.vdag_up import manifests

    objects = manifests(opts.document, opts.blocks, opts.vdags, image=opts.image,
                        namespace=opts.namespace)  # fmt: skip
    sys.stdout.write(render(objects))
    return 0


def _registry(opts, rest: list[str]) -> int:
    from registry_server.__main__ import main as registry_main

    return registry_main(rest, prog="aios-fast registry serve")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="aios-fast",
        description=__doc__.splitlines()[0].replace("``", ""),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n".join(__doc__.splitlines()[2:]),
    )
    parser.add_argument("--version", action="version", version=f"aios-fast {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    block = sub.add_parser("block", help="run a block", formatter_class=DEFAULTS).add_subparsers(
        dest="verb", required=True
    )
    bup = block.add_parser(
        "up", help="start a whole block locally and serve until Ctrl-C", formatter_class=DEFAULTS
    )
    bup.add_argument(
        "document",
        nargs="?",
        default=EXAMPLE_BLOCK,
        help="block document (JSON; default: the echo example)",
    )
    bup.add_argument(
        "--ports",
        default="default",
        choices=("default", "auto"),
        help="default: the seeds' ports (50051, 18000, 18001, 10000, 19001); auto: free ones",
    )
    bup.add_argument("--workers", type=_count(1), help="executor processes (initSettings.workers)")
    bup.add_argument("--front", choices=FRONTS,
                     help="the executor's gRPC server (initSettings.front; default auto: "
                     "native where it is built)")  # fmt: skip
    bup.add_argument("--block", help="module:Class of the block (initSettings.block)")
    bup.add_argument(
        "--traffic",
        type=_count(0),
        default=0,
        metavar="N",
        help="once up, send N checked tasks and print the figures",
    )
    bup.add_argument("--once", action="store_true", help="stop after --traffic")
    bup.add_argument("--expect", choices=("auto", "echo", "status"), default="auto",
                     help="what --traffic checks: echo (outputs repeat the inputs), status "
                     "(every call answered OK), auto (the answers the block's "
                     "traffic_samples expect, else echo for the echo block)")  # fmt: skip
    bup.add_argument("--json", action="store_true", help="print the endpoints as one JSON line")
    bup.add_argument("--auth-file", help="tokens for every service of the block, one 'role "
                     "token' a line (or set AIOS_FAST_TOKEN)")  # fmt: skip
    bup.add_argument("--actuator", choices=("local", "kubernetes"), default="local",
                     help="local: the whole block as processes here; kubernetes: "
                     "only the sidecars, scaling the instances' Deployment")  # fmt: skip
    bup.add_argument("--host", default="127.0.0.1",
                     help="(kubernetes) where the sidecars listen (non-loopback: "
                     "a token is needed)")  # fmt: skip
    bup.add_argument("--executor-url", help="(kubernetes) the executor's management URL "
                     "(default: http://<block>-executor:<ports.mgmt>)")  # fmt: skip
    bup.add_argument("--namespace", help="(kubernetes) the block's namespace (default: the "
                     "pod's, or the kubeconfig context's)")  # fmt: skip
    bup.add_argument("--kubeconfig", help="(kubernetes) kubeconfig file (default: in-cluster "
                     "service account, else $KUBECONFIG or ~/.kube/config)")  # fmt: skip
    add_tls_arguments(bup)
    bup.set_defaults(run=_block_up)

    bman = block.add_parser(
        "manifests",
        help="print the Kubernetes YAML of a block (apply with kubectl apply -f -)",
        formatter_class=DEFAULTS,
    )
    bman.add_argument("document", help="block document (JSON)")
    bman.add_argument("--image", default="aios-fast:latest", help="container image of every pod")
    bman.add_argument("--namespace", default="default")
    bman.set_defaults(run=_block_manifests)

    bimg = block.add_parser(
        "image",
        help="print a Dockerfile for an image of the block (its module and document, "
        "FROM aios-fast's image); build it in the document's folder",
        formatter_class=DEFAULTS,
    )
    bimg.add_argument("document", help="block document (JSON)")
    bimg.add_argument("--base", default="aios-fast:latest", help="aios-fast's image to build on")
    bimg.set_defaults(run=_block_image)

    bench = sub.add_parser(
        "bench", help="drive load at a block, live progress, final table", formatter_class=DEFAULTS
    )
    bench.add_argument(
        "--target",
        help="host:port of an executor (default: start a local "
        "block from --block-doc and measure it)",
    )
    bench.add_argument("--block-doc", default=EXAMPLE_BLOCK)
    bench.add_argument("--workers", type=_count(1), help="executor processes of the local block")
    bench.add_argument("--tasks", type=_count(0), default=0, help="0: use --duration")
    bench.add_argument("--duration", type=_seconds0, default=0.0, help="seconds (instead of tasks)")
    bench.add_argument("--concurrency", type=_count(1), default=64)
    bench.add_argument("--procs", type=_count(1), help="client processes (default: cores / 2)")
    bench.add_argument("--method", default="infer_result", choices=("infer", "infer_result"))
    bench.add_argument("--size", type=_count(0), default=16, help="bytes of padding in data")
    bench.add_argument("--check", action="store_true",
                       help="check outputs repeat their inputs (the echo block)")  # fmt: skip
    bench.add_argument("--timeout", type=_seconds, default=30.0)
    bench.add_argument("--json", action="store_true", help="also print the summary as JSON")
    bench.add_argument("--token", help=TOKEN_HELP)
    add_tls_arguments(bench, client_only=True)
    bench.set_defaults(run=_bench)

    send = sub.add_parser(
        "send", help="submit packets and print the answers", formatter_class=DEFAULTS
    )
    send.add_argument("--target", default="127.0.0.1:50051", help="the executor's host:port")
    send.add_argument("--method", default="infer_result", choices=("infer", "infer_result"))
    send.add_argument("--session", default="cli")
    send.add_argument("--seq", type=int, default=1, help="seq_no of the first packet")
    send.add_argument("--data", default="{}", help="the packet's data, or @file")
    send.add_argument("--frame-ptr", default="", help='JSON {"framedb_id", "key"}')
    send.add_argument("--output-ptr", default="", help="the seeds' output_ptr JSON")
    send.add_argument("--file", action="append", default=[], help="attach a file (FileInfo)")
    send.add_argument("--count", type=_count(1), default=1)
    send.add_argument("--max-message", type=_count(0), default=0, metavar="BYTES",
                      help="the largest message it sends or receives (default: 0, no limit; "
                      "initSettings.maxMessageBytes bounds what a block serves)")  # fmt: skip
    send.add_argument("--timeout", type=_seconds, default=30.0)
    send.add_argument("--token", help=TOKEN_HELP)
    add_tls_arguments(send, client_only=True)
    send.set_defaults(run=_send)

    mgmt = sub.add_parser(
        "mgmt", help="POST /mgmt to an executor or sidecar", formatter_class=DEFAULTS
    )
    mgmt.add_argument("url", help="e.g. http://127.0.0.1:18001")
    mgmt.add_argument("action")
    mgmt.add_argument("data", nargs="?", default="{}", help="mgmt_data JSON")
    mgmt.add_argument("--timeout", type=_seconds, default=60.0)
    mgmt.add_argument("--token", help=TOKEN_HELP)
    add_tls_arguments(mgmt, client_only=True)
    mgmt.set_defaults(run=_mgmt)

    vdag = sub.add_parser("vdag", help="vDAGs: pipelines of blocks").add_subparsers(
        dest="verb", required=True
    )
    vcheck = vdag.add_parser(
        "check", help="validate a vDAG document (exit 2, one line per problem)",
        formatter_class=DEFAULTS,
    )  # fmt: skip
    vcheck.add_argument("document", help="vDAG document (JSON)")
    vcheck.add_argument("--blocks", nargs="+", metavar="BLOCK.json",
                        help="block documents: also check the blocks named and the "
                        "assignments (compiles the document)")  # fmt: skip
    vcheck.add_argument("--vdags", nargs="+", default=[], metavar="VDAG.json",
                        help="sub-vDAG documents its vdag nodes name")  # fmt: skip
    vcheck.add_argument("--json", action="store_true",
                        help="print the (compiled) document as JSON")  # fmt: skip
    vcheck.set_defaults(run=_vdag_check)
    vup = vdag.add_parser(
        "up", help="start a vDAG's blocks and its controller locally", formatter_class=DEFAULTS
    )
    vup.add_argument("document", help="vDAG document (JSON)")
    vup.add_argument("--blocks", nargs="+", required=True, metavar="BLOCK.json",
                     help="the block documents its nodes name or are assigned among")  # fmt: skip
    vup.add_argument("--vdags", nargs="+", default=[], metavar="VDAG.json",
                     help="sub-vDAG documents its vdag nodes name")  # fmt: skip
    vup.add_argument("--ports", default="default", choices=("default", "auto"),
                     help="default: each block document's ports and the controller's "
                     "50061/18061; auto: free ones")  # fmt: skip
    vup.add_argument("--traffic", type=int, default=0, metavar="N",
                     help="once up, send N checked tasks through the controller")  # fmt: skip
    vup.add_argument("--once", action="store_true", help="stop after --traffic")
    vup.add_argument("--json", action="store_true", help="print the endpoints as one JSON line")
    vup.add_argument("--auth-file", help="tokens for every process, one 'role token' a line")
    vup.add_argument("--registry", help="registry URL: the controller stores the compiled "
                     "vDAG and registers itself there (AIOS_REGISTRY_TOKEN)")  # fmt: skip
    add_tls_arguments(vup)
    vup.set_defaults(run=_vdag_up)
    vman = vdag.add_parser(
        "manifests", help="print the Kubernetes YAML of a vDAG's blocks and controller",
        formatter_class=DEFAULTS,
    )  # fmt: skip
    vman.add_argument("document", help="vDAG document (JSON)")
    vman.add_argument("--blocks", nargs="+", required=True, metavar="BLOCK.json")
    vman.add_argument("--vdags", nargs="+", default=[], metavar="VDAG.json")
    vman.add_argument("--image", default="aios-fast:latest", help="container image of every pod")
    vman.add_argument("--namespace", default="default")
    vman.set_defaults(run=_vdag_manifests)
    probe = sub.add_parser(
        "probe", help="GET a service's /health: exit 0 when healthy (a container HEALTHCHECK)",
        formatter_class=DEFAULTS,
    )  # fmt: skip
    probe.add_argument("url", nargs="?", help="default: http://127.0.0.1:"
                       "$AIOS_FAST_HEALTH_PORT/health (18001)")  # fmt: skip
    probe.add_argument("--timeout", type=_seconds, default=4.0)
    add_tls_arguments(probe, client_only=True)
    probe.set_defaults(run=_probe)

    registry = sub.add_parser("registry", help="the registry server")
    registry.add_argument("verb", choices=("serve",))
    registry.set_defaults(run=None)
    return parser


def main(argv: list[str] | None = None) -> int:
    import logging

    argv = sys.argv[1:] if argv is None else argv
    if os.getcwd() not in sys.path:  # --block mymodule:MyBlock finds ./mymodule.py, as -m does
        sys.path.insert(0, os.getcwd())
    if argv[:2] == ["registry", "serve"]:  # its own options, passed through
        return _registry(None, argv[2:])
    opts = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    try:
        return opts.run(opts)
    except (AiosFastError, OSError) as exc:  # bad input, a port in use, a missing file
        for line in getattr(exc, "lines", None) or [str(exc)]:  # a vDAG: one per problem
            print(f"aios-fast: {line}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
