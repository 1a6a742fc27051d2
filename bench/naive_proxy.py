"""Baseline for the executor benchmark: the obvious grpc.aio + protobuf proxy.

Parses every InferenceMessage and AIOSPacket into protobuf objects, picks an instance
round robin, forwards a unary infer_result through a protobuf stub and returns the
reply. ``python -m bench.naive_proxy --port P --instance HOST:PORT [...]``
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json

import grpc

from aios_fast.protos import inference_pb2, payload_pb2


async def serve(port: int, targets: list[str]) -> None:
    channels = [grpc.aio.insecure_channel(t) for t in targets]
    stubs = [
        ch.unary_unary(
            "/InferenceProxy/infer_result",
            request_serializer=inference_pb2.InferenceMessage.SerializeToString,
            response_deserializer=inference_pb2.InferenceMessage.FromString,
        )
        for ch in channels
    ]
    turn = itertools.cycle(stubs)

    async def infer_result(request, context):
        packet = payload_pb2.AIOSPacket.FromString(request.rpc_data)
        if not packet.session_id:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "no session_id")
        return await next(turn)(request)

    server = grpc.aio.server()
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                "InferenceProxy",
                {
                    "infer_result": grpc.unary_unary_rpc_method_handler(
                        infer_result,
                        request_deserializer=inference_pb2.InferenceMessage.FromString,
                        response_serializer=inference_pb2.InferenceMessage.SerializeToString,
                    )
                },
            ),
        )
    )
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    print(json.dumps({"port": bound}), flush=True)
    await server.wait_for_termination()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--instance", action="append", required=True)
    opts = parser.parse_args()
    import uvloop

    uvloop.install()
    asyncio.run(serve(opts.port, opts.instance))


if __name__ == "__main__":
    main()
