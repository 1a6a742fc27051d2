"""The digits vDAG example: a real pipeline over the ONNX Runtime digits classifier
(``aios_fast.examples.onnx_digits``; needs the ``[onnx]`` extra).

``examples/vdag/digits.json`` (outer) and ``digits-ensemble.json`` (a sub-vDAG, used as
a nested node)::

    normalize --> [ensemble: classifier --(score < 0.98)--> second --+
                             classifier --------------------------> combine ]

- ``normalize`` (``Normalize``): checks the image (64 pixels, 0..16, as JSON) and
  answers it clipped and rounded, or fails the task naming the node;
- ``classifier``: the MLP (hidden 256, 256); its post-processing policy
  (``builtin:route_by_score``) sends images it is not sure of (top probability below
  the threshold) to ``second`` as well, with their pixels, and always to ``combine``;
- ``second``: another MLP (hidden 64), a second opinion;
- ``combine`` (``Combine``, the fan-in): the mean of the answers it got (one or two):
  ``{"class", "scores", "models"}``.

``aios-fast vdag up aios_fast/examples/vdag/digits.json --vdags
aios_fast/examples/vdag/digits-ensemble.json --blocks aios_fast/examples/vdag/digits-*.json
--traffic 450 --once`` sends the held-out images (``samples``) and checks the answers
against their labels (at least 90% right to pass).
"""

from __future__ import annotations

import json
from typing import Any

from ..block import Block
from .onnx_digits import decode_pixels, held_out_samples

__all__ = ["Combine", "Normalize", "samples"]


class Normalize(Block):
    inline = True

    def on_data(self, entry) -> Any:
        pixels = decode_pixels(json.loads(entry.data))  # ValueError: the task fails here
        return {"pixels": [round(float(p), 3) for p in pixels]}


class Combine(Block):
    inline = True

    def on_data(self, entry) -> Any:
        answers = [a for a in json.loads(entry.data).values() if isinstance(a, dict)]
        scores = [sum(col) / len(answers) for col in zip(*(a["scores"] for a in answers),
                                                         strict=True)]  # fmt: skip
        best = max(range(len(scores)), key=scores.__getitem__)
        return {"class": best, "scores": [round(s, 6) for s in scores], "models": len(answers)}


def samples(parameters: dict) -> list[tuple[str, dict]]:
    """``vdag up --traffic``: the held-out images with their labels."""
    return held_out_samples()
