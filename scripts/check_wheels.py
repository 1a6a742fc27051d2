"""Check the wheels `make build-check` built: the compiled wheel carries every extension
module, the pure one (AIOS_FAST_NO_EXTENSIONS=1) carries none, both carry the protos,
the example block document and the ``aios-fast`` console script."""

from __future__ import annotations

import sys
import zipfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from setup_modules import MODULES


def names(folder: str) -> set[str]:
    """The wheel's file names, plus "console_scripts: <line>" for each script it installs."""
    wheels = list(Path(folder).glob("aios_fast-*.whl"))
    if len(wheels) != 1:
        raise SystemExit(f"expected one wheel in {folder}, found {wheels}")
    with zipfile.ZipFile(wheels[0]) as zf:
        files = set(zf.namelist())
        for name in sorted(files):
            if name.endswith(".dist-info/entry_points.txt"):
                lines = zf.read(name).decode().splitlines()
                files |= {f"console_scripts: {line.strip()}" for line in lines if "=" in line}
        return files


def main() -> int:
    compiled, pure = names(sys.argv[1]), names(sys.argv[2])
    problems = []
    for module in MODULES:
        prefix = module.replace(".", "/") + "."
        if not any(n.startswith(prefix) and n.endswith(".so") for n in compiled):
            problems.append(f"compiled wheel lacks {module}")
    if any(n.endswith(".so") for n in pure):
        problems.append("pure wheel carries compiled modules")
    for files in (compiled, pure):
        for need in (
            "aios_fast/protos/payload_pb2.py",
            "aios_fast/protos/inference_pb2_grpc.py",
            "protos/__init__.py",  # the seeds' client's `from protos import ...`, anywhere
            "aios_fast/examples/echo-block.json",
            "aios_fast/examples/onnx-digits-block.json",
            "console_scripts: aios-fast = aios_fast.cli:main",
        ):
            if need not in files:
                problems.append(f"a wheel lacks {need}")
    for p in problems:
        print("build-check:", p, file=sys.stderr)
    if not problems:
        print(f"build-check: ok ({len(MODULES)} extension(s) in the compiled wheel, none in pure)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
