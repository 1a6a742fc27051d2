# cython: language_level=3
"""Compiled packet codec: InferenceMessage / AIOSPacket without protobuf objects.

Behaviour is defined by the pure twin ``aios_fast._codec_py`` (read its docstring);
this module must agree with it on every input. Decoding makes one pass over the
buffer, validates structure and UTF-8, and records spans; strings are built on
first access and bytes fields are memoryview slices of the caller's buffer.
"""

cimport cython
from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_CheckExact, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.mem cimport PyMem_Free, PyMem_Realloc
from cpython.unicode cimport PyUnicode_DecodeUTF8
from libc.stdint cimport uint8_t, uint32_t, uint64_t
from libc.string cimport memcpy

from aios_fast._cpython cimport PyMemoryView_FromObject, PyUnicode_AsUTF8AndSize, aiosf_load_le64

from aios_fast.errors import PacketDecodeError, PacketEncodeError

cdef extern from *:
    """
    #include <stdint.h>
    #include <string.h>
    /* UTF-8 validation as in the Unicode standard, table 3-7: rejects overlong
       forms, surrogates and code points past U+10FFFF (as upb and CPython do).
       Returns 2 when the bytes are all ASCII, 1 when valid with non-ASCII, else 0
       with *bad set to the offending offset. */
    static int aiosf_utf8_valid(const unsigned char* s, Py_ssize_t n, Py_ssize_t* bad) {
        Py_ssize_t i = 0;
        int ascii = 2;
        while (i < n) {
            /* ASCII fast path: 32, then 8 bytes at a time, then the zero-padded tail. */
            while (i + 32 <= n) {
                uint64_t w0, w1, w2, w3;
                memcpy(&w0, s + i, 8);
                memcpy(&w1, s + i + 8, 8);
                memcpy(&w2, s + i + 16, 8);
                memcpy(&w3, s + i + 24, 8);
                if ((w0 | w1 | w2 | w3) & 0x8080808080808080ULL) break;
                i += 32;
            }
            while (i + 8 <= n) {
                uint64_t w;
                memcpy(&w, s + i, 8);
                if (w & 0x8080808080808080ULL) break;
                i += 8;
            }
            if (i < n && n - i < 8) {
                uint64_t w = 0;
                memcpy(&w, s + i, (size_t)(n - i));
                if (!(w & 0x8080808080808080ULL)) return ascii;
            }
            if (i >= n) break;
            unsigned char c = s[i];
            if (c < 0x80) { i++; continue; }
            ascii = 1;
            if (c >= 0xC2 && c <= 0xDF) {
                if (i + 1 >= n || (s[i + 1] & 0xC0) != 0x80) goto fail;
                i += 2;
            } else if (c >= 0xE0 && c <= 0xEF) {
                if (i + 2 >= n) goto fail;
                unsigned char c1 = s[i + 1];
                if (c == 0xE0) { if (c1 < 0xA0 || c1 > 0xBF) goto fail; }
                else if (c == 0xED) { if (c1 < 0x80 || c1 > 0x9F) goto fail; }
                else if ((c1 & 0xC0) != 0x80) goto fail;
                if ((s[i + 2] & 0xC0) != 0x80) goto fail;
                i += 3;
            } else if (c >= 0xF0 && c <= 0xF4) {
                if (i + 3 >= n) goto fail;
                unsigned char c1 = s[i + 1];
                if (c == 0xF0) { if (c1 < 0x90 || c1 > 0xBF) goto fail; }
                else if (c == 0xF4) { if (c1 < 0x80 || c1 > 0x8F) goto fail; }
                else if ((c1 & 0xC0) != 0x80) goto fail;
                if ((s[i + 2] & 0xC0) != 0x80 || (s[i + 3] & 0xC0) != 0x80) goto fail;
                i += 4;
            } else goto fail;
        }
        return ascii;
    fail:
        *bad = i;
        return 0;
    }

    /* A str from bytes already validated: ASCII ones are copied straight in. */
    static PyObject* aiosf_make_str(const char* p, Py_ssize_t n, int ascii) {
        if (ascii) {
            PyObject* s = PyUnicode_New(n, 127);
            if (s != NULL) memcpy(PyUnicode_DATA(s), p, (size_t)n);
            return s;
        }
        return PyUnicode_DecodeUTF8(p, n, NULL);
    }
    """
    int aiosf_utf8_valid(const unsigned char* s, Py_ssize_t n, Py_ssize_t* bad) noexcept nogil
    object aiosf_make_str(const char* p, Py_ssize_t n, int ascii)

