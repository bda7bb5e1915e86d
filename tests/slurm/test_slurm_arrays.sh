#!/usr/bin/env bash
# fluxbatch under a real Slurm (run by ctest; root only): starts a one-node Slurm on localhost from Debian's
# packages (scripts/slurm/local_cluster.sh), then
#   1. an array of 4 tasks, each rendering its shard (--shard auto) of a tiny-model job on the CPU into one
#      output directory; task 2 is cancelled mid-run (scancel: SIGTERM) and requeued;
#   2. an array of 4 tasks sharing another output directory by claims alone; task 1 is cancelled mid-run and
#      requeued;
# and checks that afterwards every image exists once, the manifest has exactly one ok line per image, and
# every PNG has the bytes one process rendering the whole job writes. Stops the daemons however it ends.
#   usage: test_slurm_arrays.sh FLUXBATCH_EXE TINY_MODEL_DIR
set -euo pipefail
EXE="$(readlink -f "${1:?fluxbatch executable}")"
MODEL="$(readlink -f "${2:?tiny model folder}")"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CLUSTER="$HERE/../../scripts/slurm/local_cluster.sh"
IMAGES="${FLUXBATCH_SLURM_IMAGES:-32}"
STEPS="${FLUXBATCH_SLURM_STEPS:-12}"
say() { echo "[slurm-test $(date +%T)] $*" >&2; }
fail() { say "FAILED: $*"; exit 1; }

if [ "$(id -u)" != 0 ]; then
  echo "SKIPPED: the Slurm test starts slurmctld, slurmd and munged, which needs root (CI runs as root)" >&2
  exit 77
fi
[ -d "$MODEL" ] || fail "$MODEL is missing: scripts/setup.sh builds it"

