"""Pure-Python twin of ``aios_fast._lb``: built-in load-balancing policies.

A balancer holds the live instance set (add / remove / weight / health / drain) and
picks an instance id per task. Every twin makes the same picks for the same sequence
of operations: random choices come from the same splitmix64 generator, hashing is
``hash64`` (8 bytes a step, murmur3's finaliser), and every "smallest" choice has a unique key, so
the compiled module may keep heaps where this twin scans.

An instance is *available* (selectable) when it is healthy, not draining and has a
weight > 0. ``pick`` on an empty available set raises NoInstanceError.
"""

from __future__ import annotations

import bisect
import math
import os
from typing import Any

from .errors import LBConfigError, NoInstanceError, UnknownInstanceError

__all__ = [
    "BUILTINS",
    "IMPLEMENTATION",
    "Balancer",
    "ConsistentHash",
    "LeastOutstanding",
    "PowerOfTwoChoices",
    "Random",
    "RoundRobin",
    "WeightedRoundRobin",
    "hash64",
]

IMPLEMENTATION = "py"
M64 = (1 << 64) - 1
RENORMALISE_AT = float(1 << 32)  # WRR deadlines are rebased past this, keeping precision


def _fmix64(h: int) -> int:
    h ^= h >> 33
    h = (h * 0xFF51AFD7ED558CCD) & M64
    h ^= h >> 33
    h = (h * 0xC4CEB9FE1A85EC53) & M64
    return h ^ (h >> 33)


def hash64(data: bytes, seed: int = 0) -> int:
    """64-bit hash of data (stable across processes and releases; values are pinned by tests).

    Eight little-endian bytes at a time (the tail zero-padded): h ^= w * C1, then
    h = rotl(h, 31) * C2; finished with murmur3's fmix64 of h ^ len(data).
    """
    n = len(data)
    h = (seed ^ 0x9E3779B97F4A7C15) & M64
    for i in range(0, n, 8):
        w = int.from_bytes(data[i : i + 8], "little")
        h ^= (w * 0x87C37B91114253D5) & M64
        h = (((h << 31) | (h >> 33)) & M64) * 0x4CF5AD432745937F & M64
    return _fmix64(h ^ n)


def _seed(seed) -> int:
    if seed is None:
        return int.from_bytes(os.urandom(8), "little")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise LBConfigError(f"seed must be an int, not {type(seed).__name__}")
    return seed & M64


def _check_weight(weight) -> float:
    if isinstance(weight, bool) or not isinstance(weight, (int, float)):
        raise LBConfigError(f"weight must be a number, not {type(weight).__name__}")
    weight = float(weight)
    if not math.isfinite(weight) or weight < 0:
        raise LBConfigError(f"weight must be finite and >= 0, not {weight}")
    return weight


def _check_id(instance_id) -> str:
    if not isinstance(instance_id, str) or not instance_id:
        raise LBConfigError(f"instance id must be a non-empty str, not {instance_id!r}")
    return instance_id


