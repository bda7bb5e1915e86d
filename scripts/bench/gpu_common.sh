# Sourced by the GPU benchmark scripts, from the repository root: the Python packages carried in .whl/ and the
# CUDA build in build-gpu/, written once for all of them.

# fb_bench_start [OUTDIR]: what every GPU bench does first. OUTDIR (default $OUT, else /tmp/fluxbatch-bench),
# created; MODEL from FB_MODEL (default /tmp/flux-dev-random); the Python packages; the card in the log.
fb_bench_start() {
  OUTDIR="${1:-${OUT:-/tmp/fluxbatch-bench}}"
  mkdir -p "$OUTDIR"
  MODEL="${FB_MODEL:-/tmp/flux-dev-random}"
  fb_python_env
  nvidia-smi --query-gpu=name,memory.total,memory.used,driver_version --format=csv,noheader
}

# diffusers + importlib_metadata (carried in .whl/: bash scripts/bench/prepare_carry.sh), on PYTHONPATH; the
# cuDNN frontend wheel's headers land in /tmp/site/include (fb_gpu_build).
fb_python_env() {
  python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl 2>&1 | tail -1
  export PYTHONPATH=/tmp/site
}

# fb_gpu_build OUTDIR TARGET...: a Release build for sm_90 (H100 / H200) in build-gpu, with the stb headers
# carried in .stb/ and, when its wheel was carried (fb_python_env installs it into /tmp/site), cuDNN's C++ frontend
# for --attention fp8; cmake.log and build.log in OUTDIR. On failure prints the errors and returns 1.
fb_gpu_build() {
  local outdir=$1 stb frontend=()
  shift
  stb="$(dirname "$(find "$PWD/.stb" -name stb_image_write.h | head -1)")"
  [ -f /tmp/site/include/cudnn_frontend.h ] && frontend=(-DFLUXBATCH_CUDNN_FRONTEND_DIR=/tmp/site/include)
  cmake -S . -B build-gpu -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES=90 \
    -DFLUXBATCH_PYTHON="$(command -v python3)" -DSTB_INCLUDE_DIR="$stb" "${frontend[@]}" > "$outdir/cmake.log" 2>&1 \
    || { tail -30 "$outdir/cmake.log"; return 1; }
  cmake --build build-gpu -j 16 --target "$@" > "$outdir/build.log" 2>&1 \
    || { grep -m20 -A5 error "$outdir/build.log"; return 1; }
}
