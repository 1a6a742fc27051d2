"""``python -m bench.protocols --peers``: aios-fast side by side with Triton itself, the
same ONNX model, the same ``perf_analyzer`` command against both, dynamic batching on
in both (issue 26).

- aios-fast: the ONNX digits example (``aios_fast/examples/onnx-digits-block.json``,
  its batching settings as they are) as one instance behind one executor on the native
  front, started as the tests start them (tests/procs.py); OIP gRPC on the executor.
- Triton: tritonserver from PyPI's ``nvidia-pytriton`` (bench/triton_peer.py, its own
  process tree), the same .onnx file through ONNX Runtime in PyTriton's inference
  callable, the block document's tensor names, datatypes and shapes, Triton's dynamic
  batcher with the block's maxBatchSize and no queue delay (see NOTES).

The peer is optional: it runs under an interpreter that has nvidia-pytriton and
onnxruntime (``--peer-python``; default ``.venv-triton/bin/python`` when present, else
this one), which the project's own venv cannot be (pytriton pins numpy<2, protobuf<7
and a tritonclient without perf_analyzer). Without it ``--peers`` says in one line how
to install it and exits 2.

Load: perf_analyzer (tritonclient<2.42's, beside this interpreter), OIP gRPC, closed
loop at ``--concurrency`` requests in flight, each request one held-out digit image
(``pixels`` FP32 [1, 64], from ``--input-data``), measurement windows of
``--window-ms``; systems interleaved round by round, medians. tasks/s, p50 and p99 are
perf_analyzer's (client side). CPU: utime + stime from /proc of every process of each
system (aios-fast: executor and instance; Triton: the PyTriton process, tritonserver and
its Python backend stub and helpers) over the whole perf_analyzer run, divided by the
requests the server completed in that run (its own counter: the executor's
``aios_executor_tasks_total{event="completed"}``, Triton's ``nv_inference_request_success``).
perf_analyzer runs on the same 2-core machine as both servers and takes its share.
"""

from __future__ import annotations

import csv
import json
import os
import platform
import re
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

from ._timing import progress, publish
from .front import children, cpu_seconds

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from tests.procs import free_port, start_executor, start_instance  # noqa: E402

DOC = ROOT / "aios_fast" / "examples" / "onnx-digits-block.json"
MODEL = "onnx-digits"
COMPLETED = r'^aios_executor_tasks_total\{event="completed"\} (\S+)'
SECTION = "Protocols: side by side with Triton (digits model, perf_analyzer)"
INSTALL = ("python3 -m venv .venv-triton && .venv-triton/bin/pip install nvidia-pytriton "
           "onnxruntime (a venv of its own: pytriton pins numpy<2, protobuf<7 and "
           "tritonclient>=2.50), or pass --peer-python")  # fmt: skip
PROBE = (
    "import json, sysconfig, importlib.metadata as m\n"
    "import pytriton, onnxruntime\n"
    "print(json.dumps({'libdir': sysconfig.get_config_var('LIBDIR'),"
    " 'ldlibrary': sysconfig.get_config_var('LDLIBRARY'),"
    " 'pytriton': m.version('nvidia-pytriton'), 'onnxruntime': onnxruntime.__version__}))"
)


class Unavailable(Exception):
    """A tool the comparison needs is missing: one line says which and how to get it."""


def default_peer_python() -> str:
    local = ROOT / ".venv-triton" / "bin" / "python"
    return str(local) if local.exists() else sys.executable


def probe_peer(python: str) -> dict:
    """The peer interpreter's versions and libpython directory, or Unavailable."""
    try:
        out = subprocess.run([python, "-c", PROBE], capture_output=True, text=True,
                             timeout=120)  # fmt: skip
    except OSError as exc:
        raise Unavailable(f"cannot run {python} ({exc.strerror}): {INSTALL}") from None
    if out.returncode != 0:
        missing = re.search(r"No module named '([\w.]+)'", out.stderr)
        what = f"no {missing.group(1)}" if missing else out.stderr.strip().splitlines()[-1:]
        raise Unavailable(f"the Triton peer needs nvidia-pytriton and onnxruntime, and {python} "
                          f"has {what or 'neither'}: {INSTALL}")  # fmt: skip
    return json.loads(out.stdout.strip().splitlines()[-1])


