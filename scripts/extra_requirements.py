"""Print the requirements of one of pyproject.toml's optional-dependency extras, one a
line (a requirements file): `make test` installs the [test] extra's tools this way on
top of the package `make run` installed, without building the package again.

Usage: python scripts/extra_requirements.py test > build/requirements-test.txt"""

from __future__ import annotations

import sys
from pathlib import Path

try:
    import tomllib
except ImportError:  # Python 3.10: pip carries the same parser
    from pip._vendor import tomli as tomllib


def main() -> int:
    extra = sys.argv[1]
    pyproject = Path(__file__).resolve().parent.parent / "pyproject.toml"
    extras = tomllib.loads(pyproject.read_text())["project"]["optional-dependencies"]
    if extra not in extras:
        raise SystemExit(f"extra_requirements: no extra {extra!r} in pyproject.toml")
    print("\n".join(extras[extra]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
