"""The executor process: a block's gRPC front door, load-balancing tasks over its
instances. Open ``core`` first; ``python -m aios_fast.executor`` runs it.

Modules: ``config`` (InstanceSpec, ExecutorConfig), ``core`` (Executor: the instance
records, dispatch, gRPC handlers), ``links`` (the executor's side of instance links),
``services`` (management and metrics HTTP), ``workers`` (one process or several on one
port) with ``front`` (the parent's management/metrics in front of the workers), and
``discovery`` (instances found in Redis).
"""

from .config import ExecutorConfig, InstanceSpec
from .core import Executor, Instance

__all__ = ["Executor", "ExecutorConfig", "Instance", "InstanceSpec"]
