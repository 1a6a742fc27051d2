"""The auto-scaler sidecar (seeds: "Block Auto-scaler", management port 10000).

Every ``interval`` seconds: instances whose process ended are taken out of the executor;
below ``min_instances`` it starts the missing ones; otherwise it runs the block's
``autoscaler`` policy with ``{"block_data", "cluster_data", "metrics", "instances",
"min_instances", "max_instances"}`` (metrics: ``{"block_metrics": <executor stats>,
"cluster_metrics": {}}``, also what ``settings["get_metrics"]()`` returns) and acts on
its answer, as the seeds define it:

- ``{"skip": True}``: nothing;
- ``{"operation": "upscale", "instances_count": n}``: start n instances (the actuator)
  and add them to the executor, never past ``max_instances`` nor past what the actuator
  has room for (``capacity()``, when it has one: a GPU-pinning actuator places new
  instances on free GPUs only);
- ``{"operation": "downscale", "instances_list": [ids]}``: drain each in the executor
  (in-flight tasks finish), remove it, stop it; never below ``min_instances``, and only
  instances this scaler's actuator started.

Built-in policies: ``builtin:none`` (always skip) and ``builtin:target`` (``TargetPolicy``:
instances enough for ``target_inflight`` tasks each, plus a latency target).

Extra management actions: ``scale`` [operation, instances_count | instances_list] (a
manual decision, through the same bounds) and ``set_bounds`` [min_instances,
max_instances].
"""

from __future__ import annotations

import math
import time
from typing import Any

import msgspec

from ..service.http import MgmtError, convert
from .base import ExecutorCallError, Sidecar

__all__ = ["AutoScaler", "TargetPolicy"]


class SkipPolicy:
    """``builtin:none``."""

    def __init__(self, rule_id, settings, parameters):
        pass

    def eval(self, parameters, input_data, context):
        return {"skip": True}


class TargetPolicy:
    """``builtin:target``: scale to keep about ``target_inflight`` tasks per instance.

    Load is the larger of the tasks in flight now and Little's law over the last round
    (tasks accepted per second x mean seconds per task), so a short pause between bursts
    does not read as idle. Upscales at once to ceil(load / target_inflight) (and by one
    more while the mean task latency exceeds ``target_latency_s``, when set); downscales
    one instance (the least loaded) per round, only after ``scale_down_after`` rounds in
    a row that wanted fewer instances.
    """

    DEFAULT_PARAMETERS = {"target_inflight": 4.0, "target_latency_s": None, "scale_down_after": 3}

    def __init__(self, rule_id, settings, parameters):
        self.settings = settings

    def eval(self, parameters, input_data, context):
        stats = input_data["metrics"]["block_metrics"]
        instances = input_data["instances"]
        n = len(instances)
        now = time.monotonic()
        total = stats["latency"]["total"]
        sample = (
            now,
            stats["tasks"]["accepted"],
            total["count"],
            (total["mean_s"] or 0.0) * total["count"],
        )
        prev, context["prev"] = context.get("prev"), sample
        load = float(stats["inflight"])
        mean_latency = None
        if prev is not None and sample[0] > prev[0]:
            rate = (sample[1] - prev[1]) / (sample[0] - prev[0])
            done = sample[2] - prev[2]
            if done > 0:
                mean_latency = (sample[3] - prev[3]) / done
                load = max(load, rate * mean_latency)
        desired = max(1, math.ceil(load / float(parameters["target_inflight"])))
        target_latency = parameters.get("target_latency_s")
        if target_latency and mean_latency is not None and mean_latency > target_latency:
            desired = max(desired, n + 1)
        context["load"], context["desired"] = load, desired
        if desired > n:
            context["low_rounds"] = 0
            return {"skip": False, "operation": "upscale", "instances_count": desired - n}
        if desired < n:
            context["low_rounds"] = context.get("low_rounds", 0) + 1
            if context["low_rounds"] >= int(parameters["scale_down_after"]):
                context["low_rounds"] = 0
                idle = min(instances, key=lambda row: row["inflight"])
                return {"skip": False, "operation": "downscale", "instances_list": [idle["id"]]}
        else:
            context["low_rounds"] = 0
        return {"skip": True}


