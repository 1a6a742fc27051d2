"""The ONNX Runtime example block (``aios_fast.examples.onnx_digits``): the model is
built once (accuracy printed, and checked here on held-out data through ONNX Runtime)
and cached; inputs as JSON, a file tensor, a .npy file or a frame_ptr; hostile inputs
fail their own task only; batches form; the provider choice (CUDA when present); and
the example's block document end to end through ``aios-fast block up``, and the
same model over the Open Inference Protocol (tensors batched with JSON tasks; tritonclient)."""

from __future__ import annotations

import asyncio
import io
import json
import re
import signal
import subprocess
import sys
import time

import grpc
import pytest

pytest.importorskip("onnxruntime", reason="the ONNX example needs pip install 'aios-fast[onnx]'")
pytest.importorskip("sklearn", reason="the ONNX example needs pip install 'aios-fast[onnx]'")
pytest.importorskip("skl2onnx", reason="the ONNX example needs pip install 'aios-fast[onnx]'")

import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from aios_fast import codec
from aios_fast.errors import AiosFastError
from aios_fast.examples import onnx_digits
from aios_fast.framedb import FrameDB
from aios_fast.instance import InstanceServer

from .procs import ROOT, http, wait_serving

DOC = ROOT / "aios_fast" / "examples" / "onnx-digits-block.json"


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """The example's model (its default shape), built once for this module."""
    path = tmp_path_factory.mktemp("onnx") / "digits.onnx"
    hidden = json.loads(DOC.read_text())["parameters"]["hidden"]
    out = subprocess.run([sys.executable, "-m", "aios_fast.examples.onnx_digits",
                          "--model-path", str(path), "--hidden", ",".join(map(str, hidden))],
                         cwd=ROOT, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    assert "held-out accuracy" in out.stderr  # printed when built
    return path, hidden


def held_out():
    x, y = load_digits(return_X_y=True)
    _, x_test, _, y_test = train_test_split(x, y, test_size=0.25, random_state=0, stratify=y)
    return x_test.astype(np.float32), y_test


def test_model_is_accurate_on_held_out_data_and_cached(model, capsys):
    path, hidden = model
    block = onnx_digits.DigitsBlock(parameters={"model_path": str(path), "hidden": hidden})
    assert capsys.readouterr().err == ""  # found in the cache: not built again
    x, y = held_out()
    outs = block.on_batch(list(x))
    accuracy = np.mean([o["class"] == label for o, label in zip(outs, y, strict=True)])
    assert accuracy >= 0.9 and block.meta["accuracy"] == pytest.approx(accuracy)
    assert all(len(o["scores"]) == 10 and abs(sum(o["scores"]) - 1) < 1e-3 for o in outs)
    assert block.health()["provider"] == "CPUExecutionProvider"


def test_a_missing_model_is_rebuilt(tmp_path, capsys):
    path = tmp_path / "tiny.onnx"
    first, meta = onnx_digits.ensure_model([8], str(path))
    assert "built" in capsys.readouterr().err and first == path and meta["hidden"] == [8]
    path.unlink()
    onnx_digits.ensure_model([8], str(path))
    assert path.exists() and "built" in capsys.readouterr().err
    with pytest.raises(AiosFastError, match="hidden must be a list of layer sizes"):
        onnx_digits.ensure_model([0], str(path))
    with pytest.raises(AiosFastError, match="hidden must be a list"):
        onnx_digits.ensure_model("big", str(path))


def test_pixels_decode_from_every_input_form_and_hostile_ones_are_refused():
    image = np.arange(64, dtype=np.float32) % 17
    npy = io.BytesIO()
    np.save(npy, image.reshape(8, 8))
    forms = [
        {"pixels": image.tolist()},
        {"pixels": image.reshape(8, 8).tolist()},
        image.tolist(),
        image.astype("<f4").tobytes(),
        image.astype(np.uint8).tobytes(),
        npy.getvalue(),
    ]
    for form in forms:
        assert np.array_equal(onnx_digits.decode_pixels(form), image)
    objects = io.BytesIO()
    np.save(objects, np.array([{"x": 1}] * 64, dtype=object), allow_pickle=True)
    hostile = [
        ({"pixels": [1] * 63}, "64 pixels"),
        ({"pixels": [1] * 65}, "64 pixels"),
        ({"pixels": [True] * 64}, "expected"),
        ({"pixels": ["1"] * 64}, "expected"),
        ({"pixels": [float("nan")] * 64}, "finite and in 0..16"),
        ({"pixels": [17] * 64}, "finite and in 0..16"),
        ({"pixels": [-1] * 64}, "finite and in 0..16"),
        ({"image": [1] * 64}, "expected"),
        ([], "64 pixels"),
        (b"\x00" * 100, "not 100 bytes"),
        (b"\x93NUMPY garbage", "not a readable .npy"),
        (objects.getvalue(), "not a readable .npy"),  # pickles are never loaded
        (np.full(64, np.inf, dtype="<f4").tobytes(), "finite"),
    ]
    for value, message in hostile:
        with pytest.raises(ValueError, match=message):
            onnx_digits.decode_pixels(value)


def test_batches_form_and_bad_inputs_fail_only_their_task(model):
    path, hidden = model
    x, y = held_out()

    async def main():
        block = onnx_digits.DigitsBlock(parameters={"model_path": str(path), "hidden": hidden})
        frames = FrameDB({"local": "memory"})
        server = InstanceServer(block, frames=frames, batching={"maxBatchSize": 16})
        ptr = await frames.put(x[1].astype(np.uint8).tobytes())
        packets = [codec.Packet(session_id="d", seq_no=i, data=json.dumps(
            {"pixels": x[i].tolist()})) for i in range(40)]  # fmt: skip
        packets.append(codec.Packet(session_id="d", seq_no=40, data='{"pixels": [1, 2]}'))
        packets.append(codec.Packet(session_id="d", seq_no=41, data="not json"))
        packets.append(codec.Packet(session_id="d", seq_no=42, frame_ptr=ptr))
        tensor = codec.FileInfo(file_data=x[2].astype("<f4").tobytes())
        packets.append(codec.Packet(session_id="d", seq_no=43, files=[tensor]))
        outs = await asyncio.gather(*(server.run_packet(p) for p in packets),
                                    return_exceptions=True)  # fmt: skip
        stats = server.batcher.stats()
        await server.batcher.close()
        return outs, stats

    outs, stats = asyncio.run(main())
    classes = [json.loads(codec.decode_packet(o).data)["class"] for o in outs[:40]]
    assert np.mean(np.array(classes) == y[:40]) >= 0.9
    assert isinstance(outs[40], ValueError) and "64 pixels" in str(outs[40])
    assert isinstance(outs[41], ValueError) and "expected JSON" in str(outs[41])
    assert json.loads(codec.decode_packet(outs[42]).data)["class"] == classes[1]
    assert json.loads(codec.decode_packet(outs[43]).data)["class"] == classes[2]
    assert stats["items"] == 42 and stats["batches"] < 42  # batched, never over 16
    assert stats["batch_size"]["16.0"] == stats["batches"]


def test_oip_requests_batch_with_json_tasks_along_the_first_dimension(model):
    """OIP tensors (``pixels`` FP32 [n, 64]) and JSON tasks share the batches; each
    request gets its own rows back, as the document declares them."""
    from tritonclient.grpc import service_pb2 as triton

    from aios_fast.oip import InvalidTensor, ModelSpec

    path, hidden = model
    x, y = held_out()
    spec = ModelSpec.from_document(json.loads(DOC.read_text()))

    def oip(rows: np.ndarray) -> bytes:
        req = triton.ModelInferRequest(model_name="onnx-digits", id=f"r{len(rows)}")
        req.inputs.add(name="pixels", datatype="FP32", shape=rows.shape)
        req.raw_input_contents.append(rows.astype(np.float32).tobytes())
        return req.SerializeToString()

    async def main():
        block = onnx_digits.DigitsBlock(parameters={"model_path": str(path), "hidden": hidden})
        server = InstanceServer(block, batching={"maxBatchSize": 64}, model=spec)
        jsons = [server.run_packet(codec.Packet(data=json.dumps({"pixels": x[i].tolist()})))
                 for i in range(8)]  # fmt: skip
        tensors = [server.run_oip(oip(x[8:13])), server.run_oip(oip(x[13:14]))]
        bad = server.run_oip(oip(x[0:2, :32]))  # [2, 32]: not the declared [-1, 64]
        outs = await asyncio.gather(*jsons, *tensors, bad, return_exceptions=True)
        stats = server.batcher.stats()
        await server.batcher.close()
        return outs, stats

    outs, stats = asyncio.run(main())
    json_classes = [json.loads(codec.decode_packet(o).data)["class"] for o in outs[:8]]
    five, one = (triton.ModelInferResponse.FromString(o) for o in outs[8:10])
    assert [(o.name, o.datatype, list(o.shape)) for o in five.outputs] == [
        ("class", "INT64", [5]), ("scores", "FP32", [5, 10])]  # fmt: skip
    classes = [*json_classes, *np.frombuffer(five.raw_output_contents[0], np.int64),
               *np.frombuffer(one.raw_output_contents[0], np.int64)]  # fmt: skip
    assert np.mean(np.array(classes) == y[:14]) >= 0.85
    assert (five.id, five.model_name) == ("r5", "onnx-digits")
    assert isinstance(outs[10], InvalidTensor) and "shape [2, 32]" in str(outs[10])
    assert stats["items"] == 10 and stats["batches"] < 10  # the two kinds batched together


def test_cuda_is_chosen_only_when_present_and_visible(monkeypatch):
    import onnxruntime as ort

    monkeypatch.setattr(ort, "get_available_providers",
                        lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])  # fmt: skip
    monkeypatch.setattr("aios_fast.service.hardware.gpu_readings", lambda: [{"index": 0}])
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert onnx_digits.choose_providers(ort, None) == [
        "CUDAExecutionProvider", "CPUExecutionProvider"]  # fmt: skip
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # pinned to no GPU
    assert onnx_digits.choose_providers(ort, None) == ["CPUExecutionProvider"]
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    monkeypatch.setattr("aios_fast.service.hardware.gpu_readings", lambda: [])
    assert onnx_digits.choose_providers(ort, None) == ["CPUExecutionProvider"]
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CPUExecutionProvider"])
    with pytest.raises(AiosFastError, match="CUDAExecutionProvider not available"):
        onnx_digits.choose_providers(ort, ["CUDAExecutionProvider"])


