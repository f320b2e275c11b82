# Sourced first by the GPU-machine scripts in tools/device (not run alone): work from the
# repository root, logs under $OUT (default out/), Python from this checkout, and the system
# compiler. The image's default compiler (CXX=/opt/gcc/bin/g++) has no shared libstdc++: a library
# it links carries a private libstdc++ copy and crashes on its first TORCH_CHECK error (2026-11-24,
# see tools/device/msda_exception_probe.sh); csrc/CMakeLists.txt refuses such a compiler.
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
OUT=${OUT:-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD/python
# codetr._lib of this checkout loads the native files from this build tree.
export CODETR_BUILD_DIR=build-device
export CXX=/usr/bin/g++ CC=/usr/bin/gcc CUDAHOSTCXX=/usr/bin/g++

# The op library alone (no runtime, no tests) in build-device; on failure, the log's tail and exit.
build_op_library() {
  CODETR_BUILD_DIR=build-device CODETR_BUILD_JOBS=16 tools/build.sh -DCODETR_BUILD_RUNTIME=OFF \
    -DCODETR_BUILD_TESTS=OFF > "$OUT/build.log" 2>&1 || { tail -40 "$OUT/build.log"; exit 1; }
}

# LIB = $1 (an op library) or, without it, the op built into build-device.
use_op_library() {
  LIB=${1:-}
  if [ -z "$LIB" ]; then
    build_op_library
    LIB=$PWD/build-device/python/codetr/_lib/libcodetr_ops.so
  fi
}
