# Sourced by the GPU-machine scripts in dev/gpu (run through the device tool; not run alone): work
# from the repository root, logs under $OUT, Python from this checkout, the system compiler (the
# image's /opt/gcc links a static libstdc++ that crashes torch extensions on their first error;
# csrc/CMakeLists.txt refuses such a compiler), nlohmann/json.hpp from the carried .deps (the
# machine has none), wheels from the carried .whl.
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
OUT=${OUT:-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD/python
# codetr._lib of this checkout loads the native files from this build tree.
export CODETR_BUILD_DIR=build-device
export CXX=/usr/bin/g++ CC=/usr/bin/gcc CUDAHOSTCXX=/usr/bin/g++
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
ENGINES=${ENGINES:-/tmp/engines}

install_wheels() {
  [ -d .whl ] || return 0
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=$PYTHONPATH:/tmp/site
}

# Ray (serve + data) and the packages it needs beyond the image's, from the carried
# $RAYPKG/site.tar.xz (dev/gpu/ray_bundle.sh builds it): the image has no Ray and cannot fetch one.
install_ray() {
  local pkg=${RAYPKG:-.raypkg}/site.tar.xz
  [ -f /tmp/raysite/ray/__init__.py ] || python3 -c "import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2], \
    filter='tar')" "$pkg" /tmp/raysite || { echo "install_ray: cannot unpack $pkg (carry .raypkg)"; exit 1; }
  export PYTHONPATH=$PYTHONPATH:/tmp/raysite
}

# The op library, libcodetr, the binding and codetr-detect (TESTS=ON adds the GoogleTests) in build-device.
build_native() {
  CODETR_BUILD_DIR=build-device CODETR_BUILD_JOBS=${CODETR_BUILD_JOBS:-16} tools/build.sh -DCODETR_BUILD_RUNTIME=ON \
    -DCODETR_BUILD_TESTS=${TESTS:-OFF} -DCODETR_NLOHMANN_INCLUDE_DIR=$PWD/.deps/include > "$OUT/build.log" 2>&1 \
    || { tail -40 "$OUT/build.log"; exit 1; }
  DETECT=$PWD/build-device/python/codetr/_lib/codetr-detect
}

# `codetr export` of preset $2 into $ENGINES/$1 (kept when already there; log: $EXPORT_LOGS/export_$1.log,
# default $OUT): batch $3; size $4 = WxH of a static engine (default 1152x768, the size the GPU
# benchmarks time) or "dynamic" (the preset's default engine: dynamic H and W); EXPORT_DEVICE and
# EXPORT_DTYPE (default cuda, float16) for dry runs. Written to $1.part and renamed when complete,
# so $ENGINES/$1 is always a whole engine, also when an export was killed.
export_engine() {
  [ -f "$ENGINES/$1/model.pt2" ] && return 0
  local size=${4:-1152x768} geometry=()
  [ "$size" = dynamic ] || geometry=(--width "${size%x*}" --height "${size#*x}")
  mkdir -p "$ENGINES"
  rm -rf "$ENGINES/$1.part"
  python3 -m codetr export --preset "$2" --device "${EXPORT_DEVICE:-cuda}" --dtype "${EXPORT_DTYPE:-float16}" \
    "${geometry[@]}" --batch "$3" -o "$ENGINES/$1.part" > "${EXPORT_LOGS:-$OUT}/export_$1.log" 2>&1 \
    && mv "$ENGINES/$1.part" "$ENGINES/$1"
}

# The demo image as binary PPM (codetr-detect on this machine is built without OpenCV).
demo_ppm() {
  IMAGE=/tmp/demo.ppm
  python3 -c "from PIL import Image; Image.open('python/codetr/assets/demo.jpg').convert('RGB').save('$IMAGE')"
}

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

# GoogleTest from the carried sources (.deps/googletest), then the native code with its tests in
# build-device. The machine has no GoogleTest and cannot fetch one.
build_with_tests() {
  local prefix=/tmp/gtest
  { cmake -S .deps/googletest -B /tmp/gtest-build -G Ninja -DCMAKE_BUILD_TYPE=Release -DBUILD_GMOCK=OFF \
      -DCMAKE_INSTALL_LIBDIR=lib -DCMAKE_INSTALL_PREFIX=$prefix && cmake --build /tmp/gtest-build && \
      cmake --install /tmp/gtest-build; } > "$OUT/gtest.log" 2>&1 || { tail -20 "$OUT/gtest.log"; exit 1; }
  CODETR_BUILD_DIR=build-device CODETR_BUILD_JOBS=16 tools/build.sh -DCODETR_BUILD_RUNTIME=ON -DCODETR_BUILD_TESTS=ON \
    -DGTest_DIR=$prefix/lib/cmake/GTest -DCODETR_NLOHMANN_INCLUDE_DIR=$PWD/.deps/include \
    > "$OUT/build.log" 2>&1 || { tail -40 "$OUT/build.log"; exit 1; }
  grep "codetr:" "$OUT/build.log"
}
