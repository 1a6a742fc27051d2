"""The vDAG controller process (``python -m aios_fast.vdag.controller``): see ``server``."""

from __future__ import annotations

from .server import VDAG_INFER, VDAG_STREAM, Quota, QuotaSettings, TokenBucket, VDagController

__all__ = ["VDAG_INFER", "VDAG_STREAM", "Quota", "QuotaSettings", "TokenBucket", "VDagController"]