class Balancer:
    """Base class: the instance set, outstanding counters and the pick entry points."""

    name = "base"
    PARAMS: tuple[str, ...] = ("seed", "weights")

    def __init__(self, instances=(), *, seed=None, weights=None) -> None:
        self._ids: list[str] = []
        self._pos: dict[str, int] = {}
        self._weight: list[float] = []
        self._healthy: list[bool] = []
        self._draining: list[bool] = []
        self._out: list[int] = []
        self._seq: list[int] = []
        self._picks: list[int] = []
        self._clock = 0
        self._rng = _seed(seed)
        self._active: list[int] = []  # positions of available instances, in insertion order
        self._active_ids: list[str] = []
        self._avail: list[bool] = []  # by position: is the instance available
        self._active_out = 0  # in-flight tasks on available instances
        if weights is not None and not isinstance(weights, dict):
            raise LBConfigError("weights must be a mapping of instance id to weight")
        self._default_weights = dict(weights or {})
        for instance_id in instances:
            self._insert(instance_id, self._default_weights.get(instance_id, 1.0))
        self._refresh()

    # ------------------------------------------------------------------ instance set

    def _insert(self, instance_id, weight) -> None:
        instance_id = _check_id(instance_id)
        weight = _check_weight(weight)
        pos = self._pos.get(instance_id)
        if pos is not None:
            self._weight[pos] = weight
            return
        self._pos[instance_id] = len(self._ids)
        self._ids.append(instance_id)
        self._weight.append(weight)
        self._healthy.append(True)
        self._draining.append(False)
        self._out.append(0)
        self._seq.append(self._clock)
        self._clock += 1
        self._picks.append(0)

    def _position(self, instance_id) -> int:
        pos = self._pos.get(instance_id)
        if pos is None:
            raise UnknownInstanceError(instance_id)
        return pos

    def _refresh(self) -> None:
        self._active = [
            i
            for i in range(len(self._ids))
            if self._healthy[i] and not self._draining[i] and self._weight[i] > 0
        ]
        self._active_ids = [self._ids[i] for i in self._active]
        self._avail = [False] * len(self._ids)
        for i in self._active:
            self._avail[i] = True
        self._active_out = sum(self._out[i] for i in self._active)
        self._rebuild()

    def _rebuild(self) -> None:
        """Recompute policy state after the available set changed."""

    def add(self, instance_id: str, weight: float | None = None) -> None:
        """Add an instance (or change its weight when known); it is healthy and not draining."""
        if weight is None:
            weight = self._default_weights.get(instance_id, 1.0)
        self._insert(instance_id, weight)
        self._refresh()

    def remove(self, instance_id: str) -> None:
        """Forget an instance. Its in-flight tasks may still call on_finish (ignored)."""
        pos = self._position(instance_id)
        for arr in (
            self._ids,
            self._weight,
            self._healthy,
            self._draining,
            self._out,
            self._seq,
            self._picks,
        ):
            del arr[pos]
        self._pos = {iid: i for i, iid in enumerate(self._ids)}
        self._refresh()

    def set_weight(self, instance_id: str, weight: float) -> None:
        self._weight[self._position(instance_id)] = _check_weight(weight)
        self._refresh()

    def set_healthy(self, instance_id: str, healthy: bool) -> None:
        pos = self._position(instance_id)
        if self._healthy[pos] != bool(healthy):
            self._healthy[pos] = bool(healthy)
            self._refresh()

    def set_draining(self, instance_id: str, draining: bool) -> None:
        pos = self._position(instance_id)
        if self._draining[pos] != bool(draining):
            self._draining[pos] = bool(draining)
            self._refresh()

    def instances(self) -> list[str]:
        """Every known instance id, in the order they were added."""
        return list(self._ids)

    def available(self) -> list[str]:
        """The instance ids picks choose from (healthy, not draining, weight > 0)."""
        return list(self._active_ids)

    def state(self, instance_id: str) -> dict:
        pos = self._position(instance_id)
        return {
            "instance_id": instance_id,
            "weight": self._weight[pos],
            "healthy": self._healthy[pos],
            "draining": self._draining[pos],
            "available": pos in self._active,
            "outstanding": self._out[pos],
            "picks": self._picks[pos],
        }

    def outstanding(self, instance_id: str) -> int:
        return self._out[self._position(instance_id)]

    def __contains__(self, instance_id) -> bool:
        return instance_id in self._pos

    def __len__(self) -> int:
        return len(self._ids)

    # ------------------------------------------------------------------ task accounting

    def on_dispatch(self, instance_id: str) -> bool:
        """A task was sent to instance_id. False (and no change) for an unknown id."""
        pos = self._pos.get(instance_id)
        if pos is None:
            return False
        self._out[pos] += 1
        if self._avail[pos]:
            self._active_out += 1
        self._seq[pos] = self._clock
        self._clock += 1
        return True

    def on_finish(self, instance_id: str) -> bool:
        """A task on instance_id ended. False for an unknown id or no outstanding task."""
        pos = self._pos.get(instance_id)
        if pos is None or self._out[pos] == 0:
            return False
        self._out[pos] -= 1
        if self._avail[pos]:
            self._active_out -= 1
        return True

    # ------------------------------------------------------------------ picking

    def _next(self) -> int:
        self._rng = (self._rng + 0x9E3779B97F4A7C15) & M64
        z = self._rng
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
        return z ^ (z >> 31)

    def _below(self, n: int) -> int:
        return (self._next() * n) >> 64

    def _choose(self, packet) -> int:
        raise NotImplementedError

    def pick(self, packet=None) -> str:
        """The instance id for one task (packet: a Packet view, a protobuf AIOSPacket, or None)."""
        if not self._active:
            raise NoInstanceError(f"{self.name}: no instance available")
        a = self._choose(packet)
        self._picks[self._active[a]] += 1
        return self._active_ids[a]

    def pick_key(self, session_id: str) -> str:
        """The instance id for a task of this session (only hashing policies read it)."""
        return self.pick(_Key(session_id))


class _Key:
    __slots__ = ("session_id",)

    def __init__(self, session_id: str) -> None:
        if not isinstance(session_id, str):
            raise LBConfigError(f"session_id must be str, not {type(session_id).__name__}")
        self.session_id = session_id


class RoundRobin(Balancer):
    """Available instances in turn."""

    name = "round_robin"

    def __init__(self, instances=(), **params) -> None:
        self._counter = 0
        super().__init__(instances, **params)

    def _choose(self, packet) -> int:
        a = self._counter % len(self._active)
        self._counter = a + 1
        return a


