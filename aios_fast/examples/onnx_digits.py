"""An ONNX Runtime block serving a real classifier: handwritten digits (8x8 images,
scikit-learn's ``load_digits``), an MLP trained with scikit-learn and converted with
skl2onnx. Needs the ``[onnx]`` extra: ``pip install 'aios-fast[onnx]'``.

The model is built once and cached: at ``parameters.model_path`` if given, else under
``$XDG_CACHE_HOME/aios-fast`` (``~/.cache/aios-fast``), named after its shape; a
missing model is rebuilt (a lock keeps instances starting together from building it
twice), and the build prints its accuracy on the held-out quarter of the data set.
``python -m aios_fast.examples.onnx_digits [--model-path P] [--hidden 256,256]`` builds
(or finds) it and prints where it is and its accuracy.

Open Inference Protocol (``aios_fast.tensors``): input ``pixels`` FP32 [n, 64] (n images
per request), outputs ``class`` INT64 [n] and ``scores`` FP32 [n, 10], as the example
document (onnx-digits-block.json) declares in ``inputProtocol`` / ``outputProtocol``;
requests are batched with the JSON tasks, along the first dimension.

Input, one image per task: JSON ``{"pixels": [64 numbers]}`` (or 8 rows of 8, or the
bare list), or a tensor in the packet's first file or behind its ``frame_ptr``: 64
uint8 or 64 float32 (little-endian) values, or a ``.npy`` file of 64 values. Pixel
intensities are 0..16 (as the data set's). Output: ``{"class": 0..9, "scores": [10
probabilities]}``. Tasks run in batches (``on_batch``; see the block document's
``initSettings.batching``). With onnxruntime-gpu and a visible GPU it runs on CUDA
(``health`` says which provider it uses). ``aios-fast block up ... --traffic N`` sends
the held-out images (``traffic_samples``) and passes when at least 90% of the answers
are their labels.

Parameters: ``model_path``, ``hidden`` (hidden layer sizes, default [256, 256]),
``epochs`` (training passes at most, default 60),
``threads`` (ONNX Runtime intra-op threads, default 1), ``providers`` (a list, default:
CUDA first when available, then CPU).
"""

from __future__ import annotations

import argparse
import fcntl
import io
import json
import math
import os
import sys
from pathlib import Path
from typing import Any

from ..block import Block
from ..errors import AiosFastError

__all__ = [
    "DigitsBlock",
    "choose_providers",
    "decode_pixels",
    "ensure_model",
    "held_out_samples",
    "model_path",
]

MODEL_VERSION = 1
DEFAULT_HIDDEN = (256, 256)
EPOCHS = 60  # training passes at most (it stops earlier once the loss settles)
_NPY_MAGIC = b"\x93NUMPY"


def _onnx_modules():
    try:
        import numpy as np
        import onnxruntime as ort
    except ImportError as exc:
        raise AiosFastError(
            f"the ONNX example needs onnxruntime: pip install 'aios-fast[onnx]' ({exc})"
        ) from None
    return np, ort


def model_path(hidden=DEFAULT_HIDDEN, path: str | None = None, epochs: int = EPOCHS) -> Path:
    """Where the model lives: ``path``, or the user cache dir, named after its shape."""
    if path:
        return Path(path).expanduser()
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "aios-fast"
    shape = "x".join(str(h) for h in hidden) + (f"-e{epochs}" if epochs != EPOCHS else "")
    return cache / f"digits-mlp-{shape}-v{MODEL_VERSION}.onnx"


def _check_hidden(hidden) -> tuple[int, ...]:
    if (
        not isinstance(hidden, (list, tuple))
        or not hidden
        or not all(
            isinstance(h, int) and not isinstance(h, bool) and 1 <= h <= 8192 for h in hidden
        )
    ):
        raise AiosFastError(f"onnx_digits: hidden must be a list of layer sizes in 1..8192, "
                            f"not {hidden!r}")  # fmt: skip
    return tuple(hidden)


def _build(path: Path, hidden: tuple[int, ...], epochs: int) -> dict:
    try:
        import onnxruntime as ort
        from skl2onnx import to_onnx
        from sklearn.datasets import load_digits
        from sklearn.exceptions import ConvergenceWarning
        from sklearn.model_selection import train_test_split
        from sklearn.neural_network import MLPClassifier
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler
    except ImportError as exc:
        raise AiosFastError(
            "building the ONNX example model needs scikit-learn, skl2onnx and onnxruntime: "
            f"pip install 'aios-fast[onnx]' ({exc})"
        ) from None
    import warnings

    x_train, x_test, y_train, y_test = _split(load_digits, train_test_split)
    mlp = MLPClassifier(hidden, max_iter=epochs, random_state=0, early_stopping=False)
    model = make_pipeline(StandardScaler(), mlp)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # a few dozen epochs do here
        model.fit(x_train, y_train)
    onx = to_onnx(model, x_train[:1], options={id(mlp): {"zipmap": False}},
                  target_opset=17)  # fmt: skip
    blob = onx.SerializeToString()
    # The accuracy of the converted model itself, through ONNX Runtime.
    session = ort.InferenceSession(blob, providers=["CPUExecutionProvider"])
    labels = session.run(None, {session.get_inputs()[0].name: x_test})[0]
    accuracy = float((labels == y_test).mean())
    meta = {"accuracy": accuracy, "test_images": len(y_test), "train_images": len(y_train),
            "hidden": list(hidden), "version": MODEL_VERSION}  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    tmp.write_bytes(blob)
    os.replace(tmp, path)
    _meta_path(path).write_text(json.dumps(meta))
    print(f"onnx_digits: built {path} (MLP {'x'.join(map(str, hidden))}, "
          f"{len(y_train):,} training images): held-out accuracy {accuracy:.3f} "
          f"on {len(y_test)} images", file=sys.stderr, flush=True)  # fmt: skip
    return meta


