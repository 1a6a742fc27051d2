"""``GET /health`` while the Block loads: the management port answers at once, 503
``{"healthy": false, "status": "loading"}``, so a probe (Kubernetes' startupProbe, the
health checker) sees a loading instance, not a dead port. It runs in a thread: loading
the Block holds the main thread (imports, ``__init__``). Once loaded it stops and the
instance's own management server takes the port."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from ..tls import TLS

__all__ = ["LOADING", "LoadingHealth"]

LOADING = {"healthy": False, "status": "loading"}


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = json.dumps(LOADING).encode()
        if self.path.split("?")[0] != "/health":
            body = json.dumps({"success": False, "message": "the block is loading"}).encode()
        self.send_response(503)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_POST = do_GET

    def log_message(self, format: str, *args) -> None:  # probes: not worth a line each
        pass


class _Server(ThreadingHTTPServer):
    allow_reuse_address = True
    daemon_threads = True


class LoadingHealth:
    """Serves the loading answer on ``host:port`` from ``start()`` to ``stop()``."""

    def __init__(self, host: str, port: int, tls: TLS) -> None:
        self.host = host
        self.port = port
        self.tls = tls
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._server = _Server((self.host, self.port), _Handler)
        context = self.tls.server_context()
        if context is not None:
            self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,),
                                        name="loading-health", daemon=True)  # fmt: skip
        self._thread.start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join()
            self._thread = None