def perf_analyzer() -> tuple[str, dict]:
    """perf_analyzer beside this interpreter (tritonclient<2.42 ships it) and its
    environment (it loads libcudart.so.12, from nvidia-cuda-runtime-cu12, even on CPU)."""
    binary = Path(sys.executable).parent / "perf_analyzer"
    if not binary.exists():
        raise Unavailable(f"no perf_analyzer beside {sys.executable}: pip install "
                          "'tritonclient[all]<2.42' nvidia-cuda-runtime-cu12 "
                          "(make setup-test)")  # fmt: skip
    env = dict(os.environ)
    try:
        import nvidia.cuda_runtime  # type: ignore[import-not-found]

        lib = Path(next(iter(nvidia.cuda_runtime.__path__))) / "lib"
        env["LD_LIBRARY_PATH"] = f"{lib}:{env.get('LD_LIBRARY_PATH', '')}"
    except ImportError:
        pass
    return str(binary), env


def pa_command(binary: str, port: int, data: Path, csv_path: Path, opts) -> list[str]:
    """The one perf_analyzer command; only the server's port differs between systems."""
    return [binary, "-m", MODEL, "-u", f"127.0.0.1:{port}", "-i", "grpc",
            "--shape", "pixels:1,64", "--input-data", str(data),
            "--concurrency-range", str(opts.concurrency),
            "--measurement-interval", str(opts.window_ms),
            "--max-trials", "10", "--stability-percentage", "999",  # busy machine: 3 windows
            "-f", str(csv_path)]  # fmt: skip


def shown(cmd: list[str]) -> str:
    """The command as the table shows it (paths and the port generic)."""
    out = ["perf_analyzer"]
    for arg in cmd[1:]:
        arg = re.sub(r"^127\.0\.0\.1:\d+$", "127.0.0.1:PORT", arg)
        if arg.endswith(".json"):
            arg = "digits.json"
        if arg.endswith(".csv"):
            arg = "out.csv"
        out.append(arg)
    return " ".join(out)


