"""The instance process: one user Block (``aios_fast.block``) served to executors and
plain gRPC callers. Open ``server`` first; ``python -m aios_fast.instance`` runs it.

Modules: ``server`` (InstanceServer: gRPC handlers, running tasks, management HTTP),
``loading`` (the user's Block), ``output`` (output packets), ``gate`` (concurrency),
``drain`` (stopping), ``outcomes`` (task counts and the block's error log),
``link_server`` (the instance's side of executor links), ``routing`` (output_ptr),
``registration`` (heartbeats in Redis for executors that discover instances).
"""

from .loading import load_block
from .output import make_output
from .server import InstanceServer

__all__ = ["InstanceServer", "load_block", "make_output"]
