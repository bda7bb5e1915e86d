#!/usr/bin/env bash
# What a LoRA costs on the GPU (issue 17), in one call on the GPU machine: builds fluxbatch_bench_lora, makes
# the random full-size FLUX.1-dev folder and its NF4 copy when missing (as run_h100.sh does), then measures
# a rank-16 LoRA on every Linear at 1024x1024: read + check + hash time, attach time, one forward without a
# LoRA, with side paths and merged (targets: side <= 1.05x, merged 1.00x, load < 1 s), and the NF4 forward
# without and with side paths, and (compute capability 8.9+) the same with --compute fp8's fp8 layers.
# Figures go to OUTDIR/lora_figures.json.
#   bash scripts/bench/lora_bench.sh [OUTDIR]     (OUTDIR defaults to $OUT or /tmp/fluxbatch-bench)
# Environment: FB_MODEL (default /tmp/flux-dev-random), FB_RANK (16), FB_SIZE (1024), FB_REPS (10).
# Needs, carried from the dev machine like run_h100.sh: .stb and .whl (bash scripts/bench/prepare_carry.sh makes them).
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
source scripts/bench/gpu_common.sh
fb_bench_start "${1:-}"  # OUTDIR, MODEL, diffusers for the model scripts

echo "=== build ($(date +%T))"
fb_gpu_build "$OUTDIR" fluxbatch_bench_lora || exit 1

if [ ! -d models/tiny-flux-dev ]; then  # its tokenizers go into the random model
  python3 scripts/make_tiny_models.py --out models > "$OUTDIR/tiny.log" 2>&1 || tail -20 "$OUTDIR/tiny.log"
fi
if [ ! -f "$MODEL/model_index.json" ]; then
  echo "=== random FLUX.1-dev ($(date +%T))"
  python3 scripts/bench/make_random_flux.py --out "$MODEL" --tokenizers-from models/tiny-flux-dev 2>&1 | grep -v Writing
fi
if [ ! -f "$MODEL-nf4/transformer/config.json" ]; then
  echo "=== its NF4 copy ($(date +%T))"
  python3 scripts/bench/make_random_flux_nf4.py --model "$MODEL" --out "$MODEL-nf4" 2>&1 | grep -v Writing
  for c in text_encoder text_encoder_2 tokenizer tokenizer_2 vae scheduler model_index.json; do
    [ -e "$MODEL-nf4/$c" ] || ln -sfn "$MODEL/$c" "$MODEL-nf4/$c"; done
fi

echo "=== LoRA figures ($(date +%T))"
./build-gpu/fluxbatch_bench_lora "$MODEL" --nf4 "$MODEL-nf4" --rank "${FB_RANK:-16}" --size "${FB_SIZE:-1024}" \
  --reps "${FB_REPS:-10}" --json "$OUTDIR/lora_figures.json"
status=$?
rm -f "$OUTDIR"/bench_lora_r*.safetensors  # the random LoRA (~170 MB at rank 16): not worth bringing back
exit $status
