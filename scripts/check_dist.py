"""Check the wheel `make dist` repaired, as a user without a compiler gets it: it carries
all three extensions and libnghttp2; installed into a fresh venv (binary wheels only,
nothing compiled) by a process whose PATH has no gcc, its native front loads the bundled
libnghttp2 (not the system's), and `aios-fast block up` serves on the native front.

Usage: python scripts/check_dist.py dist/  (run from the repository root)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from setup_modules import MODULES, OPTIONAL_MODULES

# How pip reaches its index, passed on to the fresh venv's pip.
PASSED_ON = ("PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_FIND_LINKS", "PIP_CERT",
             "SSL_CERT_FILE", "HTTPS_PROXY", "https_proxy", "NO_PROXY", "no_proxy")  # fmt: skip
# In the fresh venv: where libnghttp2 was loaded from, by the native front.
WHERE_NGHTTP2 = """
import aios_fast._front
for line in open("/proc/self/maps"):
    if "libnghttp2" in line:
        print(line.split()[-1])
        break
"""


def say(text: str) -> None:
    print(f"check_dist: {text}", flush=True)


def the_wheel(folder: str) -> Path:
    wheels = sorted(Path(folder).glob("aios_fast-*manylinux*.whl"))
    if len(wheels) != 1:
        raise SystemExit(f"check_dist: expected one manylinux wheel in {folder}, found {wheels}")
    names = zipfile.ZipFile(wheels[0]).namelist()
    for module in [*MODULES, *OPTIONAL_MODULES]:
        stem = module.replace(".", "/") + "."
        if not any(n.startswith(stem) and n.endswith(".so") for n in names):
            raise SystemExit(f"check_dist: {wheels[0].name} lacks {module}")
    if not any(n.startswith("aios_fast.libs/libnghttp2") for n in names):
        raise SystemExit(f"check_dist: {wheels[0].name} does not bundle libnghttp2")
    return wheels[0].resolve()


def run(args: list[str], env: dict, cwd: str, timeout: float) -> subprocess.CompletedProcess:
    out = subprocess.run(args, env=env, cwd=cwd, capture_output=True, text=True,
                         timeout=timeout)  # fmt: skip
    if out.returncode:
        raise SystemExit(f"check_dist: {' '.join(args[:4])} ... failed ({out.returncode}):\n"
                         f"{out.stdout[-2000:]}\n{out.stderr[-4000:]}")  # fmt: skip
    return out


def main() -> int:
    wheel = the_wheel(sys.argv[1] if len(sys.argv) > 1 else "dist")
    say(f"{wheel.name}: {len(MODULES) + len(OPTIONAL_MODULES)} extensions and libnghttp2")
    with tempfile.TemporaryDirectory(prefix="aios-dist-") as tmp:
        venv = Path(tmp, "venv")
        base = getattr(sys, "_base_executable", sys.executable)
        subprocess.run([base, "-m", "venv", str(venv)], check=True)
        bin_dir = str(venv / "bin")
        # Only the venv on PATH: no gcc, cc or the system's tools; nothing may compile.
        env = {"PATH": bin_dir, "HOME": tmp, "CC": "/nonexistent/cc", "LANG": "C.UTF-8",
               "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PYTHONUNBUFFERED": "1"}  # fmt: skip
        for key in PASSED_ON:
            if key in os.environ:
                env[key] = os.environ[key]
        for tool in ("gcc", "cc"):
            if shutil.which(tool, path=bin_dir):
                raise SystemExit(f"check_dist: {tool} is on the fresh venv's PATH")
        python = str(venv / "bin" / "python")
        run([python, "-m", "pip", "install", "-q", "--only-binary=:all:", str(wheel)],
            env, tmp, 600)  # fmt: skip
        say("installed into a fresh venv (binary wheels only, no compiler on PATH)")
        where = run([python, "-c", WHERE_NGHTTP2], env, tmp, 60).stdout.strip()
        if "aios_fast.libs" not in where:
            raise SystemExit(f"check_dist: the native front loaded libnghttp2 from {where!r}, "
                             "not from the wheel")  # fmt: skip
        say(f"the native front uses the bundled {Path(where).name}")
        out = run([str(venv / "bin" / "aios-fast"), "block", "up", "--ports", "auto",
                   "--traffic", "500", "--once", "--json"], env, tmp, 300)  # fmt: skip
        info = json.loads(out.stdout.splitlines()[0])
        if info.get("front") != "native":
            raise SystemExit(f"check_dist: block up served on the {info.get('front')} front")
        say("block up served 500 checked tasks on the native front")
    return 0


if __name__ == "__main__":
    sys.exit(main())
