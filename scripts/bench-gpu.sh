#!/usr/bin/env bash
# The GPU comparison of issue 10 in one command: ember on a GPU device against PyTorch CUDA
# (eager and torch.compile) for gpt2-small at context 1024, transformers' generate, and a
# correctness check: pretrain gpt-tiny on the GPU, then decode the same greedy text from that
# checkpoint on the GPU and on the CPU.
#
#   bash scripts/bench-gpu.sh [EMBER_BINARY] [OUT_DIR]
#
# EMBER_BINARY: an ember built with --features wgpu (or cuda; add fusion for training speed, at
# the cost of decoding speed) [default: $CARGO_TARGET_DIR or target, /release/ember];
# OUT_DIR: where the JSON reports and the log go [default: bench-gpu-out].
# Environment: DEVICE (wgpu), CASE (gpt2-small:1024:8), STEPS (10), EMBER_PYTHON (a Python with
# torch + transformers and CUDA: a path, or a name on PATH such as python3; default
# scripts/.venv-hf/bin/python).
set -uo pipefail
ember=${1:-${CARGO_TARGET_DIR:-target}/release/ember}
out=${2:-bench-gpu-out}
device=${DEVICE:-wgpu}
mkdir -p "$out"
exec > >(tee "$out/log.txt") 2>&1
# wgpu wants a runtime directory even headless.
export XDG_RUNTIME_DIR=${XDG_RUNTIME_DIR:-/tmp}
start=$(date +%s)
elapsed() { echo "$(( $(date +%s) - start )) s"; }

echo "== train bench ${CASE:-gpt2-small:1024:8} on $device ($(elapsed))"
"$ember" --device "$device" bench train --case "${CASE:-gpt2-small:1024:8}" --steps "${STEPS:-10}" \
  --torch-compile --json "$out/train.json"
echo "== generate bench on $device ($(elapsed))"
"$ember" --device "$device" bench generate --skip-no-cache --json "$out/generate.json"
echo "== pretrain gpt-tiny on $device, greedy decode on $device and cpu ($(elapsed))"
run=$(mktemp -d)
"$ember" --device "$device" pretrain --epochs 3 --out "$run" --overwrite 2>&1 | grep -v '^\s*$' | tail -2
same=yes
for d in "$device" cpu; do
  "$ember" --device "$d" generate --checkpoint "$run" --prompt "Every effort moves you" \
    --max-new-tokens 20 > "$out/greedy-$d.txt" || same=no
done
cmp -s "$out/greedy-$device.txt" "$out/greedy-cpu.txt" || same=no
echo "greedy text identical on $device and cpu: $same"
rm -rf "$run"
echo "== done ($(elapsed))"
[ "$same" = yes ]
