"""vDAGs: pipelines of blocks (the original system's vDAG documents).

The library half (this package's modules): the document and its validation
(``document``), the seeds' filter conditions (``filters``), compiling a document into an
execution plan (``compile``). See docs/writing-a-vdag.md.
"""

from __future__ import annotations

from .compile import MAX_DEPTH, Plan, PlanNode, assign, compile_vdag, endpoint_of
from .document import VDagDoc, VDagError, load, parse, problems
from .filters import FilterError, compile_condition

__all__ = [
    "MAX_DEPTH",
    "FilterError",
    "Plan",
    "PlanNode",
    "VDagDoc",
    "VDagError",
    "assign",
    "compile_condition",
    "compile_vdag",
    "endpoint_of",
    "load",
    "parse",
    "problems",
]
