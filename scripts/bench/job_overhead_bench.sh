#!/usr/bin/env bash
# The whole job, not just the steps (issue 12), on the GPU machine: where a job's time goes besides denoising.
#   1. a 32-image 1024x1024 28-step job through `fluxbatch render` on an NF4 model folder (the prompts and
#      seeds of scripts/bench/diffusers_job.py, as job_bench.sh uses them), first run (fresh calibration
#      cache, so calibration is included; no --cache): wall time of the process, denoise time (the
#      manifest's summary line), everything else as a share of the wall time;
#   2. the same 32 prompts and seeds through diffusers + bitsandbytes NF4 (scripts/bench/diffusers_job.py,
#      batch FB_DIFFUSERS_BATCH, default 4 as job_bench.sh), wall time of the process;
#   3. the cache: four prompts rendered into a cache, then again with new seeds (T5 must not load; the
#      log must say so), and
#      100 small images (256x256, 4 steps) rendered into the cache, then rendered again into another
#      directory (every image copied, no weights loaded, the device not used): wall time of that re-run.
# Prints key=value lines (the first four go into docs/benchmarks/<card>.json) and writes them to
# OUTDIR/job_overhead.json; logs stay in OUTDIR. fluxbatch runs with --quantize nf4 as in job_bench.sh
# (the transformer as stored, T5 quantized on load); EXTRA flags are added to its first run.
#   bash scripts/bench/job_overhead_bench.sh MODEL_NF4 OUTDIR [EXTRA FLUXBATCH FLAGS...]
# MODEL_NF4: a diffusers folder whose transformer is bitsandbytes NF4 (run_h100.sh makes $FB_MODEL-nf4 with
# scripts/bench/make_random_flux_nf4.py). FB_BIN: the fluxbatch binary (default ./build-gpu/fluxbatch,
# built with run_h100.sh's flags when missing). FB_SKIP="fluxbatch diffusers cache" skips parts (each part
# stands alone, so they can run in separate calls of at most 10 minutes on the same machine). FB_DEVICE, FB_SIZE and
# FB_STEPS (default cuda, 1024, 28) exist to try the script on a CPU with a tiny model; the figures mean
# something only at the defaults.
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
MODEL="${1:?usage: job_overhead_bench.sh MODEL_NF4 OUTDIR [FLAGS...]}"
OUTDIR="${2:?usage: job_overhead_bench.sh MODEL_NF4 OUTDIR [FLAGS...]}"
shift 2
EXTRA=("$@")
DBATCH="${FB_DIFFUSERS_BATCH:-4}"
BIN="${FB_BIN:-./build-gpu/fluxbatch}"
SKIP=" ${FB_SKIP:-} "
DEVICE="${FB_DEVICE:-cuda}"
SIZE="${FB_SIZE:-1024}"
STEPS="${FB_STEPS:-28}"
mkdir -p "$OUTDIR"
WORK=/tmp/fluxbatch-job-overhead
rm -rf "$WORK" && mkdir -p "$WORK"
export FLUXBATCH_CACHE_DIR="$WORK/calibration"  # fresh: the first run calibrates, as a first run does
source scripts/bench/gpu_common.sh
command -v nvidia-smi > /dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
# diffusers + bitsandbytes as run_h100.sh provides them on the GPU machine (wheels carried in .whl/).
if ! python3 -c "import diffusers" 2> /dev/null && ls .whl/*.whl > /dev/null 2>&1; then
  fb_python_env
fi

if [ ! -x "$BIN" ]; then
  echo "building $BIN"
  fb_gpu_build "$OUTDIR" fluxbatch || exit 1
fi

make_job() {  # make_job FILE OUTDIR COUNT SIZE STEPS SEED_SHIFT: diffusers_job.py's prompts and seeds (+ shift)
  python3 - "$@" <<'PY'
import json, sys
sys.path.insert(0, "scripts/bench")
from diffusers_job import prompts
path, out, count, size, steps, shift = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
items = [{"prompt": p, "seed": s + shift} for p, s in prompts(count)]
job = {"output": {"dir": out, "name": "{index:03}.png"},
       "defaults": {"width": size, "height": size, "steps": steps, "guidance": 3.5, "max_sequence_length": 512},
       "items": items}
json.dump(job, open(path, "w"), indent=1)
PY
}

now() { date +%s.%N; }
elapsed() { python3 -c "print(f'{$2 - $1:.2f}')"; }
summary_field() {  # summary_field MANIFEST PYTHON-EXPR(s): the last line's summary, as s
  python3 - "$1" "$2" <<'PY'
import json, sys
lines = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
s = [l for l in lines if l.get("event") == "summary"][-1]
stages = {t["stage"]: t["seconds"] for t in s["stages"]}
print(eval(sys.argv[2]))
PY
}

declare -A R
make_job "$WORK/job32.json" "$WORK/fb32" 32 "$SIZE" "$STEPS" 0 \
  || { echo "cannot write the job: python3 must import scripts/bench/diffusers_job.py (torch, diffusers)"; exit 1; }
if [[ "$SKIP" != *" fluxbatch "* ]]; then
  echo; echo "=== 1. fluxbatch: 32 images, ${SIZE}x${SIZE}, $STEPS steps, NF4 file, first run ($(date +%T))"
  t0=$(now)
  "$BIN" render "$WORK/job32.json" --model "$MODEL" --device "$DEVICE" --quantize nf4 -v --progress log "${EXTRA[@]}" \
    > "$OUTDIR/fluxbatch_job32.log" 2>&1
  rc=$?; t1=$(now)
  echo "exit $rc"
  grep -E "loaded|calibration for|plan for|encode stage|summary:|memory: (load|encode|denoise|decode|calibrate) peak|done:" \
    "$OUTDIR/fluxbatch_job32.log" | cut -c1-240
  R[job32_nf4_wall_s]=$(elapsed "$t0" "$t1")
  R[job32_nf4_denoise_s]=$(summary_field "$WORK/fb32/manifest.jsonl" "round(stages['denoise'], 2)")
  R[job32_nf4_nondenoise_share]=$(python3 -c "print(round(1 - ${R[job32_nf4_denoise_s]} / ${R[job32_nf4_wall_s]}, 4))")
  R[job32_nf4_stage_seconds]=$(summary_field "$WORK/fb32/manifest.jsonl" "json.dumps({k: round(v, 2) for k, v in stages.items()})")
  R[job32_nf4_images_per_hour]=$(summary_field "$WORK/fb32/manifest.jsonl" "round(s['images_per_hour'], 1)")
fi

if [[ "$SKIP" != *" diffusers "* ]]; then
  echo; echo "=== 2. diffusers + bitsandbytes NF4: the same 32 prompts and seeds, batch $DBATCH ($(date +%T))"
  t0=$(now)
  PYTHONUNBUFFERED=1 python3 scripts/bench/diffusers_job.py --model "$MODEL" --count 32 --batch "$DBATCH" \
    --size "$SIZE" --steps "$STEPS" --out "$WORK/diffusers32" --json "$OUTDIR/diffusers_job32.json" 2>&1 \
    | grep -v -E "it/s\]|s/it\]|Loading" | tee "$OUTDIR/diffusers_job32.log" | tail -3
  t1=$(now)
  R[diffusers_job32_nf4_wall_s]=$(elapsed "$t0" "$t1")
  R[diffusers_job32_nf4_batch]=$DBATCH
fi

if [[ "$SKIP" != *" cache "* ]]; then
  echo; echo "=== 3a. the cache: four prompts rendered with --cache, then again with new seeds: T5 must not load ($(date +%T))"
  for run in fill again; do
    python3 - "$WORK/job32.json" "$WORK/job4-$run.json" "$WORK/fb4-$run" "$run" <<'PY'
import json, sys
job = json.load(open(sys.argv[1]))
shift = 0 if sys.argv[4] == "fill" else 5000
job["items"] = [dict(item, seed=item["seed"] + shift) for item in job["items"][:4]]
job["defaults"].update(width=min(512, job["defaults"]["width"]), height=min(512, job["defaults"]["height"]), steps=4)  # the embeddings do not depend on the size
job["output"]["dir"] = sys.argv[3]
json.dump(job, open(sys.argv[2], "w"), indent=1)
PY
  done
  "$BIN" render "$WORK/job4-fill.json" --model "$MODEL" --device "$DEVICE" --cache "$WORK/cache" > "$OUTDIR/fluxbatch_job4_fill.log" 2>&1
  echo "fill: exit $?"
  "$BIN" render "$WORK/job4-again.json" --model "$MODEL" --device "$DEVICE" --cache "$WORK/cache" -v > "$OUTDIR/fluxbatch_job4_cache.log" 2>&1
  echo "exit $?"
  grep -E "loaded|encode stage|image cache|cache:" "$OUTDIR/fluxbatch_job4_cache.log" | cut -c1-240
  if grep -q "loaded text encoders" "$OUTDIR/fluxbatch_job4_cache.log"; then R[cache_t5_loaded]=true; else R[cache_t5_loaded]=false; fi

  echo; echo "=== 3b. 100 small images (4 steps) into the cache, then the same 100 again elsewhere ($(date +%T))"
  make_job "$WORK/job100.json" "$WORK/fb100" 100 "$(( SIZE < 256 ? SIZE : 256 ))" 4 7000
  "$BIN" render "$WORK/job100.json" --model "$MODEL" --device "$DEVICE" --cache "$WORK/cache100" > "$OUTDIR/fluxbatch_job100.log" 2>&1
  echo "fill: exit $?"
  t0=$(now)
  "$BIN" render "$WORK/job100.json" --model "$MODEL" --device "$DEVICE" --cache "$WORK/cache100" --out "$WORK/fb100-again" \
    -v > "$OUTDIR/fluxbatch_job100_again.log" 2>&1
  rc=$?; t1=$(now)
  echo "re-run: exit $rc"
  grep -E "loaded|image cache:|device was not used|summary:|done:" "$OUTDIR/fluxbatch_job100_again.log" | cut -c1-240
  R[cached_rerun_100_s]=$(elapsed "$t0" "$t1")
  if grep -q "loaded " "$OUTDIR/fluxbatch_job100_again.log"; then R[cached_rerun_loaded_weights]=true; else R[cached_rerun_loaded_weights]=false; fi
  if grep -q "the device was not used" "$OUTDIR/fluxbatch_job100_again.log"; then R[cached_rerun_device_used]=false; else R[cached_rerun_device_used]=true; fi
  same=$(python3 - "$WORK/fb100" "$WORK/fb100-again" <<'PY'
import sys, pathlib
a, b = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
names = sorted(p.name for p in a.glob("*.png"))
print(sum((a / n).read_bytes() == (b / n).read_bytes() for n in names), "of", len(names))
PY
)
  R[cached_rerun_identical]="\"$same\""
fi

echo; echo "=== results"
{
  echo "{"
  first=1
  for k in job32_nf4_wall_s job32_nf4_denoise_s job32_nf4_nondenoise_share diffusers_job32_nf4_wall_s diffusers_job32_nf4_batch \
           job32_nf4_images_per_hour job32_nf4_stage_seconds cache_t5_loaded cached_rerun_100_s \
           cached_rerun_loaded_weights cached_rerun_device_used cached_rerun_identical; do
    [ -n "${R[$k]:-}" ] || continue
    echo "$k=${R[$k]}" >&2
    [ $first = 1 ] || echo ","
    printf '  "%s": %s' "$k" "${R[$k]}"
    first=0
  done
  echo; echo "}"
} 2>&1 >"$OUTDIR/job_overhead.json" | cat
echo "(also in $OUTDIR/job_overhead.json)"
