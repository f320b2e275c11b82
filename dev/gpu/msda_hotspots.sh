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
  dev/gpu/msda_profile.sh "$LIB"
# The same launches again, for the per-instruction stall sampling alone (msda_profile.sh printed the
# speed-of-light and warp-state sections).
report=/tmp/msda_hotspots
CODETR_OPS_LIBRARY=$LIB PYTHONPATH=$PYTHONPATH:$PWD/tools ncu --clock-control none -k "regex:$KERNELS_RE" \
  --launch-skip $((3 * PER_CALL)) --launch-count $PER_CALL --import-source no --section SourceCounters \
  -f -o "$report" python3 /tmp/msda_backward_calls.py > "$OUT/ncu_run.log" 2>&1
tail -3 "$OUT/ncu_run.log"
ncu -i "$report.ncu-rep" --page source --csv --print-source sass > "$OUT/sass_${CASE}_${DTYPE}.csv" 2>&1
python3 - "$OUT/sass_${CASE}_${DTYPE}.csv" "${TOP:-25}" <<'PY'
import csv, sys
top = int(sys.argv[2])
# Per profiled kernel: a "Kernel Name" row, the column header ("Address", "Source", ...), then one row
# per SASS instruction. ncu may print a kernel's table twice: each is shown once.
tables, name = [], None
for row in csv.reader(open(sys.argv[1])):
    if not row:
        continue
    if row[0] == "Kernel Name":
        name = row[1]
    elif row[0] == "Address":
        tables.append((name, row, []))
    elif tables:
        tables[-1][2].append(row)
shown = set()
for name, header, rows in tables:
    col = next((i for i, h in enumerate(header) if h.startswith("Warp Stall Sampling (All")), None)
    if col is None:
        print("no stall-sampling column for", name)
        continue
    rows = [r for r in rows if len(r) > col and r[col].isdigit()]
    total = sum(int(r[col]) for r in rows)
    if (name, len(rows), total) in shown:
        continue
    shown.add((name, len(rows), total))
    print(f"== {name.split('(const')[0][:110]}: {len(rows)} instructions, {total} stall samples")
    for r in sorted(rows, key=lambda r: -int(r[col]))[:top]:
        print(f"{100 * int(r[col]) / max(total, 1):5.1f}%  {r[0]:>16}  {r[1].strip()[:100]}")
PY
