#!/usr/bin/env bash
# Block streaming (issue 15): a 1024x1024 NF4 job rendered resident (the card to itself, --offload off)
# and under small budgets (default 4G and 3G) with the rest of the card held by a ballast process
# (scripts/bench/ballast.py) so that every out-of-memory error is a real one; there --offload auto
# must choose stream. Each config runs at batch 4 and at batch 1. Prints key=value lines per config:
# time per image (denoise + decode, and wall without the load), the ratio to the resident run of the
# same batch, the whole-job peak from the manifest summary, whether every PNG equals the resident
# run's byte for byte (cmp), and the host-to-device bandwidth the streaming reached against the
# measured pinned-copy peak; all of it also in OUTDIR/stream.json.
#   bash scripts/bench/stream_bench.sh MODEL_NF4 OUTDIR
# Environment (lower STEPS / IMAGES_B4 to fit a short slot: six renders run): STEPS (28), SIZE (1024),
# IMAGES_B4 (8), IMAGES_B1 (2), BUDGETS ("4G 3G"), FB_BIN
# (./build-gpu/fluxbatch), FB_DEVICE (cuda; cpu runs the same configs without ballast, e.g. on a tiny
# model with BUDGETS=40M SIZE=64 STEPS=2, to check the script), EXTRA (more render flags).
set -uo pipefail
MODEL="$1"; OUTDIR="$2"
STEPS="${STEPS:-28}"; SIZE="${SIZE:-1024}"; IMAGES_B4="${IMAGES_B4:-8}"; IMAGES_B1="${IMAGES_B1:-2}"
BUDGETS="${BUDGETS:-4G 3G}"
BIN="${FB_BIN:-./build-gpu/fluxbatch}"
DEVICE="${FB_DEVICE:-cuda}"
read -r -a EXTRA_FLAGS <<< "${EXTRA:-}"
mkdir -p "$OUTDIR"
OUTDIR="$(cd "$OUTDIR" && pwd)"
export FLUXBATCH_CACHE_DIR="$OUTDIR/cache"
rm -rf "$FLUXBATCH_CACHE_DIR" "$OUTDIR"/out_* "$OUTDIR"/rows.jsonl
[ "$DEVICE" = cuda ] && nvidia-smi --query-gpu=name,memory.total --format=csv,noheader

# The pinned host-to-device copy peak: 1 GiB copied 5 times, timed by CUDA events (n/a on the CPU).
# Against it, each streamed config reports stream_gbs: the bytes streamed over the denoise stage's
# time. That is the bus rate the streaming demanded; it equals the rate reached when the stage is
# copy-bound (ratio to resident well over 1), and is below it when compute hides the copies.
PEAK_GBS=$(python3 - "$DEVICE" <<'PY' 2>/dev/null || echo "n/a"
import sys
import torch
if sys.argv[1] != "cuda" or not torch.cuda.is_available():
    print("n/a"); sys.exit()
n = 1 << 30
src = torch.empty(n, dtype=torch.uint8).pin_memory()
dst = torch.empty(n, dtype=torch.uint8, device="cuda")
dst.copy_(src, non_blocking=True); torch.cuda.synchronize()
start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
start.record()
for _ in range(5):
    dst.copy_(src, non_blocking=True)
stop.record(); stop.synchronize()
print(f"{5 * n / (start.elapsed_time(stop) / 1000) / 1e9:.1f}")
PY
)
echo "pinned_copy_peak_gbs=$PEAK_GBS"

# One job file per batch, shared by its configs: a PNG records the job file's path, so the byte
# comparison needs the same one (the output directory comes from --out).
make_job() {  # make_job FILE COUNT
  python3 - "$1" "$2" "$SIZE" "$STEPS" <<'PY'
import json, sys
path, count, size, steps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
subjects = ["a red fox", "a lighthouse", "a bowl of ramen", "an old tram", "a snowy owl", "a glass teapot",
            "a desert canyon", "a violin", "a paper boat", "a city at night"]
items = [{"prompt": f"{subjects[i % len(subjects)]}, photo {i}", "seed": 2000 + i} for i in range(count)]
json.dump({"output": {"name": "{index:02}.png"},
           "defaults": {"width": size, "height": size, "steps": steps, "guidance": 3.5},
           "items": items}, open(path, "w"), indent=1)
PY
}

