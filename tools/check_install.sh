#!/usr/bin/env bash
# `pip install .` from a clean copy of the tracked tree (git ls-files) into a throwaway venv, then
# run the installed `codetr-detect --help` and `import codetr` from outside the tree: the wheel
# alone must work (libraries, RPATHs, launcher, version), with nothing from the checkout or build/.
# The venv reuses the system's torch (--system-site-packages); the build runs with pip's build
# isolation and the CUDA kernels when nvcc is found, exactly as a user's `pip install .`.
# CODETR_CHECK_INSTALL_CUDA=OFF builds without them (cmake.define.CODETR_WITH_CUDA).
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=$(mktemp -d "${TMPDIR:-/tmp}/codetr-check-install.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
mkdir "$WORK/src"
git ls-files -z | xargs -0 cp --parents -t "$WORK/src"
python3 -m venv --system-site-packages "$WORK/venv"
pip_args=()
[ -n "${CODETR_CHECK_INSTALL_CUDA:-}" ] && pip_args+=(--config-settings=cmake.define.CODETR_WITH_CUDA="$CODETR_CHECK_INSTALL_CUDA")
"$WORK/venv/bin/python" -m pip install -q --disable-pip-version-check "${pip_args[@]}" "$WORK/src"
cd "$WORK"  # outside the tree: nothing may come from the checkout
env -u PYTHONPATH "$WORK/venv/bin/codetr-detect" --help > "$WORK/help.txt"
grep -q -- "--model" "$WORK/help.txt" || { cat "$WORK/help.txt"; echo "check_install: codetr-detect --help lacks --model" >&2; exit 1; }
# One version: the library's (CMake's PROJECT_VERSION) is the distribution's (pyproject reads it).
version=$(env -u PYTHONPATH "$WORK/venv/bin/python" -c "
import importlib.metadata, codetr, torch
torch.ops.codetr.ms_deform_attn  # the op library is loaded
dist = importlib.metadata.version('codetr')
assert codetr.__version__ == dist, f'codetr.__version__ {codetr.__version__} != distribution version {dist}'
print(codetr.__version__)")
where=$(env -u PYTHONPATH "$WORK/venv/bin/python" -c "import codetr._lib as l; print(l.__path__[0])")
case "$where" in "$WORK"/venv/*) ;; *) echo "check_install: codetr._lib came from $where, not the venv" >&2; exit 1;; esac
echo "check_install: pip install . ok: codetr $version, codetr-detect --help ok, native files in $where"
