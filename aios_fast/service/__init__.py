"""What the block's processes share: the ``POST /mgmt`` shape and HTTP sites (``http``),
Prometheus metrics (``metrics``), hardware readings (``hardware``) and the in-memory
snapshot policies read (``snapshot``), periodic work (``periodic``), stream batching
(``batch_writer``) and the process runtime: uvloop, signals, shutdown (``runtime``)."""
