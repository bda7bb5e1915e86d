#!/usr/bin/env bash
# The memory scheduler under real pressure (issue 5). First, with the card to itself: one image at
# 1024x1024 and one at 512x512 with --batch auto (calibrates each size at batch 1 and 2 into the cache,
# then renders at batch 1: the whole-job peak of the default mode), and one 1024x1024 image with
# --offload on. Then a 32-prompt 1024x1024 job with --batch 16 under GPU budgets of 24, 12 and 8 GiB, the
# rest of the card held by a ballast process (scripts/bench/ballast.py) so that every out-of-memory error
# is a real one. Prints per run: wall time, failed items, OOM retries, per-stage peaks; then whether the
# images are equal across budgets, and every chunk's calibrated prediction against its measured peak.
#   bash scripts/bench/budget_bench.sh MODEL OUTDIR [STEPS] [EXTRA RENDER FLAGS...]
set -uo pipefail
MODEL="$1"; OUTDIR="$2"; STEPS="${3:-4}"; shift 3 || shift $#
EXTRA=("$@")
BIN="${FB_BIN:-./build-gpu/fluxbatch}"
mkdir -p "$OUTDIR"
export FLUXBATCH_CACHE_DIR=/tmp/fluxbatch-bench-cache  # a fresh calibration cache for this run
rm -rf "$FLUXBATCH_CACHE_DIR"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader

make_job() {  # make_job FILE SIZE COUNT DIR STEPS
  python3 - "$@" <<'PY'
import json, sys
path, size, count, out, steps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], int(sys.argv[5])
subjects = ["a red fox", "a lighthouse", "a bowl of ramen", "an old tram", "a snowy owl", "a glass teapot",
            "a desert canyon", "a violin", "a paper boat", "a city at night", "a sunflower field", "a robot"]
items = [{"prompt": f"{subjects[i % len(subjects)]}, photo {i}", "seed": 1000 + i} for i in range(count)]
json.dump({"output": {"dir": out, "name": "{index:02}.png"},
           "defaults": {"width": size, "height": size, "steps": steps, "guidance": 3.5},
           "items": items}, open(path, "w"), indent=1)
PY
}

run_budget() {  # run_budget LABEL LEAVE_GIB SIZE COUNT BATCH
  local label=$1 leave=$2 size=$3 count=$4 batch=$5
  local job="/tmp/budget_$label.json" out="/tmp/budget_out_$label"
  rm -rf "$out" /tmp/ballast.ready
  make_job "$job" "$size" "$count" "$out" "$STEPS"
  local bpid=""
  if [ "$leave" != "none" ]; then
    python3 scripts/bench/ballast.py --leave-gib "$leave" --ready /tmp/ballast.ready > "$OUTDIR/ballast_$label.log" 2>&1 &
    bpid=$!
    for _ in $(seq 120); do [ -f /tmp/ballast.ready ] && break; sleep 0.5; done
    cat "$OUTDIR/ballast_$label.log"
  fi
  local t0=$(date +%s%N)
  "$BIN" render "$job" --model "$MODEL" --device cuda --batch "$batch" --overwrite -v "${EXTRA[@]}" \
    > "$OUTDIR/render_$label.log" 2>&1
  local rc=$?
  local t1=$(date +%s%N)
  [ -n "$bpid" ] && kill "$bpid" && wait "$bpid" 2>/dev/null
  local failed=$(grep -c '"status": *"failed"\|"status":"failed"' "$out/manifest.jsonl" 2>/dev/null)
  local pngs=$(ls "$out"/*.png 2>/dev/null | wc -l)
  printf '== %s: %sx%s, %s images, --batch %s, %s GiB left by ballast: exit %s, %s PNGs, %s failed, wall %.1f s\n' \
    "$label" "$size" "$size" "$count" "$batch" "$leave" "$rc" "$pngs" "${failed:-0}" "$(( (t1 - t0) / 1000000 ))e-3"
  grep -iE "offload:|staged:|loaded|plan for|calibration|memory:|retr|halv|tiled|fallback|done:" "$OUTDIR/render_$label.log" \
    | grep -v "debug" | cut -c1-230 | tail -24
}

pixels_hash() {  # pixels_hash DIR -> one line per PNG: name sha of decoded pixels
  python3 - "$1" <<'PY'
import hashlib, sys
from pathlib import Path
from PIL import Image
for p in sorted(Path(sys.argv[1]).glob("*.png")):
    print(p.name, hashlib.sha256(Image.open(p).convert("RGB").tobytes()).hexdigest()[:16])
PY
}

EXTRA_BASE=("${EXTRA[@]}")
run_budget "calib1024" none 1024 1 auto
run_budget "calib512" none 512 1 auto
EXTRA=("${EXTRA_BASE[@]}" --offload on); run_budget "peak1024-offload" none 1024 1 1
EXTRA=("${EXTRA_BASE[@]}" --vram-budget 8G); run_budget "peak1024-budget8G" none 1024 1 1
EXTRA=("${EXTRA_BASE[@]}")
for leave in 24 12 8; do run_budget "b$leave" "$leave" 1024 32 16; done
echo "== images equal across budgets (decoded pixels)?"
pixels_hash /tmp/budget_out_b24 > /tmp/h24; pixels_hash /tmp/budget_out_b12 > /tmp/h12; pixels_hash /tmp/budget_out_b8 > /tmp/h8
echo "$(wc -l < /tmp/h24) images at 24 GiB; differing from them: 12 GiB $(diff /tmp/h24 /tmp/h12 | grep -c '^>'), 8 GiB $(diff /tmp/h24 /tmp/h8 | grep -c '^>')"
cmp -s /tmp/h24 /tmp/h12 && cmp -s /tmp/h24 /tmp/h8 && echo "identical: 24 GiB = 12 GiB = 8 GiB"
echo "== predicted (calibrated) against measured peak, every chunk"
python3 - "$OUTDIR" <<'PY'
import re, sys
from pathlib import Path
unit = {"B": 1, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30}
def size(text):
    value, u = text.split()
    return float(value) * unit[u]
pat = re.compile(r"batch of (\d+) at (\d+x\d+).*measured peak ([\d.]+ \w+), predicted ([\d.]+ \w+) \((\w+)\)")
worst = 0.0
for log in sorted(Path(sys.argv[1]).glob("render_*.log")):
    rows = [m.groups() for m in map(pat.search, log.read_text().splitlines()) if m]
    if not rows:
        continue
    errors = [(size(p) - size(m)) / size(m) * 100 for _, _, m, p, _ in rows]
    kinds = sorted({r[4] for r in rows})
    by_batch = {}
    for (b, shape, m, p, _), e in zip(rows, errors):
        by_batch.setdefault((b, shape, m, p), []).append(e)
    print(f"{log.stem}: {len(rows)} chunks ({', '.join(kinds)}), error min {min(errors):+.1f}% max {max(errors):+.1f}%")
    for (b, shape, m, p), es in sorted(by_batch.items(), key=lambda kv: -int(kv[0][0])):
        print(f"   batch {b:>2} at {shape}: measured {m}, predicted {p} ({es[0]:+.1f}%) x{len(es)}")
    if kinds == ["calibrated"]:
        worst = max(worst, max(abs(e) for e in errors))
print(f"largest calibrated error: {worst:.1f}%")
PY
