"""Built-in vDAG node policies (``policyRuleURI: "builtin:<name>"``), written to the
seeds' AIOSv1PolicyRule interface like a user's.

- ``builtin:route_by_score`` (post-processing): conditional routing on a score in the
  node's JSON output. ``parameters``: ``field`` (default ``"scores"``: a list, its
  maximum is taken; or a number), ``threshold`` (default 0.9), ``below`` and ``above``
  (the next nodes' labels to fire when the score is below the threshold, or at or
  above it; default: every next node), ``keep`` (fields of the node's *input* to copy
  into the output, e.g. ``["pixels"]``, so a second model downstream gets them).
"""

from __future__ import annotations

import json
from typing import Any

__all__ = ["BUILTINS", "RouteByScore"]


class RouteByScore:
    DEFAULT_PARAMETERS = {"field": "scores", "threshold": 0.9}

    def __init__(self, rule_id: str, settings: dict, parameters: dict) -> None:
        self.settings = settings
        threshold = parameters.get("threshold", 0.9)
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)):
            raise ValueError(f"route_by_score: threshold must be a number, not {threshold!r}")

    def eval(self, parameters: dict, input_data: dict, context: dict) -> Any:
        packet = input_data["packet"]
        data = json.loads(packet.data)
        value = data.get(parameters.get("field", "scores"))
        score = max(value) if isinstance(value, list) and value else value
        if isinstance(score, bool) or not isinstance(score, (int, float)):
            raise ValueError(f"route_by_score: output field {parameters.get('field')!r} "
                             f"holds no score: {value!r}")  # fmt: skip
        below = score < parameters.get("threshold", 0.9)
        fire = parameters.get("below" if below else "above", input_data["next"])
        keep = parameters.get("keep") or []
        if keep and input_data.get("input") is not None:
            source = json.loads(input_data["input"].data)
            data.update({k: source[k] for k in keep if k in source})
            packet = packet.replace(data=json.dumps(data))
        return {"packet": packet, "next": list(fire)}


BUILTINS: dict[str, type] = {"builtin:route_by_score": RouteByScore}