__all__ = [
    "IMPLEMENTATION",
    "MAX_DEPTH",
    "FileInfo",
    "Packet",
    "decode_message",
    "decode_packet",
    "encode_message",
    "encode_packet",
    "peel_message",
]

IMPLEMENTATION = "c"
cdef enum:
    C_MAX_DEPTH = 100  # group nesting limit, as upb's default decode depth
    WT_VARINT = 0
    WT_I64 = 1
    WT_LEN = 2
    WT_SGROUP = 3
    WT_EGROUP = 4
    WT_I32 = 5

MAX_DEPTH = C_MAX_DEPTH

# Error codes, indexes into _REASONS (same strings as PacketDecodeError.REASONS).
cdef enum:
    E_TRUNCATED = 1
    E_VARINT_TOO_LONG
    E_LENGTH_OVERFLOW
    E_BAD_TAG
    E_BAD_WIRE_TYPE
    E_WRONG_WIRE_TYPE
    E_BAD_GROUP
    E_TOO_DEEP
    E_INVALID_UTF8

_REASONS = (None, "truncated", "varint_too_long", "length_overflow", "bad_tag",
            "bad_wire_type", "wrong_wire_type", "bad_group", "too_deep", "invalid_utf8")


cdef struct Cur:
    const uint8_t* p
    int err
    Py_ssize_t err_off


cdef inline Py_ssize_t _fail(Cur* c, int err, Py_ssize_t at) noexcept nogil:
    c.err = err
    c.err_off = at
    return -1


cdef inline Py_ssize_t _varint(Cur* c, Py_ssize_t pos, Py_ssize_t end, uint64_t* out,
                               int maxlen) noexcept nogil:
    """Read a varint at pos; returns the position after it or -1 (error in c)."""
    cdef const uint8_t* p = c.p
    cdef uint64_t b
    cdef uint64_t r = 0
    cdef int shift = 0
    cdef Py_ssize_t start = pos
    if pos < end and p[pos] < 0x80:
        out[0] = p[pos]
        return pos + 1
    while True:
        if pos >= end:
            return _fail(c, E_TRUNCATED, start)
        if pos - start >= maxlen:
            return _fail(c, E_VARINT_TOO_LONG, start)
        b = p[pos]
        pos += 1
        r |= (b & 0x7F) << shift
        if not (b & 0x80):
            out[0] = r
            return pos
        shift += 7


cdef inline Py_ssize_t _tag(Cur* c, Py_ssize_t pos, Py_ssize_t end, uint32_t* field,
                            int* wt, bint in_group=False) noexcept nogil:
    """Read a tag. Field number 0 is an error except inside a group, where upb accepts it."""
    cdef uint64_t tag
    cdef Py_ssize_t start = pos
    pos = _varint(c, pos, end, &tag, 5)
    if pos < 0:
        return -1
    if tag > 0xFFFFFFFFULL or ((tag >> 3) == 0 and not in_group):
        return _fail(c, E_BAD_TAG, start)
    if (tag & 7) > WT_I32:
        return _fail(c, E_BAD_WIRE_TYPE, start)
    field[0] = <uint32_t>(tag >> 3)
    wt[0] = <int>(tag & 7)
    return pos


cdef inline Py_ssize_t _length(Cur* c, Py_ssize_t pos, Py_ssize_t end, Span* sp) noexcept nogil:
    cdef uint64_t n
    cdef Py_ssize_t start = pos
    pos = _varint(c, pos, end, &n, 5)  # upb reads a length from at most 5 bytes
    if pos < 0:
        return -1
    if n > <uint64_t>(end - pos):
        return _fail(c, E_LENGTH_OVERFLOW, start)
    sp.off = pos
    sp.len = <Py_ssize_t>n
    return pos + <Py_ssize_t>n


