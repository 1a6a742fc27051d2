"""The original AIOSv1 data path, rebuilt for the executor benchmark's baseline.

As the original worked (../shared/DESIGN.md): a synchronous gRPC executor with
pure-Python protobuf LPUSHes each task's rpc_data to a Redis list and answers
message=true; one dispatcher thread in the instance BRPOPs, parses the packet, runs the
block (echo) and LPUSHes the output packet to the next list. Throughput end to end is
the rate at which outputs land in that list.

    python -m bench.original_system executor --port P --redis-port R
    python -m bench.original_system instance --redis-port R
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent import futures

os.environ["PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION"] = "python"  # as the original ran

TASKS = "block:tasks"
OUTPUTS = "block:outputs"


def executor(port: int, redis_port: int) -> None:
    import grpc
    import redis

    from aios_fast.protos import inference_pb2, inference_pb2_grpc

    client = redis.Redis(port=redis_port)

    class Proxy(inference_pb2_grpc.InferenceProxyServicer):
        def infer(self, request, context):
            client.lpush(TASKS, request.rpc_data)
            return inference_pb2.InferenceResponse(message=True)

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
    inference_pb2_grpc.add_InferenceProxyServicer_to_server(Proxy(), server)
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    print(json.dumps({"port": bound}), flush=True)
    server.wait_for_termination()


def instance(redis_port: int) -> None:
    import redis

    from aios_fast.protos import payload_pb2

    client = redis.Redis(port=redis_port)
    print(json.dumps({"ready": True}), flush=True)
    while True:
        item = client.brpop([TASKS], timeout=1)
        if item is None:
            continue
        packet = payload_pb2.AIOSPacket.FromString(item[1])
        out = payload_pb2.AIOSPacket(session_id=packet.session_id, seq_no=packet.seq_no,
                                     data=packet.data, ts=time.time())  # fmt: skip
        client.lpush(OUTPUTS, out.SerializeToString())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("role", choices=["executor", "instance"])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--redis-port", type=int, required=True)
    opts = parser.parse_args()
    if opts.role == "executor":
        executor(opts.port, opts.redis_port)
    else:
        instance(opts.redis_port)


if __name__ == "__main__":
    sys.exit(main())
