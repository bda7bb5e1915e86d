#!/usr/bin/env bash
# Images per hour of a whole job, fluxbatch against diffusers + bitsandbytes NF4, in the same call on the same
# card: COUNT prompts at 1024x1024, 28 steps, from the diffusers-made NF4 folder of scripts/bench/run_h100.sh.
# Each side is timed as a user sees it: the whole process, loading included, until the last PNG is written.
#   bash scripts/bench/job_bench.sh MODEL_NF4 OUTDIR [COUNT] [DIFFUSERS_BATCH] [EXTRA FLUXBATCH FLAGS...]
# Prints both and writes OUTDIR/job<COUNT>.json (job<COUNT>_nf4_img_per_h, diffusers_job<COUNT>_nf4_img_per_h, ...).
# FB_JOB_SKIP_DIFFUSERS=1 runs fluxbatch only; FB_JOB_REUSE_DIFFUSERS=1 reuses OUTDIR/job_diffusers.json from an earlier run in the same call.
# Either way a diffusers job an earlier step of the call wrote there (OUTDIR starts empty each call) gives the ratio.
# FB_JOB_TAG names fluxbatch's figures when EXTRA flags change what it measures (e.g. FB_JOB_TAG=nf4_fp8 with
# --compute fp8: job<COUNT>_nf4_fp8_img_per_h, in OUTDIR/job<COUNT>_nf4_fp8.json).
set -uo pipefail
MODEL="$1"; OUTDIR="$2"; COUNT="${3:-16}"; DBATCH="${4:-4}"; shift 4 || shift $#
EXTRA=("$@")
BIN="${FB_BIN:-./build-gpu/fluxbatch}"
mkdir -p "$OUTDIR"
JOB=/tmp/job_bench.json
python3 - "$JOB" "$COUNT" <<'PY'
import json, sys
sys.path.insert(0, "scripts/bench")
from diffusers_job import prompts
path, count = sys.argv[1], int(sys.argv[2])
json.dump({"output": {"dir": "/tmp/job_bench_out", "name": "{index:02}.png"},
           "defaults": {"width": 1024, "height": 1024, "steps": 28, "guidance": 3.5},
           "items": [{"prompt": p, "seed": s} for p, s in prompts(count)]}, open(path, "w"), indent=1)
PY
rm -rf /tmp/job_bench_out
export FLUXBATCH_CACHE_DIR="${FLUXBATCH_CACHE_DIR:-/tmp/fluxbatch-job-bench-cache}"
t0=$(date +%s%N)
"$BIN" render "$JOB" --model "$MODEL" --device cuda --quantize nf4 --overwrite -v "${EXTRA[@]}" > "$OUTDIR/job_fluxbatch_${FB_JOB_TAG:-nf4}.log" 2>&1
rc=$?
t1=$(date +%s%N)
fb_wall=$(python3 -c "print(($t1 - $t0) / 1e9)")
pngs=$(ls /tmp/job_bench_out/*.png 2>/dev/null | wc -l)
echo "fluxbatch job: exit $rc, $pngs PNGs, $COUNT images in $fb_wall s whole process"
grep -E "batch of|plan for|loaded|fp8 compute|attention: |summary:|peak" "$OUTDIR/job_fluxbatch_${FB_JOB_TAG:-nf4}.log" | grep -v debug | cut -c1-400 | tail -8
if [ "${FB_JOB_SKIP_DIFFUSERS:-0}" = 1 ]; then
  if [ -f "$OUTDIR/job_diffusers.json" ]; then
    echo "diffusers: not run (FB_JOB_SKIP_DIFFUSERS=1); the ratio uses $OUTDIR/job_diffusers.json from an earlier step of this call"
  else
    echo "diffusers: skipped (FB_JOB_SKIP_DIFFUSERS=1)"
  fi
elif [ "${FB_JOB_REUSE_DIFFUSERS:-0}" = 1 ] && [ -f "$OUTDIR/job_diffusers.json" ]; then
  echo "diffusers: reusing $OUTDIR/job_diffusers.json from the earlier run of this call"
else
  rm -rf /tmp/job_bench_diffusers
  PYTHONUNBUFFERED=1 python3 scripts/bench/diffusers_job.py --model "$MODEL" --count "$COUNT" --batch "$DBATCH" \
    --out /tmp/job_bench_diffusers --json "$OUTDIR/job_diffusers.json" 2>&1 | grep -v -E "it/s\]|s/it\]|Loading"
fi
python3 - "$OUTDIR" "$COUNT" "$fb_wall" "$pngs" "${FB_JOB_TAG:-nf4}" <<'PY'
import json, os, re, sys
out, count, wall, pngs, tag = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
import os
fb = count * 3600 / wall if pngs == count else 0.0
fig = {f"job{count}_{tag}_wall_s": wall, f"job{count}_{tag}_img_per_h": fb}
# Steady: the denoise and decode stages' seconds per image from the run's summary (the manifest's last
# summary line), i.e. without loading and the prompts' encode stage.
summary = None
if os.path.exists("/tmp/job_bench_out/manifest.jsonl"):
    for line in open("/tmp/job_bench_out/manifest.jsonl"):
        if '"event"' in line and '"summary"' in line:
            summary = json.loads(line)
if summary and pngs == count:
    stages = {s["stage"]: s["seconds"] for s in summary.get("stages", [])}
    steady = (stages.get("denoise", 0) + stages.get("decode", 0)) / count
    fig[f"job{count}_{tag}_steady_s_per_image"] = steady
    print(f"fluxbatch steady (denoise + decode stages): {steady:.3f} s per image; stages (s): "
          + ", ".join(f"{k} {v:.1f}" for k, v in stages.items()))
name = f"job{count}" if tag == "nf4" else f"job{count}_{tag}"
if os.path.exists(f"{out}/job_diffusers.json"):
    d = json.load(open(f"{out}/job_diffusers.json"))
    fig.update({f"diffusers_job{count}_nf4_wall_s": d["wall_s"], f"diffusers_job{count}_nf4_img_per_h": d["img_per_h"],
                f"diffusers_job{count}_nf4_batch": d["batch"]})
    print(f"job of {count} ({tag}): fluxbatch {fb:.0f} images/hour, diffusers + bitsandbytes NF4 (batch {d['batch']}) "
          f"{d['img_per_h']:.0f} images/hour: {fb / d['img_per_h']:.2f}x")
else:
    print(f"job of {count} ({tag}): fluxbatch {fb:.0f} images/hour (diffusers not run in this call)")
json.dump(fig, open(f"{out}/{name}.json", "w"), indent=2)
PY
