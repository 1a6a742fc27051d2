"""``python -m registry_server [--host 127.0.0.1] [--port 8080] [--db registry.sqlite3]``"""

from __future__ import annotations

import argparse
import logging

from aiohttp import web

from .app import make_app
from .schemas import REGISTRIES
from .store import EmbeddedStore


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Serve the AIOSv1 registries.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--db", default="registry.sqlite3", help="embedded store file")
    opts = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    store = EmbeddedStore(opts.db, list(REGISTRIES))
    print(f"registry on http://{opts.host}:{opts.port} (store {opts.db})", flush=True)
    web.run_app(make_app(store), host=opts.host, port=opts.port, print=None, access_log=None)
    store.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
