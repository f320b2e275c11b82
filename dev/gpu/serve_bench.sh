#!/usr/bin/env bash
# GPU machine: images/s of `codetr serve` and `codetr batch` (Ray) next to the engine's own batch
# throughput, all on the R50 fp16 static 1152x768 batch-8 engine and the demo image:
#   cli    codetr-detect --benchmark, CUDA graphs off (as the service's and batch's Detector runs) and on
#   serve  codetr serve with SERVE_GPUS GPUs per replica (default 1: one replica; "1 0.5" adds two
#          replicas sharing the GPU), batches of up to 8, under tools/bench_serve.py at each
#          concurrency of LEVELS (default 1 8 32): images/s, p50/p99 ms, and each replica's engine
#          utilisation (its codetr_engine_seconds_total over the level's wall time)
#   batch  codetr batch over $IMAGES links to the demo JPEG (its summary line; IMAGES=0 skips it)
# Ray and what it needs beyond the image come from the carried .raypkg (dev/gpu/ray_bundle.sh).
# Logs and serve_bench.json (every number above) in $OUT. About 7 minutes on a fresh machine with the
# defaults.
# Usage (device tool, carry .deps .raypkg): bash dev/gpu/serve_bench.sh
# DEVICE=cpu bash dev/gpu/serve_bench.sh: the same sequence with the tiny test model on CPU, a dry
# run on any machine with this checkout's native build and torch.
set -uo pipefail
source "$(dirname "$0")/env.sh"
DEVICE=${DEVICE:-cuda}
IMAGES=${IMAGES:-2048} LEVELS=${LEVELS:-1 8 32} SERVE_GPUS=${SERVE_GPUS:-1}
REQUESTS=${REQUESTS:-800} REQUESTS_C1=${REQUESTS_C1:-200}
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
  NAME=r50_b8 GRAPHS=${GRAPHS:-off on}
  export_engine "$NAME" co_dino_5scale_r50_8xb2_1x_coco 8
else
  NAME=tiny_r50_cpu_b8 GRAPHS=off
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

# One service per entry of SERVE_GPUS (GPUs per replica; 0.5: two replicas share the GPU), each timed
# at every concurrency of LEVELS; after each level every replica's /metrics (engine batch sizes and
# busy seconds) -> $OUT/metrics_<gpus>_c<level>.json.
scrape() {  # level tag: GET /metrics until every replica answered (requests go to a random one)
  python3 - "http://127.0.0.1:$PORT/metrics" "$OUT/metrics_$2.json" "$1" <<'PY'
import json, re, sys, urllib.request
url, path, replicas = sys.argv[1], sys.argv[2], int(sys.argv[3])
seen = {}
for _ in range(64):
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    replica = re.search(r'replica="([^"]*)"', text).group(1)
    seen[replica] = {
        "engine_seconds": float(re.search(r"^codetr_engine_seconds_total\{[^}]*\} (\S+)$", text, re.M).group(1)),
        "batches": {m.group(1): int(m.group(2)) for m in
                    re.finditer(r'^codetr_engine_batches_total\{[^}]*size="(\d+)"\} (\S+)$', text, re.M)}}
    if len(seen) == replicas:
        break
json.dump(seen, open(path, "w"))
print(path, json.dumps(seen))
PY
}
for gpus in $SERVE_GPUS; do
  replicas=1 flags=()
  if [ "$DEVICE" = cuda ]; then
    flags=(--gpus-per-replica "$gpus"); replicas=$(python3 -c "print(max(1, int(1 // $gpus)))")
  fi
  step "codetr serve ${flags[*]}"
  python3 -m codetr serve --model "$MODEL" --port "$PORT" --max-batch 8 "${flags[@]}" > "$OUT/serve_$gpus.log" 2>&1 &
  serve_pid=$!
  healthy=0
  for _ in $(seq 240); do
    kill -0 "$serve_pid" 2>/dev/null || break
    python3 -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$PORT/health', timeout=2)" 2>/dev/null \
      && { healthy=1; break; }
    sleep 1
  done
  if [ "$healthy" = 1 ]; then
    # Warm-up (every replica's first calls), then the metrics the first level starts from.
    python3 tools/bench_serve.py --url "http://127.0.0.1:$PORT/" --image "$JPEG" --concurrency 8 --requests 32 \
      --warmup 0 > /dev/null
    scrape "$replicas" "${gpus}_start" > /dev/null
    for c in $LEVELS; do
      step "bench_serve, $replicas replica(s), concurrency $c"
      # Concurrency 1 runs one request at a time, so it gets fewer requests than the batched levels.
      n=$REQUESTS; [ "$c" = 1 ] && n=$REQUESTS_C1
      python3 tools/bench_serve.py --url "http://127.0.0.1:$PORT/" --image "$JPEG" --concurrency "$c" --requests "$n" \
        --warmup 0 | python3 -c "import json, sys; r = json.loads(sys.stdin.read()); r.update(gpus_per_replica=$gpus, \
replicas=$replicas, tag='$gpus'); print(json.dumps(r))" | tee -a "$OUT/bench_serve.jsonl"
      scrape "$replicas" "${gpus}_c$c"
    done
  else
    echo "codetr serve did not answer /health:"; tail -30 "$OUT/serve_$gpus.log"
  fi
  # SIGTERM: codetr serve deletes its application and its local Ray cluster goes with it.
  kill -TERM "$serve_pid" 2>/dev/null
  for _ in $(seq 60); do kill -0 "$serve_pid" 2>/dev/null || break; sleep 1; done
  kill -KILL "$serve_pid" 2>/dev/null && echo "codetr serve ignored SIGTERM for 60 s: killed"
  wait "$serve_pid" 2>/dev/null
