"""``python -m registry_server [--host 127.0.0.1] [--port 8080] [--db registry.sqlite3]``"""

from __future__ import annotations

import argparse
import gc
import logging
import sys

from aiohttp import web

from .app import make_app
from .errors import StoreLocked
from .schemas import REGISTRIES
from .store import EmbeddedStore


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Serve the AIOSv1 registries.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--db", default="registry.sqlite3", help="embedded store file")
    parser.add_argument("--mongo-url", help="mongodb:// URL: use MongoDB instead")
    parser.add_argument("--mongo-db", default="aios_registry")
    opts = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if opts.mongo_url:
        from .mongo_store import MongoStore

        store = MongoStore(opts.mongo_url, opts.mongo_db)
        where = f"MongoDB {opts.mongo_db}"
    else:
        try:
            store = EmbeddedStore(opts.db, list(REGISTRIES))
        except StoreLocked as exc:
            print(f"registry: {exc}", file=sys.stderr)
            return 1
        where = opts.db
    app = make_app(store)
    # Every loaded document is a long-lived object: keep them out of the collector's
    # full passes (at 100k documents one pass holds the GIL, and the loop, for seconds).
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
    print(f"registry on http://{opts.host}:{opts.port} (store {where})", flush=True)
    web.run_app(app, host=opts.host, port=opts.port, print=None, access_log=None)
    if not opts.mongo_url:
        store.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
