#!/usr/bin/env bash
# GPU machine: images/s of `codetr serve` and `codetr batch` (Ray) next to the engine's own batch
# throughput, all on the R50 fp16 static 1152x768 batch-8 engine and the demo image:
#   cli    codetr-detect --benchmark, CUDA graphs off (as the service's and batch's Detector runs) and on
#   serve  codetr serve, one replica on the GPU, batches of up to 8, under tools/bench_serve.py at
#          concurrency 1, 8 and 32 (images/s, p50/p99 ms)
#   batch  codetr batch over $IMAGES links to the demo JPEG (its summary line)
# Ray and what it needs beyond the image come from the carried .raypkg (dev/gpu/ray_bundle.sh).
# Logs and serve_bench.json (every number above) in $OUT. About 7 minutes on a fresh machine.
# Usage (device tool, carry .deps .raypkg): bash dev/gpu/serve_bench.sh
# DEVICE=cpu bash dev/gpu/serve_bench.sh: the same sequence with the tiny test model on CPU, a dry
# run on any machine with this checkout's native build and torch.
set -uo pipefail
source "$(dirname "$0")/env.sh"
DEVICE=${DEVICE:-cuda}
IMAGES=${IMAGES:-2048}
PORT=${PORT:-8000}
JPEG=$PWD/python/codetr/assets/demo.jpg
# No usage-stats upload attempts (the machine has no network).
export RAY_USAGE_STATS_ENABLED=0
step() { echo "== $* $(date +%T) (${SECONDS}s)"; }

install_ray
python3 - > "$OUT/versions.json" <<'PY'
import json
from importlib.metadata import PackageNotFoundError, version
names = ("ray", "torch", "numpy", "pyarrow", "pandas", "protobuf", "grpcio", "aiohttp", "fastapi", "starlette",
         "uvicorn", "pydantic", "opencv-python-headless")
def v(n):
    try:
        return version(n)
    except PackageNotFoundError:
        return None
print(json.dumps({n: v(n) for n in names}))
PY
cat "$OUT/versions.json"
[ -x build-device/python/codetr/_lib/codetr-detect ] || { step build; build_native; }
DETECT=$PWD/build-device/python/codetr/_lib/codetr-detect
demo_ppm

step export
if [ "$DEVICE" = cuda ]; then
  nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
  NAME=r50_b8 GRAPHS="off on" SERVE_DEVICE=(--gpus-per-replica 1)
  export_engine "$NAME" co_dino_5scale_r50_8xb2_1x_coco 8
else
  NAME=tiny_r50_cpu_b8 GRAPHS=off SERVE_DEVICE=()
  [ -f "$ENGINES/$NAME/model.pt2" ] || python3 -m codetr export --preset tiny_r50 \
    --checkpoint tests/fixtures/golden/tiny_r50.safetensors --device cpu --dtype float32 --height 128 --width 160 \
    --batch 8 -o "$ENGINES/$NAME" > "$OUT/export_$NAME.log" 2>&1
fi
MODEL=$ENGINES/$NAME
[ -f "$MODEL/model.pt2" ] || { echo "export of $NAME failed:"; tail -20 "$OUT/export_$NAME.log"; exit 1; }

for graphs in $GRAPHS; do
  step "codetr-detect --benchmark, CUDA graphs $graphs"
  "$DETECT" --model "$MODEL" --benchmark "${ITERS:-100}" --cuda-graphs "$graphs" "$IMAGE" 2>&1 | tee "$OUT/cli_graphs_$graphs.log"
done

step "codetr serve"
python3 -m codetr serve --model "$MODEL" --port "$PORT" --max-batch 8 "${SERVE_DEVICE[@]}" > "$OUT/serve.log" 2>&1 &
serve_pid=$!
healthy=0
for _ in $(seq 240); do
  kill -0 "$serve_pid" 2>/dev/null || break
  python3 -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$PORT/health', timeout=2)" 2>/dev/null \
    && { healthy=1; break; }
  sleep 1
done
if [ "$healthy" = 1 ]; then
  step "bench_serve"
  # Concurrency 1 runs one request at a time, so it gets fewer requests than the batched levels.
  python3 tools/bench_serve.py --url "http://127.0.0.1:$PORT/" --image "$JPEG" --concurrency 1 \
    --requests "${REQUESTS_C1:-200}" | tee "$OUT/bench_serve.jsonl"
  python3 tools/bench_serve.py --url "http://127.0.0.1:$PORT/" --image "$JPEG" --concurrency 8 32 \
    --requests "${REQUESTS:-800}" | tee -a "$OUT/bench_serve.jsonl"
  python3 -c "import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:$PORT/metrics').read().decode())" \
    > "$OUT/serve_metrics.txt"
  grep codetr_engine_batches_total "$OUT/serve_metrics.txt"
else
  echo "codetr serve did not answer /health:"; tail -30 "$OUT/serve.log"
fi
# SIGTERM: codetr serve deletes its application and its local Ray cluster goes with it.
kill -TERM "$serve_pid" 2>/dev/null
for _ in $(seq 60); do kill -0 "$serve_pid" 2>/dev/null || break; sleep 1; done
kill -KILL "$serve_pid" 2>/dev/null && echo "codetr serve ignored SIGTERM for 60 s: killed"
wait "$serve_pid" 2>/dev/null

step "codetr batch, $IMAGES images"
inputs=$(mktemp -d /tmp/serve_bench_in.XXXXXX) results=$(mktemp -d /tmp/serve_bench_out.XXXXXX)
for i in $(seq -f %06g 1 "$IMAGES"); do ln -s "$JPEG" "$inputs/$i.jpg"; done
python3 -m codetr batch "$inputs" --model "$MODEL" -o "$results" --no-progress > "$OUT/batch.log" 2>&1
tail -3 "$OUT/batch.log"

step summary
python3 - "$OUT" "$NAME" "$DEVICE" <<'PY' | tee "$OUT/serve_bench.json"
import json, re, sys
from pathlib import Path
out, name, device = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
def grab(path, pattern):
    m = re.search(pattern, path.read_text()) if path.is_file() else None
    return float(m.group(1)) if m else None
cli = {p.stem.split("_")[-1]: grab(p, r"runs: ([\d.]+) images/s") for p in sorted(out.glob("cli_graphs_*.log"))}
levels = [json.loads(l) for l in (out / "bench_serve.jsonl").read_text().splitlines()] \
    if (out / "bench_serve.jsonl").is_file() else []
batch = grab(out / "batch.log", r"\(([\d.]+) images/s\)")
batch_steady = grab(out / "batch.log", r"then ([\d.]+) images/s")
engine = cli.get("off")
summary = {"engine": name, "device": device, "versions": json.loads((out / "versions.json").read_text()),
           "cli_images_per_s": {f"cuda_graphs_{k}": v for k, v in cli.items()},
           "serve": levels, "batch_images_per_s": batch, "batch_steady_images_per_s": batch_steady,
           # The service's and batch's share of the engine's own throughput (CUDA graphs off, as they run).
           "serve_share_of_cli": {str(l["concurrency"]): round(l["images_per_s"] / engine, 3) for l in levels}
           if engine else None,
           "batch_share_of_cli": round(batch / engine, 3) if engine and batch else None,
           "batch_steady_share_of_cli": round(batch_steady / engine, 3) if engine and batch_steady else None}
print(json.dumps(summary, indent=1))
PY
rm -rf "$inputs" "$results"
step finished
