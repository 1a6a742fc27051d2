"""Tensors in the Block API: the Open Inference Protocol's ModelInferRequest as NumPy
arrays, and a block's outputs as a ModelInferResponse (run in the instance; the executor
never decodes tensors).

A block declares its tensors in the block document (``inputProtocol`` /
``outputProtocol``, each ``{"tensors": [{"name", "datatype", "shape"}, ...]}``; -1 in a
shape: any size), and the executor answers ModelMetadata from it (``ModelSpec``). An OIP
request reaches the block as an ``InferRequest`` (``on_data(entry)``, or its items in
``on_batch``): ``entry.inputs`` maps each input's name to a NumPy array that views the
request's ``raw_input_contents`` in place (no copy; read-only), or is built from its
typed ``contents``. BYTES tensors are object arrays of ``bytes``. The hook returns a
dict ``{output name: array-like}``, a list or tuple in the declared outputs' order, or
a lone array when one output is declared. ``stack`` / ``split`` batch requests along
the first dimension, as Triton's dynamic batcher does.

Bad input (a shape or datatype other than the declaration's, raw contents of the wrong
size, an unknown input or output) raises ``InvalidTensor``: the caller gets
INVALID_ARGUMENT (gRPC) or 400 (REST), the instance is not blamed.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .oip import CONTENTS, InferRequest, InvalidTensor, ModelSpec, skip_scalar, varint
from .protos import oip_pb2

__all__ = [
    "DATATYPES",
    "InferRequest",
    "InvalidTensor",
    "decode_request",
    "encode_response",
    "split",
    "stack",
]


# OIP datatype -> (NumPy dtype, InferTensorContents field), little-endian as the wire is
DATATYPES: dict[str, tuple[np.dtype, str | None]] = {
    name: (np.dtype(code), CONTENTS[name]) for name, code in (
        ("BOOL", "?"), ("UINT8", "u1"), ("UINT16", "<u2"), ("UINT32", "<u4"),
        ("UINT64", "<u8"), ("INT8", "i1"), ("INT16", "<i2"), ("INT32", "<i4"),
        ("INT64", "<i8"), ("FP16", "<f2"), ("FP32", "<f4"), ("FP64", "<f8"),
        ("BYTES", "O"))
}  # fmt: skip
_BY_DTYPE = {dtype: name for name, (dtype, _) in DATATYPES.items() if name != "BYTES"}


def datatype_of(array: np.ndarray) -> str:
    """The OIP datatype of a NumPy array (str/bytes/object arrays: BYTES)."""
    if array.dtype.kind in "OSU":
        return "BYTES"
    name = _BY_DTYPE.get(array.dtype.newbyteorder("<") if array.dtype.byteorder == ">"
                         else array.dtype)  # fmt: skip
    if name is None:
        raise InvalidTensor(f"outputs of dtype {array.dtype} have no OIP datatype")
    return name


# ---------------------------------------------------------------------- decoding


def _split_raw(frame: bytes) -> tuple[bytes, list[memoryview]]:
    """The request's bytes other than raw_input_contents (field 7: small, parsed by
    protobuf) and views of each raw_input_contents in ``frame`` (not copied). Runs of
    other fields are kept whole (serializers write field 7 last: one slice)."""
    view = memoryview(frame)
    rest: list[bytes | memoryview] = []
    raws: list[memoryview] = []
    pos, end, run = 0, len(frame), 0
    while pos < end:
        start = pos
        key = frame[pos]  # (one byte for fields 1-15: every field here)
        pos += 1
        if key >= 0x80:
            key, pos = varint(view, start)
        wire = key & 7
        if wire == 2:
            size = frame[pos] if pos < end else 0x80
            pos += 1
            if size >= 0x80:
                size, pos = varint(view, pos - 1)
            if pos + size > end:
                raise InvalidTensor("malformed ModelInferRequest: a field runs past its end")
            if key == 0x3A:  # field 7, length-delimited
                if start > run:
                    rest.append(view[run:start])
                raws.append(view[pos : pos + size])
                run = pos = pos + size
                continue
            pos += size
        else:
            pos = skip_scalar(view, pos, wire)
    if pos != end:
        raise InvalidTensor("malformed ModelInferRequest: a field runs past its end")
    if not raws:
        return frame, raws
    if run < end:
        rest.append(view[run:end])
    return b"".join(rest), raws


def _param(p: oip_pb2.InferParameter) -> Any:
    choice = p.WhichOneof("parameter_choice")
    return getattr(p, choice) if choice else None


def _bytes_elements(raw: memoryview, count: int, name: str) -> np.ndarray:
    """A BYTES tensor's raw form: each element a 4-byte little-endian length, then it."""
    out = np.empty(count, dtype=object)
    pos = 0
    for i in range(count):
        if pos + 4 > len(raw):
            raise InvalidTensor(f"input '{name}': raw contents hold {i} of {count} BYTES "
                                "elements")  # fmt: skip
        (size,) = struct.unpack_from("<I", raw, pos)
        pos += 4
        if pos + size > len(raw):
            raise InvalidTensor(f"input '{name}': BYTES element {i} runs past the raw contents")
        out[i] = bytes(raw[pos : pos + size])
        pos += size
    if pos != len(raw):
        raise InvalidTensor(f"input '{name}': raw contents hold {len(raw) - pos} bytes past "
                            f"its {count} BYTES elements")  # fmt: skip
    return out


