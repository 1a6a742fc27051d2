# cython: language_level=3
"""Compiled built-in load-balancing policies.

Behaviour is defined by the pure twin ``aios_fast._lb_py`` (read its docstrings): the
same operations give the same picks. Here the per-instance state lives in C arrays,
least_outstanding and weighted_round_robin keep indexed binary heaps (O(log N) per
pick / update) where the twin scans, and the hash ring has a bucket index of about one
bucket per point (2**16 to 2**22 buckets) so a lookup touches a couple of entries.
"""

cimport cython
from cpython.mem cimport PyMem_Free, PyMem_Malloc, PyMem_Realloc
from cpython.unicode cimport PyUnicode_Check
from libc.math cimport floor, fmod, isfinite
from libc.stdint cimport int64_t, uint32_t, uint64_t
from libc.stdlib cimport qsort
from libc.string cimport memcpy, memset

from aios_fast._codec cimport Packet
from aios_fast._cpython cimport PyUnicode_AsUTF8AndSize, aiosf_load_le64

from aios_fast.errors import LBConfigError, NoInstanceError, UnknownInstanceError

cdef extern from *:
    """
    /* floor(x * n / 2**64): a uniform index below n from 64 random bits (Lemire). */
    static inline Py_ssize_t aiosf_mulhi(uint64_t x, uint64_t n) {
        return (Py_ssize_t)(((unsigned __int128)x * n) >> 64);
    }
    """
    Py_ssize_t aiosf_mulhi(uint64_t x, uint64_t n) noexcept nogil

cdef extern from *:
    """
    #include <stdlib.h>
    #if defined(__linux__)
    #include <sys/mman.h>
    #endif
    /* Memory for a hash ring: past 2 MiB, 2 MiB-aligned and marked for transparent huge
       pages, so a lookup at random costs a cache miss but no page walk (a 1,024-instance
       ring is 8 MiB: 2,048 small pages, more than the TLB holds). Free with free(). */
    static void* aiosf_ring_alloc(size_t size) {
        void* p = NULL;
        if (size < ((size_t)2 << 20)) return malloc(size ? size : 1);
        size = (size + ((size_t)2 << 20) - 1) & ~(((size_t)2 << 20) - 1);
        if (posix_memalign(&p, (size_t)2 << 20, size) != 0) return NULL;
    #if defined(__linux__) && defined(MADV_HUGEPAGE)
        madvise(p, size, MADV_HUGEPAGE);
    #endif
        return p;
    }
    """
    void* aiosf_ring_alloc(size_t size) noexcept nogil
    void free(void* p) noexcept nogil

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

IMPLEMENTATION = "c"
cdef double RENORMALISE_AT = 4294967296.0
cdef int RING_BITS = 16      # hash-ring bucket index: at least 2**16 buckets,
cdef int RING_BITS_MAX = 18  # at most 2**18 (1 MiB of index: a few points a bucket)


# --------------------------------------------------------------------------- hashing


cdef inline uint64_t _hash64(const unsigned char* p, Py_ssize_t n, uint64_t seed) noexcept nogil:
    # The twin's hash64, step for step: 8 little-endian bytes at a time.
    cdef uint64_t h = seed ^ 0x9E3779B97F4A7C15ULL
    cdef uint64_t w
    cdef Py_ssize_t i = 0
    cdef Py_ssize_t k
    while i < n:
        w = 0
        if n - i >= 8:
            w = aiosf_load_le64(p + i)
        else:
            for k in range(n - i):
                w |= (<uint64_t>p[i + k]) << (8 * k)
        h ^= w * 0x87C37B91114253D5ULL
        h = ((h << 31) | (h >> 33)) * 0x4CF5AD432745937FULL
        i += 8
    h ^= <uint64_t>n
    h ^= h >> 33
    h *= 0xFF51AFD7ED558CCDULL
    h ^= h >> 33
    h *= 0xC4CEB9FE1A85EC53ULL
    h ^= h >> 33
    return h


def hash64(data, uint64_t seed=0):
    """64-bit hash of data, stable across processes and releases (see the twin)."""
    cdef const unsigned char[::1] view = data
    if view.shape[0] == 0:
        return _hash64(NULL, 0, seed)
    return _hash64(&view[0], view.shape[0], seed)


