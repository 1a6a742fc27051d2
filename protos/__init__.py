"""Lets the seeds' client example (``from protos import inference_pb2, ...``) run unchanged
from the repository root. The generated modules live in ``aios_fast.protos``."""

from aios_fast.protos import inference_pb2, inference_pb2_grpc, payload_pb2

__all__ = ["inference_pb2", "inference_pb2_grpc", "payload_pb2"]