def declared_inputs(spec: ModelSpec | None) -> dict:
    return {t.name: t for t in spec.inputs} if spec is not None else {}


def check_input(name: str, datatype: str, shape, declared: dict, seen: dict) -> tuple:
    """One input's datatype and shape, checked (against its declaration, if any)."""
    if datatype not in DATATYPES:
        raise InvalidTensor(f"input '{name}': unknown datatype {datatype!r}")
    shape = tuple(shape)
    if any(not isinstance(d, int) or d < 0 for d in shape):
        raise InvalidTensor(f"input '{name}': bad dimension in {list(shape)}")
    want = declared.get(name)
    if declared and want is None:
        raise InvalidTensor(f"unexpected input '{name}' (the model takes "
                            f"{', '.join(declared)})")  # fmt: skip
    if want is not None:
        want.check(datatype, shape, "input")
    if name in seen:
        raise InvalidTensor(f"input '{name}' given twice")
    return shape


def check_complete(declared: dict, inputs: dict) -> None:
    missing = [name for name in declared if name not in inputs]
    if missing:
        raise InvalidTensor(f"missing input(s) {', '.join(missing)}")


def from_raw(raw: memoryview, datatype: str, shape: tuple, name: str) -> np.ndarray:
    """A tensor's raw bytes as an array viewing them (BYTES: an object array)."""
    count = math.prod(shape)
    if datatype == "BYTES":
        return _bytes_elements(raw, count, name)
    dtype = DATATYPES[datatype][0]
    if len(raw) != count * dtype.itemsize:
        raise InvalidTensor(f"input '{name}': raw contents hold {len(raw)} bytes; "
                            f"{datatype} {list(shape)} needs {count * dtype.itemsize}")  # fmt: skip
    return np.frombuffer(raw, dtype=dtype)


def decode_request(frame: bytes, spec: ModelSpec | None = None) -> InferRequest:
    """A ModelInferRequest's bytes -> InferRequest, checked against ``spec``'s inputs."""
    head, raws = _split_raw(frame)
    try:
        req = oip_pb2.ModelInferRequest.FromString(head)
    except Exception as exc:  # protobuf's DecodeError
        raise InvalidTensor(f"malformed ModelInferRequest: {exc}") from None
    if raws and len(raws) != len(req.inputs):
        raise InvalidTensor(f"{len(raws)} raw_input_contents for {len(req.inputs)} inputs: "
                            "give each input its raw contents, or none")  # fmt: skip
    declared = declared_inputs(spec)
    inputs: dict[str, np.ndarray] = {}
    for i, t in enumerate(req.inputs):
        shape = check_input(t.name, t.datatype, t.shape, declared, inputs)
        count = math.prod(shape)
        if raws:
            array = from_raw(raws[i], t.datatype, shape, t.name)
        else:
            dtype, typed = DATATYPES[t.datatype]
            values = getattr(t.contents, typed) if typed else ()
            if len(values) != count:
                raise InvalidTensor(f"input '{t.name}': contents hold {len(values)} values; "
                                    f"{list(shape)} needs {count}")  # fmt: skip
            array = np.array(values, dtype=dtype) if count else np.empty(0, dtype=dtype)
        inputs[t.name] = array.reshape(shape)
    check_complete(declared, inputs)
    return InferRequest(inputs, req.id, {k: _param(v) for k, v in req.parameters.items()},
                        tuple(o.name for o in req.outputs), req.model_version)  # fmt: skip


