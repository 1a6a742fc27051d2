"""Build script for the Cython extensions in native/.

Environment switches (read at build time):
  AIOS_FAST_NO_EXTENSIONS=1  build the pure-Python twins only (no compiler needed).
  AIOS_FAST_DEBUG=1          line tracing (CYTHON_TRACE) and HTML annotation.

A missing compiler or Cython fails the build loudly: there is no silent fallback.
"""

import os
import sys
from pathlib import Path

from setuptools import Extension, setup

sys.path.insert(0, str(Path(__file__).parent.resolve()))
from setup_modules import MODULES

NATIVE = "native"


def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


def extensions():
    if _flag("AIOS_FAST_NO_EXTENSIONS"):
        print(
            "aios-fast: AIOS_FAST_NO_EXTENSIONS=1, building pure-Python twins only", file=sys.stderr
        )
        return []
    try:
        from Cython.Build import cythonize
    except ImportError as exc:  # pragma: no cover - exercised only on broken setups
        raise SystemExit(
            "aios-fast: Cython>=3.1 is required to build the extensions "
            "(or set AIOS_FAST_NO_EXTENSIONS=1 for the pure-Python twins)"
        ) from exc
    debug = _flag("AIOS_FAST_DEBUG")
    macros = [("CYTHON_TRACE", "1"), ("CYTHON_TRACE_NOGIL", "1")] if debug else []
    cflags = ["-O0", "-g"] if debug else ["-O3"]
    exts = [
        Extension(name, [src], define_macros=macros, extra_compile_args=cflags)
        for name, src in MODULES.items()
    ]
    directives = {
        "language_level": 3,
        "boundscheck": False,
        "wraparound": False,
        "cdivision": True,
        "initializedcheck": False,
        "embedsignature": True,
    }
    if debug:
        directives.update(linetrace=True, binding=True, profile=True)
    return cythonize(
        exts,
        include_path=[NATIVE],
        compiler_directives=directives,
        annotate=debug,
        build_dir="build/cython",
    )


setup(ext_modules=extensions())
