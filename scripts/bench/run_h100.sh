#!/usr/bin/env bash
# Everything the GPU machine does in one call: build with CUDA, run the test suites there, make a full-size
# random-weight FLUX.1-dev folder, take diffusers' figures on it, then ours on the same weights.
#   bash scripts/bench/run_h100.sh [OUTDIR]        (OUTDIR defaults to $OUT or /tmp/fluxbatch-bench)
# Needs, carried from the dev machine: .stb (stb headers) and .whl (diffusers + importlib_metadata wheels, and
# nvidia-cudnn-frontend's headers for --attention fp8: bash scripts/bench/prepare_carry.sh).
# FB_TARGETS overrides the targets built. Steps can be skipped: FB_SKIP="tests cputests benchtests gemm fixtures model encoders
# diffusers nf4model forward fp8job fp8attnjob fp8peak job budget bf16render render" (encoders: the random model without its text
# encoders and VAE, for a call that only times forwards; then skip fp8job fp8attnjob fp8peak job budget render too). FB_FP8_ONLY=1: the forward bench measures fp8 (and fidelity) only, the fp8
# job runs without diffusers (for a short call) unless FB_FP8JOB_SKIP_DIFFUSERS=0. FB_FP8_LAYOUTS=0: the forward bench
# leaves out the single blocks' other two fp8 layouts. fp8attnjob never runs diffusers:
# its ratio is against the fp8job step's diffusers job, when that ran. The speed figures end in OUTDIR/figures.json (docs/benchmarks/<card>.json's form).
# figures.json names the commit as `git describe --dirty` sees it there; the device tool's copy can sit on the
# landed main with this session's tree on top (so "<main>-dirty"): pass FB_COMMIT=<sha of the tree> to name it.
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
SKIP=" ${FB_SKIP:-} "
step() { echo; echo "=== $* ($(date +%T))"; }
skip() { [[ "$SKIP" == *" $1 "* ]]; }

source scripts/bench/gpu_common.sh
fb_bench_start "${1:-}"  # OUTDIR, MODEL, the Python packages

# The inputs, made in the background while the build runs (Python and the GPU only; about 2.5 min on the
# H100, as long as the build): the tiny models and goldens (tests, fixtures, and the tokenizers of the
# random model), then the random full-size FLUX.1-dev and its diffusers-made NF4 copy. Log: inputs.log.
MARKS="$(mktemp -d)"
make_inputs() {
  if [ ! -d models/tiny-flux-dev ]; then
    python3 scripts/make_tiny_models.py --out models && python3 scripts/dump_reference.py --models models --out tests/golden \
      || echo "tiny models failed"
  fi
  touch "$MARKS/tiny"; echo "tiny models ready $(date +%T)"
  if ! skip model && [ ! -f "$MODEL/model_index.json" ]; then
    # FB_SKIP=encoders: the transformer alone (the forward bench needs nothing else), about 30 s sooner.
    local only=()
    skip encoders && only=(--skip text_encoder text_encoder_2 vae)
    python3 scripts/bench/make_random_flux.py --out "$MODEL" --tokenizers-from models/tiny-flux-dev "${only[@]}" 2>&1 | grep -v Writing
  fi
  if ! skip nf4model && [ ! -f "$MODEL-nf4/transformer/config.json" ]; then
    python3 scripts/bench/make_random_flux_nf4.py --model "$MODEL" --out "$MODEL-nf4" 2>&1 | grep -v Writing
    for c in scheduler text_encoder text_encoder_2 tokenizer tokenizer_2 vae model_index.json; do
      ln -sfn "$MODEL/$c" "$MODEL-nf4/$c"; done
  fi
  echo "models ready $(date +%T)"
}
make_inputs > "$OUTDIR/inputs.log" 2>&1 &
INPUTS=$!
wait_tiny() { while [ ! -f "$MARKS/tiny" ] && kill -0 "$INPUTS" 2>/dev/null; do sleep 2; done; }

step build
TARGETS="${FB_TARGETS:-fluxbatch fluxbatch_base_tests fluxbatch_tests fluxbatch_cli_tests fluxbatch_bench_transformer fluxbatch_bench_per_image_linear}"
fb_gpu_build "$OUTDIR" $TARGETS || exit 1
echo "built"

