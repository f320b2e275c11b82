#!/usr/bin/env bash
# GPU machine: images/s of `codetr serve` and `codetr batch` (Ray) next to the engine's own batch
# throughput, on one fp16 static 1152x768 batch-8 engine (PRESET, default R50; NAME names it):
#   cli    codetr-detect --benchmark on the demo image, CUDA graphs off (as the service's and batch's
#          Detector runs) and on (GRAPHS)
#   serve  one service per entry of SERVE_CONFIGS, "REPLICASxGPUS" (default 1x1: one replica holding
#          one GPU; 2x0.5: two replicas sharing it; 2x1 on a 2-GPU machine: one per GPU), batches of up
#          to 8, under tools/bench_serve.py (the demo JPEG) at each concurrency of LEVELS (default 1 8
#          32; BENCH_ARGS: more of its flags, e.g. --no-keep-alive): images/s, p50/p99 ms, the mean
#          time a request spent in its replica, and each replica's engine utilisation (its
#          codetr_engine_seconds_total over the level's wall time)
#   batch  codetr batch over IMAGES generated JPEGs (crops of the demo image of many sizes; IMAGES=0
#          skips it) with each actor count of BATCH_ACTORS (default 1; "1 2" on a 2-GPU machine)
# Every service's answer to one image, and every batch run's records, must equal the first one's
# (summary: *_equal). Ray and what it needs beyond the image come from the carried .raypkg
# (dev/gpu/ray_bundle.sh). $OUT: serve_bench.json (every number above), logs.tgz, build.log. About
# 7 minutes on a fresh machine with the defaults.
# Usage (device tool, carry .deps .raypkg): bash dev/gpu/serve_bench.sh
#   two GPUs (kind nvidia-h200-x2), Swin-L:
#   PRESET=co_dino_5scale_swin_l_16xb1_1x_coco NAME=swin_l_b8 SERVE_CONFIGS="1x1 2x1" LEVELS="32 64" \
#     BATCH_ACTORS="1 2" GRAPHS=off bash dev/gpu/serve_bench.sh
# DEVICE=cpu bash dev/gpu/serve_bench.sh: the same sequence with the tiny test model on CPU (replica
# GPUs ignored), a dry run on any machine with this checkout's native build and torch.
set -uo pipefail
source "$(dirname "$0")/env.sh"
DEVICE=${DEVICE:-cuda}
IMAGES=${IMAGES:-2048} LEVELS=${LEVELS:-1 8 32} SERVE_CONFIGS=${SERVE_CONFIGS:-1x1} BATCH_ACTORS=${BATCH_ACTORS:-1}
PRESET=${PRESET:-co_dino_5scale_r50_8xb2_1x_coco}
REQUESTS=${REQUESTS:-800} REQUESTS_C1=${REQUESTS_C1:-200}
PORT=${PORT:-8000}
JPEG=$PWD/python/codetr/assets/demo.jpg
# No usage-stats upload attempts (the machine has no network).
export RAY_USAGE_STATS_ENABLED=0
step() { echo "== $* $(date +%T) (${SECONDS}s)"; }
# Logs, metrics and batch records ($OUT gets the summary and logs.tgz).
WORK=${WORK:-/tmp/serve_bench}
rm -rf "$WORK" && mkdir -p "$WORK"
export EXPORT_LOGS=$WORK

install_ray
python3 - > "$WORK/versions.json" <<'PY'
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
cat "$WORK/versions.json"
[ -x build-device/python/codetr/_lib/codetr-detect ] || { step build; build_native; }
DETECT=$PWD/build-device/python/codetr/_lib/codetr-detect
demo_ppm

step export
if [ "$DEVICE" = cuda ]; then
  nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$WORK/gpu.txt"
  NAME=${NAME:-r50_b8} GRAPHS=${GRAPHS:-off on}
  nvidia-smi -L
  export_engine "$NAME" "$PRESET" 8
else
  NAME=tiny_r50_cpu_b8 GRAPHS=off
  [ -f "$ENGINES/$NAME/model.pt2" ] || python3 -m codetr export --preset tiny_r50 \
    --checkpoint tests/fixtures/golden/tiny_r50.safetensors --device cpu --dtype float32 --height 128 --width 160 \
    --batch 8 -o "$ENGINES/$NAME" > "$WORK/export_$NAME.log" 2>&1
fi
MODEL=$ENGINES/$NAME
[ -f "$MODEL/model.pt2" ] || { echo "export of $NAME failed:"; tail -20 "$WORK/export_$NAME.log"; exit 1; }

