"""The Open Inference Protocol (KServe v2, Triton's ``inference.GRPCInferenceService``)
as the executor speaks it: the block is the model (``ModelSpec``: name = block id,
version and tensors from the block document), and a ModelInferRequest is routed without
decoding its tensors: ``route_fields`` reads only the model name, version and request id
(fields 1-3, skipping over everything else), the rest travels to an instance as the
caller's bytes (``wire.OIP``), which decodes it (``aios_fast.tensors``, NumPy).

Metadata calls (ServerLive, ServerReady, ModelReady, ServerMetadata, ModelMetadata) are
answered by the executor itself (``Answers``). Errors map to gRPC statuses: an unknown
model or version is NOT_FOUND, a malformed request or bad tensors INVALID_ARGUMENT, and
the rest as the seeds' API maps them (UNAVAILABLE, RESOURCE_EXHAUSTED, ...).
ModelStreamInfer answers each request with a ModelStreamInferResponse: the response
(field 2) or, for one that failed alone, its ``error_message`` (field 1), the stream
going on (Triton's behaviour).
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from . import __version__
from .errors import AiosFastError
from .protos import oip_pb2
from .settings import SettingsError

__all__ = [
    "CONTENTS",
    "Answers",
    "InferRequest",
    "InvalidTensor",
    "ModelSpec",
    "TensorSpec",
    "UnknownModel",
    "frame_rest",
    "route_fields",
    "stream_error",
    "stream_ok",
    "unframe_rest",
]

# OIP datatype -> its InferTensorContents field (FP16: raw contents only)
CONTENTS: dict[str, str | None] = {
    "BOOL": "bool_contents", "UINT8": "uint_contents", "UINT16": "uint_contents",
    "UINT32": "uint_contents", "UINT64": "uint64_contents", "INT8": "int_contents",
    "INT16": "int_contents", "INT32": "int_contents", "INT64": "int64_contents",
    "FP16": None, "FP32": "fp32_contents", "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}  # fmt: skip


class InvalidTensor(AiosFastError):
    """A request's bytes or tensors do not match the protocol or the block's declaration
    (INVALID_ARGUMENT; HTTP 400)."""


class UnknownModel(AiosFastError):
    """A model name or version this block is not (NOT_FOUND; HTTP 404)."""


@dataclass(frozen=True)
class TensorSpec:
    """One declared tensor: -1 in ``shape`` is any size in that dimension."""

    name: str
    datatype: str
    shape: tuple[int, ...]

    def check(self, datatype: str, shape, what: str) -> None:
        """InvalidTensor unless ``datatype`` and ``shape`` match this declaration."""
        if datatype != self.datatype:
            raise InvalidTensor(f"{what} '{self.name}': datatype {datatype}, expected "
                                f"{self.datatype}")  # fmt: skip
        if len(shape) != len(self.shape) or any(
            want not in (-1, got) for want, got in zip(self.shape, shape, strict=True)
        ):
            raise InvalidTensor(f"{what} '{self.name}': shape {list(shape)}, expected "
                                f"{list(self.shape)}")  # fmt: skip


def _specs(protocol: Any, where: str) -> tuple[TensorSpec, ...]:
    tensors = protocol.get("tensors", []) if isinstance(protocol, Mapping) else []
    specs = []
    for item in tensors:
        try:
            spec = TensorSpec(str(item["name"]), str(item["datatype"]),
                              tuple(int(d) for d in item["shape"]))  # fmt: skip
        except (KeyError, TypeError, ValueError) as exc:
            raise SettingsError(f"{where}.tensors: each needs name, datatype and shape "
                             f"({exc!r})") from None  # fmt: skip
        if spec.datatype not in CONTENTS:
            raise SettingsError(f"{where}.tensors '{spec.name}': unknown datatype "
                             f"{spec.datatype} (one of {', '.join(CONTENTS)})")  # fmt: skip
        specs.append(spec)
    return tuple(specs)


@dataclass(frozen=True)
class ModelSpec:
    """The block as an OIP model: name = block id; version = the document's
    ``component.version``, else the tag of its ``componentUri`` (after the last ':'),
    else "1"; the tensors its ``inputProtocol`` / ``outputProtocol`` declare
    (``{"tensors": [{"name", "datatype", "shape"}]}``; none: inputs are taken as they
    come and outputs named as the block returns them)."""

    name: str
    version: str = "1"
    inputs: tuple[TensorSpec, ...] = ()
    outputs: tuple[TensorSpec, ...] = ()
    platform: str = "aios-fast"

    @classmethod
    def from_document(cls, doc: Mapping | None, block_id: str = "block") -> ModelSpec:
        doc = doc or {}
        component = doc.get("component")
        version = component.get("version") if isinstance(component, Mapping) else None
        uri = str(doc.get("componentUri") or "")
        if not version and ":" in uri:
            version = uri.rsplit(":", 1)[1]
        return cls(str(doc.get("id") or block_id), str(version or "1"),
                   _specs(doc.get("inputProtocol"), "inputProtocol"),
                   _specs(doc.get("outputProtocol"), "outputProtocol"))  # fmt: skip

    def check(self, name: str, version: str) -> None:
        """UnknownModel unless (name, version) is this model ("" version: any)."""
        if name != self.name:
            raise UnknownModel(f"unknown model '{name}' (this block serves '{self.name}')")
        if version and version != self.version:
            raise UnknownModel(f"model '{name}' has no version '{version}' "
                               f"(it serves version '{self.version}')")  # fmt: skip

    def metadata(self) -> oip_pb2.ModelMetadataResponse:
        meta = oip_pb2.ModelMetadataResponse(name=self.name, versions=[self.version],
                                             platform=self.platform)  # fmt: skip
        for specs, out in ((self.inputs, meta.inputs), (self.outputs, meta.outputs)):
            for t in specs:
                out.add(name=t.name, datatype=t.datatype, shape=t.shape)
        return meta

    def config(self) -> oip_pb2.ModelConfigResponse:
        """Triton's ModelConfig extension (what perf_analyzer reads first): the declared
        tensors with their shapes as dims and max_batch_size 0 (the declared shapes are
        the whole shapes: a -1 first dimension is a variable one, not an implied batch)."""
        config = oip_pb2.ModelConfig(name=self.name, platform=self.platform,
                                     backend=self.platform, max_batch_size=0)  # fmt: skip
        for t in self.inputs:
            config.input.add(name=t.name, data_type=_CONFIG_TYPES[t.datatype], dims=t.shape)
        for t in self.outputs:
            config.output.add(name=t.name, data_type=_CONFIG_TYPES[t.datatype], dims=t.shape)
        return oip_pb2.ModelConfigResponse(config=config)

    def config_json(self) -> dict:
        """The REST form of ModelConfig (Triton's GET /v2/models/{name}/config)."""

        def tensors(specs) -> list[dict]:
            return [{"name": t.name, "data_type": f"TYPE_{_config_name(t.datatype)}",
                     "dims": list(t.shape)} for t in specs]  # fmt: skip

        return {"name": self.name, "platform": self.platform, "backend": self.platform,
                "max_batch_size": 0, "input": tensors(self.inputs),
                "output": tensors(self.outputs)}  # fmt: skip

    def metadata_json(self) -> dict:
        """The REST form of ModelMetadata."""
        return {
            "name": self.name, "versions": [self.version], "platform": self.platform,
            "inputs": [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape)}
                       for t in self.inputs],
            "outputs": [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape)}
                        for t in self.outputs],
        }  # fmt: skip