# ---------------------------------------------------------------------- encoding


def named_outputs(result: Any, spec: ModelSpec | None) -> dict[str, Any]:
    declared = [t.name for t in spec.outputs] if spec is not None else []
    if isinstance(result, InferRequest):
        return dict(result.inputs)
    if isinstance(result, Mapping):
        return dict(result)
    if isinstance(result, (list, tuple)) and declared:
        if len(result) != len(declared):
            raise ValueError(f"the block returned {len(result)} outputs; the model "
                             f"declares {len(declared)}")  # fmt: skip
        return dict(zip(declared, result, strict=True))
    if isinstance(result, np.ndarray) and len(declared) <= 1:
        return {declared[0] if declared else "OUTPUT0": result}
    raise TypeError(f"an OIP task's output must be a dict of arrays (got {type(result).__name__})")


def to_raw(array: np.ndarray, datatype: str) -> bytes:
    if datatype != "BYTES":
        return np.ascontiguousarray(array, dtype=DATATYPES[datatype][0]).tobytes()
    parts = []
    for item in array.reshape(-1):
        data = item.encode() if isinstance(item, str) else bytes(item)
        parts.append(struct.pack("<I", len(data)))
        parts.append(data)
    return b"".join(parts)


def selected_outputs(request: InferRequest, result: Any,
                     spec: ModelSpec | None) -> list[tuple[str, str, np.ndarray]]:  # fmt: skip
    """(name, datatype, array) of each output the request asked for (none named: all);
    an output asked for but not produced is InvalidTensor."""
    named = named_outputs(result, spec)
    if request.outputs:
        unknown = [n for n in request.outputs if n not in named]
        if unknown:
            raise InvalidTensor(f"unknown output(s) {', '.join(unknown)} (the model gives "
                                f"{', '.join(named)})")  # fmt: skip
        named = {n: named[n] for n in request.outputs}
    declared = {t.name: t for t in spec.outputs} if spec is not None else {}
    out = []
    for name, value in named.items():
        array = np.asarray(value)
        want = declared.get(name)
        out.append((name, want.datatype if want is not None else datatype_of(array), array))
    return out


_ONE_BYTE = [bytes((i,)) for i in range(128)]


def _varint_bytes(value: int) -> bytes:
    if value < 0x80:
        return _ONE_BYTE[value]
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _ld(number: int, payload: bytes) -> bytes:
    """A length-delimited field (omitted when empty, as proto3 writes it)."""
    if not payload:
        return b""
    return _ONE_BYTE[(number << 3) | 2] + _varint_bytes(len(payload)) + payload


def _raw_view(array: np.ndarray, datatype: str) -> bytes | memoryview:
    """The raw contents of an output, without a copy where the array is already
    contiguous in the wire's dtype (BYTES: encoded)."""
    if datatype == "BYTES":
        return to_raw(array, datatype)
    contiguous = np.ascontiguousarray(array, dtype=DATATYPES[datatype][0])
    return contiguous.reshape(-1).view(np.uint8).data


def encode_response(request: InferRequest, result: Any, spec: ModelSpec | None) -> bytes:
    """The block's result -> ModelInferResponse bytes (every output raw, as Triton
    answers), written field by field: each output's bytes are copied once, into the
    answer."""
    parts = [_ld(1, spec.name.encode() if spec is not None else b""),
             _ld(2, spec.version.encode() if spec is not None else b""),
             _ld(3, request.id.encode())]  # fmt: skip
    raws: list[bytes | memoryview] = []
    for name, datatype, array in selected_outputs(request, result, spec):
        shape = b"".join(_varint_bytes(d) for d in array.shape)
        parts.append(_ld(5, _ld(1, name.encode()) + _ld(2, datatype.encode()) + _ld(3, shape)))
        raw = _raw_view(array, datatype)
        raws.append(b"\x32" + _varint_bytes(len(raw)))  # field 6, length-delimited
        raws.append(raw)
    return b"".join([*parts, *raws])