for graphs in $GRAPHS; do
  step "codetr-detect --benchmark, CUDA graphs $graphs"
  "$DETECT" --model "$MODEL" --benchmark "${ITERS:-100}" --cuda-graphs "$graphs" "$IMAGE" 2>&1 | tee "$WORK/cli_graphs_$graphs.log"
done

# After each level, every replica's /metrics (engine batch sizes and busy seconds) ->
# $WORK/metrics_<config>_c<level>.json.
scrape() {  # level tag: GET /metrics until every replica answered (requests go to a random one)
  python3 - "http://127.0.0.1:$PORT/metrics" "$WORK/metrics_$2.json" "$1" <<'PY'
import json, re, sys, urllib.request
url, path, replicas = sys.argv[1], sys.argv[2], int(sys.argv[3])
seen = {}
for _ in range(64):
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    replica = re.search(r'replica="([^"]*)"', text).group(1)
    seen[replica] = {
        "engine_seconds": float(re.search(r"^codetr_engine_seconds_total\{[^}]*\} (\S+)$", text, re.M).group(1)),
        "batches": {m.group(1): int(m.group(2)) for m in
                    re.finditer(r'^codetr_engine_batches_total\{[^}]*size="(\d+)"\} (\S+)$', text, re.M)},
        "latency": [float(re.search(rf"^codetr_request_latency_seconds_{k}\{{[^}}]*\}} (\S+)$", text, re.M).group(1))
                    for k in ("sum", "count")]}
    if len(seen) == replicas:
        break
json.dump(seen, open(path, "w"))
print(path, json.dumps(seen))
PY
}
for config in $SERVE_CONFIGS; do
  replicas=${config%x*} gpus=${config#*x}
  flags=(--replicas "$replicas")
  [ "$DEVICE" = cuda ] && flags+=(--gpus-per-replica "$gpus")
  step "codetr serve ${flags[*]}"
  python3 -m codetr serve --model "$MODEL" --port "$PORT" --max-batch 8 "${flags[@]}" > "$WORK/serve_$config.log" 2>&1 &
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
    scrape "$replicas" "${config}_start" > /dev/null
    # The answer to the demo image, to compare across services.
    python3 -c "import urllib.request, sys; sys.stdout.write(urllib.request.urlopen(urllib.request.Request( \
'http://127.0.0.1:$PORT/?file=demo.jpg', data=open('$JPEG', 'rb').read(), method='POST')).read().decode())" \
      > "$WORK/answer_$config.json"
    for c in $LEVELS; do
      step "bench_serve, $config, concurrency $c"
      # Concurrency 1 runs one request at a time, so it gets fewer requests than the batched levels.
      n=$REQUESTS; [ "$c" = 1 ] && n=$REQUESTS_C1
      python3 tools/bench_serve.py --url "http://127.0.0.1:$PORT/" --image "$JPEG" --concurrency "$c" --requests "$n" \
        --warmup 0 ${BENCH_ARGS:-} | python3 -c "import json, sys; r = json.loads(sys.stdin.read()); r.update(replicas=$replicas, \
gpus_per_replica=$gpus, config='$config'); print(json.dumps(r))" | tee -a "$WORK/bench_serve.jsonl"
      scrape "$replicas" "${config}_c$c"
    done
  else
    echo "codetr serve did not answer /health:"; tail -30 "$WORK/serve_$config.log"
  fi
  # SIGTERM: codetr serve deletes its application and its local Ray cluster goes with it.
  kill -TERM "$serve_pid" 2>/dev/null
  for _ in $(seq 60); do kill -0 "$serve_pid" 2>/dev/null || break; sleep 1; done
  kill -KILL "$serve_pid" 2>/dev/null && echo "codetr serve ignored SIGTERM for 60 s: killed"
  wait "$serve_pid" 2>/dev/null
done

if [ "$IMAGES" -gt 0 ]; then
  step "generate $IMAGES images"
  inputs=$(mktemp -d /tmp/serve_bench_in.XXXXXX)
  # Crops of the demo image, 160x120 to 640x480, each its own size and content (seeded).
  python3 - "$JPEG" "$inputs" "$IMAGES" <<'PY'
import random, sys
from PIL import Image
src, out, n = Image.open(sys.argv[1]).convert("RGB"), sys.argv[2], int(sys.argv[3])
rng = random.Random(0)
for i in range(n):
    w, h = rng.randint(160, src.width), rng.randint(120, src.height)
    x, y = rng.randint(0, src.width - w), rng.randint(0, src.height - h)
    src.crop((x, y, x + w, y + h)).save(f"{out}/{i:06d}.jpg", quality=90)
PY
  for actors in $BATCH_ACTORS; do
    step "codetr batch, $IMAGES images, $actors actor(s)"
    results=$WORK/batch_$actors
    rm -rf "$results"
    python3 -m codetr batch "$inputs" --model "$MODEL" -o "$results" --actors "$actors" --no-progress \
      > "$WORK/batch_$actors.log" 2>&1
    tail -3 "$WORK/batch_$actors.log"
  done
  rm -rf "$inputs"
fi

step summary
python3 - "$WORK" "$NAME" "$DEVICE" <<'PY' | tee "$OUT/serve_bench.json"
import json, re, sys
from pathlib import Path
out, name, device = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
def grab(path, pattern):
    m = re.search(pattern, path.read_text()) if path.is_file() else None
    return float(m.group(1)) if m else None
def records(folder):
    lines = [l for shard in sorted(folder.glob("*.jsonl")) for l in shard.read_text().splitlines() if l.strip()]
    return sorted(lines, key=lambda l: json.loads(l)["file"])
cli = {p.stem.split("_")[-1]: grab(p, r"runs: ([\d.]+) images/s") for p in sorted(out.glob("cli_graphs_*.log"))}
engine = cli.get("off")
levels = [json.loads(l) for l in (out / "bench_serve.jsonl").read_text().splitlines()] \
    if (out / "bench_serve.jsonl").is_file() else []
previous = {}  # config -> the replicas' metrics after its last level
for level in levels:
    config = level["config"]
    before = previous.get(config) or json.loads((out / f"metrics_{config}_start.json").read_text())
    after = previous[config] = json.loads((out / f"metrics_{config}_c{level['concurrency']}.json").read_text())
    wall = level["requests"] / level["images_per_s"]
    # Each replica's engine busy time during the level over its wall time (1.0: never waited for requests).
    level["engine_utilisation"] = [round((a["engine_seconds"] - before.get(r, {}).get("engine_seconds", 0.0)) / wall, 3)
                                   for r, a in sorted(after.items())]
    level["engine_batches"] = {
        size: sum(a["batches"].get(size, 0) - before.get(r, {}).get("batches", {}).get(size, 0) for r, a in after.items())
        for size in sorted({s for a in after.values() for s in a["batches"]}, key=int)}
    # Mean time a request spent in its replica (body, decode, queue, engine, JSON), next to the client's p50.
    seconds, count = (sum(a["latency"][k] - before.get(r, {}).get("latency", [0.0, 0.0])[k] for r, a in after.items())
                      for k in (0, 1))
    level["replica_mean_ms"] = round(1000 * seconds / count, 2) if count else None
    if engine:
        level["share_of_cli"] = round(level["images_per_s"] / engine, 3)
answers = [p.read_text() for p in sorted(out.glob("answer_*.json"))]
batch = []
for log in sorted(out.glob("batch_*.log")):
    actors = int(log.stem.split("_")[1])
    run = {"actors": actors, "images_per_s": grab(log, r"\(([\d.]+) images/s\)"),
           "steady_images_per_s": grab(log, r"then ([\d.]+) images/s"),
           "failed": grab(log, r"\((\d+) failed\)"), "records": len(records(out / f"batch_{actors}"))}
    if engine and run["steady_images_per_s"]:
        run["steady_share_of_cli"] = round(run["steady_images_per_s"] / engine, 3)
    batch.append(run)
batch_records = [records(out / f"batch_{b['actors']}") for b in batch]
summary = {"engine": name, "device": device, "versions": json.loads((out / "versions.json").read_text()),
           # The engine's own throughput; the service's (share_of_cli in each level) and batch's shares
           # are of the CUDA-graphs-off figure, as they run.
           "cli_images_per_s": {f"cuda_graphs_{k}": v for k, v in cli.items()},
           "serve": levels, "serve_answers_equal": len(set(answers)) == 1 if answers else None,
           "batch": batch, "batch_records_equal": all(r == batch_records[0] for r in batch_records)
           if batch_records else None}
print(json.dumps(summary, indent=1))
PY
# The device tool returns few files: the summary, build.log and the logs (not the batch records).
tar -czf "$OUT/logs.tgz" -C "$WORK" --exclude 'batch_*/*' .
step finished