GOLDEN = 0.6180339887498949


def _phase(a: int) -> float:
    """Offset in [0, 1) of the a-th available instance's first deadline: a golden-ratio
    sequence, so the instances' deadlines are spread evenly and never line up."""
    return ((a + 1) * GOLDEN) % 1.0


class WeightedRoundRobin(Balancer):
    """Smooth weighted round robin: earliest-deadline-first on 1/weight strides (as Envoy).

    Each instance is due every 1/weight; first deadlines are staggered along a
    golden-ratio sequence (by available index a: ``(1/weight) * frac((a + 1) * phi)``),
    so deadlines do not line up and picks interleave: weights 3,1,1,1 never give three
    0s in a row. Instances of equal weight form a group that keeps its (deadline, a)
    order forever (they all advance by the same stride), so a group is a ring: a pick
    takes the group whose head has the smallest (deadline, a), moves that head's
    deadline one stride on and the ring one step. O(log G) per pick for G distinct
    weights. Deadlines past 2**32 are rebased (all minus the floor of the smallest).
    """

    name = "weighted_round_robin"

    def _rebuild(self) -> None:
        groups: dict[float, list[int]] = {}
        for a, pos in enumerate(self._active):
            groups.setdefault(self._weight[pos], []).append(a)
        self._groups: list[list[Any]] = []  # [stride, ring of [deadline, a], head]
        for weight, members in groups.items():
            stride = 1.0 / weight
            ring = sorted([stride * _phase(a), a] for a in members)
            self._groups.append([stride, ring, 0])

    def _choose(self, packet) -> int:
        best: Any = None
        for g, (_, ring, head) in enumerate(self._groups):
            key = (ring[head][0], ring[head][1])
            if best is None or key < best[0]:
                best = (key, g)
        group = self._groups[best[1]]
        entry = group[1][group[2]]
        entry[0] += group[0]
        group[2] = (group[2] + 1) % len(group[1])
        if entry[0] > RENORMALISE_AT:
            base = math.floor(min(e[0] for grp in self._groups for e in grp[1]))
            for grp in self._groups:
                for e in grp[1]:
                    e[0] -= base
        return entry[1]


class Random(Balancer):
    """Uniformly random available instance."""

    name = "random"

    def _choose(self, packet) -> int:
        return self._below(len(self._active))


class LeastOutstanding(Balancer):
    """Fewest in-flight tasks; ties go to the least recently dispatched instance."""

    name = "least_outstanding"

    def _choose(self, packet) -> int:
        out, seq, act = self._out, self._seq, self._active
        return min(range(len(act)), key=lambda a: (out[act[a]], seq[act[a]]))


class PowerOfTwoChoices(Balancer):
    """Two distinct random instances, the one with fewer in-flight tasks (ties: the first)."""

    name = "power_of_two_choices"

    def _choose(self, packet) -> int:
        n = len(self._active)
        if n == 1:
            return 0
        i = self._below(n)
        j = self._below(n - 1)
        if j >= i:
            j += 1
        return j if self._out[self._active[j]] < self._out[self._active[i]] else i


def _session_key(packet) -> bytes:
    if packet is None:
        raise LBConfigError("consistent_hash needs the task's packet (or pick_key(session_id))")
    session_id = packet.session_id
    if not isinstance(session_id, str):
        raise LBConfigError("packet.session_id must be str")
    return session_id.encode("utf-8")


def _check_balance_factor(factor) -> float:
    if factor is None:
        return 0.0
    if isinstance(factor, bool) or not isinstance(factor, (int, float)):
        raise LBConfigError(f"balance_factor must be a number, not {type(factor).__name__}")
    factor = float(factor)
    if factor != 0.0 and not (math.isfinite(factor) and factor >= 1.0):
        raise LBConfigError(f"balance_factor must be >= 1 (or 0 / None: off), not {factor}")
    return factor