# ---------------------------------------------------------------------- batching


def stack(requests: Sequence[InferRequest]) -> dict[str, np.ndarray]:
    """Every request's inputs joined along the first dimension (Triton's dynamic
    batching: requests of shape [n_i, ...] make one [sum n_i, ...] batch)."""
    names = list(requests[0].inputs)
    return {n: np.concatenate([r.inputs[n] for r in requests]) for n in names}


def split(outputs: Mapping[str, Any], requests: Sequence[InferRequest]) -> list[dict]:
    """A batch's outputs cut back into each request's share (the first dimension of its
    first input says how many rows it brought), one dict per request, in order."""
    sizes = [len(next(iter(r.inputs.values()))) if r.inputs else 0 for r in requests]
    arrays = {n: np.asarray(v) for n, v in outputs.items()}
    for name, array in arrays.items():
        if array.ndim == 0 or len(array) != sum(sizes):
            raise ValueError(f"output '{name}' has {len(array) if array.ndim else 0} rows for "
                             f"the batch's {sum(sizes)}")  # fmt: skip
    result, start = [], 0
    for size in sizes:
        result.append({n: a[start : start + size] for n, a in arrays.items()})
        start += size
    return result


def _signature(request: InferRequest) -> tuple | None:
    """What requests must share to be stacked: input names, dtypes and all dimensions
    but the first (None: a request that cannot be stacked, e.g. a scalar input)."""
    sig = []
    for name, array in request.inputs.items():
        if array.ndim == 0:
            return None
        sig.append((name, array.dtype.str, array.shape[1:]))
    return tuple(sig) if sig else None


def merge(entries: Sequence[Any]) -> tuple[list, list[tuple[int, list[int]]]]:
    """A batch with its OIP requests stacked (``Block.stack_tensors``): requests of the
    same signature become one request whose inputs are joined along the first
    dimension; other entries stay as they are. Returns (the entries to run, the plan:
    for each, the positions in ``entries`` it stands for)."""
    groups: dict[tuple, list[int]] = {}
    plan: list[tuple[int, list[int]]] = []
    merged: list = []
    for i, entry in enumerate(entries):
        sig = _signature(entry) if isinstance(entry, InferRequest) else None
        if sig is None:
            plan.append((len(merged), [i]))
            merged.append(entry)
            continue
        if sig not in groups:
            groups[sig] = []
            plan.append((len(merged), groups[sig]))
            merged.append(None)  # (stacked below)
        groups[sig].append(i)
    for slot, members in plan:
        if merged[slot] is None:
            group = [entries[i] for i in members]
            merged[slot] = group[0] if len(group) == 1 else InferRequest(stack(group))
    return merged, plan


def unmerge(outputs: Sequence[Any], plan: list[tuple[int, list[int]]], entries: Sequence[Any],
            spec: ModelSpec | None) -> list:  # fmt: skip
    """``merge``'s inverse for the block's outputs: a stacked request's output is cut
    into each request's rows (``split``); an exception fails each request it stood for."""
    if len(outputs) != len(plan):
        raise ValueError(f"on_batch returned {len(outputs)} outputs for {len(plan)} entries")
    result: list = [None] * len(entries)
    for slot, members in plan:
        out = outputs[slot]
        if len(members) == 1:
            result[members[0]] = out
        elif isinstance(out, BaseException):
            for i in members:
                result[i] = out
        else:
            try:
                parts: list = split(named_outputs(out, spec), [entries[i] for i in members])
            except (ValueError, TypeError) as exc:  # the block's output does not fit: each fails
                parts = [exc] * len(members)
            for i, part in zip(members, parts, strict=True):
                result[i] = part
    return result
