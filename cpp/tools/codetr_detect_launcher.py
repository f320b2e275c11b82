#!/usr/bin/env python3
"""`codetr-detect` of a pip-installed codetr: runs the binary codetr/_lib/codetr-detect.

The binary stays in the package folder, beside libcodetr.so and libcodetr_ops.so, rather than in
the scripts folder: there its RPATH ($ORIGIN) holds wherever pip puts the package, while the
scripts folder's place relative to site-packages differs between install schemes (venv, --user,
Debian's dist-packages). torch may also live in another site-packages than codetr (a venv made with
--system-site-packages), which no RPATH can name. So this launcher finds both packages without
importing them (no second of torch start-up), puts torch's library folders first on
LD_LIBRARY_PATH and execs the binary: same process, arguments, exit status and signals.
pip rewrites the first line to the installing Python, whose packages are the ones found here.
"""
import importlib.util
import os
import sys

# Relative to the site-packages holding torch; the installed libraries' RPATH names the same two
# folders relative to codetr/_lib (cpp/CMakeLists.txt).
TORCH_LIBRARY_DIRS = ("torch/lib", "nvidia/cu13/lib")


def package_dir(name: str) -> str:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        sys.exit(f"codetr-detect: the Python package {name!r} is not installed for {sys.executable}")
    return spec.submodule_search_locations[0]


def main() -> None:
    binary = os.path.join(package_dir("codetr"), "_lib", "codetr-detect")
    if not os.access(binary, os.X_OK):
        sys.exit(f"codetr-detect: {binary} is missing or not executable; reinstall codetr (pip install .)")
    site = os.path.dirname(package_dir("torch"))
    library_path = [d for d in (os.path.join(site, rel) for rel in TORCH_LIBRARY_DIRS) if os.path.isdir(d)]
    if os.environ.get("LD_LIBRARY_PATH"):
        library_path.append(os.environ["LD_LIBRARY_PATH"])
    env = dict(os.environ, LD_LIBRARY_PATH=os.pathsep.join(library_path))
    os.execve(binary, ["codetr-detect", *sys.argv[1:]], env)


if __name__ == "__main__":
    main()