# run LABEL BATCH IMAGES BUDGET(or none) -> one JSON row in rows.jsonl and key=value lines.
run() {
  local label=$1 batch=$2 images=$3 budget=$4
  local job="$OUTDIR/job_b$batch.json" out="$OUTDIR/out_$label" log="$OUTDIR/render_$label.log"
  make_job "$job" "$images"
  local flags=(--offload off) bpid=""
  if [ "$budget" != none ]; then
    # CUDA: auto must choose stream by itself. The CPU's auto is staged; there stream is asked for.
    flags=(--offload "$([ "$DEVICE" = cuda ] && echo auto || echo stream)" --vram-budget "$budget")
    if [ "$DEVICE" = cuda ]; then
      # Leave the budget plus fluxbatch's own CUDA context (about 0.5 GiB, outside the allocator), the
      # default 512 MiB reserve and some slack, so that the budget in force is --vram-budget itself; the
      # allocator is capped at the budget either way (the log's "memory budget" line says which).
      local leave
      leave=$(python3 -c "import sys; s=sys.argv[1]; u={'G':1,'M':1/1024}[s[-1]]; print(float(s[:-1])*u + 1.25)" "$budget")
      rm -f "$OUTDIR/ballast.ready"
      python3 scripts/bench/ballast.py --leave-gib "$leave" --ready "$OUTDIR/ballast.ready" > "$OUTDIR/ballast_$label.log" 2>&1 &
      bpid=$!
      for _ in $(seq 120); do [ -f "$OUTDIR/ballast.ready" ] && break; sleep 0.5; done
    fi
  fi
  local t0 t1 rc
  t0=$(date +%s%N)
  "$BIN" render "$job" --model "$MODEL" --out "$out" --device "$DEVICE" --quantize nf4 --batch "$batch" --overwrite -v \
    "${flags[@]}" "${EXTRA_FLAGS[@]}" > "$log" 2>&1
  rc=$?
  t1=$(date +%s%N)
  [ -n "$bpid" ] && kill "$bpid" && wait "$bpid" 2>/dev/null
  python3 - "$label" "$batch" "$images" "$budget" "$rc" "$(( (t1 - t0) / 1000000 ))" "$out" "$log" "$STEPS" \
    "$PEAK_GBS" >> "$OUTDIR/rows.jsonl" <<'PY'
import json, math, re, sys
from pathlib import Path
label, batch, images, budget, rc, wall_ms, out, log, steps, peak = sys.argv[1:]
batch, images, rc, steps = int(batch), int(images), int(rc), int(steps)
row = {"label": label, "batch": batch, "images": images, "budget": budget, "exit": rc, "wall_s": int(wall_ms) / 1000}
text = Path(log).read_text(errors="replace")
summary = None
manifest = Path(out) / "manifest.jsonl"
if manifest.exists():
    for line in manifest.read_text().splitlines():
        if '"event"' in line and '"summary"' in line:
            summary = json.loads(line)
row["pngs"] = len(list(Path(out).glob("*.png")))
m = re.search(r"\b(staged|offload|stream): (?:each|components)", text)
row["residency"] = m.group(1) if m else "?"
m = re.search(r"streaming: (\d+) of (\d+) transformer blocks resident, (\d+) streamed \(([\d.]+) (B|KiB|MiB|GiB) per step", text)
if m:
    row["resident_blocks"], row["blocks"], row["streamed_blocks"] = int(m.group(1)), int(m.group(2)), int(m.group(3))
    unit = {"B": 2**-20, "KiB": 2**-10, "MiB": 1, "GiB": 1024}[m.group(5)]
    row["streamed_mib_per_step"] = round(float(m.group(4)) * unit, 3)
if summary:
    stages = {s["stage"]: s["seconds"] for s in summary.get("stages", [])}
    row["stage_s"] = stages
    work = stages.get("denoise", 0) + stages.get("decode", 0)
    row["per_image_s"] = round(work / max(images, 1), 3)  # denoise + decode
    row["per_image_wall_s"] = round((summary["wall_s"] - stages.get("load", 0)) / max(images, 1), 3)
    peaks = [s.get("peak_reserved_bytes", 0) for s in summary["memory"]["stages"]]
    allocated = [s.get("peak_allocated_bytes", 0) for s in summary["memory"]["stages"]]
    row["peak_reserved_gib"] = round(max(peaks, default=0) / 2**30, 3)
    row["peak_allocated_gib"] = round(max(allocated, default=0) / 2**30, 3)
    row["budget_bytes"] = summary["memory"]["budget_bytes"]
    row["within_budget"] = max(peaks, default=0) <= summary["memory"]["budget_bytes"]
    row["failed"] = summary.get("failed", 0)
    row["oom_retries"] = summary.get("oom_retries", 0)
    if "streamed_mib_per_step" in row and stages.get("denoise"):
        calls = math.ceil(images / batch)
        gbs = row["streamed_mib_per_step"] * 2**20 * steps * calls / stages["denoise"] / 1e9
        row["stream_gbs"] = round(gbs, 2)  # averaged over the denoise stage, compute included
        if peak != "n/a":
            row["stream_share_of_peak"] = round(gbs / float(peak), 3)
print(json.dumps(row))
PY
  tail -1 "$OUTDIR/rows.jsonl" | python3 -c "import json,sys; r=json.load(sys.stdin); print(' '.join(f'{k}={v}' for k,v in r.items() if k!='stage_s'))"
}