cdef Py_ssize_t _skip(Cur* c, uint32_t field, int wt, Py_ssize_t pos, Py_ssize_t end,
                      int depth) noexcept nogil:
    """Skip one unknown field whose tag was read at pos; groups nest up to MAX_DEPTH."""
    cdef uint64_t ignored
    cdef Span sp
    cdef uint32_t f
    cdef int w
    cdef Py_ssize_t at
    if wt == WT_VARINT:
        return _varint(c, pos, end, &ignored, 10)
    if wt == WT_I64:
        return pos + 8 if end - pos >= 8 else _fail(c, E_TRUNCATED, pos)
    if wt == WT_I32:
        return pos + 4 if end - pos >= 4 else _fail(c, E_TRUNCATED, pos)
    if wt == WT_LEN:
        return _length(c, pos, end, &sp)
    if wt == WT_SGROUP:
        if depth + 1 > C_MAX_DEPTH:
            return _fail(c, E_TOO_DEEP, pos)
        while True:
            if pos >= end:
                return _fail(c, E_BAD_GROUP, pos)
            at = pos
            pos = _tag(c, pos, end, &f, &w, True)
            if pos < 0:
                return -1
            if w == WT_EGROUP:
                return pos if f == field else _fail(c, E_BAD_GROUP, at)
            pos = _skip(c, f, w, pos, end, depth + 1)
            if pos < 0:
                return -1
    return _fail(c, E_BAD_GROUP, pos)  # WT_EGROUP: _tag refused wire types 6 and 7


cdef inline bint _check_utf8(Cur* c, Span* sp) noexcept nogil:
    """Validate a string span; marks it ASCII (sp.ascii) so its str is a plain copy."""
    cdef Py_ssize_t bad = 0
    cdef int kind
    if sp.len == 0:
        sp.ascii = 1
        return True
    kind = aiosf_utf8_valid(c.p + sp.off, sp.len, &bad)
    if kind:
        sp.ascii = kind == 2
        return True
    _fail(c, E_INVALID_UTF8, sp.off + bad)
    return False


cdef Py_ssize_t _parse_file(Cur* c, Py_ssize_t pos, Py_ssize_t end, FileSpan* fs) noexcept nogil:
    cdef uint32_t field
    cdef int wt
    cdef Py_ssize_t at
    fs.meta.off = 0
    fs.meta.len = 0
    fs.data.off = 0
    fs.data.len = 0
    while pos < end:
        at = pos
        pos = _tag(c, pos, end, &field, &wt)
        if pos < 0:
            return -1
        if field == 1 or field == 2:
            if wt != WT_LEN:
                return _fail(c, E_WRONG_WIRE_TYPE, at)
            pos = _length(c, pos, end, &fs.meta if field == 1 else &fs.data)
            # Every occurrence of a string is validated, as upb does (not just the last).
            if pos >= 0 and field == 1 and not _check_utf8(c, &fs.meta):
                return -1
        else:
            pos = _skip(c, field, wt, pos, end, 1)
        if pos < 0:
            return -1
    return pos