@dataclass
class InferRequest:
    """One OIP request as the block gets it: ``inputs`` name -> array (views of the
    request's bytes: read-only), ``id`` (answered back), ``parameters`` (plain values),
    ``outputs`` the output names asked for (empty: all)."""

    inputs: dict[str, Any]  # name -> numpy.ndarray
    id: str = ""
    parameters: dict[str, Any] = field(default_factory=dict)
    outputs: tuple[str, ...] = ()
    model_version: str = ""

    def __getitem__(self, name: str) -> Any:
        return self.inputs[name]


# ---------------------------------------------------------------------- routing


def varint(data: bytes | memoryview, pos: int) -> tuple[int, int]:
    """(value, position after it) of the protobuf varint at ``pos``."""
    result = shift = 0
    end = len(data)
    while pos < end:
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            break
    # (the words of the compiled route reader, _front.oip_route, its twin)
    raise InvalidTensor("malformed ModelInferRequest: bad varint")


def skip_scalar(data: bytes | memoryview, pos: int, wire: int) -> int:
    """The position after a field of wire type 0, 1 or 5 whose value starts at ``pos``
    (InvalidTensor for the group wire types, which the protocol never sends)."""
    if wire == 0:
        return varint(data, pos)[1]
    if wire == 1:
        return pos + 8
    if wire == 5:
        return pos + 4
    raise InvalidTensor(f"malformed ModelInferRequest: wire type {wire}")


