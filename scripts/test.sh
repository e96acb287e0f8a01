#!/usr/bin/env bash
# ember's test command — the one README.md gives and .ci/run calls: format check, clippy with
# warnings as errors, every workspace test, and a compile check of the wgpu backend.
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
step cargo check --features wgpu
cargo check -p ember-cli --features wgpu --locked
