"""perf_analyzer (Triton's load tool, from tritonclient's wheel, unchanged) runs against a
block for a few seconds, over OIP gRPC and OIP REST, and reports its throughput: it
reads the model's config (Triton's ModelConfig extension) and metadata first, then
sends tensors shaped as the block document declares."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from .procs import start_executor, start_instance

DOC = {
    "id": "echo",
    "initSettings": {"block": "aios_fast.block:EchoBlock"},
    "inputProtocol": {"tensors": [{"name": "x", "datatype": "FP32", "shape": [-1, 16]}]},
    "outputProtocol": {"tensors": [{"name": "x", "datatype": "FP32", "shape": [-1, 16]}]},
}


def _perf_analyzer() -> tuple[Path, dict]:
    """The binary beside this interpreter, and its environment (bench.protocols_peers
    finds both: the libcudart.so.12 it loads even without a GPU), or skip / fail."""
    from bench.protocols_peers import Unavailable, perf_analyzer

    problem = None
    try:
        binary, env = perf_analyzer()
        probe = subprocess.run([binary, "--version"], capture_output=True, text=True, env=env)
        if "error while loading shared libraries" in probe.stderr:
            problem = probe.stderr.strip()
    except Unavailable as exc:
        problem = str(exc)
    if problem:
        if os.environ.get("CI"):  # .ci/run installs what it needs: a failure there
            pytest.fail(problem)
        pytest.skip(problem)
    return Path(binary), env


@pytest.fixture(scope="module")
def block(tmp_path_factory):
    path = tmp_path_factory.mktemp("pa") / "echo.json"
    path.write_text(json.dumps(DOC))
    instance = start_instance("aios_fast.block:EchoBlock", None, "--block-doc", str(path))
    executor, port = start_executor({"i0": instance.info["port"]}, "--block-doc", str(path),
                                    "--http-port", "0")  # fmt: skip
    yield port, executor.info["http_port"]
    executor.stop()
    instance.stop()


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_perf_analyzer_measures_a_block(block, protocol):
    binary, env = _perf_analyzer()
    grpc_port, http_port = block
    url = f"127.0.0.1:{grpc_port if protocol == 'grpc' else http_port}"
    run = subprocess.run(
        [str(binary), "-m", "echo", "-u", url, "-i", protocol, "--shape", "x:2,16",
         "--measurement-interval", "1000", "--concurrency-range", "4", "--max-trials", "10",
         "--stability-percentage", "999"],  # a busy machine: report, do not insist
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    out = run.stdout + run.stderr
    assert run.returncode == 0, out[-2000:]
    throughput = re.search(r"Throughput: ([\d.]+) infer/sec", out)
    assert throughput and float(throughput.group(1)) > 0, out[-2000:]
