#!/usr/bin/env bash
# ember's test command — the one README.md gives and .ci/run calls: format check, clippy with
# warnings as errors, every workspace test, and compile checks of the GPU (wgpu) code paths.
set -euo pipefail
cd "$(dirname "$0")/.."
# Keep build outputs outside the clone, so a fresh clone still rebuilds incrementally.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/ember-target}"
# Datasets come from the cache; an offline mirror beside the clone is used when present.
if [ -z "${EMBER_DATA_MIRROR:-}" ] && [ -d ../shared/datasets ]; then
  EMBER_DATA_MIRROR="$(cd ../shared/datasets && pwd)"
  export EMBER_DATA_MIRROR
fi
step() { printf '\n== %s (%s)\n' "$*" "$(date +%H:%M:%S)"; }
step cargo fmt --check
cargo fmt --all --check
step cargo clippy
cargo clippy --workspace --all-targets --locked -- -D warnings
step cargo test
cargo test --workspace --locked
step cargo clippy --features wgpu, and check --features wgpu,fusion
# The GPU backends cannot run here, but their code (ember-kernels' GPU kernels and their tests,
# the lazy form the fusion backend takes) must keep compiling, without warnings.
cargo clippy -p ember-cli -p ember-kernels --features ember-cli/wgpu,ember-kernels/wgpu \
  --all-targets --locked -- -D warnings
cargo check -p ember-cli --features wgpu,fusion --locked
