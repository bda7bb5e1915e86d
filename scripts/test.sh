#!/usr/bin/env bash
# Sets up if needed (scripts/setup.sh), then runs every test through ctest.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
"$ROOT/scripts/setup.sh"
BUILD_DIR="${FLUXBATCH_BUILD_DIR:-build}"
ctest --test-dir "$BUILD_DIR" --output-on-failure -j "${FLUXBATCH_JOBS:-$(nproc)}" "$@"