def tree(pid: int) -> list[int]:
    """pid and all its descendants, now."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += children(p)
    return out


def cpu_of(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        try:
            total += cpu_seconds([pid])
        except (OSError, ValueError):  # (a helper gone: its time went with it)
            pass
    return total


def counter(url: str, pattern: str) -> float:
    with urllib.request.urlopen(url, timeout=10) as resp:
        text = resp.read().decode()
    found = re.search(pattern, text, re.M)
    if not found:
        raise RuntimeError(f"{url}: no {pattern!r}")
    return float(found.group(1))


def digits_data(folder: Path, count: int = 100) -> tuple[Path, list]:
    """perf_analyzer's --input-data file: held-out images, one per request (floats:
    perf_analyzer reads FP32 content only as JSON floats)."""
    from aios_fast.examples.onnx_digits import held_out_samples

    samples = held_out_samples()[:count]
    rows = [[float(p) for p in json.loads(d)["pixels"]] for d, _ in samples]
    path = folder / "digits.json"
    path.write_text(json.dumps({"data": [{"pixels": r} for r in rows]}))
    return path, [(r, e["class"]) for r, (_, e) in zip(rows, samples, strict=True)]


def check(port: int, samples: list) -> float:
    """One ModelInfer of 20 images, read back: the share of right classes."""
    import struct

    import grpc

    from aios_fast.protos import oip_pb2

    rows = samples[:20]
    req = oip_pb2.ModelInferRequest(model_name=MODEL, id="check")
    req.inputs.add(name="pixels", datatype="FP32", shape=[len(rows), 64])
    req.raw_input_contents.append(struct.pack(f"<{64 * len(rows)}f",
                                              *(p for r, _ in rows for p in r)))  # fmt: skip
    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        out = ch.unary_unary("/inference.GRPCInferenceService/ModelInfer")(
            req.SerializeToString(), timeout=10)  # fmt: skip
    resp = oip_pb2.ModelInferResponse.FromString(out)
    at = [o.name for o in resp.outputs].index("class")
    raw = resp.raw_output_contents[at]
    classes = struct.unpack(f"<{len(raw) // 8}q", raw)
    right = sum(c == label for c, (_, label) in zip(classes, rows, strict=True))
    return right / len(rows)


class Peer:
    """bench/triton_peer.py in its own session (tritonserver and the Python backend stub
    are its children): stopped with SIGTERM, then the whole group killed if it lingers."""

    def __init__(self, python: str, info: dict, model: Path, opts, log: Path) -> None:
        self.grpc_port, self.http_port, self.metrics_port = free_port(), free_port(), free_port()
        env = dict(os.environ)
        libdir = info.get("libdir")
        if libdir and (Path(libdir) / str(info.get("ldlibrary"))).exists():
            # the stub embeds libpython: the peer interpreter's own, not the system's
            env["LD_LIBRARY_PATH"] = f"{libdir}:{env.get('LD_LIBRARY_PATH', '')}"
        self.log = log.open("w")
        self.p = subprocess.Popen(
            [python, str(ROOT / "bench" / "triton_peer.py"), "--model-path", str(model),
             "--model-name", MODEL, "--grpc-port", str(self.grpc_port),
             "--http-port", str(self.http_port), "--metrics-port", str(self.metrics_port),
             "--max-batch-size", str(opts.triton_batch),
             "--max-queue-delay-us", str(opts.triton_delay_us),
             "--instances", str(opts.triton_instances), "--threads", str(opts.threads)],
            stdout=subprocess.PIPE, stderr=self.log, text=True, env=env,
            start_new_session=True,
        )  # fmt: skip
        try:
            line = self.p.stdout.readline() if self.p.stdout else ""
            self.info = json.loads(line)
        except BaseException as exc:  # (Ctrl-C while it starts included)
            self.stop()
            if isinstance(exc, Exception):
                tail = log.read_text()[-1500:]
                raise RuntimeError(f"the Triton peer did not start: {line!r}\n{tail}") from None
            raise

    def stop(self) -> None:
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
            try:
                self.p.wait(40)  # tritonserver waits for its in-flight requests
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.p.pid, signal.SIGKILL)  # helpers left behind, if any
        except ProcessLookupError:
            pass
        self.p.wait()
        self.log.close()


def _children_cpu() -> float:
    """CPU seconds of this process's waited-for children (perf_analyzer's runs)."""
    use = resource.getrusage(resource.RUSAGE_CHILDREN)
    return use.ru_utime + use.ru_stime


def measure(binary: str, env: dict, port: int, pids: list[int], count, data: Path,
            folder: Path, opts) -> dict:  # fmt: skip
    csv_path = folder / "pa.csv"
    csv_path.unlink(missing_ok=True)
    cmd = pa_command(binary, port, data, csv_path, opts)
    done0, cpu0, pa0 = count(), cpu_of(pids), _children_cpu()
    run = subprocess.run(cmd, capture_output=True, text=True, env=env,
                         timeout=60 + 15 * opts.window_ms / 1000)  # fmt: skip
    cpu, done, pa = cpu_of(pids) - cpu0, count() - done0, _children_cpu() - pa0
    if run.returncode != 0 or not csv_path.exists():
        raise RuntimeError(f"perf_analyzer failed against port {port}: "
                           f"{(run.stdout + run.stderr)[-1500:]}")  # fmt: skip
    row = next(csv.DictReader(csv_path.open()))
    return {"tasks_s": float(row["Inferences/Second"]),
            "p50_ms": float(row["p50 latency"]) / 1000,
            "p99_ms": float(row["p99 latency"]) / 1000,
            "cpu_us": cpu / max(done, 1) * 1e6, "pa_cpu_us": pa / max(done, 1) * 1e6,
            "cmd": shown(cmd)}  # fmt: skip


def run(opts) -> tuple[dict, dict]:
    info = probe_peer(opts.peer_python)  # before anything starts: a missing peer is a line
    binary, env = perf_analyzer()
    from aios_fast.examples.onnx_digits import ensure_model

    doc = json.loads(DOC.read_text())
    model, meta = ensure_model(doc["parameters"]["hidden"])
    doc["parameters"]["model_path"] = str(model)
    opts.threads = doc["parameters"].get("threads", 1)  # the peer's sessions: the same
    for key, value in json.loads(opts.block_settings or "{}").items():
        part = doc["initSettings"].get(key)  # (one level: {"batching": {...}} changes keys)
        doc["initSettings"][key] = {**part, **value} if isinstance(part, dict) else value
    batching = doc["initSettings"]["batching"]
    opts.triton_batch = opts.triton_batch or batching["maxBatchSize"]
    folder = Path(tempfile.mkdtemp(prefix="bench-peers-"))
    doc_path = folder / "onnx-digits-block.json"
    doc_path.write_text(json.dumps(doc))
    data, samples = digits_data(folder)
    procs: list = []
    systems: dict[str, dict] = {}
    try:
        progress("protocols peers: starting aios-fast (instance + executor, native front) ...")
        instance = start_instance(doc["initSettings"]["block"], doc["parameters"],
                                  "--block-doc", str(doc_path))  # fmt: skip
        procs.append(instance)
        executor, port = start_executor({"i0": instance.info["port"]}, "--front", "native",
                                        "--block-doc", str(doc_path))  # fmt: skip
        procs.append(executor)
        metrics = f"http://127.0.0.1:{executor.info['metrics_port']}/metrics"
        systems["aios-fast"] = {
            "port": port, "pids": tree(executor.p.pid) + tree(instance.p.pid),
            "count": lambda: counter(metrics, COMPLETED),
        }  # fmt: skip
        progress("protocols peers: starting the Triton peer (pytriton) ...")
        peer = Peer(opts.peer_python, info, model, opts, folder / "triton.log")
        procs.append(peer)
        tmetrics = f"http://127.0.0.1:{peer.metrics_port}/metrics"
        systems["Triton"] = {
            "port": peer.grpc_port, "pids": tree(peer.p.pid),
            "count": lambda: counter(tmetrics, r'^nv_inference_request_success\{model="'
                                     + MODEL + r'",version="1"\} (\S+)'),
        }  # fmt: skip
        for name, s in systems.items():
            s["accuracy"] = check(s["port"], samples)
            if s["accuracy"] < 0.8:
                raise RuntimeError(f"{name}: only {s['accuracy']:.0%} of 20 images right")
        warm = type(opts)(**{**vars(opts), "window_ms": 1000})
        for name, s in systems.items():  # warm-up (connections, sessions, first batches)
            progress(f"protocols peers: warm-up {name} ...")
            measure(binary, env, s["port"], s["pids"], s["count"], data, folder, warm)
        samples_: dict[str, list[dict]] = {name: [] for name in systems}
        for k in range(opts.rounds):
            for name, s in systems.items():
                progress(f"protocols peers: round {k + 1}/{opts.rounds}: {name} ...")
                samples_[name].append(measure(binary, env, s["port"], s["pids"], s["count"],
                                              data, folder, opts))  # fmt: skip
    finally:
        for proc in reversed(procs):
            proc.stop()
        for path in folder.iterdir():
            path.unlink()
        folder.rmdir()
    res = {name: {key: statistics.median(r[key] for r in rows) for key in rows[0] if key != "cmd"}
           | {"rounds": [r["tasks_s"] for r in rows], "cmd": rows[0]["cmd"],
              "accuracy": systems[name]["accuracy"]}
           for name, rows in samples_.items()}  # fmt: skip
    context = {"pytriton": info["pytriton"], "onnxruntime_peer": info["onnxruntime"],
               "triton": peer.info["triton_version"], "batching": batching,
               "accuracy": meta["accuracy"], "load": os.getloadavg()}  # fmt: skip
    import onnxruntime

    context["onnxruntime"] = onnxruntime.__version__
    return res, context


def render(res: dict, ctx: dict, opts) -> str:
    a, t = res["aios-fast"], res["Triton"]
    tput, p99 = a["tasks_s"] / t["tasks_s"], a["p99_ms"] / t["p99_ms"]
    b = ctx["batching"]
    lines = [
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}, load average {ctx['load'][0]:.2f} when it ended "
        "(shared machine). Both servers and perf_analyzer on this machine, one after the "
        f"other, {opts.rounds} interleaved round(s), medians. Model: the ONNX digits MLP "
        f"(256x256, held-out accuracy {ctx['accuracy']:.3f}), the same .onnx file, ONNX "
        f"Runtime {ctx['onnxruntime']} (aios-fast) / {ctx['onnxruntime_peer']} (peer), "
        f"{opts.threads} intra-op thread(s), CPU.",
        "",
        f"Command (the same for both; PORT the system's OIP gRPC port): `{a['cmd']}` "
        "(digits.json: 100 held-out images, one per request, FP32 [1, 64]).",
        "",
        "| system | tasks/s | p50 | p99 | CPU per task (all its processes) | perf_analyzer's "
        "CPU per task | tasks/s by round |",
        "|---|---|---|---|---|---|---|",
    ]
    labels = {"aios-fast": "aios-fast (executor, native front + 1 instance)",
              "Triton": f"Triton {ctx['triton']} (PyTriton {ctx['pytriton']})"}  # fmt: skip
    for name, label in labels.items():
        r = res[name]
        lines.append(f"| {label} | {r['tasks_s']:,.0f} | {r['p50_ms']:.2f} ms | "
                     f"{r['p99_ms']:.2f} ms | {r['cpu_us']:.0f} us | {r['pa_cpu_us']:.0f} us | "
                     f"{' / '.join(f'{x:,.0f}' for x in r['rounds'])} |")  # fmt: skip
    met = {True: "MET", False: "MISSED"}
    lines += [
        "",
        f"Goal (issue 26): aios-fast's tasks/s at least 3x Triton's: **{tput:.2f}x, "
        f"{met[tput >= 3]}**; p99 no worse: **{a['p99_ms']:.2f} ms vs {t['p99_ms']:.2f} ms "
        f"({p99:.2f}x), {met[p99 <= 1]}**.",
        "",
        "Batching. aios-fast: the example document's `initSettings.batching` "
        + (
            f"(with `{opts.block_settings}` changed in its initSettings for this run, "
            "--block-settings)"
            if opts.block_settings
            else "as shipped"
        )
        + f", mode `{b.get('mode', 'adaptive')}`, maxBatchSize {b.get('maxBatchSize', 32)}, "
        f"maxQueueDelayMs {b.get('maxQueueDelayMs', '5 (default)')}, maxConcurrentBatches "
        f"{b.get('maxConcurrentBatches', 1)} (an idle instance runs a task at once; tasks "
        "that come while a batch runs wait for the next). Triton: dynamic batcher, "
        f"max_batch_size {opts.triton_batch}, max_queue_delay_microseconds "
        f"{opts.triton_delay_us}, {opts.triton_instances} model instance(s) (PyTriton's "
        "default preferred size: the max). Triton's queue delay is 0 because its batcher "
        "waits for the delay whenever a batch is not full, and with "
        f"{opts.concurrency} requests in flight a batch of {opts.triton_batch} never is: "
        "a delay only adds latency there (the closest to aios-fast's adaptive mode).",
        "",
        "Differences: Triton runs the model in PyTriton's Python callable (the Python "
        "backend stub hands each batch to the PyTriton process over shared memory and "
        "ZeroMQ): that is how PyPI's tritonserver serves a Python model, as aios-fast "
        "runs a Python Block. A batched Triton model cannot declare a per-row scalar, so "
        "its `class` output is INT64 [n, 1] where the block's is [n]. tasks/s, p50 and "
        "p99: perf_analyzer's, client side. CPU per task: utime + stime of all the "
        "system's processes over the whole perf_analyzer run, per request its server "
        "counted completed in that run. Before measuring, each answered 20 held-out images "
        f"in one ModelInfer: {a['accuracy']:.0%} (aios-fast) and {t['accuracy']:.0%} (Triton) "
        "right.",
    ]
    return "\n".join(lines) + "\n"


def main(opts, argv) -> int:
    try:
        res, ctx = run(opts)
    except Unavailable as exc:
        print(f"bench.protocols --peers: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # (both systems were stopped on the way out)
        print("bench.protocols --peers: interrupted", file=sys.stderr)
        return 130
    publish(SECTION, "bench.protocols", render(res, ctx, opts), opts.write, argv)
    if opts.quick:
        a, t = res["aios-fast"], res["Triton"]
        print(f"protocols peers tput_ratio {a['tasks_s'] / t['tasks_s']:.2f} "
              f"p99_ratio {a['p99_ms'] / t['p99_ms']:.2f}")  # fmt: skip
    return 0
