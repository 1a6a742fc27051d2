"""Generate aios_fast/protos/*_pb2*.py from protos/*.proto with grpcio-tools.

    python scripts/gen_protos.py           # regenerate in place
    python scripts/gen_protos.py --check   # exit 1 if the committed files are stale

The generated code is committed so that installing needs no grpcio-tools; the
--check mode (run by the tests) keeps it current with the .proto sources.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTOS = ("inference.proto", "oip.proto", "payload.proto", "vdag.proto")
OUT_PACKAGE = Path("aios_fast/protos")


def generate(out_root: Path) -> list[Path]:
    from grpc_tools import protoc

    (out_root / OUT_PACKAGE).mkdir(parents=True, exist_ok=True)
    args = [
        "grpc_tools.protoc",
        # Map protos/ to aios_fast/protos so generated imports are package-absolute.
        f"-I{OUT_PACKAGE.as_posix()}={ROOT / 'protos'}",
        f"--python_out={out_root}",
        f"--pyi_out={out_root}",
        f"--grpc_python_out={out_root}",
        *[str(ROOT / "protos" / name) for name in PROTOS],
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    return sorted((out_root / OUT_PACKAGE).glob("*_pb2*.py*"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare, do not write")
    opts = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        fresh = generate(Path(tmp))
        stale = []
        for path in fresh:
            target = ROOT / OUT_PACKAGE / path.name
            text = path.read_bytes()
            if not target.exists() or target.read_bytes() != text:
                stale.append(target)
                if not opts.check:
                    target.write_bytes(text)
    if opts.check and stale:
        print("stale generated code (run python scripts/gen_protos.py):", file=sys.stderr)
        for path in stale:
            print(f"  {path.relative_to(ROOT)}", file=sys.stderr)
        return 1
    print("generated code is current" if not stale else f"regenerated {len(stale)} file(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