cdef int _parse_packet(Packet pk, Cur* c, Py_ssize_t pos, Py_ssize_t end) except -1:
    """Fill pk's spans from the AIOSPacket at [pos, end). Raises PacketDecodeError."""
    cdef uint32_t field
    cdef int wt
    cdef Py_ssize_t at
    cdef uint64_t bits
    cdef Span sp
    cdef Py_ssize_t ncap
    cdef FileSpan* grown
    while pos < end:
        at = pos
        pos = _tag(c, pos, end, &field, &wt)
        if pos < 0:
            break
        if field == 1 or field == 3 or field == 4 or field == 6 or field == 7:
            if wt != WT_LEN:
                pos = _fail(c, E_WRONG_WIRE_TYPE, at)
                break
            pos = _length(c, pos, end, &sp)
            if pos < 0:
                break
            # Every occurrence of a string is validated, as upb does (not just the last).
            if (field == 1 or field == 4 or field == 6) and not _check_utf8(c, &sp):
                pos = -1
                break
            if field == 1:
                pk._sp_session_id = sp
            elif field == 3:
                pk._sp_frame_ptr = sp
            elif field == 4:
                pk._sp_data = sp
            elif field == 6:
                pk._sp_output_ptr = sp
            else:
                if pk._nfiles == pk._fcap:
                    if pk._fcap == 0:  # the first files live inside the object: no malloc
                        pk._fspans = pk._finline
                        pk._fcap = 2
                    else:
                        ncap = pk._fcap * 2
                        grown = <FileSpan*>PyMem_Realloc(
                            NULL if pk._fspans == pk._finline else pk._fspans,
                            ncap * sizeof(FileSpan))
                        if grown == NULL:
                            raise MemoryError()
                        if pk._fspans == pk._finline:
                            memcpy(grown, pk._finline, pk._nfiles * sizeof(FileSpan))
                        pk._fspans = grown
                        pk._fcap = ncap
                if _parse_file(c, sp.off, sp.off + sp.len, &pk._fspans[pk._nfiles]) < 0:
                    pos = -1
                    break
                pk._nfiles += 1
        elif field == 2:
            if wt != WT_VARINT:
                pos = _fail(c, E_WRONG_WIRE_TYPE, at)
                break
            pos = _varint(c, pos, end, &pk._seq_no, 10)
        elif field == 5:
            if wt != WT_I64:
                pos = _fail(c, E_WRONG_WIRE_TYPE, at)
                break
            if end - pos < 8:
                pos = _fail(c, E_TRUNCATED, pos)
                break
            bits = aiosf_load_le64(c.p + pos)
            memcpy(&pk._ts, &bits, 8)
            pos += 8
        else:
            pos = _skip(c, field, wt, pos, end, 0)
        if pos < 0:
            break
    if pos >= 0:
        return 0
    raise PacketDecodeError(_REASONS[c.err], c.err_off)


cdef Py_ssize_t _rpc_data(Cur* c, Py_ssize_t end, Span* sp) except -2:
    cdef uint32_t field
    cdef int wt
    cdef Py_ssize_t at
    cdef Py_ssize_t pos = 0
    sp.off = 0
    sp.len = 0
    while pos < end:
        at = pos
        pos = _tag(c, pos, end, &field, &wt)
        if pos < 0:
            break
        if field == 1:
            if wt != WT_LEN:
                pos = _fail(c, E_WRONG_WIRE_TYPE, at)
                break
            pos = _length(c, pos, end, sp)
        else:
            pos = _skip(c, field, wt, pos, end, 0)
        if pos < 0:
            break
    if pos < 0:
        raise PacketDecodeError(_REASONS[c.err], c.err_off)
    return 0


# --------------------------------------------------------------------------- values


cdef inline object _check_bytes_like(object value, str name):
    if isinstance(value, (bytes, bytearray, memoryview)):
        return value
    raise PacketEncodeError(f"{name} must be bytes-like, not {type(value).__name__}")


cdef inline str _check_str(object value, str name):
    if isinstance(value, str):
        return value
    raise PacketEncodeError(f"{name} must be str, not {type(value).__name__}")


cdef Span _NO_SPAN
_NO_SPAN.off = -1
_NO_SPAN.len = 0


@cython.final
@cython.no_gc_clear
cdef class _Source:
    """Holds a non-bytes exporter's buffer for as long as spans into it are read.

    no_gc_clear: the exporter must not be dropped before the buffer is released.
    """

    def __cinit__(self, object owner):
        PyObject_GetBuffer(owner, &self.view, PyBUF_SIMPLE)
        self.held = True

    def __dealloc__(self):
        if self.held:
            PyBuffer_Release(&self.view)
            self.held = False


cdef str _decode_str(const uint8_t* base, Span* sp):
    # Valid UTF-8 was checked at decode time; spans of hand-built values are never read.
    if sp.len == 0:
        return ""
    return aiosf_make_str(<const char*>base + sp.off, sp.len, sp.ascii)


cdef object _byte_view(object owner):
    cdef object mv = PyMemoryView_FromObject(owner)
    if mv.ndim != 1 or mv.itemsize != 1 or mv.format != "B":
        mv = mv.cast("B")
    return mv