cdef inline Py_ssize_t _put_decimal(char* out, Py_ssize_t k) noexcept nogil:
    """Write k (>= 0) in decimal, as str(k); returns the digit count."""
    cdef char tmp[24]
    cdef Py_ssize_t n = 0, i
    while True:
        tmp[n] = <char>(48 + k % 10)
        n += 1
        k //= 10
        if k == 0:
            break
    for i in range(n):
        out[i] = tmp[n - 1 - i]
    return n


cdef double GOLDEN = 0.6180339887498949


cdef inline double _phase(Py_ssize_t a) noexcept:
    # Same expression as the twin's ((a + 1) * GOLDEN) % 1.0 (fmod: identical for x >= 0).
    return fmod((a + 1) * GOLDEN, 1.0)


# --------------------------------------------------------------------------- base


cdef struct Inst:
    double weight
    int healthy
    int draining
    int64_t out
    int64_t seq
    int64_t picks
    Py_ssize_t aidx        # index in the active array, -1 when not available


cdef uint64_t _seed(object seed) except? 0:
    if seed is None:
        import os
        return int.from_bytes(os.urandom(8), "little")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise LBConfigError(f"seed must be an int, not {type(seed).__name__}")
    return seed & 0xFFFFFFFFFFFFFFFF


cdef double _check_weight(object weight) except -1:
    if isinstance(weight, bool) or not isinstance(weight, (int, float)):
        raise LBConfigError(f"weight must be a number, not {type(weight).__name__}")
    cdef double w = float(weight)
    if not isfinite(w) or w < 0:
        raise LBConfigError(f"weight must be finite and >= 0, not {w}")
    return w


cdef str _check_id(object instance_id):
    if not isinstance(instance_id, str) or not instance_id:
        raise LBConfigError(f"instance id must be a non-empty str, not {instance_id!r}")
    return instance_id


