"""What ``aios-fast block up --traffic`` sends to a block: the block class's own sample
tasks (``Block.traffic_samples(parameters)``, see ``aios_fast.block``), checked, and the
share of answers that must match them (``traffic_min_agreement``)."""

from __future__ import annotations

import importlib
import json

from ..errors import AiosFastError

__all__ = ["traffic_plan"]


def traffic_plan(spec: str, parameters: dict) -> tuple[list | None, float]:
    """What ``--traffic`` sends to the block class ``spec`` ("module:Class"): its
    ``traffic_samples(parameters)`` checked (None: it has none), and the share of
    checked answers that must match (``traffic_min_agreement``). AiosFastError, one
    line, when the hook fails or returns something else than documented."""
    module, _, name = spec.partition(":")
    where = f"block class {spec!r}"
    try:
        cls = getattr(importlib.import_module(module), name, None) if name else None
    except ImportError as exc:
        raise AiosFastError(f"{where}: {exc}") from None
    if cls is None:
        raise AiosFastError(f"{where}: {module} has no {name or 'class named after a colon'}")
    hook = getattr(cls, "traffic_samples", None)
    floor = getattr(cls, "traffic_min_agreement", 1.0)
    if isinstance(floor, bool) or not isinstance(floor, (int, float)) or not 0 <= floor <= 1:
        raise AiosFastError(f"{where}: traffic_min_agreement must be a number in 0..1, "
                            f"not {floor!r}")  # fmt: skip
    if hook is None:
        return None, float(floor)
    try:
        samples = hook(dict(parameters))
    except AiosFastError as exc:
        raise AiosFastError(f"{where}: traffic_samples(): {exc}") from None
    except Exception as exc:
        raise AiosFastError(f"{where}: traffic_samples() raised "
                            f"{type(exc).__name__}: {exc}") from None  # fmt: skip
    if samples is None:
        return None, float(floor)
    return _checked_samples(samples, where), float(floor)


def _checked_samples(samples, where: str) -> list[tuple[str, dict | None]]:
    shape = "a non-empty list of (data, expected) pairs: data a string, expected None or a dict"
    if not isinstance(samples, (list, tuple)) or not samples:
        raise AiosFastError(f"{where}: traffic_samples() must return {shape}, "
                            f"not {_brief(samples)}")  # fmt: skip
    checked = []
    for n, sample in enumerate(samples):
        if not isinstance(sample, (list, tuple)) or len(sample) != 2:
            raise AiosFastError(f"{where}: traffic_samples() must return {shape}; item {n} "
                                f"is {_brief(sample)}")  # fmt: skip
        data, expected = sample
        if not isinstance(data, str):
            raise AiosFastError(f"{where}: traffic_samples() item {n}: data must be a string, "
                                f"not {type(data).__name__}")  # fmt: skip
        if expected is not None:
            if not isinstance(expected, dict) or not all(isinstance(k, str) for k in expected):
                raise AiosFastError(f"{where}: traffic_samples() item {n}: expected must be "
                                    f"None or a dict of output fields, not "
                                    f"{_brief(expected)}")  # fmt: skip
            try:  # what a JSON answer can carry (and what the clients can be handed)
                expected = json.loads(json.dumps(expected, allow_nan=False))
            except (TypeError, ValueError) as exc:
                raise AiosFastError(f"{where}: traffic_samples() item {n}: expected is not "
                                    f"JSON data ({exc})") from None  # fmt: skip
        checked.append((data, expected))
    return checked


def _brief(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
