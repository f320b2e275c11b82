#!/usr/bin/env bash
# Device-machine diagnosis: TORCH_CHECK errors raised from libcodetr_ops.so crashed the process on
# the device image (2026-11-24) because the library carried its own copy of libstdc++ internals
# (std::ostream::_M_insert<long> resolved inside libcodetr_ops.so). Builds the CPU-only op library
# in a few toolchain environments and reports, for each, how libstdc++ got linked and whether the
# error is raised cleanly. Logs go to $OUT.
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-out}
mkdir -p "$OUT"
export PYTHONPATH=$PWD/python
{ env | grep -E "PATH|FLAGS|^CXX|^CC" ; for c in "${CXX:-g++}" /usr/bin/g++; do
    echo "$c: libstdc++.so -> $($c -print-file-name=libstdc++.so)  libstdc++.a -> $($c -print-file-name=libstdc++.a)"; done
} > "$OUT/toolchain.txt" 2>&1
cat "$OUT/toolchain.txt"
variant() {  # $1: name, rest: command prefix for the build
  local name=$1; shift
  local dir=build-probe-$name
  "$@" env CODETR_BUILD_DIR=$dir CODETR_BUILD_JOBS=16 tools/build.sh -DCODETR_BUILD_RUNTIME=OFF \
    -DCODETR_BUILD_TESTS=OFF -DCODETR_WITH_CUDA=OFF > "$OUT/build-$name.log" 2>&1 || { echo "$name: build failed"; tail -5 "$OUT/build-$name.log"; return; }
  local lib=$PWD/$dir/python/codetr/_lib/libcodetr_ops.so
  ninja -C $dir -t commands python/codetr/_lib/libcodetr_ops.so | tail -1 > "$OUT/link-$name.txt"
  local own=$(nm -D --defined-only "$lib" | grep -c "_ZNSo9_M_insert")
  CODETR_OPS_LIBRARY=$lib python3 -c "
import torch
from codetr import _C
try: torch.ops.codetr.ms_deform_attn(torch.randn(35, 2, 8), [7, 5], torch.rand(2, 5, 2, 1, 4, 2), torch.rand(2, 5, 2, 1, 4))
except RuntimeError as e: print('raised', str(e)[:60])" > "$OUT/probe-$name.log" 2>&1
  echo "$name: rc=$? own ostream::_M_insert defs=$own $(grep -m1 raised "$OUT/probe-$name.log")"
}
variant default
variant no_library_path env -u LIBRARY_PATH
variant system_gxx env -u LIBRARY_PATH CXX=/usr/bin/g++ CC=/usr/bin/gcc