cdef class Balancer:
    """Base class: the instance set, outstanding counters and the pick entry points."""

    cdef list _ids
    cdef dict _pos
    cdef Inst* _inst
    cdef Py_ssize_t _n, _cap
    cdef Py_ssize_t* _active
    cdef Py_ssize_t _nactive
    cdef list _active_ids
    cdef int64_t _clock
    cdef int64_t _active_out   # in-flight tasks on available instances
    cdef uint64_t _rng
    cdef dict _default_weights

    name = "base"
    PARAMS = ("seed", "weights")

    def __init__(self, instances=(), *, seed=None, weights=None):
        self._ids = []
        self._pos = {}
        self._active_ids = []
        self._rng = _seed(seed)
        if weights is not None and not isinstance(weights, dict):
            raise LBConfigError("weights must be a mapping of instance id to weight")
        self._default_weights = dict(weights or {})
        for instance_id in instances:
            self._insert(instance_id, self._default_weights.get(instance_id, 1.0))
        self._refresh()

    def __dealloc__(self):
        PyMem_Free(self._inst)
        PyMem_Free(self._active)

    # ------------------------------------------------------------------ instance set

    cdef int _insert(self, object instance_id, object weight) except -1:
        cdef str iid = _check_id(instance_id)
        cdef double w = _check_weight(weight)
        cdef Py_ssize_t ncap
        cdef void* grown
        pos = self._pos.get(iid)
        if pos is not None:
            self._inst[<Py_ssize_t>pos].weight = w
            return 0
        if self._n == self._cap:
            ncap = 8 if self._cap == 0 else self._cap * 2
            grown = PyMem_Realloc(self._inst, ncap * sizeof(Inst))
            if grown == NULL:
                raise MemoryError()
            self._inst = <Inst*>grown
            grown = PyMem_Realloc(self._active, ncap * sizeof(Py_ssize_t))
            if grown == NULL:
                raise MemoryError()
            self._active = <Py_ssize_t*>grown
            self._cap = ncap
        cdef Inst* it = &self._inst[self._n]
        it.weight = w
        it.healthy = 1
        it.draining = 0
        it.out = 0
        it.seq = self._clock
        it.picks = 0
        it.aidx = -1
        self._clock += 1
        self._pos[iid] = self._n
        self._ids.append(iid)
        self._n += 1
        return 0

    cdef Py_ssize_t _position(self, object instance_id) except -1:
        pos = self._pos.get(instance_id)
        if pos is None:
            raise UnknownInstanceError(instance_id)
        return pos

    cdef int _refresh(self) except -1:
        cdef Py_ssize_t i
        cdef Inst* it
        self._nactive = 0
        self._active_out = 0
        active_ids = []
        for i in range(self._n):
            it = &self._inst[i]
            if it.healthy and not it.draining and it.weight > 0:
                it.aidx = self._nactive
                self._active[self._nactive] = i
                self._nactive += 1
                self._active_out += it.out
                active_ids.append(self._ids[i])
            else:
                it.aidx = -1
        self._active_ids = active_ids
        self._rebuild()
        return 0

    cdef int _rebuild(self) except -1:
        return 0

    cdef void _touched(self, Py_ssize_t pos) noexcept:
        pass

    def add(self, instance_id, weight=None):
        """Add an instance (or change its weight when known); it is healthy and not draining."""
        if weight is None:
            weight = self._default_weights.get(instance_id, 1.0)
        self._insert(instance_id, weight)
        self._refresh()

    def remove(self, instance_id):
        """Forget an instance. Its in-flight tasks may still call on_finish (ignored)."""
        cdef Py_ssize_t pos = self._position(instance_id)
        cdef Py_ssize_t i
        for i in range(pos, self._n - 1):
            self._inst[i] = self._inst[i + 1]
        self._n -= 1
        del self._ids[pos]
        self._pos = {iid: i for i, iid in enumerate(self._ids)}
        self._refresh()

    def set_weight(self, instance_id, weight):
        cdef Py_ssize_t pos = self._position(instance_id)
        self._inst[pos].weight = _check_weight(weight)
        self._refresh()

    def set_healthy(self, instance_id, healthy):
        cdef Py_ssize_t pos = self._position(instance_id)
        cdef int flag = 1 if healthy else 0
        if self._inst[pos].healthy != flag:
            self._inst[pos].healthy = flag
            self._refresh()

    def set_draining(self, instance_id, draining):
        cdef Py_ssize_t pos = self._position(instance_id)
        cdef int flag = 1 if draining else 0
        if self._inst[pos].draining != flag:
            self._inst[pos].draining = flag
            self._refresh()

    def instances(self):
        """Every known instance id, in the order they were added."""
        return list(self._ids)

    def available(self):
        """The instance ids picks choose from (healthy, not draining, weight > 0)."""
        return list(self._active_ids)

    def state(self, instance_id):
        cdef Py_ssize_t pos = self._position(instance_id)
        cdef Inst* it = &self._inst[pos]
        return {
            "instance_id": instance_id,
            "weight": it.weight,
            "healthy": bool(it.healthy),
            "draining": bool(it.draining),
            "available": it.aidx >= 0,
            "outstanding": it.out,
            "picks": it.picks,
        }

    def outstanding(self, instance_id):
        return self._inst[self._position(instance_id)].out

    def __contains__(self, instance_id):
        return instance_id in self._pos

    def __len__(self):
        return self._n

    # ------------------------------------------------------------------ task accounting

    cpdef bint on_dispatch(self, object instance_id):
        """A task was sent to instance_id. False (and no change) for an unknown id."""
        pos = self._pos.get(instance_id)
        if pos is None:
            return False
        cdef Py_ssize_t p = pos
        self._inst[p].out += 1
        if self._inst[p].aidx >= 0:
            self._active_out += 1
        self._inst[p].seq = self._clock
        self._clock += 1
        self._touched(p)
        return True

    cpdef bint on_finish(self, object instance_id):
        """A task on instance_id ended. False for an unknown id or no outstanding task."""
        pos = self._pos.get(instance_id)
        if pos is None:
            return False
        cdef Py_ssize_t p = pos
        if self._inst[p].out == 0:
            return False
        self._inst[p].out -= 1
        if self._inst[p].aidx >= 0:
            self._active_out -= 1
        self._touched(p)
        return True

    # ------------------------------------------------------------------ picking

    cdef inline uint64_t _next(self) noexcept:
        self._rng += 0x9E3779B97F4A7C15ULL
        cdef uint64_t z = self._rng
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL
        return z ^ (z >> 31)

    cdef inline Py_ssize_t _below(self, Py_ssize_t n) noexcept:
        return aiosf_mulhi(self._next(), <uint64_t>n)

    cdef Py_ssize_t _choose(self, object packet) except -1:
        raise NotImplementedError

    cpdef str pick(self, object packet=None):
        """The instance id for one task (packet: a Packet view, a protobuf AIOSPacket, or None)."""
        if self._nactive == 0:
            raise NoInstanceError(f"{self.name}: no instance available")
        cdef Py_ssize_t a = self._choose(packet)
        self._inst[self._active[a]].picks += 1
        return <str>self._active_ids[a]

    def pick_key(self, session_id):
        """The instance id for a task of this session (only hashing policies read it)."""
        if not isinstance(session_id, str):
            raise LBConfigError(f"session_id must be str, not {type(session_id).__name__}")
        return self.pick(_Key(session_id))


