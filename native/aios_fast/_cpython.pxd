# C-API declarations and small C helpers shared by the extensions
# (``from aios_fast._cpython cimport ...``); Cython's own cpython/*.pxd lack these
# or declare them in a form we cannot use (PyUnicode_AsUTF8AndSize without ``except NULL``).
from libc.stdint cimport uint64_t


cdef extern from "Python.h":
    # UTF-8 of a str (cached in the object); NULL with an exception set on failure.
    const char* PyUnicode_AsUTF8AndSize(object, Py_ssize_t*) except NULL
    object PyMemoryView_FromObject(object)


cdef extern from *:
    """
    #include <stdint.h>
    #include <string.h>
    /* Eight little-endian bytes as an integer, whatever the host's byte order. */
    static inline uint64_t aiosf_load_le64(const unsigned char* p) {
        uint64_t w;
        memcpy(&w, p, 8);
    #if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
        w = __builtin_bswap64(w);
    #endif
        return w;
    }
    """
    uint64_t aiosf_load_le64(const unsigned char* p) noexcept nogil
