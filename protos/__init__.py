"""The seeds' client example imports ``from protos import inference_pb2, ...``: this
package, installed with aios-fast (``make setup`` / ``pip install``), makes that import work
from any directory, unchanged. The generated modules live in ``aios_fast.protos``."""

from aios_fast.protos import inference_pb2, inference_pb2_grpc, payload_pb2

__all__ = ["inference_pb2", "inference_pb2_grpc", "payload_pb2"]