@cython.final
cdef class _Key:
    cdef readonly str session_id

    def __init__(self, str session_id):
        self.session_id = session_id


# --------------------------------------------------------------------------- policies


@cython.final
cdef class RoundRobin(Balancer):
    """Available instances in turn."""

    cdef Py_ssize_t _counter
    name = "round_robin"

    cdef Py_ssize_t _choose(self, object packet) except -1:
        cdef Py_ssize_t a = self._counter % self._nactive
        self._counter = a + 1
        return a


@cython.final
cdef class Random(Balancer):
    """Uniformly random available instance."""

    name = "random"

    cdef Py_ssize_t _choose(self, object packet) except -1:
        return self._below(self._nactive)


@cython.final
cdef class PowerOfTwoChoices(Balancer):
    """Two distinct random instances, the one with fewer in-flight tasks (ties: the first)."""

    name = "power_of_two_choices"

    cdef Py_ssize_t _choose(self, object packet) except -1:
        cdef Py_ssize_t n = self._nactive
        if n == 1:
            return 0
        cdef Py_ssize_t i = self._below(n)
        cdef Py_ssize_t j = self._below(n - 1)
        if j >= i:
            j += 1
        if self._inst[self._active[j]].out < self._inst[self._active[i]].out:
            return j
        return i


# An indexed binary min-heap over active indexes; subclasses define the order.
cdef class _HeapBalancer(Balancer):
    cdef Py_ssize_t* _heap      # heap slot -> active index
    cdef Py_ssize_t* _where     # active index -> heap slot
    cdef Py_ssize_t _hcap

    def __dealloc__(self):
        PyMem_Free(self._heap)
        PyMem_Free(self._where)

    cdef bint _less(self, Py_ssize_t a, Py_ssize_t b) noexcept:
        return a < b

    cdef inline void _swap(self, Py_ssize_t i, Py_ssize_t j) noexcept:
        cdef Py_ssize_t t = self._heap[i]
        self._heap[i] = self._heap[j]
        self._heap[j] = t
        self._where[self._heap[i]] = i
        self._where[self._heap[j]] = j

    cdef void _up(self, Py_ssize_t i) noexcept:
        cdef Py_ssize_t parent
        while i > 0:
            parent = (i - 1) >> 1
            if not self._less(self._heap[i], self._heap[parent]):
                break
            self._swap(i, parent)
            i = parent

    cdef void _down(self, Py_ssize_t i) noexcept:
        cdef Py_ssize_t n = self._nactive
        cdef Py_ssize_t left, best
        while True:
            left = 2 * i + 1
            if left >= n:
                break
            best = left
            if left + 1 < n and self._less(self._heap[left + 1], self._heap[left]):
                best = left + 1
            if not self._less(self._heap[best], self._heap[i]):
                break
            self._swap(i, best)
            i = best

    cdef int _heapify(self) except -1:
        cdef Py_ssize_t i
        cdef void* grown
        if self._hcap < self._nactive:
            grown = PyMem_Realloc(self._heap, self._cap * sizeof(Py_ssize_t))
            if grown == NULL:
                raise MemoryError()
            self._heap = <Py_ssize_t*>grown
            grown = PyMem_Realloc(self._where, self._cap * sizeof(Py_ssize_t))
            if grown == NULL:
                raise MemoryError()
            self._where = <Py_ssize_t*>grown
            self._hcap = self._cap
        for i in range(self._nactive):
            self._heap[i] = i
            self._where[i] = i
        i = self._nactive // 2
        while i > 0:
            i -= 1
            self._down(i)
        return 0