class _Decision(msgspec.Struct):
    operation: str
    instances_count: int = 0
    instances_list: list[str] = []
    skip: bool = False


class _Bounds(msgspec.Struct):
    min_instances: int
    max_instances: int


class AutoScaler(Sidecar):
    name = "auto-scaler"
    BUILTINS = {"none": SkipPolicy, "target": TargetPolicy}

    def __init__(
        self,
        executor_url: str,
        actuator,
        *,
        min_instances: int = 1,
        max_instances: int = 1,
        interval: float = 10.0,
        drain_timeout: float = 30.0,
        hard_max: int | None = None,
        **kw,
    ) -> None:
        super().__init__(executor_url, interval=interval, **kw)
        self._check_bounds(min_instances, max_instances)
        self.actuator = actuator
        self.min_instances = min_instances
        self.max_instances = max_instances
        # set_bounds can never go past this (the block document's maxInstances, or the
        # operator's --max-instances): management cannot start unbounded processes
        self.hard_max = max_instances if hard_max is None else hard_max
        self.drain_timeout = drain_timeout
        self.upscaled = self.downscaled = 0
        self.actions["scale"] = self.scale
        self.actions["set_bounds"] = self.set_bounds

    @staticmethod
    def _check_bounds(low: int, high: int) -> None:
        if low < 0 or high < max(low, 1):
            raise ValueError(
                f"auto-scaler: need 0 <= min_instances <= max_instances and "
                f"max_instances >= 1, not {low}..{high}"
            )

    # ------------------------------------------------------------------ acting

    async def upscale(self, count: int) -> list[str]:
        specs = await self.actuator.start(count)
        added = []
        for spec in specs:
            try:
                await self.executor.call(
                    "add_instance", {k: spec[k] for k in ("id", "target", "health")}
                )
            except ExecutorCallError as exc:
                self.log.error("started %s but the executor refused it: %s", spec["id"], exc)
                await self.actuator.stop(spec["id"])
                continue
            added.append(spec["id"])
        self.upscaled += len(added)
        if added:
            self.log.info("upscaled: %s", ", ".join(added))
        return added

    async def downscale(self, ids: list[str]) -> list[str]:
        removed = []
        for iid in ids:
            try:
                await self.executor.call(
                    "remove_instance", {"id": iid, "drain": True, "timeout": self.drain_timeout}
                )
            except ExecutorCallError as exc:
                if exc.status != 404:
                    self.log.error("could not remove %s: %s", iid, exc)
                    continue
            await self.actuator.stop(iid)
            removed.append(iid)
        self.downscaled += len(removed)
        if removed:
            self.log.info("downscaled: %s", ", ".join(removed))
        return removed

    async def apply(self, decision: Any, instances: list[dict]) -> dict:
        """Act on a policy's (or an operator's) decision within the bounds."""
        if not isinstance(decision, dict):
            raise ValueError(f"expected a dict, got {decision!r}")
        if decision.get("skip", False) is True or not decision:
            return {"operation": "skip"}
        try:
            d = msgspec.convert(decision, _Decision)
        except msgspec.ValidationError as exc:
            raise ValueError(f"bad decision {decision!r}: {exc}") from None
        n = len(instances)
        if d.operation == "upscale":
            count = min(d.instances_count, self.max_instances - n)
            room = self._room()
            if room is not None:
                count = min(count, room)
            if d.instances_count < 1:
                raise ValueError(f"upscale needs instances_count >= 1: {decision!r}")
            added = await self.upscale(count) if count > 0 else []
            return {
                "operation": "upscale",
                "asked": d.instances_count,
                "added": added,
                "bounded": count < d.instances_count,
            }
        if d.operation == "downscale":
            known = {row["id"] for row in instances}
            owned = [
                iid
                for iid in dict.fromkeys(d.instances_list)
                if iid in known and iid in self.actuator.procs
            ]
            allowed = owned[: max(0, n - self.min_instances)]
            removed = await self.downscale(allowed) if allowed else []
            return {
                "operation": "downscale",
                "asked": d.instances_list,
                "removed": removed,
                "bounded": len(allowed) < len(d.instances_list),
            }
        raise ValueError(f"unknown operation {d.operation!r} (upscale or downscale)")

    def _room(self) -> int | None:
        """How many more instances the actuator can place (None: no limit of its own)."""
        capacity = getattr(self.actuator, "capacity", None)
        return capacity() if capacity is not None else None

    async def _instances(self) -> list[dict]:
        stats = await self.executor.call("stats")
        self.latest_metrics = {"block_metrics": stats, "cluster_metrics": {}}
        return list(stats["instances"].values())

    async def round(self) -> dict:
        for iid in self.actuator.reap():  # crashed or killed: out of the balancer
            try:
                await self.executor.call("remove_instance", {"id": iid, "drain": False})
            except ExecutorCallError as exc:
                if exc.status != 404:
                    raise
        instances = await self._instances()
        n = len(instances)
        if n < self.min_instances:
            room = self._room()
            missing = self.min_instances - n
            added = await self.upscale(missing if room is None else min(missing, room))
            return {
                "instances": n,
                "operation": "upscale",
                "reason": "below min_instances",
                "added": added,
            }
        if n > self.max_instances:
            ordered = sorted(instances, key=lambda row: row["inflight"])
            return {
                "instances": n,
                "reason": "above max_instances",
                **await self.apply(
                    {
                        "operation": "downscale",
                        "instances_list": [row["id"] for row in ordered][: n - self.max_instances],
                    },
                    instances,
                ),
            }
        decision = await self.evaluate(
            {
                "block_data": self.block_data,
                "cluster_data": self.cluster_data,
                "metrics": self.latest_metrics,
                "instances": instances,
                "min_instances": self.min_instances,
                "max_instances": self.max_instances,
            }
        )
        if decision is None:  # the policy raised (counted)
            return {"instances": n, "operation": "skip", "reason": "policy failed"}
        try:
            outcome = await self.apply(decision, instances)
        except ValueError as exc:
            self.policy_errors += 1
            self.last_error = f"policy {self.rule.rule_id} answered badly: {exc}"
            self.log.error("%s", self.last_error)
            return {"instances": n, "operation": "skip", "reason": self.last_error}
        return {"instances": n, **outcome}

    # ------------------------------------------------------------------ management

    def status(self, data: dict) -> dict:
        return {
            **super().status(data),
            "min_instances": self.min_instances,
            "max_instances": self.max_instances,
            "upscaled": self.upscaled,
            "downscaled": self.downscaled,
            "local_instances": sorted(self.actuator.procs),
            # the Kubernetes actuator's scale, API retries and last error
            **({"actuator": self.actuator.status()} if hasattr(self.actuator, "status") else {}),
            **(
                {"gpus": dict(self.actuator.gpus.assigned)}
                if getattr(self.actuator, "gpus", None) is not None
                else {}
            ),
        }

    async def scale(self, data: dict) -> dict:
        async with self._lock:
            instances = await self._instances()
            try:
                return await self.apply(data, instances)
            except ValueError as exc:
                raise MgmtError(f"scale: {exc}") from None

    def set_bounds(self, data: dict) -> dict:
        req = convert(data, _Bounds, "set_bounds")
        try:
            self._check_bounds(req.min_instances, req.max_instances)
        except ValueError as exc:
            raise MgmtError(str(exc)) from None
        if req.max_instances > self.hard_max:
            raise MgmtError(f"set_bounds: max_instances {req.max_instances} is over the "
                            f"hard cap {self.hard_max} (the block document's maxInstances)",
                            403)  # fmt: skip
        self.min_instances, self.max_instances = req.min_instances, req.max_instances
        return {"min_instances": self.min_instances, "max_instances": self.max_instances}