# Packet and FileInfo are GC-tracked: user code can close a cycle through them
# (packet.files.append(packet), a bytearray subclass in frame_ptr pointing back at its
# packet), which only the collector frees. no_gc_clear: the collector never clears them
# (their _owner must outlive _base); every such cycle also runs through a list or a
# Python object the collector does clear, since their own fields hold only str,
# bytes-like values and the files list.
@cython.final
@cython.no_gc_clear
@cython.freelist(16)
cdef class FileInfo:
    """One ``FileInfo``: ``metadata`` (str) and ``file_data`` (bytes-like, a view when decoded)."""

    # No __cinit__: decoding allocates these per packet and must stay cheap.
    def __init__(self, metadata="", file_data=b""):
        self.metadata = metadata
        self.file_data = file_data

    @property
    def metadata(self):
        if self._metadata is None:
            self._metadata = _decode_str(self._base, &self._sp_meta)
        return self._metadata

    @metadata.setter
    def metadata(self, value):
        self._metadata = _check_str(value, "metadata")
        self._sp_meta = _NO_SPAN

    @property
    def file_data(self):
        if self._file_data is None:
            self._file_data = _byte_view(self._owner)[
                self._sp_data.off:self._sp_data.off + self._sp_data.len]
        return self._file_data

    @file_data.setter
    def file_data(self, value):
        self._file_data = _check_bytes_like(value, "file_data")
        self._sp_data = _NO_SPAN

    def __eq__(self, other):
        if not isinstance(other, FileInfo):
            return NotImplemented
        return self.metadata == other.metadata and self.file_data == other.file_data

    __hash__ = None

    def __repr__(self):
        return f"FileInfo(metadata={self.metadata!r}, file_data=<{len(self.file_data)} bytes>)"


_FIELDS = ("session_id", "seq_no", "frame_ptr", "data", "ts", "output_ptr", "files")


@cython.final
@cython.no_gc_clear
@cython.freelist(32)
cdef class Packet:
    """An ``AIOSPacket`` with the protobuf class's attribute names.

    Decoded packets reference the caller's buffer: ``frame_ptr`` and every
    ``file_data`` are memoryviews into it (into a copy taken at decode when the buffer
    was mutable, so a decoded packet never changes). Assigning a field patches the packet;
    ``encode_packet`` turns it back into protobuf-identical bytes.
    """

    # No __cinit__: decoding allocates one per task and must stay cheap. Setters mark
    # each span invalid (off = -1), so a hand-built packet never reads a buffer.
    def __init__(self, session_id="", seq_no=0, frame_ptr=b"", data="", ts=0.0,
                 output_ptr="", files=()):
        self.session_id = session_id
        self.seq_no = seq_no
        self.frame_ptr = frame_ptr
        self.data = data
        self.ts = ts
        self.output_ptr = output_ptr
        self.files = files

    def __dealloc__(self):
        if self._fspans != NULL and self._fspans != self._finline:
            PyMem_Free(self._fspans)
        self._fspans = NULL

    cdef str _str(self, Span* sp):
        return _decode_str(self._base, sp)

    cdef object _slice(self, Py_ssize_t off, Py_ssize_t n):
        if self._mv is None:
            self._mv = _byte_view(self._owner)
        return self._mv[off:off + n]

    cpdef str get_session_id(self):
        if self._session_id is None:
            self._session_id = self._str(&self._sp_session_id)
        return self._session_id

    @property
    def session_id(self):
        return self.get_session_id()

    @session_id.setter
    def session_id(self, value):
        self._session_id = _check_str(value, "session_id")
        self._sp_session_id = _NO_SPAN

    @property
    def seq_no(self):
        return self._seq_no

    @seq_no.setter
    def seq_no(self, value):
        if isinstance(value, bool) or not isinstance(value, int):
            raise PacketEncodeError(f"seq_no must be int, not {type(value).__name__}")
        if not 0 <= value <= 0xFFFFFFFFFFFFFFFF:
            raise PacketEncodeError(f"seq_no {value} out of uint64 range")
        self._seq_no = value

    @property
    def frame_ptr(self):
        if self._frame_ptr is None:
            self._frame_ptr = self._slice(self._sp_frame_ptr.off, self._sp_frame_ptr.len)
        return self._frame_ptr

    @frame_ptr.setter
    def frame_ptr(self, value):
        self._frame_ptr = _check_bytes_like(value, "frame_ptr")
        self._sp_frame_ptr = _NO_SPAN

    @property
    def data(self):
        if self._data is None:
            self._data = self._str(&self._sp_data)
        return self._data

    @data.setter
    def data(self, value):
        self._data = _check_str(value, "data")
        self._sp_data = _NO_SPAN

    @property
    def ts(self):
        return self._ts

    @ts.setter
    def ts(self, value):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise PacketEncodeError(f"ts must be float, not {type(value).__name__}")
        self._ts = float(value)

    @property
    def output_ptr(self):
        if self._output_ptr is None:
            self._output_ptr = self._str(&self._sp_output_ptr)
        return self._output_ptr

    @output_ptr.setter
    def output_ptr(self, value):
        self._output_ptr = _check_str(value, "output_ptr")
        self._sp_output_ptr = _NO_SPAN

    @property
    def files(self):
        cdef Py_ssize_t i
        cdef FileInfo info
        if self._files is None:
            files = []
            for i in range(self._nfiles):
                info = FileInfo.__new__(FileInfo)
                info._owner = self._owner
                info._src = self._src
                info._base = self._base
                info._sp_meta = self._fspans[i].meta
                info._sp_data = self._fspans[i].data
                files.append(info)
            self._files = files
        return self._files

    @files.setter
    def files(self, value):
        files = list(value)
        for f in files:
            if not isinstance(f, FileInfo):
                raise PacketEncodeError(f"files must hold FileInfo, not {type(f).__name__}")
        self._files = files

    def replace(self, **changes):
        """A copy with some fields changed (views are shared, not copied)."""
        unknown = set(changes) - set(_FIELDS)
        if unknown:
            raise TypeError(f"unknown Packet field(s): {', '.join(sorted(unknown))}")
        values = {name: getattr(self, name) for name in _FIELDS}
        values["files"] = [FileInfo(f.metadata, f.file_data) for f in self.files]
        values.update(changes)
        return Packet(**values)

    def __eq__(self, other):
        if not isinstance(other, Packet):
            return NotImplemented
        if self.ts != other.ts and not (self.ts != self.ts and other.ts != other.ts):
            return False
        return all(getattr(self, n) == getattr(other, n) for n in _FIELDS if n != "ts")

    __hash__ = None

    def __repr__(self):
        return (
            f"Packet(session_id={self.session_id!r}, seq_no={self.seq_no}, "
            f"frame_ptr=<{len(self.frame_ptr)} bytes>, data={self.data!r}, ts={self.ts!r}, "
            f"output_ptr={self.output_ptr!r}, files=<{len(self.files)}>)"
        )


