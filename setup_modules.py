"""The Cython extension modules: importable name -> source under native/ (one per hot module).

Read by setup.py and scripts/check_wheels.py; add a module here and in native/ together.
"""

MODULES = {
    "aios_fast._codec": "native/aios_fast/_codec.pyx",
    "aios_fast._lb": "native/aios_fast/_lb.pyx",
    "aios_fast._link": "native/aios_fast/_link.pyx",
}

# Built only where their C library's headers are found (else skipped, with a note):
# importable name -> (source, header that must exist, libraries to link).
OPTIONAL_MODULES = {
    # the executor's native gRPC front (Debian: apt-get install libnghttp2-dev)
    "aios_fast._front": ("native/aios_fast/_front.pyx", "nghttp2/nghttp2.h", ["nghttp2"]),
}
