"""The Triton peer of ``python -m bench.protocols --peers``: a real tritonserver (the one
PyPI's ``nvidia-pytriton`` ships) serving the ONNX digits model through PyTriton, with
Triton's dynamic batcher on. Run by the bench with an interpreter that has
``nvidia-pytriton`` and ``onnxruntime`` (not necessarily the project's own: pytriton
pins numpy<2, protobuf<7 and tritonclient>=2.50, which the project's test tools do not
allow), never imported by the project.

    python bench/triton_peer.py --model-path M.onnx --grpc-port P --http-port Q
           --metrics-port R [--max-batch-size 64] [--max-queue-delay-us 0]
           [--instances 1] [--threads 1]

The model is the same ONNX file the aios-fast block serves (``onnx_digits``), run with
ONNX Runtime in the inference callable (one session per model instance, as many
intra-op threads as the block's ``threads``), with the block document's tensors:
input ``pixels`` FP32 [n, 64], outputs ``class`` INT64 [n] and ``scores`` FP32 [n, 10]
(Triton's dims leave out the batch dimension: [64], [1] and [10]; a batched Triton
model cannot declare a per-row scalar, so ``class`` answers [n, 1] where the block's is
[n]). Everything binds 127.0.0.1. Once serving it prints one JSON line (its ports and
Triton's version) and waits for SIGTERM or SIGINT, then stops tritonserver and its
Python backend stubs.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import urllib.request


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-path", required=True)
    parser.add_argument("--model-name", default="onnx-digits")
    parser.add_argument("--grpc-port", type=int, required=True)
    parser.add_argument("--http-port", type=int, required=True)
    parser.add_argument("--metrics-port", type=int, required=True)
    parser.add_argument("--max-batch-size", type=int, default=64)
    parser.add_argument("--max-queue-delay-us", type=int, default=0)
    parser.add_argument("--instances", type=int, default=1, help="model instances")
    parser.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads")
    opts = parser.parse_args(argv)

    import numpy as np
    import onnxruntime as ort
    from pytriton.decorators import batch
    from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
    from pytriton.triton import (
        DEFAULT_PROTECTED_ENDPOINTS,
        Triton,
        TritonConfig,
        TritonSecurityConfig,
    )

    def make_callable():
        options = ort.SessionOptions()
        options.intra_op_num_threads = opts.threads
        options.inter_op_num_threads = 1
        session = ort.InferenceSession(opts.model_path, options,
                                       providers=["CPUExecutionProvider"])  # fmt: skip
        name = session.get_inputs()[0].name

        @batch
        def infer(pixels):
            labels, scores = session.run(None, {name: pixels.astype(np.float32, copy=False)})
            return {"class": labels.astype(np.int64, copy=False).reshape(-1, 1),
                    "scores": scores.astype(np.float32, copy=False)}  # fmt: skip

        return infer

    # tritonserver inherits stdout and logs there: the announce line keeps the original
    # stdout to itself, everything else goes to stderr
    announce = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    config = TritonConfig(grpc_address="127.0.0.1", grpc_port=opts.grpc_port,
                          http_address="127.0.0.1", http_port=opts.http_port,
                          metrics_address="127.0.0.1", metrics_port=opts.metrics_port,
                          log_verbose=0)  # fmt: skip
    # perf_analyzer reads the model's statistics (server-side timings): PyTriton guards
    # them with a generated token by default; the other endpoints stay guarded
    open_stats = [e for e in DEFAULT_PROTECTED_ENDPOINTS if e != "statistics"]
    triton = Triton(config=config, security_config=TritonSecurityConfig(
        restricted_endpoints=open_stats))  # fmt: skip
    try:
        triton.bind(
            model_name=opts.model_name,
            infer_func=[make_callable() for _ in range(opts.instances)],
            inputs=[Tensor(name="pixels", dtype=np.float32, shape=(64,))],
            outputs=[Tensor(name="class", dtype=np.int64, shape=(1,)),
                     Tensor(name="scores", dtype=np.float32, shape=(10,))],
            config=ModelConfig(batching=True, max_batch_size=opts.max_batch_size,
                               batcher=DynamicBatcher(
                                   max_queue_delay_microseconds=opts.max_queue_delay_us)),
        )  # fmt: skip
        triton.run()
        url = f"http://127.0.0.1:{opts.http_port}/v2"
        with urllib.request.urlopen(url, timeout=10) as resp:
            version = json.loads(resp.read()).get("version", "?")
        print(json.dumps({"grpc_port": opts.grpc_port, "http_port": opts.http_port,
                          "triton_version": version, "model": opts.model_name}),
              file=announce, flush=True)  # fmt: skip
        while not stop.wait(1.0):
            if not triton.is_alive():
                print("triton_peer: tritonserver exited", file=sys.stderr, flush=True)
                return 1
    finally:
        triton.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
