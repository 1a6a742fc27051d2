"""Load balancing: built-in policies (compiled, or the pure twin) and user policies.

``make_balancer(spec, instances)`` builds the balancer a block document asks for in
``policies.loadBalancer`` ({"policyRuleURI", "parameters", "settings"}):

- ``builtin:<name>`` (or an empty URI, meaning ``builtin:round_robin``): one of
  ``BUILTINS``, with ``parameters`` as its keyword arguments (unknown keys are an error);
- anything else: a user ``AIOSv1PolicyRule`` (see ``aios_fast.policy``) wrapped in a
  ``PolicyBalancer``, which falls back to a built-in policy (``settings.fallbackPolicy``,
  default round_robin) whenever the user policy raises or returns no valid instance.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from ._select import load
from .errors import LBConfigError, NoInstanceError, PolicyError
from .policy import PolicyRule

__all__ = [
    "BUILTINS",
    "DEFAULT_POLICY",
    "IMPLEMENTATION",
    "Balancer",
    "PolicyBalancer",
    "builtin",
    "make_balancer",
]

_impl = load("_lb")
IMPLEMENTATION: str = _impl.IMPLEMENTATION
BUILTINS: dict[str, type] = dict(_impl.BUILTINS)
Balancer = _impl.Balancer
DEFAULT_POLICY = "round_robin"
ALIASES = {"p2c": "power_of_two_choices", "ring_hash": "consistent_hash", "rr": "round_robin"}

log = logging.getLogger("aios_fast.lb")


def builtin(name: str, instances=(), **parameters):
    """A built-in balancer by name (aliases: p2c, ring_hash, rr)."""
    cls: Any = BUILTINS.get(ALIASES.get(name, name))
    if cls is None:
        raise LBConfigError(
            f"unknown built-in policy {name!r}; known: {', '.join(sorted(BUILTINS))}"
        )
    unknown = set(parameters) - set(cls.PARAMS)
    if unknown:
        raise LBConfigError(
            f"policy {cls.name!r} does not take {', '.join(sorted(unknown))}; "
            f"it takes {', '.join(cls.PARAMS)}"
        )
    return cls(instances, **parameters)


class PolicyBalancer:
    """A user AIOSv1PolicyRule choosing instances, with a built-in fallback.

    The policy's ``eval`` gets ``{"mode": "load_balance", "packet": <Packet view>,
    "instances": [available ids]}`` and must return ``{"instance_id": <one of them>}``.
    Anything else (an exception, garbage, an unknown or unavailable id) is logged (at
    most once per ``log_interval`` seconds, with a count), counted in ``fallbacks`` and
    answered by the fallback balancer, which also holds the instance set.
    """

    name = "policy"

    def __init__(self, rule: PolicyRule, fallback, *, log_interval: float = 5.0) -> None:
        self.rule = rule
        self.fallback = fallback
        self.fallbacks = 0
        self.policy_picks = 0
        self.last_error: str | None = None
        self._log_interval = log_interval
        self._next_log = 0.0
        self._unlogged = 0
        self._sync()

    # The instance set lives in the fallback; every change refreshes the cached views.
    def _sync(self) -> None:
        self._instances = self.fallback.available()
        self._available = frozenset(self._instances)

    def add(self, instance_id, weight=None):
        self.fallback.add(instance_id, weight)
        self._sync()

    def remove(self, instance_id):
        self.fallback.remove(instance_id)
        self._sync()

    def set_weight(self, instance_id, weight):
        self.fallback.set_weight(instance_id, weight)
        self._sync()

    def set_healthy(self, instance_id, healthy):
        self.fallback.set_healthy(instance_id, healthy)
        self._sync()

    def set_draining(self, instance_id, draining):
        self.fallback.set_draining(instance_id, draining)
        self._sync()

    def instances(self):
        return self.fallback.instances()

    def available(self):
        return list(self._instances)

    def state(self, instance_id):
        return self.fallback.state(instance_id)

    def outstanding(self, instance_id):
        return self.fallback.outstanding(instance_id)

    def on_dispatch(self, instance_id):
        return self.fallback.on_dispatch(instance_id)

    def on_finish(self, instance_id):
        return self.fallback.on_finish(instance_id)

    def __contains__(self, instance_id):
        return instance_id in self.fallback

    def __len__(self):
        return len(self.fallback)

    def management(self, action: str, data: dict):
        return self.rule.management(action, data)

    def pick(self, packet=None) -> str:
        if not self._instances:
            raise NoInstanceError("policy: no instance available")
        try:
            result = self.rule.eval(
                {"mode": "load_balance", "packet": packet, "instances": self._instances}
            )
            if not isinstance(result, dict) or "instance_id" not in result:
                raise PolicyError(f"eval() returned {result!r}, expected {{'instance_id': ...}}")
            instance_id = result["instance_id"]
            if instance_id not in self._available:
                raise PolicyError(f"eval() chose {instance_id!r}, not an available instance")
        except Exception as exc:  # a user policy must never take the executor down
            return self._fall_back(packet, exc)
        self.policy_picks += 1
        return instance_id

    def pick_key(self, session_id: str) -> str:
        return self.pick(_SessionOnly(session_id))

    def _fall_back(self, packet, exc: Exception) -> str:
        self.fallbacks += 1
        self.last_error = f"{type(exc).__name__}: {exc}"
        now = time.monotonic()
        if now >= self._next_log:
            suppressed = f" ({self._unlogged} more since the last report)" if self._unlogged else ""
            log.error(
                "load-balancer policy %s failed, task sent by fallback %s: %s%s",
                self.rule.rule_id,
                self.fallback.name,
                self.last_error,
                suppressed,
            )
            self._next_log = now + self._log_interval
            self._unlogged = 0
        else:
            self._unlogged += 1
        return self.fallback.pick(packet)


class _SessionOnly:
    __slots__ = ("session_id",)

    def __init__(self, session_id: str) -> None:
        self.session_id = session_id


def make_balancer(
    spec: dict | None,
    instances=(),
    *,
    get_metrics: Callable[[], dict] | None = None,
    block_data: dict | None = None,
    cluster_data: dict | None = None,
):
    """The balancer for a ``policies.loadBalancer`` spec (or a whole block document)."""
    spec = dict(spec or {})
    if "policies" in spec:  # a block document
        block_data = spec if block_data is None else block_data
        spec = dict((spec.get("policies") or {}).get("loadBalancer") or {})
    uri = (spec.get("policyRuleURI") or f"builtin:{DEFAULT_POLICY}").strip()
    parameters = spec.get("parameters") or {}
    settings = spec.get("settings") or {}
    if not isinstance(parameters, dict) or not isinstance(settings, dict):
        raise LBConfigError("loadBalancer parameters and settings must be objects")
    if uri.startswith("builtin:"):
        return builtin(uri[len("builtin:") :], instances, **parameters)
    fallback_name = settings.get("fallbackPolicy", DEFAULT_POLICY)
    fallback = builtin(fallback_name, instances)
    rule = PolicyRule(
        uri,
        uri,
        parameters=parameters,
        settings=settings,
        get_metrics=get_metrics,
        block_data=block_data,
        cluster_data=cluster_data,
    )
    return PolicyBalancer(rule, fallback)
