#!/usr/bin/env bash
# On the GPU machine: the SASS instructions where one MSDA backward call's kernels stall most
# (Nsight Compute's warp-stall sampling per instruction), for the inputs of tools/bench_msda.py.
# CASE=encoder|decoder (default decoder), DTYPE=half|float, KERNELS (regex, default
# "tile_kernel|backward_kernel"), TOP (instructions per kernel, default 25).
# $1: the op library (default: build the op into build-device).
set -uo pipefail
source "$(dirname "$0")/env.sh"
use_op_library "${1:-}"
export CASE=${CASE:-decoder} DTYPE=${DTYPE:-half}
# msda_profile.sh writes the call script, prints the per-kernel times of 20 calls and ncu's sections.
KERNELS_RE=${KERNELS:-tile_kernel|backward_kernel}
PER_CALL=${PER_CALL:-2}  # matching kernels per call
KERNELS="$KERNELS_RE" SKIP=$((3 * PER_CALL)) COUNT=$PER_CALL NCU_LINES=${NCU_LINES:-70} \
  tools/device/msda_profile.sh "$LIB"
report=/tmp/msda_hotspots
CODETR_OPS_LIBRARY=$LIB PYTHONPATH=$PYTHONPATH:$PWD/tools ncu --clock-control none -k "regex:$KERNELS_RE" \
  --launch-skip $((3 * PER_CALL)) --launch-count $PER_CALL --import-source no --section SourceCounters --section WarpStateStats \
  --section SpeedOfLight -f -o "$report" python3 /tmp/msda_backward_calls.py > "$OUT/ncu_run.log" 2>&1
tail -3 "$OUT/ncu_run.log"
ncu -i "$report.ncu-rep" --page source --csv --print-source sass > "$OUT/sass_${CASE}_${DTYPE}.csv" 2>&1
python3 - "$OUT/sass_${CASE}_${DTYPE}.csv" "${TOP:-25}" <<'PY'
import csv, io, sys
text = open(sys.argv[1]).read()
top = int(sys.argv[2])
# One CSV table per kernel; tables start at a header line holding "Source".
blocks, cur = [], []
for line in text.splitlines():
    if line.startswith('"#"') or line.startswith('"Address"') or ('"Source"' in line and cur):
        if cur:
            blocks.append(cur)
        cur = [line]
    elif line.strip():
        cur.append(line)
if cur:
    blocks.append(cur)
for block in blocks:
    rows = list(csv.reader(io.StringIO("\n".join(block))))
    header = rows[0]
    if "Source" not in header:
        print("\n".join(block[:5]))
        continue
    cols = [i for i, h in enumerate(header) if "Warp Stall Sampling (All" in h]
    if not cols:
        print("no stall column in", header[:12])
        continue
    c = cols[0]
    body = [r for r in rows[1:] if len(r) > c and r[c].replace(".", "").isdigit()]
    total = sum(float(r[c]) for r in body) or 1.0
    print(f"== kernel table: {len(body)} instructions, {total:.0f} stall samples")
    src = header.index("Source")
    for r in sorted(body, key=lambda r: -float(r[c]))[:top]:
        print(f"{100 * float(r[c]) / total:5.1f}%  {r[0]:>6}  {r[src][:110]}")
PY