if ! skip tests; then
  step "tests on the GPU machine (tiny models, CPU and CUDA)"
  wait_tiny
  if ! skip cputests; then
    ./build-gpu/fluxbatch_base_tests > "$OUTDIR/base_tests.log" 2>&1; tail -3 "$OUTDIR/base_tests.log"
    ./build-gpu/fluxbatch_tests > "$OUTDIR/torch_tests.log" 2>&1; tail -3 "$OUTDIR/torch_tests.log"
    ./build-gpu/fluxbatch_cli_tests > "$OUTDIR/cli_tests.log" 2>&1; tail -3 "$OUTDIR/cli_tests.log"
  fi
  echo "--- CUDA tests (incl. hidden [.][cuda])"
  timeout 300 ./build-gpu/fluxbatch_tests "[cuda]" > "$OUTDIR/cuda_tests.log" 2>&1; echo "exit $?"
  grep -B3 -A12 -E "FAILED|due to unexpected|fatal error" "$OUTDIR/cuda_tests.log" | head -80; tail -3 "$OUTDIR/cuda_tests.log"
  if ! skip benchtests; then
    ./build-gpu/fluxbatch_tests "[.bench]" -s > "$OUTDIR/bench_tests.log" 2>&1; grep -iE "GB/s|bandwidth|passed|failed" "$OUTDIR/bench_tests.log" | tail -6
  fi
fi

if ! skip gemm; then
  step "per-image GEMMs against one folded GEMM (FLUX.1-dev Linear shapes, bf16)"
  ./build-gpu/fluxbatch_bench_per_image_linear 20
fi

if ! skip fixtures; then
  step "NF4 fixtures only a GPU makes (bitsandbytes CUDA, diffusers BitsAndBytesConfig)"
  wait_tiny
  rm -rf /tmp/gpufix && python3 scripts/make_nf4_gpu_fixtures.py --models models --out /tmp/gpufix 2>&1 | tail -5 \
    && tar -C /tmp/gpufix -cf "$OUTDIR/gpu_fixtures.tar" . && echo "fixtures in gpu_fixtures.tar"
fi

step "random full-size FLUX.1-dev and its NF4 copy (made in the background since the start)"
wait "$INPUTS"
grep -vE "^\s*$" "$OUTDIR/inputs.log" | tail -8

if ! skip diffusers; then
  step "diffusers reference"
  PYTHONUNBUFFERED=1 python3 scripts/bench/diffusers_reference.py --model "$MODEL" --dump /tmp/ref_forward.safetensors \
    --forward-only --nf4-model "$MODEL-nf4" --json "$OUTDIR/diffusers.json" 2>&1 | grep -v -E "it/s\]|s/it\]"
fi


if ! skip forward; then
  step "fluxbatch transformer forward: reference kernels, fused, fused + CUDA graph; fidelity vs fp32"
  ./build-gpu/fluxbatch_bench_transformer "$MODEL" /tmp/ref_forward.safetensors --nf4 "$MODEL-nf4" --reps 10 \
    --json "$OUTDIR/bench.json" --fp8-only "${FB_FP8_ONLY:-0}" --fp8-layouts "${FB_FP8_LAYOUTS:-1}"
fi

if ! skip fp8job; then
  step "a 16-image 1024x1024 28-step NF4 job with --compute fp8: fluxbatch vs diffusers + bitsandbytes"
  FB_JOB_TAG=nf4_fp8 FB_JOB_SKIP_DIFFUSERS="${FB_FP8JOB_SKIP_DIFFUSERS:-${FB_FP8_ONLY:-0}}" bash scripts/bench/job_bench.sh "$MODEL-nf4" "$OUTDIR" 16 4 --compute fp8
fi

if ! skip fp8attnjob; then
  step "the same job with --compute fp8 --attention fp8 (cuDNN fp8 attention); ratio against the fp8job step's diffusers job"
  FB_JOB_TAG=nf4_fp8_attn FB_JOB_SKIP_DIFFUSERS=1 bash scripts/bench/job_bench.sh "$MODEL-nf4" "$OUTDIR" 16 4 --compute fp8 --attention fp8
fi

