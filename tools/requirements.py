#!/usr/bin/env python3
"""Print the pip requirements of a codetr checkout, one a line, read from pyproject.toml (the one
list): the build-system requirements (to build the native code with tools/build.sh), the project's
dependencies and the optional-dependency groups named as arguments.

Usage: python3 tools/requirements.py [EXTRA ...] | python3 -m pip install -r /dev/stdin"""
import sys
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: pip vendors the same parser
    from pip._vendor import tomli as tomllib


def requirements(extras: list[str]) -> list[str]:
    pyproject = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
    optional = pyproject["project"].get("optional-dependencies", {})
    unknown = [e for e in extras if e not in optional]
    if unknown:
        sys.exit(f"requirements.py: no optional-dependencies group {unknown} in pyproject.toml "
                 f"(have {sorted(optional)})")
    reqs = pyproject["build-system"]["requires"] + pyproject["project"]["dependencies"]
    for extra in extras:
        reqs += optional[extra]
    return list(dict.fromkeys(reqs))


if __name__ == "__main__":
    print("\n".join(requirements(sys.argv[1:])))
