# cython: language_level=3
"""Compiled framing of the native instance link.

Behaviour is defined by the pure twin ``aios_fast._link_py`` (read its docstrings):
the same chunks give the same frames. Here the header is read in C and a frame that
arrived whole is sliced off the chunk without a Python-level loop per byte.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from libc.stdint cimport uint8_t, uint32_t
from libc.string cimport memcpy

cdef enum:
    C_HEADER = 5
    C_BIG = 65536

IMPLEMENTATION = "compiled"
HEADER = C_HEADER
BIG = C_BIG


class FrameError(ValueError):
    """The peer sent a frame this side will not take (over its limit)."""


cdef inline uint32_t _le32(const uint8_t* p) noexcept:
    return <uint32_t>p[0] | (<uint32_t>p[1] << 8) | (<uint32_t>p[2] << 16) | (<uint32_t>p[3] << 24)


cdef inline void _put_header(char* p, int kind, Py_ssize_t length) noexcept:
    p[0] = <char>(length & 0xff)
    p[1] = <char>((length >> 8) & 0xff)
    p[2] = <char>((length >> 16) & 0xff)
    p[3] = <char>((length >> 24) & 0xff)
    p[4] = <char>kind


def header(int kind, Py_ssize_t length):
    cdef bytes out = PyBytes_FromStringAndSize(NULL, C_HEADER)
    _put_header(PyBytes_AS_STRING(out), kind, length)
    return out


def frame(int kind, bytes body=b""):
    cdef Py_ssize_t n = PyBytes_GET_SIZE(body)
    cdef bytes out = PyBytes_FromStringAndSize(NULL, C_HEADER + n)
    cdef char* p = PyBytes_AS_STRING(out)
    _put_header(p, kind, n)
    if n:
        memcpy(p + C_HEADER, PyBytes_AS_STRING(body), n)
    return out


cdef class FrameReader:
    """Splits a byte stream into frames; bodies of at most ``limit`` bytes."""

    cdef public Py_ssize_t limit
    cdef list _parts  # the start of a frame not complete yet, as read
    cdef Py_ssize_t _have  # bytes in _parts
    cdef Py_ssize_t _need  # bytes the frame in _parts needs in all (0: header incomplete)

    def __init__(self, Py_ssize_t limit):
        self.limit = limit
        self._parts = []
        self._have = self._need = 0

    @property
    def buffered(self):
        return self._have

    def feed(self, bytes data):
        cdef list frames = []
        cdef bytes chunk
        if self._have:
            self._parts.append(data)
            self._have += PyBytes_GET_SIZE(data)
            if self._need and self._have < self._need:
                return frames  # a large frame still arriving: joined once, when whole
            chunk = b"".join(self._parts)
            self._parts = []
            self._have = self._need = 0
        else:
            chunk = data
        cdef const uint8_t* p = <const uint8_t*>PyBytes_AS_STRING(chunk)
        cdef Py_ssize_t pos = 0, end = PyBytes_GET_SIZE(chunk), length, start
        cdef int kind
        view = None
        while end - pos >= C_HEADER:
            length = _le32(p + pos)
            kind = p[pos + 4]
            if length > self.limit:
                raise FrameError(f"a {length:,}-byte frame is over the {self.limit:,}-byte limit")
            if end - pos - C_HEADER < length:
                self._need = C_HEADER + length
                break
            start = pos + C_HEADER
            if length >= C_BIG:
                if view is None:
                    view = memoryview(chunk)
                frames.append((kind, view[start:start + length]))
            else:
                frames.append((kind, PyBytes_FromStringAndSize(<const char*>p + start, length)))
            pos = start + length
        if pos < end:
            self._parts.append(chunk[pos:] if pos else chunk)
            self._have = end - pos
        return frames