done

if [ "$IMAGES" -gt 0 ]; then
  step "codetr batch, $IMAGES images"
  inputs=$(mktemp -d /tmp/serve_bench_in.XXXXXX) results=$(mktemp -d /tmp/serve_bench_out.XXXXXX)
  for i in $(seq -f %06g 1 "$IMAGES"); do ln -s "$JPEG" "$inputs/$i.jpg"; done
  python3 -m codetr batch "$inputs" --model "$MODEL" -o "$results" --no-progress > "$OUT/batch.log" 2>&1
  tail -3 "$OUT/batch.log"
  rm -rf "$inputs" "$results"
fi

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
previous = {}  # tag -> the replicas' metrics after the last level of that service
for level in levels:
    tag = level.pop("tag")
    before = previous.get(tag) or json.loads((out / f"metrics_{tag}_start.json").read_text())
    after = previous[tag] = json.loads((out / f"metrics_{tag}_c{level['concurrency']}.json").read_text())
    wall = level["requests"] / level["images_per_s"]
    # Each replica's engine busy time during the level over its wall time (1.0: never waited for requests).
    level["engine_utilisation"] = [round((a["engine_seconds"] - before.get(r, {}).get("engine_seconds", 0.0)) / wall, 3)
                                   for r, a in sorted(after.items())]
    level["engine_batches"] = {
        size: sum(a["batches"].get(size, 0) - before.get(r, {}).get("batches", {}).get(size, 0) for r, a in after.items())
        for size in sorted({s for a in after.values() for s in a["batches"]}, key=int)}
    if engine:
        level["share_of_cli"] = round(level["images_per_s"] / engine, 3)
summary = {"engine": name, "device": device, "versions": json.loads((out / "versions.json").read_text()),
           "cli_images_per_s": {f"cuda_graphs_{k}": v for k, v in cli.items()},
           "serve": levels, "batch_images_per_s": batch, "batch_steady_images_per_s": batch_steady,
           # The service's (share_of_cli in each level) and batch's share of the engine's own throughput
           # (CUDA graphs off, as they run).
           "batch_share_of_cli": round(batch / engine, 3) if engine and batch else None,
           "batch_steady_share_of_cli": round(batch_steady / engine, 3) if engine and batch_steady else None}
print(json.dumps(summary, indent=1))
PY
step finished
