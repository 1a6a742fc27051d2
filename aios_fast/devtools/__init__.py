"""Tools for running and measuring a block on one machine: ``block_up`` (``aios-fast
block up``: executor, instances and sidecars as local processes) and ``loadgen`` (the
load generator behind ``aios-fast bench`` and ``block up --traffic``)."""
