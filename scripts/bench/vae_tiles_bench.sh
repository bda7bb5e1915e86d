#!/usr/bin/env bash
# The exact tiled VAE decode on the GPU (issue 15), in one call on the GPU machine: builds
# fluxbatch_bench_vae_tiles, makes a random full-size FLUX.1 VAE when missing (make_random_flux.py, VAE only;
# the vae/ of a whole random FLUX.1-dev folder is used when there is one), then decodes random latents whole and
# in exact tiles at 1024² (256 and 512 px tiles) and 2048² (256 and 512 px): pixel agreement with the whole decode
# (targets: >= 99.9% of values within 1/255, none beyond 2/255), device peaks (target at 1024² in 256 px tiles:
# <= 1 GiB with the weights), times; then a 4096x4096 decode in the tiles the planner picks for a 4 GiB budget,
# the allocator capped at it. key=value lines on stdout, figures in OUTDIR/vae_tiles_figures.json.
#   bash scripts/bench/vae_tiles_bench.sh [OUTDIR]     (OUTDIR defaults to $OUT or /tmp/fluxbatch-bench)
# Environment: FB_MODEL (default /tmp/flux-dev-random; its vae/ if present), FB_DTYPE (bf16), FB_SIZES (1024,2048),
# FB_TILES (256,512), FB_BIG (4096), FB_BUDGET (4G).
# Needs, carried from the dev machine like run_h100.sh: .stb and .whl (bash scripts/bench/prepare_carry.sh makes them).
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
source scripts/bench/gpu_common.sh
fb_bench_start "${1:-}"  # OUTDIR, MODEL, diffusers for the model scripts

echo "=== build ($(date +%T))"
fb_gpu_build "$OUTDIR" fluxbatch_bench_vae_tiles || exit 1

VAE="$MODEL/vae"
if [ ! -f "$VAE/config.json" ]; then
  VAE=/tmp/flux-vae-random/vae
  if [ ! -f "$VAE/config.json" ]; then
    echo "=== random FLUX.1 VAE ($(date +%T))"
    python3 scripts/bench/make_random_flux.py --out /tmp/flux-vae-random --skip transformer text_encoder text_encoder_2 \
      2>&1 | grep -v Writing
  fi
fi

echo "=== exact tiled decode ($(date +%T))"
./build-gpu/fluxbatch_bench_vae_tiles "$VAE" --device cuda --dtype "${FB_DTYPE:-bf16}" --sizes "${FB_SIZES:-1024,2048}" \
  --tiles "${FB_TILES:-256,512}" --big "${FB_BIG:-4096}" --budget "${FB_BUDGET:-4G}" --json "$OUTDIR/vae_tiles_figures.json"