def route_fields(frame: bytes) -> tuple[str, str, str]:
    """(model_name, model_version, id) of a ModelInferRequest, read without decoding
    it: fields are walked by their lengths and never copied but these three strings.
    InvalidTensor if the bytes are not a protobuf message."""
    found = ["", "", ""]
    pos, end = 0, len(frame)
    while pos < end:
        key, pos = varint(frame, pos)
        wire, number = key & 7, key >> 3
        if wire == 2:
            size, pos = varint(frame, pos)
            stop = pos + size
            if stop > end:
                raise InvalidTensor("malformed ModelInferRequest: a field runs past its end")
            if 1 <= number <= 3:
                try:
                    found[number - 1] = frame[pos:stop].decode()
                except UnicodeDecodeError:
                    raise InvalidTensor("malformed ModelInferRequest: a name is not "
                                        "UTF-8") from None  # fmt: skip
            pos = stop
        else:
            pos = skip_scalar(frame, pos, wire)
    if pos != end:
        raise InvalidTensor("malformed ModelInferRequest: a field runs past its end")
    return found[0], found[1], found[2]


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field (tag, length, bytes)."""
    size = len(payload)
    out = bytearray([(number << 3) | 2])
    while size >= 0x80:
        out.append((size & 0x7F) | 0x80)
        size >>= 7
    out.append(size)
    return bytes(out) + payload


def stream_ok(response: bytes) -> bytes:
    """A ModelStreamInferResponse carrying ``response`` (ModelInferResponse bytes),
    built around it without decoding it."""
    return _field(2, response)


def stream_error(message: str, request_id: str = "") -> bytes:
    """A ModelStreamInferResponse for a request that failed alone: its error message,
    and the request's id in ``infer_response`` (as Triton answers)."""
    out = oip_pb2.ModelStreamInferResponse(error_message=message)
    if request_id:
        out.infer_response.id = request_id
    return out.SerializeToString()


# ---------------------------------------------------------------------- REST framing

_LEN = struct.Struct("<I")


def frame_rest(header_length: int, body: bytes) -> bytes:
    """The task's payload: the JSON header's length, then the body as it came."""
    return _LEN.pack(header_length) + body


def unframe_rest(payload: bytes | memoryview) -> tuple[int, memoryview]:
    """(JSON header length, body) of a ``frame_rest`` payload (a task's or a result's)."""
    if len(payload) < 4:
        raise InvalidTensor("an OIP REST payload needs its header length")
    (length,) = _LEN.unpack_from(payload)
    body = memoryview(payload)[4:]
    if length > len(body):
        raise InvalidTensor(f"Inference-Header-Content-Length {length} is past the body's "
                            f"{len(body)} bytes")  # fmt: skip
    return length, body


# ---------------------------------------------------------------------- metadata calls


def _config_name(datatype: str) -> str:
    return "STRING" if datatype == "BYTES" else datatype


# OIP datatype -> Triton's model-config DataType (BYTES is its TYPE_STRING)
_CONFIG_TYPES = {d: oip_pb2.DataType.Value(f"TYPE_{_config_name(d)}") for d in CONTENTS}


class Answers:
    """The calls the executor answers itself: ``answer(rpc, request bytes, ready)`` ->
    the response bytes; UnknownModel or InvalidTensor for the caller's mistakes.
    ``ready``: the executor serves (not draining) and has an instance up."""

    EXTENSIONS = ("binary_tensor_data",)

    def __init__(self, model: ModelSpec) -> None:
        self.model = model
        self._metadata = model.metadata().SerializeToString()
        self._config = model.config().SerializeToString()
        self._server = oip_pb2.ServerMetadataResponse(
            name="aios-fast", version=__version__, extensions=self.EXTENSIONS
        ).SerializeToString()

    def answer(self, rpc: str, request: bytes, ready: bool) -> bytes:
        if rpc == "ServerLive":
            return oip_pb2.ServerLiveResponse(live=True).SerializeToString()
        if rpc == "ServerReady":
            return oip_pb2.ServerReadyResponse(ready=ready).SerializeToString()
        if rpc == "ServerMetadata":
            return self._server
        try:
            req = oip_pb2.ModelReadyRequest.FromString(request)  # ModelMetadataRequest: same
        except Exception as exc:  # protobuf's DecodeError
            raise InvalidTensor(f"malformed {rpc}Request: {exc}") from None
        if rpc == "ModelReady":
            try:
                self.model.check(req.name, req.version)
            except UnknownModel:
                return oip_pb2.ModelReadyResponse(ready=False).SerializeToString()
            return oip_pb2.ModelReadyResponse(ready=ready).SerializeToString()
        if rpc == "ModelMetadata":
            self.model.check(req.name, req.version)
            return self._metadata
        if rpc == "ModelConfig":  # (ModelConfigRequest: the same two fields)
            self.model.check(req.name, req.version)
            return self._config
        raise UnknownModel(f"unknown method {rpc}")
