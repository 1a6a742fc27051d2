# Declarations of the packet codec, for other extensions to cimport
# (``from aios_fast._codec cimport Packet``).
from libc.stdint cimport uint8_t, uint64_t


cdef struct Span:
    Py_ssize_t off      # absolute offset into the owner's buffer; -1: use the object
    Py_ssize_t len
    int ascii           # strings: all bytes < 0x80 (set by validation)


cdef struct FileSpan:
    Span meta
    Span data


cdef class _Source:
    cdef Py_buffer view           # held buffer of a non-bytes exporter
    cdef bint held


cdef class Packet:
    cdef object _owner            # exporter of the decoded buffer (None when built by hand)
    cdef _Source _src             # keeps a non-bytes exporter's buffer (None for bytes)
    cdef const uint8_t* _base
    cdef object _mv               # memoryview over the whole buffer, made on demand
    cdef Span _sp_session_id, _sp_frame_ptr, _sp_data, _sp_output_ptr
    cdef FileSpan* _fspans        # _finline, or a heap array past two files
    cdef FileSpan _finline[2]
    cdef Py_ssize_t _nfiles, _fcap
    # Materialised values; None means "not decoded yet" when the span is valid.
    cdef object _session_id, _frame_ptr, _data, _output_ptr, _files
    cdef uint64_t _seq_no
    cdef double _ts

    cdef str _str(self, Span* sp)
    cdef object _slice(self, Py_ssize_t off, Py_ssize_t n)
    cpdef str get_session_id(self)


cdef class FileInfo:
    # The decoded buffer, as in the Packet (not the Packet itself: no reference cycle).
    cdef object _owner
    cdef _Source _src
    cdef const uint8_t* _base
    cdef Span _sp_meta, _sp_data
    cdef object _metadata, _file_data


cpdef Packet decode_packet(object buf)
cpdef Packet decode_message(object buf)
