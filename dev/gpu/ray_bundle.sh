#!/usr/bin/env bash
# Maintainer script, run HERE (a machine with pip and network), not on the GPU machine: builds
# .raypkg/site.tar.xz, an installed site-packages tree with Ray (serve + data) and the packages
# Ray Serve / Ray Data / codetr serve import that the GPU image lacks (its package list: the device
# tool's KINDS.md; the set was found by running them in a venv holding only that list). The GPU image has no Ray and cannot fetch one, and a device call
# carries at most 64 MiB, so Ray is trimmed to what a single-node serve/data run loads and its big
# executables are stripped; dev/gpu/env.sh's install_ray unpacks the archive there.
# Usage: bash dev/gpu/ray_bundle.sh            (CPython 3.12, the GPU image's, into .raypkg/)
#        PYVER=3.11 DEST=.raypkg-3.11 bash dev/gpu/ray_bundle.sh   (same recipe for a local check)
# Downloaded wheels are kept in $CACHE (re-runs download nothing).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
PYVER=${PYVER:-3.12}
DEST=${DEST:-.raypkg}
CACHE=${CACHE:-/tmp/raypkg-wheels/$PYVER}
WORK=$(mktemp -d /tmp/raypkg-build.XXXXXX)
trap 'rm -rf "$WORK"' EXIT

# Versions as tested together (ray 2.60's serve/data extras; codetr's pyproject 'serve' extra).
# Not here because the GPU image has them: numpy, pandas, pyarrow, fsspec, aiohttp, grpcio,
# protobuf, msgpack, pyyaml, click, filelock, requests, packaging, prometheus-client, psutil,
# anyio, h11, uvloop, jinja2, attrs, typing-extensions, annotated-doc, opencv-python-headless.
PACKAGES=(
  ray==2.60.0
  # Serve's HTTP proxy and request types (codetr.serve uses starlette directly); httptools is
  # uvicorn[standard]'s HTTP parser, what `pip install ray[serve]` serves with.
  fastapi==0.165.0 starlette==1.10.0 uvicorn==0.55.0 httptools==0.9.0 python-multipart==0.0.34
  pydantic==2.13.4 pydantic-core==2.46.4 annotated-types==0.7.0 typing-inspection==0.4.2
  opentelemetry-api==1.45.2  # fastapi imports it unconditionally
  # Ray core's runtime_env schema checks.
  jsonschema==4.26.0 jsonschema-specifications==2025.9.1 referencing==0.37.0 rpds-py==0.30.0
  # Imported by `from ray import serve` (its gRPC proxy). 1.62.3 is the newest whose generated code
  # carries no protobuf/grpcio runtime-version check (1.85 demands protobuf >= 7.35.1 and grpcio >=
  # 1.85.1); it runs on protobuf 4.21 to 7.x, whichever the GPU image has.
  grpcio-reflection==1.62.3
)

mkdir -p "$CACHE"
python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$PYVER" --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$CACHE" "${PACKAGES[@]}"

SITE=$WORK/site
wheels=()
for p in "${PACKAGES[@]}"; do wheels+=("$CACHE/$(echo "${p%%==*}" | tr - _)-${p#*==}"-*.whl); done
# pip matches the wheels' tags against PYVER; --target writes an installed tree (scripts in bin/).
python3 -m pip install -q --no-deps --no-compile --no-index --only-binary=:all: --python-version "$PYVER" \
  --implementation cp --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux_2_28_x86_64 --target "$SITE" "${wheels[@]}"

# What a single-node serve/data run never loads: Java, RLlib, Tune, Train, LLM, the dashboard's web
# client, tests. The runtime-env agent's vendored aiohttp stays: the agent puts it first on its path.
ray=$SITE/ray
rm -rf "$ray"/jars "$ray"/rllib "$ray"/tune "$ray"/train "$ray"/llm "$ray"/dashboard/client
# Console scripts (ray, serve, uvicorn, ...) name this machine's interpreter; nothing here runs them.
rm -rf "${SITE:?}"/bin
find "$SITE" -depth -type d \( -name tests -o -name __pycache__ \) -exec rm -rf {} +
find "$SITE" -name '*.map' -delete
# Debug symbols are most of _raylet.so, gcs_server and raylet.
find "$SITE" -type f \( -name '*.so' -o -perm -u+x \) -exec sh -c \
  'for f; do if head -c4 "$f" | grep -q ELF; then strip --strip-unneeded "$f"; fi; done' sh {} +

# One xz stream, single-threaded (one block), the three big executables next to each other: they
# share most of their statically linked code (gRPC, protobuf, abseil), which the window then finds.
mkdir -p "$DEST"
(cd "$SITE" && { printf '%s\n' ray/_raylet.so ray/core/src/ray/gcs/gcs_server ray/core/src/ray/raylet/raylet
                 find . -type f -printf '%P\n' | grep -vxE 'ray/_raylet.so|ray/core/src/ray/(gcs/gcs_server|raylet/raylet)' | sort; } \
  | tar -c --owner=0 --group=0 -T - | xz -T1 -9e) > "$DEST/site.tar.xz"
echo "$DEST/site.tar.xz: $(stat -c %s "$DEST/site.tar.xz") bytes; unpacked $(du -sm "$SITE" | cut -f1) MB (Python $PYVER)"