# --------------------------------------------------------------------------- decoding


cdef inline Packet _bind(object buf, Cur* c, Py_ssize_t* n):
    """A fresh Packet holding buf's memory (or a snapshot of it); c.p and n point at it.

    A Packet never reads memory its caller can change: bytes (and memoryviews of bytes)
    are used in place; any other buffer (bytearray, a writable memoryview, array, mmap)
    is copied once into bytes, as otherwise a later write would change strings already
    validated as UTF-8, the hashed session_id and every view handed out.
    """
    cdef Packet pk = Packet.__new__(Packet)
    cdef _Source src
    if not PyBytes_CheckExact(buf):
        src = _Source(buf)
        if type(buf) is memoryview and PyBytes_CheckExact(buf.obj):
            pk._src = src  # immutable memory: zero copy, the buffer is held
            c.p = <const uint8_t*>src.view.buf
            n[0] = src.view.len
            pk._owner = buf
            pk._base = c.p
            return pk
        buf = PyBytes_FromStringAndSize(<const char*>src.view.buf, src.view.len)
        src = None  # the snapshot is taken: release the caller's buffer now
    c.p = <const uint8_t*>PyBytes_AS_STRING(buf)
    n[0] = PyBytes_GET_SIZE(buf)
    pk._owner = buf
    pk._base = c.p
    return pk


cpdef Packet decode_packet(object buf):
    """Decode a serialized ``AIOSPacket`` (any bytes-like object) into a Packet view."""
    cdef Cur c
    cdef Py_ssize_t n
    cdef Packet pk = _bind(buf, &c, &n)
    _parse_packet(pk, &c, 0, n)
    return pk


cpdef Packet decode_message(object buf):
    """Decode an ``InferenceMessage`` frame and the ``AIOSPacket`` inside it."""
    cdef Cur c
    cdef Py_ssize_t n
    cdef Span sp
    cdef Packet pk = _bind(buf, &c, &n)
    _rpc_data(&c, n, &sp)
    _parse_packet(pk, &c, sp.off, sp.off + sp.len)
    return pk


