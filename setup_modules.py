"""The Cython extension modules: importable name -> source under native/ (one per hot module).

Read by setup.py and scripts/check_wheels.py; add a module here and in native/ together.
"""

MODULES = {
    "aios_fast._codec": "native/aios_fast/_codec.pyx",
    "aios_fast._lb": "native/aios_fast/_lb.pyx",
}