@cython.final
cdef class LeastOutstanding(_HeapBalancer):
    """Fewest in-flight tasks; ties go to the least recently dispatched instance."""

    name = "least_outstanding"

    cdef bint _less(self, Py_ssize_t a, Py_ssize_t b) noexcept:
        cdef Inst* x = &self._inst[self._active[a]]
        cdef Inst* y = &self._inst[self._active[b]]
        return x.out < y.out or (x.out == y.out and x.seq < y.seq)

    cdef int _rebuild(self) except -1:
        return self._heapify()

    cdef void _touched(self, Py_ssize_t pos) noexcept:
        cdef Py_ssize_t a = self._inst[pos].aidx
        if a < 0:
            return
        self._up(self._where[a])
        self._down(self._where[a])

    cdef Py_ssize_t _choose(self, object packet) except -1:
        return self._heap[0]


cdef struct Due:
    double d               # deadline
    Py_ssize_t a           # active index (tie-break)
    Py_ssize_t g           # group (heap entries only)


cdef inline bint _due_less(const Due* x, const Due* y) noexcept nogil:
    return (x.d < y.d) | ((x.d == y.d) & (x.a < y.a))


cdef int _cmp_due(const void* x, const void* y) noexcept nogil:
    cdef const Due* p = <const Due*>x
    cdef const Due* q = <const Due*>y
    if _due_less(p, q):
        return -1
    return 1 if _due_less(q, p) else 0


@cython.final
cdef class WeightedRoundRobin(Balancer):
    """Smooth weighted round robin: earliest-deadline-first on 1/weight strides (as Envoy).

    Read the twin's docstring: instances of equal weight form a ring of (deadline,
    active index) entries; a min-heap over the G rings' heads picks the next one, so a
    pick is O(log G) for G distinct weights, whatever the number of instances.
    """

    cdef Due* _ring            # every group's entries, group after group
    cdef Py_ssize_t* _gstart   # by group: first entry in _ring
    cdef Py_ssize_t* _glen
    cdef Py_ssize_t* _ghead    # by group: index (0.._glen-1) of the ring's head
    cdef double* _gstride
    cdef Due* _gheap           # heap of the groups' heads (copies, so compares stay local)
    cdef Py_ssize_t _ngroups
    name = "weighted_round_robin"

    def __dealloc__(self):
        self._free()

    cdef void _free(self) noexcept:
        PyMem_Free(self._ring)
        PyMem_Free(self._gstart)
        PyMem_Free(self._glen)
        PyMem_Free(self._ghead)
        PyMem_Free(self._gstride)
        PyMem_Free(self._gheap)
        self._ring = NULL
        self._gstart = self._glen = self._ghead = NULL
        self._gheap = NULL
        self._gstride = NULL

    cdef void _sift_down(self, Py_ssize_t i, Due e) noexcept:
        cdef Py_ssize_t n = self._ngroups
        cdef Py_ssize_t c
        cdef Due* h = self._gheap
        while True:
            c = 2 * i + 1
            if c >= n:
                break
            if c + 1 < n and _due_less(&h[c + 1], &h[c]):
                c += 1
            if not _due_less(&h[c], &e):
                break
            h[i] = h[c]
            i = c
        h[i] = e

    cdef void _replace_top(self, Due e) noexcept:
        """Floyd's bottom-up sift: the new head is usually among the latest, so walk the
        hole to a leaf along the smaller children (one branch-free comparison a level),
        then sift e up the few steps it needs."""
        cdef Py_ssize_t n = self._ngroups
        cdef Due* h = self._gheap
        cdef Py_ssize_t i = 0
        cdef Py_ssize_t c, parent
        while True:
            c = 2 * i + 1
            if c >= n:
                break
            if c + 1 < n:
                c += _due_less(&h[c + 1], &h[c])
            h[i] = h[c]
            i = c
        while i > 0:
            parent = (i - 1) >> 1
            if not _due_less(&e, &h[parent]):
                break
            h[i] = h[parent]
            i = parent
        h[i] = e

    cdef void _heapify(self) noexcept:
        cdef Py_ssize_t g
        for g in range(self._ngroups):
            self._gheap[g] = self._ring[self._gstart[g] + self._ghead[g]]
            self._gheap[g].g = g
        cdef Py_ssize_t i = self._ngroups // 2
        while i > 0:
            i -= 1
            self._sift_down(i, self._gheap[i])

    cdef int _rebuild(self) except -1:
        cdef Py_ssize_t n = self._nactive
        cdef Py_ssize_t a, g, k
        cdef double stride
        groups = {}
        for a in range(n):
            groups.setdefault(self._inst[self._active[a]].weight, []).append(a)
        self._free()
        cdef Py_ssize_t ng = len(groups)
        self._ngroups = ng
        self._ring = <Due*>PyMem_Malloc((n + 1) * sizeof(Due))
        self._gstart = <Py_ssize_t*>PyMem_Malloc((ng + 1) * sizeof(Py_ssize_t))
        self._glen = <Py_ssize_t*>PyMem_Malloc((ng + 1) * sizeof(Py_ssize_t))
        self._ghead = <Py_ssize_t*>PyMem_Malloc((ng + 1) * sizeof(Py_ssize_t))
        self._gstride = <double*>PyMem_Malloc((ng + 1) * sizeof(double))
        self._gheap = <Due*>PyMem_Malloc((ng + 1) * sizeof(Due))
        if (self._ring == NULL or self._gstart == NULL or self._glen == NULL
                or self._ghead == NULL or self._gstride == NULL or self._gheap == NULL):
            raise MemoryError()
        k = 0
        for g, (weight, members) in enumerate(groups.items()):
            stride = 1.0 / <double>weight
            self._gstride[g] = stride
            self._gstart[g] = k
            self._glen[g] = len(members)
            self._ghead[g] = 0
            for a in members:
                self._ring[k].d = stride * _phase(a)
                self._ring[k].a = a
                k += 1
            qsort(&self._ring[self._gstart[g]], self._glen[g], sizeof(Due), _cmp_due)
        self._heapify()
        return 0

    cdef Py_ssize_t _choose(self, object packet) except -1:
        cdef Py_ssize_t g = self._gheap[0].g
        cdef Due* e = &self._ring[self._gstart[g] + self._ghead[g]]
        cdef Py_ssize_t a = e.a
        cdef Py_ssize_t i
        cdef double base
        cdef Due head
        e.d += self._gstride[g]
        cdef bint rebase = e.d > RENORMALISE_AT
        self._ghead[g] += 1
        if self._ghead[g] == self._glen[g]:
            self._ghead[g] = 0
        if rebase:  # rare: rebase every deadline, then restore the heap order
            base = self._ring[0].d
            for i in range(1, self._nactive):
                if self._ring[i].d < base:
                    base = self._ring[i].d
            base = floor(base)
            for i in range(self._nactive):
                self._ring[i].d -= base
            self._heapify()
        else:
            head = self._ring[self._gstart[g] + self._ghead[g]]
            head.g = g
            self._replace_top(head)
        return a


