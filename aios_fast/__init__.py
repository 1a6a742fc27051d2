"""aios-fast: a high-performance data plane for AIOSv1 blocks.

Public modules: ``aios_fast.codec`` (packet codec), ``aios_fast.errors``.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
