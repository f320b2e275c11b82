#!/usr/bin/env bash
# Set up, build, and run every test: GoogleTest (ctest), the installed-runtime example, pytest, then
# a fresh `pip install .` (tools/check_install.sh). GPU tests skip without a GPU.
set -euo pipefail
cd "$(dirname "$0")/.."
tools/setup.sh
export PYTHONPATH=$PWD/python${PYTHONPATH:+:$PYTHONPATH}
echo "== ctest"
ctest --test-dir "${CODETR_BUILD_DIR:-build}" --output-on-failure
echo "== example: examples/minimal against the installed runtime (find_package(codetr))"
tools/build_example.sh
echo "== pytest"
python3 -m pytest -q tests "$@"
echo "== pip install . into a throwaway venv (tools/check_install.sh)"
tools/check_install.sh
