"""Load from h2load (Debian's nghttp2-client): a C client that is not the bottleneck.

``run(url, ...)`` drives one URL for ``duration`` seconds after a 1 s warm-up and
returns requests per second, p50/p99 latency (from h2load's per-request log) and the
HTTP status codes seen.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

__all__ = ["require", "run"]


def require() -> None:
    if shutil.which("h2load") is None:
        raise SystemExit("h2load not found: apt-get install nghttp2-client")


def run(
    url: str,
    duration: int,
    connections: int,
    *,
    streams: int = 1,
    body: Path | None = None,
    headers: tuple[str, ...] = (),
    h1: bool = False,
    rps: float = 0,
) -> dict:
    log = Path(tempfile.mkstemp(suffix=".log")[1])
    cmd = ["h2load", "-D", str(int(duration)), "--warm-up-time", "1", "-c", str(connections),
           "-m", str(streams), "-t", "1", "--log-file", str(log)]  # fmt: skip
    if h1:
        cmd.append("--h1")
    if rps:  # requests per second per connection (0: as fast as answers come)
        cmd.append(f"--rps={rps:.0f}")
    if body is not None:
        cmd += ["-d", str(body)]
    for header in headers:
        cmd += ["-H", header]
    try:
        out = subprocess.run([*cmd, url], capture_output=True, text=True, timeout=duration + 60)
        if out.returncode != 0:
            raise RuntimeError(out.stderr or out.stdout)
        rows = [line.split("\t") for line in log.read_text().splitlines()]
    finally:
        log.unlink(missing_ok=True)
    lat = sorted(int(r[2]) for r in rows if len(r) >= 3)
    return {
        "req_s": len(lat) / duration,
        "p50_ms": lat[len(lat) // 2] / 1000 if lat else float("nan"),
        "p99_ms": lat[int(len(lat) * 0.99)] / 1000 if lat else float("nan"),
        "codes": ",".join(sorted({r[1] for r in rows if len(r) >= 3})),
    }
