#!/usr/bin/env bash
# GPU machine: the benchmark table (model x precision x size x batch of static engines, precisions
# DTYPES (default float16), with engine and end-to-end time, images/s, TFLOP/s, peak memory, export
# time; a dynamic engine of the first precision beside its static one) and the eager per-stage profile, in two device calls made back to back: the engines,
# build-device and $STATE stay on the machine only while it is warm.
#   export   builds (`import codetr` needs the runtime too), starts exporting every missing engine
#            into $ENGINES, JOBS at a time, the slowest first (dynamic, then the MODELS from last to
#            first), then waits for them until EXPORT_WAIT s into the call. The exports run in a
#            session of their own (setsid): those still running when the call returns go on, and
#            the next part waits for them.
#   measure  FLOPs per image (tools/bench_model.py --flops-only, meta device), then per engine
#            `codetr-detect --benchmark ITERS` (CUDA graphs on) while dev/gpu/table.py samples its
#            peak memory; then the dynamic engine of each DYNAMIC model and its static batch-1
#            engine on the demo image resized to the first of SIZES, both run at that size (the
#            dynamic engine's model.json gets that resize scale: the engine contract does not hold
#            it), CUDA graphs off (a dynamic engine cannot use them) and, for the static one, on.
#            -> $OUT/table.md, $OUT/table.json
#   stages   tools/bench_model.py --stages --flops, STAGE_MODE (eager fp16): PyTorch eager time,
#            FLOPs and achieved TFLOP/s per stage, batch 1 and 8, every size
#            -> $OUT/stages.md, $OUT/stages.json
# No part starts new work after CALL_LIMIT s (default 555) into the call; what it has is written,
# and the same parts in the next call (on the still-warm machine) go on from there: measure skips
# the runs it has a row for, stages the model and size it has a whole log for (FRESH=1: redo all).
# Logs: $OUT/logs.tgz. Usage (device tool, carry .deps): the same command in two calls, back to back:
#   bash dev/gpu/table.sh export measure stages
# The precision axis beside fp16 rows already measured (8 more engines, two calls):
#   DTYPES="bfloat16 float32" SIZES=1152x768 DYNAMIC= bash dev/gpu/table.sh export measure
# DEVICE=cpu PRESETS=tiny bash dev/gpu/table.sh export measure stages: the same sequence with the
# tiny presets (float32, small sizes, few runs) on CPU, a dry run on any machine with torch.
set -uo pipefail
source "$(dirname "$0")/env.sh"
SCRIPT=$PWD/dev/gpu/table.sh
DEVICE=${DEVICE:-cuda}
if [ "${PRESETS:-full}" = tiny ]; then
  MODELS=${MODELS:-tiny_r50:tiny_r50 tiny_swin:tiny_swin} SIZES=${SIZES:-160x128} BATCHES=${BATCHES:-1 2}
  DYNAMIC=${DYNAMIC-tiny_r50} ITERS=${ITERS:-5} STAGE_ITERS=${STAGE_ITERS:-2} JOBS=${JOBS:-2}
else
  MODELS=${MODELS:-r50:co_dino_5scale_r50_8xb2_1x_coco swin_l:co_dino_5scale_swin_l_16xb1_1x_coco}
  SIZES=${SIZES:-1152x768 1920x1280} BATCHES=${BATCHES:-1 8} DYNAMIC=${DYNAMIC-r50}
  ITERS=${ITERS:-100} STAGE_ITERS=${STAGE_ITERS:-20} JOBS=${JOBS:-5}
fi
if [ "$DEVICE" = cuda ]; then
  export EXPORT_DEVICE=cuda; DTYPES=${DTYPES:-float16} STAGE_MODE=${STAGE_MODE:-eager_fp16} GRAPHS=on
else
  export EXPORT_DEVICE=cpu; DTYPES=${DTYPES:-float32} STAGE_MODE=${STAGE_MODE:-eager_fp32} GRAPHS=off