for spec in "4 $IMAGES_B4" "1 $IMAGES_B1"; do
  read -r batch images <<< "$spec"
  run "resident_b$batch" "$batch" "$images" none
  for budget in $BUDGETS; do run "budget${budget}_b$batch" "$batch" "$images" "$budget"; done
done

# Ratios and byte identity against the resident run of the same batch; stream.json.
python3 - "$OUTDIR" <<'PY'
import filecmp, json, sys
from pathlib import Path
outdir = Path(sys.argv[1])
rows = [json.loads(l) for l in (outdir / "rows.jsonl").read_text().splitlines() if l.strip()]
resident = {r["batch"]: r for r in rows if r["budget"] == "none"}
for r in rows:
    base = resident.get(r["batch"])
    if base is None or r is base:
        continue
    if base.get("per_image_s") and r.get("per_image_s"):
        r["ratio_to_resident"] = round(r["per_image_s"] / base["per_image_s"], 3)
    pngs = sorted((outdir / f"out_{base['label']}").glob("*.png"))
    same = [p.name for p in pngs if (outdir / f"out_{r['label']}" / p.name).exists()
            and filecmp.cmp(p, outdir / f"out_{r['label']}" / p.name, shallow=False)]
    r["identical_pngs"] = f"{len(same)}/{len(pngs)}"
    r["byte_identical"] = len(pngs) > 0 and len(same) == len(pngs) == r.get("pngs")
    print(f"{r['label']}: ratio_to_resident={r.get('ratio_to_resident')} byte_identical={r['byte_identical']} "
          f"({r['identical_pngs']}) peak_reserved_gib={r.get('peak_reserved_gib')} within_budget={r.get('within_budget')} "
          f"stream_gbs={r.get('stream_gbs')} share_of_peak={r.get('stream_share_of_peak')}")
(outdir / "stream.json").write_text(json.dumps({"rows": rows}, indent=1) + "\n")
print(f"wrote {outdir / 'stream.json'}")
PY