def _document(model, tmp_path):
    """The example's block document, with the test's model file."""
    path, _ = model
    document = json.loads(DOC.read_text())
    document["parameters"]["model_path"] = str(path)
    doc_path = tmp_path / "digits.json"
    doc_path.write_text(json.dumps(document))
    return doc_path


def test_the_example_document_runs_with_block_up(model, tmp_path):
    doc_path = _document(model, tmp_path)
    proc = subprocess.Popen([sys.executable, "-m", "aios_fast", "block", "up", str(doc_path),
                             "--ports", "auto", "--json"], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    x, y = held_out()
    try:
        line = proc.stdout.readline()
        assert line, proc.stderr.read()[-3000:]
        info = json.loads(line)
        (instance,) = info["instances"].values()
        _, health = http(instance["health"])
        assert health["provider"] == "CPUExecutionProvider" and health["accuracy"] >= 0.9
        wait_serving(int(info["grpc"].rsplit(":", 1)[1]))  # the executor's link is up

        async def send():
            async with grpc.aio.insecure_channel(info["grpc"]) as ch:
                rpc = ch.unary_unary("/InferenceProxy/infer_result")
                tasks = [codec.Packet(session_id="t", seq_no=i,
                                      data=json.dumps({"pixels": x[i].tolist()}))
                         for i in range(100)]  # fmt: skip
                tensor = codec.FileInfo(file_data=x[0].astype(np.uint8).tobytes())
                tasks.append(codec.Packet(session_id="t", seq_no=100, files=[tensor]))
                tasks.append(codec.Packet(session_id="t", seq_no=101, data='{"pixels": "no"}'))
                return await asyncio.gather(*(rpc(codec.encode_message(t), timeout=30)
                                              for t in tasks), return_exceptions=True)  # fmt: skip

        outs = asyncio.run(send())
        failed = [(i, o) for i, o in enumerate(outs[:101]) if not isinstance(o, bytes)]
        assert not failed, failed[:3]
        answers = [json.loads(codec.decode_message(o).data) for o in outs[:101]]
        right = [a["class"] == label for a, label in zip(answers[:100], y[:100], strict=True)]
        accuracy = np.mean(right)
        assert accuracy >= 0.9
        assert answers[100]["class"] == answers[0]["class"]  # the uint8 file tensor
        assert outs[101].code() == grpc.StatusCode.INTERNAL
        assert "expected" in outs[101].details()
        # the same block through the Open Inference Protocol, with the real client
        import tritonclient.grpc as triton

        client = triton.InferenceServerClient(info["grpc"])
        meta = client.get_model_metadata("onnx-digits", as_json=True)
        assert [i["name"] for i in meta["inputs"]] == ["pixels"]
        pixels = triton.InferInput("pixels", [10, 64], "FP32")
        pixels.set_data_from_numpy(x[:10])
        result = client.infer("onnx-digits", [pixels])
        assert np.mean(result.as_numpy("class") == y[:10]) >= 0.8
        assert result.as_numpy("scores").shape == (10, 10)
        client.close()
        stats = {}
        token = json.loads(open(info["token_file"]).read())["token"]  # block up's own
        for _ in range(100):  # /stats is refreshed every second
            _, stats = http(instance["health"].removesuffix("/health") + "/stats", token=token)
            if stats.get("batching", {}).get("items", 0) >= 102:
                break
            time.sleep(0.05)
        assert stats["batching"]["items"] == 102  # (and the OIP request)
        assert stats["batching"]["settings"]["maxBatchSize"] == 64
        assert stats["batching"]["settings"]["maxConcurrentBatches"] == 2
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0


def test_block_up_traffic_sends_held_out_images_and_checks_the_agreement(model, tmp_path):
    """The newcomer's check of the real-model example: ``block up --traffic N --once``
    sends the block's held-out images (traffic_samples) and passes on its accuracy."""
    doc_path = _document(model, tmp_path)
    out = subprocess.run([sys.executable, "-m", "aios_fast", "block", "up", str(doc_path),
                          "--ports", "auto", "--traffic", "200", "--once"], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert "the block's 450 samples" in out.stdout  # the held-out quarter of 1,797 images
    found = re.search(r"agreement\s+([\d.]+) \((\d+) of (\d+) answers", out.stdout)
    assert found and int(found[3]) == 200 and float(found[1]) >= 0.9, out.stdout[-2000:]
    assert re.search(r"errors\s+0\n", out.stdout)
    samples = onnx_digits.held_out_samples()
    x, y = held_out()
    assert [json.loads(d)["pixels"] for d, _ in samples[:3]] == x[:3].astype(int).tolist()
    assert [e["class"] for _, e in samples] == y.tolist()