fi
CALL_LIMIT=${CALL_LIMIT:-555} EXPORT_WAIT=${EXPORT_WAIT:-540}
# State that outlives a call on a warm machine ($OUT is emptied before each call).
STATE=${STATE:-/tmp/table_$DEVICE}
export EXPORT_LOGS=$STATE/logs
mkdir -p "$EXPORT_LOGS"
DETECT=$PWD/build-device/python/codetr/_lib/codetr-detect
PAIR_SIZE=${SIZES%% *}
[ "${FRESH:-0}" = 1 ] && rm -f "$STATE/rows.jsonl" "$STATE"/flops_*.json "$EXPORT_LOGS"/stages_*.log
step() { echo "== $* $(date +%T) (${SECONDS}s)"; }
left() { echo $((CALL_LIMIT - SECONDS)); }
preset_of() { for m in $MODELS; do [ "${m%%:*}" = "$1" ] && echo "${m#*:}"; done; }
# Engine names carry the precision: r50_fp16_1152x768_b8.
tag() { case $1 in float16) echo fp16;; bfloat16) echo bf16;; float32) echo fp32;; *) echo "$1";; esac; }
DTYPE0=${DTYPES%% *}  # the dynamic-vs-static pair's precision
pack_logs() { tar -czf "$OUT/logs.tgz" -C "$STATE" logs 2>/dev/null; }

# Export jobs "name preset batch size", slowest first.
export_jobs() {
  local m rev="" size batch
  for m in $DYNAMIC; do echo "${m}_$(tag "$DTYPE0")_dynamic_b1 $(preset_of "$m") 1 dynamic $DTYPE0"; done
  for m in $MODELS; do rev="$m $rev"; done
  for m in $rev; do
    for size in $(echo $SIZES | tr ' ' '\n' | tac); do
      for batch in $(echo $BATCHES | tr ' ' '\n' | sort -rn); do
        for dtype in $DTYPES; do echo "${m%%:*}_$(tag "$dtype")_${size}_b$batch ${m#*:} $batch $size $dtype"; done
      done
    done
  done
}

exports_running() { [ -f "$STATE/exports.pid" ] && kill -0 "$(cat "$STATE/exports.pid")" 2>/dev/null; }

# Runs detached (setsid) from run_export: every missing engine, JOBS at a time, each one's
# wall time and exit status in $STATE/export_times.txt; host memory in use every 5 s. Each export's
# Triton compile pool gets 2 x cores / JOBS workers instead of one per core: the JOBS pools
# together still cover the cores, without JOBS x cores processes importing torch.
run__exports() {
  echo $$ > "$STATE/exports.pid"
  export TORCHINDUCTOR_COMPILE_THREADS=${TORCHINDUCTOR_COMPILE_THREADS:-$(( (2 * $(nproc) + JOBS - 1) / JOBS ))}
  ( while sleep 5; do echo "$(date +%T) $(free -m | awk '/^Mem:/ {print $3}') MiB used"; done ) \
    > "$EXPORT_LOGS/host_memory.log" &
  local sampler=$! name preset batch size
  while read -r name preset batch size dtype; do
    [ -f "$ENGINES/$name/model.pt2" ] && continue
    while [ "$(jobs -rp | wc -l)" -gt "$JOBS" ]; do wait -n; done  # JOBS exports + the sampler
    ( start=$SECONDS; EXPORT_DTYPE=$dtype export_engine "$name" "$preset" "$batch" "$size"; rc=$?
      echo "$name rc=$rc $((SECONDS - start)) s" >> "$STATE/export_times.txt"
      echo "$(date +%T) $name rc=$rc $((SECONDS - start)) s" ) &
  done < <(export_jobs)
  kill "$sampler"
  wait
  rm -f "$STATE/exports.pid"
}

wait_exports() {
  while exports_running && [ "$SECONDS" -lt "$1" ]; do sleep 5; done
  if exports_running; then echo "exports still running at ${SECONDS}s:"; ls "$ENGINES" | grep '\.part$'; fi
}

run_export() {
  [ "$DEVICE" = cuda ] && nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$STATE/gpu.txt"
  step build
  [ -x "$DETECT" ] || build_native
  if exports_running; then
    echo "exports already running (pid $(cat "$STATE/exports.pid"))"
  else
    step "exports start: $JOBS at a time"; export_jobs
    setsid bash "$SCRIPT" _exports > "$EXPORT_LOGS/exports.log" 2>&1 < /dev/null &
    sleep 1
  fi
  step "wait for the exports"
  wait_exports "$EXPORT_WAIT"
  cat "$EXPORT_LOGS/exports.log" "$EXPORT_LOGS/host_memory.log" 2>/dev/null | sort | awk 'NR % 6 == 1 || /rc=/'
  pack_logs
}