WORK="$(mktemp -d /tmp/fluxbatch-slurm-XXXXXX)"
cleanup() {
  local rc=$?
  bash "$CLUSTER" stop "$WORK/cluster" || true
  if [ $rc != 0 ]; then
    say "logs of the failed run:"
    for f in "$WORK"/*.log; do [ -f "$f" ] && { echo "--- $f"; tail -n 30 "$f"; } >&2; done
    tail -n 20 "$WORK/cluster/log/slurmctld.log" "$WORK/cluster/log/slurmd.log" >&2 2>/dev/null || true
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT
bash "$CLUSTER" start "$WORK/cluster" 4
export SLURM_CONF="$WORK/cluster/slurm.conf"

# The job: $IMAGES small images, a third of them at a higher priority.
python3 - "$WORK/job.json" "$IMAGES" "$STEPS" <<'PY'
import json, sys
path, n, steps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
items = [{"prompt": f"scene {i % 5}", "seed": 100 + i, **({"priority": 1} if i % 3 == 0 else {})} for i in range(n)]
json.dump({"output": {"dir": "out", "name": "{index:03}-{seed}"},
           "defaults": {"width": 64, "height": 64, "steps": steps, "max_sequence_length": 32},
           "items": items}, open(path, "w"), indent=1)
PY
render() { echo "exec '$EXE' render '$WORK/job.json' --model '$MODEL' --device cpu --batch 1 --progress log $*"; }

say "reference: one process renders the whole job"
start=$(date +%s)
bash -c "$(render --out "$WORK/ref")" > "$WORK/ref.log" 2>&1 || fail "the reference render failed"
say "reference took $(( $(date +%s) - start )) s"

images_in() { grep -c '\] /.*\.png (' "$1" 2>/dev/null || true; }
task_state() { scontrol show job "$1" 2>/dev/null | sed -n 's/.*JobState=\([A-Z_]*\).*/\1/p' | head -n1; }

# Submits a 4-task array writing into $1 (extra fluxbatch options: the rest), cancels task $2 once it has
# rendered two images, requeues it, and waits for the whole array.
run_array() {
  local out="$1" victim="$2" name="$3"
  shift 3
  local job
  job=$(sbatch --parsable --array=0-3 --cpus-per-task=1 --chdir="$WORK" --open-mode=append \
        --output="$WORK/$name-%a.log" --job-name="$name" --wrap "$(render --out "$out" "$@")")
  say "$name: submitted array $job"
  local log="$WORK/$name-$victim.log" deadline=$(( $(date +%s) + 150 ))
  until [ "$(images_in "$log")" -ge 2 ]; do
    [ "$(date +%s)" -lt "$deadline" ] || fail "$name: task $victim rendered nothing"
    [ -n "$(squeue -h -j "${job}_$victim" 2>/dev/null)" ] || fail "$name: task $victim ended before it could be cancelled"
    sleep 0.2
  done
  say "$name: cancelling task $victim after $(images_in "$log") image(s)"
  scancel "${job}_$victim"
  until [ -z "$(squeue -h -j "${job}_$victim" -t running,completing 2>/dev/null)" ]; do sleep 0.2; done
  grep -q "terminated (SIGTERM)" "$log" || fail "$name: task $victim did not see the SIGTERM"
  local before
  before=$(images_in "$log")
  say "$name: task $victim stopped ($(task_state "${job}_$victim")) after $before image(s); requeueing it"
  scontrol requeue "${job}_$victim"
  scontrol update jobid="${job}_$victim" StartTime=now  # a requeued job otherwise waits two minutes
  deadline=$(( $(date +%s) + 200 ))
  until [ -z "$(squeue -h -j "$job" 2>/dev/null)" ]; do
    [ "$(date +%s)" -lt "$deadline" ] || fail "$name: the array did not finish"
    sleep 0.5
  done
  [ "$(grep -c 'image(s) to render' "$log")" -ge 2 ] || fail "$name: task $victim was not run again"
  for t in 0 1 2 3; do
    grep -q "done: " "$WORK/$name-$t.log" || fail "$name: task $t did not finish"
  done
  say "$name: done"
}

start=$(date +%s)
run_array "$WORK/shards" 2 shards --shard auto
say "shard array took $(( $(date +%s) - start )) s"
start=$(date +%s)
run_array "$WORK/claims" 1 claims
say "claims array took $(( $(date +%s) - start )) s"

python3 - "$WORK" "$IMAGES" <<'PY'
import json, os, sys
work, n = sys.argv[1], int(sys.argv[2])
ref = {f: open(os.path.join(work, "ref", f), "rb").read() for f in os.listdir(os.path.join(work, "ref")) if f.endswith(".png")}
assert len(ref) == n, f"the reference has {len(ref)} images, not {n}"
for name in ("shards", "claims"):
    out = os.path.join(work, name)
    pngs = {f for f in os.listdir(out) if f.endswith(".png")}
    assert pngs == set(ref), f"{name}: images differ from the reference: {sorted(pngs ^ set(ref))}"
    for f in pngs:
        assert open(os.path.join(out, f), "rb").read() == ref[f], f"{name}/{f}: bytes differ from the single-process render"
    ok, rendered, summaries = {}, 0, 0
    for number, line in enumerate(open(os.path.join(out, "manifest.jsonl")), 1):
        e = json.loads(line)  # every line valid JSON: nothing torn or interleaved
        if e.get("event") == "summary":
            summaries += 1
            rendered += e["rendered"]
            continue
        assert e["status"] == "ok", f"{name}: manifest line {number} is not ok: {line}"
        ok[e["file"]] = ok.get(e["file"], 0) + 1
    assert set(ok) == set(ref), f"{name}: manifest files differ from the images"
    twice = [f for f, c in ok.items() if c != 1]
    assert not twice, f"{name}: more than one ok line for {twice}"
    # The cancelled task's summary is written too (it stopped cleanly); 4 + 1 requeued run.
    assert summaries == 5, f"{name}: {summaries} summary lines, expected 5"
    assert rendered == n, f"{name}: the tasks rendered {rendered} images in all, expected {n} (each once)"
    leftovers = [f for f in os.listdir(out) if f.endswith(".tmp") or ".tmp-" in f]
    assert not leftovers, f"{name}: temporaries left: {leftovers}"
    claims = os.path.join(out, ".fluxbatch", "claims")
    assert not os.path.isdir(claims) or not [f for f in os.listdir(claims) if f.endswith(".claim")], f"{name}: claims left"
    print(f"{name}: {n} images, each once, one ok line each, bytes equal to one process")
PY
say "PASSED"