def peel_message(object buf):
    """``rpc_data`` of a serialized ``InferenceMessage``, as a view (no copy)."""
    cdef Cur c
    cdef Py_ssize_t n
    cdef Span sp
    cdef Packet pk = _bind(buf, &c, &n)
    _rpc_data(&c, n, &sp)
    return pk._slice(sp.off, sp.len)


# --------------------------------------------------------------------------- encoding


cdef inline Py_ssize_t _varint_size(uint64_t v) noexcept nogil:
    cdef Py_ssize_t n = 1
    while v > 0x7F:
        v >>= 7
        n += 1
    return n


cdef inline uint8_t* _put_varint(uint8_t* o, uint64_t v) noexcept nogil:
    while v > 0x7F:
        o[0] = <uint8_t>((v & 0x7F) | 0x80)
        o += 1
        v >>= 7
    o[0] = <uint8_t>v
    return o + 1


cdef inline uint8_t* _put_len(uint8_t* o, uint8_t tag, const uint8_t* p, Py_ssize_t n) noexcept nogil:
    if n == 0:
        return o
    o[0] = tag
    o = _put_varint(o + 1, <uint64_t>n)
    memcpy(o, p, n)
    return o + n


cdef inline Py_ssize_t _len_size(Py_ssize_t n) noexcept nogil:
    return 0 if n == 0 else 1 + _varint_size(<uint64_t>n) + n


cdef class _Pieces:
    """Pointers to every byte run an encode copies, with the buffers that back them."""
    cdef const uint8_t** ptrs
    cdef Py_ssize_t* lens
    cdef Py_buffer* bufs
    cdef Py_ssize_t nbufs, cap
    cdef list keep

    def __cinit__(self, Py_ssize_t cap):
        self.cap = cap
        self.ptrs = <const uint8_t**>PyMem_Realloc(NULL, cap * sizeof(void*))
        self.lens = <Py_ssize_t*>PyMem_Realloc(NULL, cap * sizeof(Py_ssize_t))
        self.bufs = <Py_buffer*>PyMem_Realloc(NULL, cap * sizeof(Py_buffer))
        if self.ptrs == NULL or self.lens == NULL or self.bufs == NULL:
            raise MemoryError()
        self.keep = []

    def __dealloc__(self):
        cdef Py_ssize_t i
        for i in range(self.nbufs):
            PyBuffer_Release(&self.bufs[i])
        PyMem_Free(self.ptrs)
        PyMem_Free(self.lens)
        PyMem_Free(self.bufs)

    cdef int span(self, Py_ssize_t i, const uint8_t* base, Span* sp) except -1:
        self.ptrs[i] = base + sp.off
        self.lens[i] = sp.len
        return 0

    cdef int text(self, Py_ssize_t i, object value, str name) except -1:
        cdef Py_ssize_t n
        try:
            self.ptrs[i] = <const uint8_t*>PyUnicode_AsUTF8AndSize(value, &n)
        except UnicodeEncodeError as exc:
            raise PacketEncodeError(f"{name} is not encodable as UTF-8: {exc.reason}") from None
        self.lens[i] = n
        self.keep.append(value)
        return 0

    cdef int raw(self, Py_ssize_t i, object value) except -1:
        if PyBytes_CheckExact(value):
            self.ptrs[i] = <const uint8_t*>PyBytes_AS_STRING(value)
            self.lens[i] = PyBytes_GET_SIZE(value)
            self.keep.append(value)
            return 0
        try:
            PyObject_GetBuffer(value, &self.bufs[self.nbufs], PyBUF_SIMPLE)
        except BufferError:  # PyBUF_SIMPLE refuses non-contiguous views
            raise PacketEncodeError("bytes fields must be C-contiguous buffers") from None
        self.ptrs[i] = <const uint8_t*>self.bufs[self.nbufs].buf
        self.lens[i] = self.bufs[self.nbufs].len
        self.nbufs += 1
        return 0