# --------------------------------------------------------------------------- hashing policy


cdef inline uint64_t _packet_hash(object packet) except? 0:
    cdef Packet pk
    cdef Py_ssize_t n
    cdef const char* p
    if packet is None:
        raise LBConfigError("consistent_hash needs the task's packet (or pick_key(session_id))")
    if type(packet) is Packet:
        pk = <Packet>packet
        if pk._sp_session_id.off >= 0:  # decoded and untouched: hash the wire bytes
            return _hash64(pk._base + pk._sp_session_id.off, pk._sp_session_id.len, 0)
    session_id = packet.session_id
    if not PyUnicode_Check(session_id):
        raise LBConfigError("packet.session_id must be str")
    p = PyUnicode_AsUTF8AndSize(session_id, &n)
    return _hash64(<const unsigned char*>p, n, 0)


cdef double _check_balance_factor(object factor) except -1:
    if factor is None:
        return 0.0
    if isinstance(factor, bool) or not isinstance(factor, (int, float)):
        raise LBConfigError(f"balance_factor must be a number, not {type(factor).__name__}")
    cdef double f = float(factor)
    if f != 0.0 and not (isfinite(f) and f >= 1.0):
        raise LBConfigError(f"balance_factor must be >= 1 (or 0 / None: off), not {f}")
    return f


cdef void _count_pass(const uint64_t* src, uint64_t* dst, Py_ssize_t n, int shift) noexcept nogil:
    """Stable counting sort of src into dst by the 11 bits at shift."""
    cdef Py_ssize_t count[2048]
    cdef Py_ssize_t i, total = 0, c
    cdef Py_ssize_t d
    memset(count, 0, sizeof(count))
    for i in range(n):
        count[(src[i] >> shift) & 2047] += 1
    for d in range(2048):
        c = count[d]
        count[d] = total
        total += c
    for i in range(n):
        d = <Py_ssize_t>((src[i] >> shift) & 2047)
        dst[count[d]] = src[i]
        count[d] += 1


