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
from setup_modules import MODULES, OPTIONAL_MODULES

NATIVE = "native"


def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


def _has_header(header: str) -> bool:
    """``header`` is under one of the compiler's usual include directories."""
    import sysconfig

    dirs = [os.environ.get(v, "") for v in ("CPATH", "C_INCLUDE_PATH")]
    dirs = [d for value in dirs for d in value.split(os.pathsep) if d]
    dirs += ["/usr/include", "/usr/local/include", sysconfig.get_config_var("INCLUDEDIR") or ""]
    multiarch = sysconfig.get_config_var("MULTIARCH")
    if multiarch:
        dirs.append(f"/usr/include/{multiarch}")
    return any(d and Path(d, header).is_file() for d in dirs)


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
    for name, (src, header, libraries) in OPTIONAL_MODULES.items():
        if _has_header(header):
            exts.append(Extension(name, [src], define_macros=macros, extra_compile_args=cflags,
                                  libraries=libraries))  # fmt: skip
        else:
            print(f"aios-fast: {header} not found: {name} is not built", file=sys.stderr)
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