# The demo image as PPM (codetr-detect here has no OpenCV), and resized to PAIR_SIZE for the pair.
images() {
  demo_ppm
  PAIR_IMAGE=/tmp/demo_$PAIR_SIZE.ppm
  python3 -c "from PIL import Image; Image.open('$IMAGE').resize(($PAIR_W, $PAIR_H), Image.BILINEAR).save('$PAIR_IMAGE')"
}
PAIR_W=${PAIR_SIZE%x*} PAIR_H=${PAIR_SIZE#*x}

bench() {  # name model preset kind size batch graphs image [pair]; the engine's precision in $DT
  local name=$1 dir=$ENGINES/$1 t
  t=$(left)
  if [ "$t" -lt 20 ]; then echo "skipped $name (graphs $7): ${SECONDS}s into the call"; return; fi
  [ -f "$dir/model.pt2" ] || { echo "skipped $name: not exported ($EXPORT_LOGS/export_$name.log)"; return; }
  if grep -F "\"name\": \"$name\"" "$STATE/rows.jsonl" 2>/dev/null | grep -F "\"cuda_graphs\": \"$7\"" \
      | grep -F "\"image\": \"$(basename "$8")\"" | grep -vq '"error"'; then
    echo "$name (graphs $7, $(basename "$8")): measured in an earlier call"; return
  fi
  python3 dev/gpu/table.py bench --detect "$DETECT" --model "$dir" --image "$8" --iters "$ITERS" --cuda-graphs "$7" \
    --device "$DEVICE" --rows "$STATE/rows.jsonl" --log "$EXPORT_LOGS/bench_${name}_graphs_$7.log" --timeout "$t" \
    --row "{\"name\": \"$name\", \"model\": \"$2\", \"preset\": \"$3\", \"kind\": \"$4\", \
\"dtype\": \"$DT\", \"size\": [${5%x*}, ${5#*x}], \"batch\": $6${9:+, \"pair\": true}}" \
    | cut -c1-400
}

render() {
  local flops=("$STATE"/flops_*.json)
  [ -f "${flops[0]}" ] || flops=()
  python3 dev/gpu/table.py render --rows "$STATE/rows.jsonl" --flops "${flops[@]}" --exports "$STATE/export_times.txt" \
    --meta "$STATE/meta.json" --graphs "$GRAPHS" --md "$OUT/table.md" --json "$OUT/table.json" > /dev/null
}

run_measure() {
  step "wait for the exports"
  wait_exports "$CALL_LIMIT"
  [ -x "$DETECT" ] || { step build; build_native; }
  images
  python3 - "$STATE" "$IMAGE" "$DEVICE" "${DTYPES// /, }" "$ITERS" "$GRAPHS" "$PAIR_SIZE" > "$STATE/meta.json" <<'PY'
import json, pathlib, sys, time
import torch
state, image, device, dtypes, iters, graphs, pair = sys.argv[1:]
gpu = pathlib.Path(state, "gpu.txt")
name, driver = (gpu.read_text().strip().split(", ") + ["?"])[:2] if gpu.is_file() else (device, "-")
print(json.dumps({
    "gpu": name, "driver": driver, "torch": torch.__version__, "date": time.strftime("%Y-%m-%d"),
    "image": pathlib.Path(image).name,
    "command": f"`bash dev/gpu/table.sh export measure stages` in two calls on one warm machine (carry `.deps`); "
               f"`codetr-detect --benchmark {iters} --cuda-graphs {graphs}`",
    "engines": f"{dtypes} static engines (`codetr export --dtype D --width W --height H --batch B`, random "
               "weights), the demo image (640x480) resized by the preset's rule (at most 1333x800) and padded to "
               "the engine size: the engine computes every W x H pixel. TFLOP/s = FLOPs per image (meta-device "
               "count, tools/bench_model.py) x batch / engine time.",
    "pair_note": f"the dynamic engine's model.json resize scale set to [{pair.replace('x', ', ')}]"}))
PY
  step "FLOPs per image"
  for m in $MODELS; do
    [ -f "$STATE/flops_${m%%:*}.json" ] || python3 tools/bench_model.py --flops-only --preset "${m#*:}" \
      --size "${SIZES// /,}" --batch 1 \
      --json "$STATE/flops_${m%%:*}.json" > /dev/null || echo "FLOP count of ${m#*:} failed"
  done
  local size batch m DT
  for DT in $DTYPES; do
    for size in $SIZES; do
      for batch in $BATCHES; do
        for m in $MODELS; do
          step "benchmark ${m%%:*} $DT $size batch $batch"
          bench "${m%%:*}_$(tag "$DT")_${size}_b$batch" "${m%%:*}" "${m#*:}" static "$size" "$batch" "$GRAPHS" "$IMAGE"
          render
        done
      done
    done
  done
  DT=$DTYPE0
  for m in $DYNAMIC; do
    step "dynamic vs static ${m}, $PAIR_SIZE"
    local dyn=$ENGINES/${m}_$(tag "$DT")_dynamic_b1 view=${m}_$(tag "$DT")_dynamic_b1_at_$PAIR_SIZE
    local static=${m}_$(tag "$DT")_${PAIR_SIZE}_b1
    if [ -f "$dyn/model.pt2" ]; then
      mkdir -p "$ENGINES/$view"
      ln -sfn "$dyn/model.pt2" "$ENGINES/$view/model.pt2"
      python3 -c "import json, sys; d = json.load(open(sys.argv[1])); d['preprocess']['resize']['scale'] = \
[$PAIR_W, $PAIR_H]; json.dump(d, open(sys.argv[2], 'w'), indent=1)" "$dyn/model.json" "$ENGINES/$view/model.json"
    fi
    bench "$view" "$m" "$(preset_of "$m")" dynamic "$PAIR_SIZE" 1 off "$PAIR_IMAGE" pair
    bench "$static" "$m" "$(preset_of "$m")" static "$PAIR_SIZE" 1 off "$PAIR_IMAGE" pair
    [ "$GRAPHS" = on ] && bench "$static" "$m" "$(preset_of "$m")" static "$PAIR_SIZE" 1 on "$PAIR_IMAGE" pair
    # The view's export time is the dynamic engine's.
    grep "^${dyn##*/} " "$STATE/export_times.txt" 2>/dev/null | sed "s/^${dyn##*/} /$view /" \
      >> "$STATE/export_times.txt"
    render
  done
  render
  cat "$OUT/table.md"
  pack_logs
}

run_stages() {
  wait_exports "$CALL_LIMIT"
  [ -x "$DETECT" ] || { step build; build_native; }
  local size m logs=() t
  # The first size for every model first: a call cut short still has one whole size.
  for size in $SIZES; do
    for m in $MODELS; do
      t=$(left)
      if [ "$t" -lt 30 ]; then echo "skipped stages ${m%%:*} $size: ${SECONDS}s into the call"; continue; fi
      logs+=("$EXPORT_LOGS/stages_${m%%:*}_$size.log")
      # bench_model prints its summary table last: a log that has it is whole.
      if grep -q '^| mode |' "${logs[-1]}" 2>/dev/null; then
        echo "stages ${m%%:*} $size: measured in an earlier call"; continue
      fi
      step "stages ${m%%:*} $size"
      timeout "$t" python3 tools/bench_model.py --device "$DEVICE" --preset "${m#*:}" --size "$size" \
        --batch "${BATCHES// /,}" --modes "$STAGE_MODE" --warmup "$STAGE_ITERS" --iters "$STAGE_ITERS" \
        --stages --flops > "${logs[-1]}" 2>&1 || echo "bench_model ${m%%:*} $size: exit $? (see its log)"
      python3 dev/gpu/table.py stages "${logs[@]}" --md "$OUT/stages.md" --json "$OUT/stages.json" \
        --note "$STAGE_MODE PyTorch eager (not the engine), tools/bench_model.py --stages --flops, median of $STAGE_ITERS calls" \
        > /dev/null
    done
  done
  [ -f "$OUT/stages.md" ] && cat "$OUT/stages.md"
  pack_logs
}

for part in "$@"; do "run_$part"; done