def encode_packet(object packet):
    """Serialize a Packet; the bytes equal protobuf's ``SerializeToString`` for the same values."""
    if not isinstance(packet, Packet):
        raise PacketEncodeError(f"expected a Packet, not {type(packet).__name__}")
    cdef Packet pk = <Packet>packet
    cdef Py_ssize_t nfiles = pk._nfiles if pk._files is None else len(pk._files)
    cdef _Pieces pcs = _Pieces(4 + 2 * nfiles)
    cdef Py_ssize_t i, k, body, total
    cdef FileInfo info
    cdef uint64_t ts_bits
    # 0 session_id, 1 frame_ptr, 2 data, 3 output_ptr, then metadata/file_data pairs.
    if pk._sp_session_id.off >= 0:
        pcs.span(0, pk._base, &pk._sp_session_id)
    else:
        pcs.text(0, pk._session_id, "session_id")
    if pk._sp_frame_ptr.off >= 0:
        pcs.span(1, pk._base, &pk._sp_frame_ptr)
    else:
        pcs.raw(1, pk._frame_ptr)
    if pk._sp_data.off >= 0:
        pcs.span(2, pk._base, &pk._sp_data)
    else:
        pcs.text(2, pk._data, "data")
    if pk._sp_output_ptr.off >= 0:
        pcs.span(3, pk._base, &pk._sp_output_ptr)
    else:
        pcs.text(3, pk._output_ptr, "output_ptr")
    if pk._files is None:
        for i in range(nfiles):
            pcs.span(4 + 2 * i, pk._base, &pk._fspans[i].meta)
            pcs.span(5 + 2 * i, pk._base, &pk._fspans[i].data)
    else:
        for i in range(nfiles):
            info = <FileInfo?>pk._files[i]
            if info._sp_meta.off >= 0:
                pcs.span(4 + 2 * i, info._base, &info._sp_meta)
            else:
                pcs.text(4 + 2 * i, info._metadata, "metadata")
            if info._sp_data.off >= 0:
                pcs.span(5 + 2 * i, info._base, &info._sp_data)
            else:
                pcs.raw(5 + 2 * i, info._file_data)
            pcs.keep.append(info)
    memcpy(&ts_bits, &pk._ts, 8)
    total = (_len_size(pcs.lens[0]) + _len_size(pcs.lens[1]) + _len_size(pcs.lens[2])
             + _len_size(pcs.lens[3]))
    if pk._seq_no:
        total += 1 + _varint_size(pk._seq_no)
    if ts_bits:
        total += 9
    for i in range(nfiles):
        k = 4 + 2 * i
        body = _len_size(pcs.lens[k]) + _len_size(pcs.lens[k + 1])
        total += 1 + _varint_size(<uint64_t>body) + body
    out = PyBytes_FromStringAndSize(NULL, total)
    cdef uint8_t* o = <uint8_t*>PyBytes_AS_STRING(out)
    o = _put_len(o, 0x0A, pcs.ptrs[0], pcs.lens[0])
    if pk._seq_no:
        o[0] = 0x10
        o = _put_varint(o + 1, pk._seq_no)
    o = _put_len(o, 0x1A, pcs.ptrs[1], pcs.lens[1])
    o = _put_len(o, 0x22, pcs.ptrs[2], pcs.lens[2])
    if ts_bits:
        o[0] = 0x29
        for i in range(8):
            o[1 + i] = <uint8_t>(ts_bits >> (8 * i))
        o += 9
    o = _put_len(o, 0x32, pcs.ptrs[3], pcs.lens[3])
    for i in range(nfiles):
        k = 4 + 2 * i
        body = _len_size(pcs.lens[k]) + _len_size(pcs.lens[k + 1])
        o[0] = 0x3A
        o = _put_varint(o + 1, <uint64_t>body)
        o = _put_len(o, 0x0A, pcs.ptrs[k], pcs.lens[k])
        o = _put_len(o, 0x12, pcs.ptrs[k + 1], pcs.lens[k + 1])
    return out


def encode_message(object payload):
    """Wrap serialized packet bytes (or a Packet) into an ``InferenceMessage`` frame."""
    if isinstance(payload, Packet):
        payload = encode_packet(payload)
    _check_bytes_like(payload, "rpc_data")
    cdef _Pieces pcs = _Pieces(1)
    pcs.raw(0, payload)
    out = PyBytes_FromStringAndSize(NULL, _len_size(pcs.lens[0]))
    _put_len(<uint8_t*>PyBytes_AS_STRING(out), 0x0A, pcs.ptrs[0], pcs.lens[0])
    return out
