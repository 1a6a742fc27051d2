"""The Open Inference Protocol in process (aios_fast.oip, aios_fast.tensors): requests
built by tritonclient's own protobuf messages are routed by three fields without being
decoded, decoded into NumPy arrays viewing the request's bytes, checked against the
block's declaration (datatype, shape, raw contents one byte short or long, unknown and
missing inputs), and the block's outputs encoded into a response tritonclient reads."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tritonclient.grpc import service_pb2 as triton

from aios_fast import tensors
from aios_fast.errors import AiosFastError
from aios_fast.oip import (
    Answers,
    InferRequest,
    InvalidTensor,
    ModelSpec,
    UnknownModel,
    route_fields,
    stream_error,
    stream_ok,
)

DOC = {
    "id": "echo",
    "componentUri": "model.echo:2.1",
    "inputProtocol": {"tensors": [{"name": "x", "datatype": "FP32", "shape": [-1, 4]},
                                  {"name": "n", "datatype": "INT64", "shape": [-1]}]},
    "outputProtocol": {"tensors": [{"name": "y", "datatype": "FP32", "shape": [-1, 4]}]},
}  # fmt: skip
SPEC = ModelSpec.from_document(DOC)


def request(x: np.ndarray, n: np.ndarray, raw: bool = True, **kw) -> triton.ModelInferRequest:
    req = triton.ModelInferRequest(model_name="echo", id="r1", **kw)
    for name, datatype, array in (("x", "FP32", x), ("n", "INT64", n)):
        t = req.inputs.add(name=name, datatype=datatype, shape=array.shape)
        if raw:
            req.raw_input_contents.append(array.tobytes())
        elif datatype == "FP32":
            t.contents.fp32_contents.extend(array.reshape(-1).tolist())
        else:
            t.contents.int64_contents.extend(array.reshape(-1).tolist())
    return req


X = np.arange(8, dtype=np.float32).reshape(2, 4)
N = np.array([5, -6], dtype=np.int64)


def test_the_document_declares_the_model():
    assert (SPEC.name, SPEC.version) == ("echo", "2.1")
    assert [(t.name, t.datatype, t.shape) for t in SPEC.inputs] == [
        ("x", "FP32", (-1, 4)), ("n", "INT64", (-1,))]  # fmt: skip
    meta = triton.ModelMetadataResponse.FromString(SPEC.metadata().SerializeToString())
    assert meta.versions == ["2.1"] and meta.outputs[0].shape == [-1, 4]
    assert ModelSpec.from_document({"id": "b", "component": {"version": "7"}}).version == "7"
    with pytest.raises(AiosFastError, match="unknown datatype FP33"):
        ModelSpec.from_document({"inputProtocol": {"tensors": [
            {"name": "x", "datatype": "FP33", "shape": [1]}]}})  # fmt: skip


def _readers():
    readers = [pytest.param(route_fields, id="py")]
    try:
        from aios_fast._front import oip_route

        readers.append(pytest.param(oip_route, id="c"))
    except ImportError:
        pass
    return readers


@pytest.mark.parametrize("read", _readers())
def test_routing_reads_three_fields_and_nothing_else(read):
    frame = request(X, N, model_version="2.1").SerializeToString()
    assert read(frame) == ("echo", "2.1", "r1")
    with pytest.raises(InvalidTensor, match="malformed"):
        read(frame[:-1])  # the last raw contents cut short: its length runs past
    with pytest.raises(InvalidTensor, match="wire type"):
        read(b"\x0f")
    with pytest.raises(InvalidTensor, match="not UTF-8"):
        read(b"\x0a\x01\xff")


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=64), st.integers(0, 80))
def test_the_compiled_route_reader_agrees_with_its_twin(data, cut):
    """Hypothesis: on any bytes (and on real requests cut anywhere) both readers answer
    the same fields or both refuse."""
    compiled = [p.values[0] for p in _readers()][1:]
    if not compiled:
        pytest.skip("the compiled module (aios_fast._front) is not built")
    real = request(X[:1], N[:1], model_version="v").SerializeToString()[:cut]
    for frame in (data, real):
        outcomes = []
        for read in (route_fields, compiled[0]):
            try:
                outcomes.append(read(frame))
            except InvalidTensor:
                outcomes.append("invalid")
        assert outcomes[0] == outcomes[1], frame
    with pytest.raises(UnknownModel, match="unknown model 'other'"):
        SPEC.check("other", "")
    with pytest.raises(UnknownModel, match="no version '3'"):
        SPEC.check("echo", "3")


@pytest.mark.parametrize("raw", [True, False], ids=["raw", "typed"])
def test_inputs_become_arrays_and_raw_ones_view_the_request(raw):
    frame = request(X, N, raw=raw).SerializeToString()
    req = tensors.decode_request(frame, SPEC)
    np.testing.assert_array_equal(req["x"], X)
    np.testing.assert_array_equal(req["n"], N)
    assert req.id == "r1" and req["x"].dtype == np.float32
    if raw:  # no copy: the array's memory is the request's own bytes
        assert not req["x"].flags.writeable
        assert np.shares_memory(req["x"], np.frombuffer(frame, dtype=np.uint8))


def test_raw_contents_are_found_wherever_they_sit_in_the_message():
    """Protobuf allows fields in any order (concatenated messages merge): raw contents
    between other fields are still paired with their inputs in order."""
    full = request(X, N)
    parts = [triton.ModelInferRequest(raw_input_contents=[full.raw_input_contents[0]]),
             triton.ModelInferRequest(model_name="echo", inputs=full.inputs),
             triton.ModelInferRequest(raw_input_contents=[full.raw_input_contents[1]]),
             triton.ModelInferRequest(id="mixed")]  # fmt: skip
    req = tensors.decode_request(b"".join(p.SerializeToString() for p in parts), SPEC)
    np.testing.assert_array_equal(req["x"], X)
    np.testing.assert_array_equal(req["n"], N)
    assert req.id == "mixed"


def test_raw_contents_one_byte_short_or_long_are_refused():
    req = request(X, N)
    good = req.raw_input_contents[0]
    req.raw_input_contents[0] = good[:-1]
    with pytest.raises(InvalidTensor, match="raw contents hold 31 bytes; FP32 \\[2, 4\\] needs 32"):
        tensors.decode_request(req.SerializeToString(), SPEC)
    req.raw_input_contents[0] = good + b"\0"
    with pytest.raises(InvalidTensor, match="hold 33 bytes"):
        tensors.decode_request(req.SerializeToString(), SPEC)


def test_the_declaration_refuses_other_shapes_datatypes_and_names():
    with pytest.raises(InvalidTensor, match="input 'x': shape \\[4, 2\\], expected \\[-1, 4\\]"):
        tensors.decode_request(request(X.reshape(4, 2), N).SerializeToString(), SPEC)
    with pytest.raises(InvalidTensor, match="input 'x': datatype FP64, expected FP32"):
        req = request(X, N)
        req.inputs[0].datatype = "FP64"
        tensors.decode_request(req.SerializeToString(), SPEC)
    req = request(X, N)
    del req.inputs[1]
    del req.raw_input_contents[1]
    with pytest.raises(InvalidTensor, match="missing input\\(s\\) n"):
        tensors.decode_request(req.SerializeToString(), SPEC)
    req.inputs.add(name="z", datatype="FP32", shape=[1])
    req.raw_input_contents.append(b"\0" * 4)
    with pytest.raises(InvalidTensor, match="unexpected input 'z'"):
        tensors.decode_request(req.SerializeToString(), SPEC)


def test_bytes_tensors_round_trip():
    words = np.array([b"ab", b"", "é".encode()], dtype=object)
    req = triton.ModelInferRequest(model_name="m", id="b")
    req.inputs.add(name="s", datatype="BYTES", shape=[3])
    req.raw_input_contents.append(tensors.to_raw(words, "BYTES"))
    got = tensors.decode_request(req.SerializeToString())
    assert got["s"].tolist() == [b"ab", b"", "é".encode()]
    req.raw_input_contents[0] = req.raw_input_contents[0][:-1]
    with pytest.raises(InvalidTensor, match="BYTES element 2 runs past"):
        tensors.decode_request(req.SerializeToString())
    out = triton.ModelInferResponse.FromString(tensors.encode_response(got, got.inputs, None))
    assert out.outputs[0].datatype == "BYTES" and out.id == "b"


def test_outputs_are_encoded_raw_as_triton_answers():
    req = tensors.decode_request(request(X, N).SerializeToString(), SPEC)
    data = tensors.encode_response(req, {"y": X * 2}, SPEC)
    out = triton.ModelInferResponse.FromString(data)
    assert (out.model_name, out.model_version, out.id) == ("echo", "2.1", "r1")
    assert [(o.name, o.datatype, list(o.shape)) for o in out.outputs] == [("y", "FP32", [2, 4])]
    np.testing.assert_array_equal(
        np.frombuffer(out.raw_output_contents[0], np.float32), (X * 2).ravel()
    )
    asked = InferRequest(req.inputs, "r1", outputs=("nope",))
    with pytest.raises(InvalidTensor, match="unknown output\\(s\\) nope"):
        tensors.encode_response(asked, {"y": X}, SPEC)


def test_empty_and_non_contiguous_outputs_keep_their_places():
    """Outputs are written field by field: an empty tensor still has its (empty) raw
    contents, so the next output's bytes stay paired with its own metadata; a strided
    or big-endian array is made contiguous little-endian first."""
    req = InferRequest({}, "e")
    big_endian = np.arange(3, dtype=">i8")
    strided = np.arange(8, dtype=np.float32).reshape(2, 4)[:, ::2]
    data = tensors.encode_response(req, {"empty": np.zeros((0, 4), np.float32),
                                         "b": big_endian, "s": strided}, None)  # fmt: skip
    out = triton.ModelInferResponse.FromString(data)
    assert [(o.name, o.datatype, list(o.shape)) for o in out.outputs] == [
        ("empty", "FP32", [0, 4]), ("b", "INT64", [3]), ("s", "FP32", [2, 2])]  # fmt: skip
    assert out.raw_output_contents[0] == b""
    assert np.frombuffer(out.raw_output_contents[1], "<i8").tolist() == [0, 1, 2]
    assert np.frombuffer(out.raw_output_contents[2], "<f4").tolist() == [0, 2, 4, 6]


def test_stack_and_split_batch_along_the_first_dimension():
    a = InferRequest({"x": np.zeros((2, 4), np.float32)})
    b = InferRequest({"x": np.ones((3, 4), np.float32)})
    batch = tensors.stack([a, b])
    assert batch["x"].shape == (5, 4)
    parts = tensors.split({"y": batch["x"][:, 0]}, [a, b])
    assert [p["y"].tolist() for p in parts] == [[0, 0], [1, 1, 1]]


def test_metadata_answers_and_stream_wrapping():
    answers = Answers(SPEC)
    live = triton.ServerLiveResponse.FromString(answers.answer("ServerLive", b"", False))
    assert live.live
    ask = triton.ModelReadyRequest(name="echo").SerializeToString()
    assert triton.ModelReadyResponse.FromString(answers.answer("ModelReady", ask, True)).ready
    other = triton.ModelReadyRequest(name="x").SerializeToString()
    assert not triton.ModelReadyResponse.FromString(answers.answer("ModelReady", other, True)).ready
    with pytest.raises(UnknownModel):
        answers.answer(
            "ModelMetadata", triton.ModelMetadataRequest(name="x").SerializeToString(), True
        )
    inner = triton.ModelInferResponse(id="q").SerializeToString()
    assert triton.ModelStreamInferResponse.FromString(stream_ok(inner)).infer_response.id == "q"
    err = triton.ModelStreamInferResponse.FromString(stream_error("INVALID_ARGUMENT: no", "q"))
    assert (err.error_message, err.infer_response.id) == ("INVALID_ARGUMENT: no", "q")


def test_the_router_runs_oip_tasks_with_the_same_books_and_retries():
    """In process over fake links (tests/fakes.py): an OIP task travels as link kind
    OIP, unread, is retried elsewhere when refused, and its answer is the instance's
    bytes as they came; an unknown model is refused before placement (counted
    invalid), a bad tensor at the instance fails alone with INVALID_ARGUMENT."""
    import grpc

    from aios_fast.executor.links import TaskFailed
    from aios_fast.executor.oip_run import OipRun
    from aios_fast.wire import OIP
    from tests.fakes import Upstream

    up = Upstream(2, max_retries=1)
    outcomes = []

    def run(frame: bytes) -> None:
        OipRun(up.router, SPEC, frame, None, lambda r, a, j: outcomes.append((a, j))).start()

    good = request(X, N).SerializeToString()
    up.link("i0").refuse_next = 1
    run(good)
    [(link, task)] = up.open_tasks()
    assert link.instance_id == "i1" and link.kinds == [OIP] and task.frame is good
    link.finish(task, b"response bytes")
    assert outcomes.pop() == (b"response bytes", None)
    other = request(X, N)
    other.model_name = "nope"
    run(other.SerializeToString())
    _, reject = outcomes.pop()
    assert reject.code == grpc.StatusCode.NOT_FOUND and not up.open_tasks()
    run(good)
    [(link, task)] = up.open_tasks()
    link.finish(task, exc=TaskFailed("bad tensor", grpc.StatusCode.INVALID_ARGUMENT))
    assert outcomes.pop()[1].code == grpc.StatusCode.INVALID_ARGUMENT
    stats = up.router.stats
    assert (stats["received"], stats["invalid"], stats["completed"], stats["failed"],
            stats["retried"]) == (3, 1, 1, 1, 1)  # fmt: skip
    assert up.router.books() == {"received": 0, "accepted": 0} and up.router.inflight == 0


def test_stack_tensors_gives_on_batch_one_request_of_all_rows():
    """``Block.stack_tensors``: requests of one signature reach on_batch as one stacked
    request (Triton's dynamic batching), packets beside them as they are; each request
    gets its own rows back, and a block output of the wrong row count fails them."""
    import asyncio

    from aios_fast import codec
    from aios_fast.block import Block
    from aios_fast.instance import InstanceServer

    seen: list = []

    class Doubler(Block):
        stack_tensors = True

        def on_batch(self, entries):
            seen.append([e["x"].shape if isinstance(e, InferRequest) else "packet"
                         for e in entries])  # fmt: skip
            return [{"y": e["x"] * 2} if isinstance(e, InferRequest) else e.data
                    for e in entries]  # fmt: skip

    spec = ModelSpec("echo", inputs=SPEC.inputs[:1])

    def frame(rows: int, start: float) -> bytes:
        req = triton.ModelInferRequest(model_name="echo")
        x = np.arange(start, start + rows * 4, dtype=np.float32).reshape(rows, 4)
        req.inputs.add(name="x", datatype="FP32", shape=x.shape)
        req.raw_input_contents.append(x.tobytes())
        return req.SerializeToString()

    async def main():
        batching = {"mode": "delay", "maxBatchSize": 3, "maxQueueDelayMs": 50}
        server = InstanceServer(Doubler(), batching=batching, model=spec)
        outs = await asyncio.gather(server.run_oip(frame(2, 0)), server.run_oip(frame(3, 100)),
                                    server.run_packet(codec.Packet(data="p")))  # fmt: skip
        await server.batcher.close()
        return outs

    two, three, packet = asyncio.run(main())
    assert seen == [[(5, 4), "packet"]]  # one request of 2 + 3 rows, and the packet
    rows = [np.frombuffer(triton.ModelInferResponse.FromString(o).raw_output_contents[0],
                          np.float32).reshape(-1, 4) for o in (two, three)]  # fmt: skip
    assert rows[0].tolist() == (np.arange(8).reshape(2, 4) * 2).tolist()
    assert rows[1][:, 0].tolist() == [200, 208, 216]
    assert codec.decode_packet(packet).data == "p"
    a, b = InferRequest({"x": np.zeros((2, 4))}), InferRequest({"x": np.zeros((1, 4))})
    merged, plan = tensors.merge([a, b])
    assert len(merged) == 1 and merged[0]["x"].shape == (3, 4)
    out = tensors.unmerge([{"y": np.zeros((2, 1))}], plan, [a, b], None)  # 2 rows for 3
    assert all(isinstance(o, ValueError) and "2 rows for the batch's 3" in str(o) for o in out)