if ! skip fp8peak; then
  step "whole-job peak, NF4 storage + fp8 compute (NF4 kept, fp8 per layer), 1024x1024, 28 steps, batch 1, --vram-budget 8G"
  rm -rf /tmp/fp8peak_out
  printf '{"output": {"dir": "/tmp/fp8peak_out", "name": "{index}.png"}, "defaults": {"width": 1024, "height": 1024,
    "steps": 28, "seed": 1}, "items": ["a photo of a red fox in the snow, golden hour"]}' > /tmp/fp8peak.json
  ./build-gpu/fluxbatch render /tmp/fp8peak.json --model "$MODEL-nf4" --device cuda --quantize nf4 --compute fp8 \
    --vram-budget 8G --batch 1 --overwrite -v > "$OUTDIR/fp8peak.log" 2>&1; echo "exit $?"
  grep -E "fp8 compute|offload|summary|memory:" "$OUTDIR/fp8peak.log" | cut -c1-240
  # The manifest's summary: the largest peak of any stage, allocated and reserved (job_fp8_peak_gib: reserved).
  python3 - /tmp/fp8peak_out/manifest.jsonl "$OUTDIR/fp8peak.json" <<'PY'
import json, sys
summary = [json.loads(l) for l in open(sys.argv[1]) if '"summary"' in l][-1]
stages = summary["memory"]["stages"]
fig = {"job_fp8_peak_gib": max(s.get("peak_reserved_bytes", 0) for s in stages) / 2**30,
       "job_fp8_peak_allocated_gib": max(s.get("peak_allocated_bytes", 0) for s in stages) / 2**30}
json.dump(fig, open(sys.argv[2], "w"), indent=1)
print(" ".join(f"{k}={v:.3f}" for k, v in fig.items()))
PY
fi

if ! skip job; then
  step "a 16-image 1024x1024 28-step NF4 job: fluxbatch vs diffusers + bitsandbytes"
  FB_JOB_REUSE_DIFFUSERS=1 bash scripts/bench/job_bench.sh "$MODEL-nf4" "$OUTDIR" 16 4
fi

step "figures"
python3 scripts/bench/collect_figures.py --out "$OUTDIR/figures.json" --commit "${FB_COMMIT:-$(git describe --always --dirty --abbrev=7 2>/dev/null || echo unknown)}" \
  "$OUTDIR/bench.json" "$OUTDIR/diffusers.json" "$OUTDIR/job16.json" "$OUTDIR/job16_nf4_fp8.json" \
  "$OUTDIR/job16_nf4_fp8_attn.json" "$OUTDIR/fp8peak.json"

if ! skip budget; then
  step "memory scheduler under real pressure: 32 x 1024^2, --batch 16, budgets 24/12/8 GiB (ballast), 4 steps"
  bash scripts/bench/budget_bench.sh "$MODEL-nf4" "$OUTDIR" 4 --quantize nf4
fi

render_once() {  # render_once LABEL MODEL [FLAGS...]: one 1024x1024 28-step image, its log under $OUTDIR
  local label=$1 model=$2; shift 2
  cat > /tmp/bench_job.json <<JOB
{"output": {"dir": "/tmp/bench_out_$label", "name": "{index}-{seed}.png"},
 "defaults": {"width": 1024, "height": 1024, "steps": 28, "guidance": 3.5, "seed": 0},
 "items": ["a photo of a red fox in the snow, golden hour"]}
JOB
  rm -rf "/tmp/bench_out_$label"
  /usr/bin/time -v ./build-gpu/fluxbatch render /tmp/bench_job.json --model "$model" --device cuda --overwrite -v "$@" \
    > "$OUTDIR/render_$label.log" 2>&1; echo "[$label] exit $?"
  grep -E "loaded|quantiz|offload|batch of|memory:|peak|done:|Elapsed|Maximum resident|allocator" "$OUTDIR/render_$label.log" \
    | grep -v "debug step" | cut -c1-260 | tail -14
}

if ! skip render; then
  step "fluxbatch render 1024x1024, 28 steps: bf16, then NF4 (quantized on load; diffusers' NF4 file) in the same call"
  skip bf16render || render_once bf16 "$MODEL"
  render_once nf4-on-load "$MODEL" --quantize nf4
  render_once nf4-file "$MODEL-nf4" --quantize nf4
  cp /tmp/bench_out_bf16/*.png "$OUTDIR/fluxbatch_1024.png" 2>/dev/null
fi

# Only a few files come back from the GPU machine: every log and part file in one archive, beside
# figures.json, the PNGs and the fixtures.
tar -C "$OUTDIR" -czf /tmp/fluxbatch-logs.tgz --exclude='*.png' --exclude='gpu_fixtures.tar' . \
  && find "$OUTDIR" -maxdepth 1 -type f ! -name figures.json ! -name '*.png' ! -name gpu_fixtures.tar -delete \
  && mv /tmp/fluxbatch-logs.tgz "$OUTDIR/logs.tgz"
