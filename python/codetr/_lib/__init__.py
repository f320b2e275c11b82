"""codetr's native files: libcodetr_ops.so (the torch ops), libcodetr.so (the C++ runtime), the
binding ``_runtime`` and the CLI binary codetr-detect.

An installed package (``pip install .``) holds them in this folder. In a source checkout
(``PYTHONPATH=python``) this folder holds only this file: CMake builds them into its build tree's
python/codetr/_lib (tools/build.sh; no build step writes into the source tree), and this package's
search path is that folder instead, so a checkout always runs its own build."""
from __future__ import annotations

import os
from pathlib import Path

_HERE = Path(__file__).resolve().parent
# python/codetr/_lib -> the repository root, which holds the top-level CMakeLists.txt.
_REPO = _HERE.parents[2]
IN_SOURCE_CHECKOUT = (_REPO / "CMakeLists.txt").is_file() and (_REPO / "python" / "codetr" / "_lib") == _HERE


def build_dir() -> Path:
    """The CMake build tree of a source checkout: $CODETR_BUILD_DIR (relative to the working
    directory, as in tools/*.sh), default build/ at the repository root."""
    return Path(os.environ.get("CODETR_BUILD_DIR") or _REPO / "build").resolve()


if IN_SOURCE_CHECKOUT:
    __path__ = [str(build_dir() / "python" / "codetr" / "_lib")]


def rebuild_hint() -> str:
    """What to do when a native file is missing or fails to load, for this kind of package."""
    if IN_SOURCE_CHECKOUT:
        return f"a source checkout loads them from {__path__[0]}: run tools/build.sh (CODETR_BUILD_DIR picks the build)"
    return "reinstall codetr (pip install .)"


def executable(name: str) -> Path:
    """Path of a binary shipped beside the libraries (codetr-detect)."""
    return Path(__path__[0]) / name