cdef void _sort_u64(uint64_t* a, uint64_t* tmp, Py_ssize_t n) noexcept nogil:
    """Sort uniform 64-bit values: two counting passes on the top 22 bits (11 bits each,
    so the 2,048 output streams stay in cache), then an insertion pass that only meets
    values sharing their top 22 bits."""
    cdef Py_ssize_t i, j
    cdef uint64_t v
    _count_pass(a, tmp, n, 42)
    _count_pass(tmp, a, n, 53)
    for i in range(1, n):
        v = a[i]
        if a[i - 1] <= v:
            continue
        j = i
        while j > 0 and a[j - 1] > v:
            a[j] = a[j - 1]
            j -= 1
        a[j] = v


@cython.final
cdef class ConsistentHash(Balancer):
    """Session affinity: a ring of ``vnodes`` points per instance (1,024 by default),
    hashed from the ids; a session goes to the point nearest its hash (see the twin).

    The ring depends only on the set of available ids, so every executor process maps a
    session to the same instance; adding or removing one instance moves only the
    sessions it owns (about 1/N of them). With ``balance_factor`` (bounded loads, off by
    default) and T tasks in flight on the N available instances, a task goes to the
    first instance clockwise whose in-flight count is below
    ``balance_factor * (T + 1) / N``.

    One sorted uint64 array: a point's position in its high bits, its owner's rank (id
    order) in the low ``_shift`` bits, so a lookup touches one array (and ties between
    positions sort by rank, as in the twin).
    """

    cdef int _vnodes
    cdef double _factor
    cdef uint64_t* _ring       # position (low _shift bits clear) | owner rank, sorted
    cdef uint32_t* _rank_owner # owner rank -> active index
    cdef Py_ssize_t _npoints
    cdef int _shift
    cdef uint64_t _mask        # (1 << _shift) - 1
    cdef uint32_t* _bucket     # 2**_bits + 1 entries: first point with top bits >= b
    cdef int _bits
    name = "consistent_hash"
    PARAMS = ("seed", "weights", "vnodes", "balance_factor")

    def __init__(self, instances=(), *, vnodes=1024, balance_factor=None, **params):
        if isinstance(vnodes, bool) or not isinstance(vnodes, int) or not 1 <= vnodes <= 4096:
            raise LBConfigError(f"vnodes must be an int in 1..4096, not {vnodes!r}")
        self._vnodes = vnodes
        self._factor = _check_balance_factor(balance_factor)
        super().__init__(instances, **params)

    def __dealloc__(self):
        free(self._ring)
        PyMem_Free(self._rank_owner)
        PyMem_Free(self._bucket)

    cdef int _rebuild(self) except -1:
        cdef Py_ssize_t n = self._nactive * self._vnodes
        cdef Py_ssize_t r, a, k, i, j, b, idlen, nb
        cdef const char* idp
        cdef char* key = NULL
        cdef int bits = RING_BITS
        cdef int shift = 1
        while (<Py_ssize_t>1 << shift) <= self._nactive:
            shift += 1
        cdef uint64_t mask = (<uint64_t>1 << shift) - 1
        while bits < RING_BITS_MAX and (<Py_ssize_t>1 << bits) < n:
            bits += 1
        nb = <Py_ssize_t>1 << bits
        cdef uint64_t* ring = <uint64_t*>aiosf_ring_alloc((n + 1) * sizeof(uint64_t))
        cdef uint64_t* tmp = <uint64_t*>PyMem_Malloc((n + 1) * sizeof(uint64_t))
        cdef uint32_t* rank_owner = <uint32_t*>PyMem_Malloc((self._nactive + 1) * sizeof(uint32_t))
        cdef uint32_t* bucket = <uint32_t*>PyMem_Malloc((nb + 1) * sizeof(uint32_t))
        try:
            if ring == NULL or tmp == NULL or rank_owner == NULL or bucket == NULL:
                raise MemoryError()
            # Point k of an instance is hash64(b"<id>#<k>"), its low bits replaced by
            # the owner's rank among the sorted ids.
            j = 0
            for r, a in enumerate(sorted(range(self._nactive), key=self._active_ids.__getitem__)):
                rank_owner[r] = <uint32_t>a
                idp = PyUnicode_AsUTF8AndSize(self._active_ids[a], &idlen)
                PyMem_Free(key)
                key = <char*>PyMem_Malloc(idlen + 16)
                if key == NULL:
                    raise MemoryError()
                memcpy(key, idp, idlen)
                key[idlen] = 35  # "#"
                for k in range(self._vnodes):
                    ring[j] = (_hash64(<const unsigned char*>key,
                                       idlen + 1 + _put_decimal(key + idlen + 1, k), 0)
                               & ~mask) | <uint64_t>r
                    j += 1
            _sort_u64(ring, tmp, n)
            i = 0
            for b in range(nb + 1):  # bucket[b]: the first point whose top bits are >= b
                while i < n and <Py_ssize_t>(ring[i] >> (64 - bits)) < b:
                    i += 1
                bucket[b] = <uint32_t>i
        except BaseException:
            free(ring)
            PyMem_Free(rank_owner)
            PyMem_Free(bucket)
            raise
        finally:
            PyMem_Free(key)
            PyMem_Free(tmp)
        free(self._ring)
        PyMem_Free(self._rank_owner)
        PyMem_Free(self._bucket)
        self._ring = ring
        self._rank_owner = rank_owner
        self._bucket = bucket
        self._bits = bits
        self._shift = shift
        self._mask = mask
        self._npoints = n
        return 0

    cdef Py_ssize_t _choose(self, object packet) except -1:
        cdef uint64_t mask = self._mask
        cdef uint64_t h = _packet_hash(packet) & ~mask
        cdef Py_ssize_t b = <Py_ssize_t>(h >> (64 - self._bits))
        cdef Py_ssize_t lo = self._bucket[b]
        cdef Py_ssize_t hi = self._bucket[b + 1]
        cdef Py_ssize_t mid, prv
        cdef const uint64_t* ring = self._ring
        while lo < hi:  # first point at or after h within the bucket
            mid = (lo + hi) >> 1
            if ring[mid] < h:
                lo = mid + 1
            else:
                hi = mid
        # The nearest point, either side (distances mod 2**64; a tie goes clockwise).
        prv = (lo if lo > 0 else self._npoints) - 1
        if lo == self._npoints:
            lo = 0
        if h - (ring[prv] & ~mask) < (ring[lo] & ~mask) - h:
            lo = prv
        cdef Py_ssize_t a = self._rank_owner[ring[lo] & mask]
        cdef double limit
        if self._factor != 0.0 and self._inst[self._active[a]].out != 0:
            # Full: out * N >= factor * (T + 1), in doubles exactly as the twin compares.
            limit = self._factor * <double>(self._active_out + 1)
            while <double>(self._inst[self._active[a]].out * self._nactive) >= limit:
                lo = lo + 1 if lo + 1 < self._npoints else 0
                a = self._rank_owner[ring[lo] & mask]
        return a

    def shares(self):
        """Each available instance's share of the hash space (sums to 1): the fraction
        of all sessions it owns while bounded loads do not divert them."""
        cdef Py_ssize_t i, prv
        cdef uint64_t d, back
        cdef uint64_t mask = self._mask
        cdef double* acc
        if self._npoints <= 1:
            return {iid: 1.0 for iid in self._active_ids}
        acc = <double*>PyMem_Malloc(self._nactive * sizeof(double))
        if acc == NULL:
            raise MemoryError()
        try:
            for i in range(self._nactive):
                acc[i] = 0.0
            for i in range(self._npoints):
                # Keys between the two points: d of them (multiples of mask + 1); those
                # nearer the earlier point, (ceil(d / 2) - 1) units, go back to it.
                prv = (i if i > 0 else self._npoints) - 1
                d = ((self._ring[i] & ~mask) - (self._ring[prv] & ~mask)) >> self._shift
                if d == 0:
                    continue
                back = (d >> 1) + (d & 1) - 1
                acc[self._rank_owner[self._ring[prv] & mask]] += <double>back
                acc[self._rank_owner[self._ring[i] & mask]] += <double>(d - back)
            return {self._active_ids[i]: acc[i] / <double>(<uint64_t>1 << (64 - self._shift))
                    for i in range(self._nactive)}
        finally:
            PyMem_Free(acc)


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