class ConsistentHash(Balancer):
    """Session affinity: a ring of ``vnodes`` points per instance (1,024 by default),
    hashed from the ids; a session goes to the instance of the point nearest its hash.

    The ring depends only on the set of available ids, so every executor process maps a
    session to the same instance; adding or removing one instance moves only the
    sessions it owns (about 1/N of them). Point k of an instance is
    ``hash64(b"<id>#<k>")`` with its low bits cleared (as many as the bit length of N:
    the compiled twin stores the owner's rank there); points at equal positions are
    ordered by id, and so are session hashes truncated the same way.

    Shares: an instance owns the hashes nearer one of its points than any other point
    (either side; a tie goes clockwise). Nearest rather than next point, and 1,024
    points rather than 160: at 1,024 instances shares are 0.92-1.07 of 1/N (measured
    for four id patterns; 0.70-1.32 with 160 next-point vnodes), so within +-10%;
    ``shares()`` gives them exactly.

    Bounded loads (opt-in): Google's consistent hashing with bounded loads (Mirrokni,
    Thorup, Zadimoghaddam 2018; Envoy's hash_balance_factor): with T tasks in flight on
    the N available instances, a task goes to the first instance clockwise from its
    point whose in-flight count is below ``balance_factor * (T + 1) / N``. No instance
    then carries more than ceil(balance_factor * mean) tasks (when tasks only arrive; a
    finish can leave one briefly above); while every instance is below the bound
    (always when idle) this is the plain ring. ``balance_factor`` None (the default) or
    0 keeps strict affinity, which a block that keeps per-session state needs; a full
    instance's sessions spill to the next ones while it is full (measured at 1,024
    instances and factor 1.25: about 5% of picks spill at 20 tasks in flight per instance,
    about 35% at 2).
    """

    name = "consistent_hash"
    PARAMS = (*Balancer.PARAMS, "vnodes", "balance_factor")

    def __init__(
        self, instances=(), *, vnodes: int = 1024, balance_factor: float | None = None, **params
    ) -> None:
        if isinstance(vnodes, bool) or not isinstance(vnodes, int) or not 1 <= vnodes <= 4096:
            raise LBConfigError(f"vnodes must be an int in 1..4096, not {vnodes!r}")
        self._vnodes = vnodes
        self._factor = _check_balance_factor(balance_factor)
        self._points: dict[str, list[int]] = {}  # id -> its point hashes (hashing is slow here)
        super().__init__(instances, **params)

    def _id_points(self, instance_id: str) -> list[int]:
        points = self._points.get(instance_id)
        if points is None:
            raw = instance_id.encode("utf-8") + b"#"
            points = [hash64(raw + str(k).encode()) for k in range(self._vnodes)]
            self._points[instance_id] = points
        return points

    def _rebuild(self) -> None:
        if len(self._points) > len(self._ids):  # forget removed instances
            self._points = {i: p for i, p in self._points.items() if i in self._pos}
        ids = self._active_ids
        order = sorted(range(len(ids)), key=ids.__getitem__)  # rank -> active index
        # A point is its hash with the low `shift` bits replaced by its owner's rank, so
        # sorting the values sorts by (position, rank); the compiled twin keeps just these.
        shift = len(ids).bit_length() or 1
        mask = (1 << shift) - 1
        keep = M64 ^ mask
        points = []
        for rank, a in enumerate(order):
            points += [(h & keep) | rank for h in self._id_points(ids[a])]
        points.sort()
        self._shift, self._mask = shift, mask
        self._ring = [p & keep for p in points]  # positions, for bisect
        self._owner = [order[p & mask] for p in points]

    def _choose(self, packet) -> int:
        ring, owner = self._ring, self._owner
        h = hash64(_session_key(packet)) & ~self._mask
        n = len(ring)
        i = bisect.bisect_left(ring, h)
        prv = (i if i > 0 else n) - 1
        if i == n:
            i = 0
        if (h - ring[prv]) & M64 < (ring[i] - h) & M64:  # nearest point; a tie: clockwise
            i = prv
        a = owner[i]
        if self._factor:
            # Full: out * N >= factor * (T + 1) (int against float: exact, as in C).
            out, act, na = self._out, self._active, len(self._active)
            limit = self._factor * (self._active_out + 1)
            while out[act[a]] * na >= limit:  # ends: the least loaded one is below
                i = i + 1 if i + 1 < n else 0
                a = owner[i]
        return a

    def shares(self) -> dict[str, float]:
        """Each available instance's share of the hash space (sums to 1): the fraction
        of all sessions it owns while bounded loads do not divert them."""
        ring, owner, ids = self._ring, self._owner, self._active_ids
        if len(ring) <= 1:
            return {i: 1.0 for i in ids}
        acc = [0.0] * len(ids)
        for i in range(len(ring)):
            # Keys between the two points: d of them (in steps of mask + 1); those nearer
            # the earlier point (ceil(d / 2) - 1 of them) belong to it.
            d = ((ring[i] - ring[i - 1]) & M64) >> self._shift
            if d == 0:
                continue
            back = (d >> 1) + (d & 1) - 1
            acc[owner[i - 1]] += float(back)
            acc[owner[i]] += float(d - back)
        total = float(1 << (64 - self._shift))
        return {ids[a]: acc[a] / total for a in range(len(ids))}


BUILTINS = {
    cls.name: cls
    for cls in (
        RoundRobin,
        WeightedRoundRobin,
        Random,
        LeastOutstanding,
        PowerOfTwoChoices,
        ConsistentHash,
    )
}