def _split(load_digits, train_test_split):
    """The data set, float32, split as the model was trained: the held-out quarter is
    the same every time (stratified, seeded)."""
    x, y = load_digits(return_X_y=True)
    return train_test_split(x.astype("float32"), y, test_size=0.25, random_state=0, stratify=y)


def held_out_samples() -> list[tuple[str, dict]]:
    """The held-out images as task data (``{"pixels": [...]}``) with their labels."""
    try:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split
    except ImportError as exc:
        raise AiosFastError(
            f"the ONNX example's sample tasks need scikit-learn: pip install 'aios-fast[onnx]' "
            f"({exc})"
        ) from None
    _, x_test, _, y_test = _split(load_digits, train_test_split)
    return [(json.dumps({"pixels": [int(p) for p in image]}), {"class": int(label)})
            for image, label in zip(x_test, y_test, strict=True)]  # fmt: skip


def _meta_path(path: Path) -> Path:
    return path.with_name(path.name + ".json")


def ensure_model(hidden=DEFAULT_HIDDEN, path: str | None = None,
                 epochs: int = EPOCHS) -> tuple[Path, dict]:  # fmt: skip
    """The model's path and its metadata (accuracy ...), building it if missing."""
    hidden = _check_hidden(hidden)
    if isinstance(epochs, bool) or not isinstance(epochs, int) or not 1 <= epochs <= 1000:
        raise AiosFastError(f"onnx_digits: epochs must be an integer in 1..1000, not {epochs!r}")
    where = model_path(hidden, path, epochs)
    try:
        where.parent.mkdir(parents=True, exist_ok=True)
        with open(where.with_name(where.name + ".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # instances starting together build it once
            try:
                if where.exists() and _meta_path(where).exists():
                    return where, json.loads(_meta_path(where).read_text())
                return where, _build(where, hidden, epochs)
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)
    except OSError as exc:
        raise AiosFastError(
            f"onnx_digits: cannot build or read the model at {where}: {exc}"
        ) from None


def decode_pixels(value: Any):
    """One 8x8 image (64 values in 0..16) as float32, from JSON data or tensor bytes;
    ValueError with the reason otherwise."""
    np, _ = _onnx_modules()
    if isinstance(value, (bytes, bytearray, memoryview)):
        raw = bytes(value)
        if raw.startswith(_NPY_MAGIC):
            try:
                array = np.load(io.BytesIO(raw), allow_pickle=False)
            except Exception as exc:
                raise ValueError(f"not a readable .npy tensor: {exc}") from None
            if array.dtype.kind not in "uif":
                raise ValueError(f"a .npy tensor must hold numbers, not {array.dtype}")
        elif len(raw) == 256:
            array = np.frombuffer(raw, dtype="<f4")
        elif len(raw) == 64:
            array = np.frombuffer(raw, dtype=np.uint8)
        else:
            raise ValueError(f"a tensor must be 64 uint8 or 64 float32 values (an 8x8 image) "
                             f"or a .npy file, not {len(raw)} bytes")  # fmt: skip
    else:
        if isinstance(value, dict):
            value = value.get("pixels")
        if isinstance(value, list) and value and all(isinstance(r, list) for r in value):
            value = [p for row in value for p in row]
        if not isinstance(value, list) or not all(
            isinstance(p, (int, float)) and not isinstance(p, bool) for p in value
        ):
            raise ValueError('expected {"pixels": [64 numbers]} (an 8x8 image, values 0..16)')
        array = np.asarray(value, dtype=np.float64)
    if array.size != 64:
        raise ValueError(f"an image has 64 pixels (8x8), not {array.size}")
    array = array.reshape(64).astype(np.float32)
    if not np.isfinite(array).all() or array.min() < 0 or array.max() > 16:
        raise ValueError("pixel values must be finite and in 0..16")
    return array


def choose_providers(ort, asked) -> list[str]:
    available = ort.get_available_providers()
    if asked is not None:
        if not isinstance(asked, list) or not asked:
            raise AiosFastError(f"onnx_digits: providers must be a non-empty list, not {asked!r}")
        missing = [p for p in asked if p not in available]
        if missing:
            raise AiosFastError(f"onnx_digits: provider(s) {', '.join(map(str, missing))} not "
                                f"available (available: {', '.join(available)})")  # fmt: skip
        return asked
    chosen = ["CPUExecutionProvider"]
    if "CUDAExecutionProvider" in available and _gpu_visible():
        chosen.insert(0, "CUDAExecutionProvider")
    return chosen


def _gpu_visible() -> bool:
    """A GPU this process may use (CUDA_VISIBLE_DEVICES, when set, names at least one)."""
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return False
    from ..service.hardware import gpu_readings

    return bool(gpu_readings())


class DigitsBlock(Block):
    """Classifies 8x8 handwritten digits with an ONNX Runtime session, in batches."""

    traffic_min_agreement = 0.9  # the model's held-out accuracy is about 0.98

    def __init__(self, init_data: dict | None = None, parameters: dict | None = None) -> None:
        super().__init__(init_data, parameters)
        np, ort = _onnx_modules()
        self._np = np
        threads = self.parameters.get("threads", 1)
        if isinstance(threads, bool) or not isinstance(threads, int) or not 0 <= threads <= 256:
            raise AiosFastError(f"onnx_digits: threads must be an integer in 0..256 "
                                f"(0: ONNX Runtime's default), not {threads!r}")  # fmt: skip
        hidden = self.parameters.get("hidden", list(DEFAULT_HIDDEN))
        self.model, self.meta = ensure_model(hidden, self.parameters.get("model_path"),
                                             self.parameters.get("epochs", EPOCHS))  # fmt: skip
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        providers = choose_providers(ort, self.parameters.get("providers"))
        self.session = ort.InferenceSession(str(self.model), options, providers=providers)
        self._input = self.session.get_inputs()[0].name

    async def on_preprocess(self, packet) -> Any:
        """The task's image as 64 float32 (cheap: runs on the event loop)."""
        if packet.frame_ptr:
            return decode_pixels(await self.frames.get(packet.frame_ptr))
        if packet.files:
            return decode_pixels(packet.files[0].file_data)
        try:
            value = json.loads(packet.data)
        except ValueError:
            raise ValueError('expected JSON {"pixels": [64 numbers]} or a tensor file') from None
        return decode_pixels(value)

    def on_batch(self, entries: list) -> list:
        """One model run for the batch: JSON tasks bring one image each, OIP requests
        (``InferRequest``: ``pixels`` FP32 [n, 64]) n images each, stacked along the
        first dimension and cut back into each request's rows."""
        from ..tensors import InferRequest

        np = self._np
        parts = [e.inputs["pixels"] if isinstance(e, InferRequest) else e[None, :]
                 for e in entries]  # fmt: skip
        images = parts[0] if len(parts) == 1 else np.concatenate(parts)
        labels, scores = self.session.run(
            None, {self._input: images.astype(np.float32, copy=False)}
        )
        # Whole-array conversions: formatting each score in Python cost more than the
        # small model itself (and holds the GIL the event loop needs).
        rows = scores.astype(np.float64).round(6).tolist()
        classes = labels.tolist()
        out, start = [], 0
        for entry, part in zip(entries, parts, strict=True):
            n = len(part)
            if isinstance(entry, InferRequest):
                out.append({"class": labels[start : start + n].astype(np.int64),
                            "scores": scores[start : start + n]})  # fmt: skip
            else:
                out.append({"class": classes[start], "scores": rows[start]})
            start += n
        return out

    def on_data(self, entry) -> Any:
        return self.on_batch([entry])[0]

    @classmethod
    def traffic_samples(cls, parameters: dict) -> list[tuple[str, dict | None]]:
        """``block up --traffic``: held-out images (never trained on), each with its
        label as the expected class."""
        return list(held_out_samples())

    def health(self) -> dict:
        return {"healthy": True, "provider": self.session.get_providers()[0],
                "model": str(self.model), "accuracy": self.meta["accuracy"]}  # fmt: skip


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Build (or find) the ONNX digits model.")
    parser.add_argument("--model-path", help="default: the user cache dir")
    parser.add_argument("--hidden", default=",".join(map(str, DEFAULT_HIDDEN)),
                        help="hidden layer sizes, comma-separated")  # fmt: skip
    parser.add_argument("--epochs", type=int, default=EPOCHS, help="training passes, at most")
    opts = parser.parse_args(argv)
    try:
        hidden = [int(h) for h in opts.hidden.split(",")]
        path, meta = ensure_model(hidden, opts.model_path, opts.epochs)
    except (AiosFastError, ValueError) as exc:
        print(f"onnx_digits: {exc}", file=sys.stderr)
        return 2
    print(f"{path}: held-out accuracy {meta['accuracy']:.3f} on {meta['test_images']} images")
    return 0 if not math.isnan(meta["accuracy"]) else 1


if __name__ == "__main__":
    sys.exit(main())
