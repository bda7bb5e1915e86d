#!/usr/bin/env bash
# Time and host memory of a 1,000,000-image job (README "Scaling out": jobs the size of a farm's night):
# `validate`, a dry-run plan into an empty directory, and a resume where every image is finished (a
# manifest line and a PNG file for each: the render loads no model and renders nothing), for two shapes:
#   json  100 items x count 10000 (three priorities), the default file-name template
#   txt   a prompt list of 1,000,000 distinct prompts
# Peak RSS is measured by /usr/bin/time; "beyond baseline" subtracts the same command on a 1-image job.
#   usage: scripts/large_job_bench.sh [WORKDIR]   (needs build/fluxbatch, models/tiny-flux-dev; ~2 GB disk)
# The files are written once per WORKDIR (a re-run with the same WORKDIR only measures);
# FLUXBATCH_LARGE_GENERATE_ONLY=1 writes them and stops.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
EXE="${FLUXBATCH_EXE:-$ROOT/build/fluxbatch}"
MODEL="$ROOT/models/tiny-flux-dev"
WORK="${1:-$(mktemp -d /tmp/fluxbatch-large-XXXXXX)}"
N="${FLUXBATCH_LARGE_IMAGES:-1000000}"
mkdir -p "$WORK"
say() { echo "[large-job] $*" >&2; }

measure() {  # label, command...: prints "label seconds peak_rss_kib"
  local label="$1"
  shift
  /usr/bin/time -f "%e %M" -o "$WORK/time.txt" "$@" > /dev/null 2> "$WORK/last.log" || {
    tail -n 5 "$WORK/last.log" >&2
    say "$label failed"
    exit 1
  }
  echo "$label $(cat "$WORK/time.txt")"
}

# The model's description as the manifest records it, from a one-image render.
echo '{"items": ["one"], "defaults": {"width": 64, "height": 64, "steps": 1, "max_sequence_length": 16}}' > "$WORK/one.json"
"$EXE" -q render "$WORK/one.json" --model "$MODEL" --device cpu --out "$WORK/one-out"
MODEL_DESC="$(python3 -c 'import json,sys; print(json.loads(open(sys.argv[1]).readline())["model"])' "$WORK/one-out/manifest.jsonl")"

if [ "$(cat "$WORK/generated" 2>/dev/null || true)" != "$N $MODEL_DESC" ]; then
say "writing the jobs, manifests and $N empty PNG files per shape (a few minutes)"
python3 - "$WORK" "$N" "$MODEL_DESC" <<'PY'
import json, os, sys
work, n, model = sys.argv[1], int(sys.argv[2]), sys.argv[3]
def slug(p):  # fluxbatch's slugify for these plain ASCII prompts
    out, sep = "", False
    for c in p:
        if c.isalnum() and ord(c) < 128:
            if sep and out: out += "-"
            sep = False
            out += c.lower()
        else:
            sep = True
    return out[:40].rstrip("-")
def line(index, prompt, seed, file):
    return json.dumps({"index": index, "name": "", "copy": 0, "prompt": prompt, "seed": seed, "width": 1024,
                       "height": 1024, "steps": 28, "guidance": 3.5, "max_sequence_length": 512, "model": model,
                       "file": file, "status": "ok", "error": "", "timings": {"generate_s": 1.0, "write_s": 0.01},
                       "batch_size": 4, "finished_at": "2025-01-31T12:00:00Z"}) + "\n"
def touch_all(out, files):
    os.makedirs(out, exist_ok=True)
    for f in files:
        os.close(os.open(os.path.join(out, f), os.O_CREAT | os.O_WRONLY, 0o644))
# json: 100 items x count n/100
items, per = 100, n // 100
job = {"output": {"dir": "out"}, "items": [{"prompt": f"a lighthouse on a cliff at dusk, study {i}", "count": per,
       "seed": i * per, "priority": i % 3} for i in range(items)]}
json.dump(job, open(os.path.join(work, "big.json"), "w"))
files, index = [], 0
with open(os.path.join(work, "big-manifest.jsonl"), "w") as m:
    for i in range(items):
        p = f"a lighthouse on a cliff at dusk, study {i}"
        for c in range(per):
            seed = i * per + c
            f = f"{index:05d}-{slug(p)}-{seed}.png"
            m.write(line(index, p, seed, f)); files.append(f); index += 1
touch_all(os.path.join(work, "big-done"), files)
# txt: n distinct prompts
with open(os.path.join(work, "big.txt"), "w") as t:
    for i in range(n): t.write(f"prompt number {i} of the night\n")
files = []
with open(os.path.join(work, "big-txt-manifest.jsonl"), "w") as m:
    for i in range(n):
        f = f"{i:07d}.png"
        m.write(line(i, f"prompt number {i} of the night", 0, f)); files.append(f)
touch_all(os.path.join(work, "big-txt-done"), files)
PY
cp "$WORK/big-manifest.jsonl" "$WORK/big-done/manifest.jsonl"
cp "$WORK/big-txt-manifest.jsonl" "$WORK/big-txt-done/manifest.jsonl"
echo "$N $MODEL_DESC" > "$WORK/generated"
fi
[ "${FLUXBATCH_LARGE_GENERATE_ONLY:-0}" = 1 ] && { say "files in $WORK"; exit 0; }

R=(render --model "$MODEL" --device cpu)
{
  echo "what seconds peak_rss_kib"
  measure "baseline_validate_1" "$EXE" validate "$WORK/one.json"
  measure "baseline_resume_1" "$EXE" "${R[@]}" "$WORK/one.json" --out "$WORK/one-out"
  measure "json_validate" "$EXE" validate "$WORK/big.json"
  measure "json_plan_dry_run" "$EXE" "${R[@]}" "$WORK/big.json" --out "$WORK/empty" --dry-run
  measure "json_resume_all_done" "$EXE" "${R[@]}" "$WORK/big.json" --out "$WORK/big-done"
  measure "txt_validate" "$EXE" validate "$WORK/big.txt"
  measure "txt_plan_dry_run" "$EXE" "${R[@]}" "$WORK/big.txt" --name "{index:07}" --out "$WORK/empty" --dry-run
  measure "txt_resume_all_done" "$EXE" "${R[@]}" "$WORK/big.txt" --name "{index:07}" --out "$WORK/big-txt-done"
} | tee "$WORK/results.txt"
grep -q "0 rendered, $N skipped" "$WORK/last.log" || { say "the resume did not skip every image:"; tail -n 3 "$WORK/last.log"; exit 1; }
say "results in $WORK/results.txt"
