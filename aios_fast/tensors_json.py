"""The Open Inference Protocol's REST form at the instance (``wire.OIP_REST`` tasks):
a KServe v2 JSON inference request, with Triton's binary tensor extension, to an
``InferRequest`` and the block's outputs back to the JSON response. The executor only
frames the HTTP body (``oip.frame_rest``): it never parses it.

Binary extension: the body is the JSON header (``Inference-Header-Content-Length``
bytes) followed by the binary inputs, in order, each ``parameters.binary_data_size``
bytes (BYTES: 4-byte little-endian lengths before each element, as raw contents). An
output is answered binary when its ``parameters.binary_data`` (or the request's
``parameters.binary_data_output``) is true; the response then carries the header's
length the same way.
"""

from __future__ import annotations

import math
from typing import Any

import msgspec
import numpy as np

from .oip import InferRequest, InvalidTensor, ModelSpec, frame_rest, unframe_rest
from .tensors import (
    DATATYPES,
    check_complete,
    check_input,
    declared_inputs,
    from_raw,
    selected_outputs,
    to_raw,
)

__all__ = ["decode_json", "encode_json"]


def _flat(data: Any, name: str) -> list:
    out: list = []
    stack = [data]
    while stack:  # (nested lists, any depth: KServe allows both forms)
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(reversed(item))
        else:
            out.append(item)
    return out


def _from_data(data: Any, datatype: str, shape: tuple, name: str) -> np.ndarray:
    count = math.prod(shape)
    values = _flat(data, name)
    if len(values) != count:
        raise InvalidTensor(f"input '{name}': data holds {len(values)} values; "
                            f"{list(shape)} needs {count}")  # fmt: skip
    if datatype == "BYTES":
        array = np.empty(count, dtype=object)
        for i, v in enumerate(values):
            if not isinstance(v, str):
                raise InvalidTensor(f"input '{name}': BYTES data must be strings")
            array[i] = v.encode()
        return array
    try:
        return np.array(values, dtype=DATATYPES[datatype][0])
    except (TypeError, ValueError, OverflowError) as exc:
        raise InvalidTensor(f"input '{name}': data is not {datatype}: {exc}") from None


class _Tensor(msgspec.Struct):
    name: str
    datatype: str
    shape: list[int]
    parameters: dict[str, Any] = {}
    data: Any = None


class _Output(msgspec.Struct):
    name: str
    parameters: dict[str, Any] = {}


class _Request(msgspec.Struct):
    inputs: list[_Tensor]
    id: str = ""
    parameters: dict[str, Any] = {}
    outputs: list[_Output] = []


_request = msgspec.json.Decoder(_Request)


def decode_json(payload: bytes, spec: ModelSpec | None) -> tuple[InferRequest, dict[str, bool]]:
    """A ``frame_rest`` payload -> (the request, output name -> answered binary)."""
    length, body = unframe_rest(payload)
    try:
        req = _request.decode(body[:length])
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise InvalidTensor(f"bad inference request: {exc}") from None
    binary = body[length:]
    declared = declared_inputs(spec)
    inputs: dict[str, np.ndarray] = {}
    pos = 0
    for t in req.inputs:
        shape = check_input(t.name, t.datatype, t.shape, declared, inputs)
        size = t.parameters.get("binary_data_size")
        if size is not None:
            if not isinstance(size, int) or size < 0 or pos + size > len(binary):
                raise InvalidTensor(f"input '{t.name}': binary_data_size {size} is past the "
                                    f"{len(binary) - pos} binary bytes left")  # fmt: skip
            array = from_raw(binary[pos : pos + size], t.datatype, shape, t.name)
            pos += size
        elif t.data is None:
            raise InvalidTensor(f"input '{t.name}' has no data")
        else:
            array = _from_data(t.data, t.datatype, shape, t.name)
        inputs[t.name] = array.reshape(shape)
    if pos != len(binary):
        raise InvalidTensor(f"{len(binary) - pos} binary bytes after the last binary input")
    check_complete(declared, inputs)
    everything = bool(req.parameters.get("binary_data_output", False))
    wanted = {o.name: bool(o.parameters.get("binary_data", everything)) for o in req.outputs}
    params = {k: v for k, v in req.parameters.items() if k != "binary_data_output"}
    request = InferRequest(inputs, req.id, params, tuple(wanted))
    if not wanted and everything:
        wanted = {"*": True}
    return request, wanted


def encode_json(request: InferRequest, result: Any, spec: ModelSpec | None,
                binary: dict[str, bool]) -> bytes:  # fmt: skip
    """The block's result -> a ``frame_rest`` payload: the JSON response, then the
    binary outputs."""
    outputs, blobs = [], []
    for name, datatype, array in selected_outputs(request, result, spec):
        out: dict[str, Any] = {"name": name, "datatype": datatype, "shape": list(array.shape)}
        if binary.get(name, binary.get("*", False)):
            blob = to_raw(array, datatype)
            out["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        elif datatype == "BYTES":
            out["data"] = [bytes(v).decode(errors="replace") if not isinstance(v, str) else v
                           for v in array.reshape(-1)]  # fmt: skip
        else:
            out["data"] = array.astype(DATATYPES[datatype][0], copy=False).reshape(-1).tolist()
        outputs.append(out)
    header = msgspec.json.encode({
        "model_name": spec.name if spec is not None else "",
        "model_version": spec.version if spec is not None else "",
        "id": request.id, "outputs": outputs,
    })  # fmt: skip
    return frame_rest(len(header), header + b"".join(blobs))
