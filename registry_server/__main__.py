"""``python -m registry_server [--host 127.0.0.1] [--port 8080] [--db registry.sqlite3]``"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import signal
import socket
import ssl
import sys
from typing import Any

from aiohttp import web

from .app import make_app
from .errors import StoreLocked, StoreUnusable
from .schemas import REGISTRIES
from .security import ENV_TOKEN, Security, is_loopback
from .store import DECODED_CACHE_MB, EmbeddedStore


def _ssl_context(cert: str, key: str):
    if not cert and not key:
        return None
    if not (cert and key):
        raise ValueError("--tls-cert and --tls-key go together")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    return context


def _listen(host: str, port: int) -> socket.socket:
    """The listening socket, bound before the store is opened: a busy port or a bad
    address is one line (OSError) and leaves nothing behind."""
    if not 0 <= port <= 65535:
        raise ValueError(f"--port must be 0-65535, not {port}")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        return socket.create_server((host.strip("[]"), port), family=family)
    except OSError as exc:
        reason = (os.strerror(exc.errno) if exc.errno else str(exc)).lower()
        raise OSError(f"cannot listen on {host}:{port}: {reason}") from None
    except (OverflowError, UnicodeError) as exc:
        raise ValueError(f"cannot listen on {host}:{port}: {exc}") from None


def main(argv=None, prog: str = "python -m registry_server") -> int:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Serve the AIOSv1 registries.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--db", default="registry.sqlite3", help="embedded store file")
    parser.add_argument("--decoded-cache-mb", type=float, default=DECODED_CACHE_MB,
                        help="keep documents decoded too while the store's JSON is at most "
                        "this many MB (faster queries, ~7x the memory); 0: never")  # fmt: skip
    parser.add_argument("--mongo-url", help="mongodb:// URL: use MongoDB instead")
    parser.add_argument("--mongo-db", default="aios_registry")
    parser.add_argument("--auth-file", help="tokens, one 'role token' a line (read, admin, *); "
                        "re-read on SIGHUP. AIOS_FAST_TOKEN: one token, every role")  # fmt: skip
    parser.add_argument("--insecure", action="store_true",
                        help="allow a non-loopback --host without any token")  # fmt: skip
    parser.add_argument("--allowed-host", action="append", default=[],
                        help="a name clients reach the server by (its --host and localhost "
                        "always are); other Host headers get 403")  # fmt: skip
    parser.add_argument("--read-only", action="store_true", help="refuse every write (405)")
    parser.add_argument("--tls-cert", default="", help="PEM certificate: serve HTTPS")
    parser.add_argument("--tls-key", default="", help="PEM private key of --tls-cert")
    opts = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    try:
        security = Security.from_env(opts.auth_file, allowed_hosts=opts.allowed_host,
                                     read_only=opts.read_only)  # fmt: skip
        if not (is_loopback(opts.host) or security.enabled or opts.insecure):
            raise ValueError(f"refusing to listen on {opts.host} without authentication: set "
                             f"{ENV_TOKEN} or --auth-file, or pass --insecure")  # fmt: skip
        ssl_context = _ssl_context(opts.tls_cert, opts.tls_key)
        sock = _listen(opts.host, opts.port)
    except (ValueError, OSError) as exc:
        print(f"registry: {exc}", file=sys.stderr)
        return 2
    security.bind(opts.host)
    store: Any
    if opts.mongo_url:
        from .mongo_store import MongoStore

        store = MongoStore(opts.mongo_url, opts.mongo_db)
        where = f"MongoDB {opts.mongo_db}"
    else:
        try:
            store = EmbeddedStore(opts.db, list(REGISTRIES), opts.decoded_cache_mb)
        except (StoreLocked, StoreUnusable, OSError) as exc:
            sock.close()
            reason = exc if not isinstance(exc, OSError) else f"cannot open {opts.db}: {exc}"
            print(f"registry: {reason}", file=sys.stderr)
            return 2
        where = opts.db
    app = make_app(store, security)

    def reload_tokens() -> None:
        try:
            security.reload()
        except ValueError as exc:
            logging.getLogger("registry").error("tokens not re-read: %s", exc)

    async def on_sighup(app):
        asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, reload_tokens)

    app.on_startup.append(on_sighup)
    # What is loaded now lives as long as the process: keep it out of the collector's
    # full passes (documents are kept encoded, so this is mostly the modules' objects).
    gc.freeze()
    # Queries run in a thread pool; a thread holding the GIL yields it to the event loop
    # after this long (the default 5 ms lets 2 busy threads delay /health by 10-20 ms).
    sys.setswitchinterval(0.001)
    if opts.mongo_url:

        async def start(app):
            await store.start()

        async def close(app):
            await store.close()

        app.on_startup.append(start)
        app.on_cleanup.append(close)
    scheme = "https" if ssl_context else "http"
    port = sock.getsockname()[1]
    print(f"registry on {scheme}://{opts.host}:{port} (store {where})", flush=True)
    web.run_app(app, sock=sock, print=None, access_log=None, ssl_context=ssl_context)
    if isinstance(store, EmbeddedStore):  # MongoStore closes in the app's cleanup
        store.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
