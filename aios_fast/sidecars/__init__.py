"""The block's sidecars: the health checker (``healthcheck``) and the auto-scaler
(``autoscale``, starting and stopping instances through an ``actuator``), both built on
``base.Sidecar`` and reaching the executor only through its management API.
``python -m aios_fast.sidecars.healthcheck`` runs the health checker alone; ``aios-fast
block up`` runs both."""
