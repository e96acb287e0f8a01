#!/usr/bin/env bash
# The GPU comparison of issue 10 in one command: ember on a GPU device against transformers'
# generate and PyTorch CUDA (eager and torch.compile) for gpt2-small at context 1024, and a
# correctness check: pretrain gpt-tiny on the GPU, then decode the same greedy text from that
# checkpoint on the GPU and on the CPU.
#
#   bash scripts/bench-gpu.sh [EMBER_BINARY] [OUT_DIR] [FUSION_BINARY]
#
# EMBER_BINARY: an ember built with --features wgpu (or cuda) [default: $CARGO_TARGET_DIR or
# target, /release/ember]; OUT_DIR: where the JSON reports and the log go [default:
# bench-gpu-out]; FUSION_BINARY: optionally one built with `fusion` too, whose decoding and
# training run after the first binary's, in the same call (fusion trains faster, decodes slower).
# Environment: DEVICE (wgpu), CASE (gpt2-small:1024:8) and STEPS (10) of the train bench, ROUNDS
# (2) of the generate bench, EMBER_PYTHON (a Python with torch + transformers and CUDA: a path,
# or a name on PATH; default scripts/.venv-hf/bin/python where it exists, else python3).
# Exits non-zero when a bench failed or the GPU's greedy text differs from the CPU's.
set -uo pipefail
ember=${1:-${CARGO_TARGET_DIR:-target}/release/ember}
out=${2:-bench-gpu-out}
fusion=${3:-}
device=${DEVICE:-wgpu}
if [ -z "${EMBER_PYTHON:-}" ] && [ ! -x "$(dirname "$0")/.venv-hf/bin/python" ]; then
  export EMBER_PYTHON=python3
fi
mkdir -p "$out"
exec > >(tee "$out/log.txt") 2>&1
# wgpu wants a runtime directory even headless.
export XDG_RUNTIME_DIR=${XDG_RUNTIME_DIR:-/tmp}
start=$(date +%s)
failed=no
elapsed() { echo "$(( $(date +%s) - start )) s"; }

# Decoding first: it is quick, and a call cut short keeps it.
binaries=("$ember")
[ -n "$fusion" ] && binaries+=("$fusion")
for i in "${!binaries[@]}"; do
  name=$([ "$i" = 0 ] && echo ember || echo fusion)
  echo "== generate bench, $name binary, on $device ($(elapsed))"
  "${binaries[$i]}" --device "$device" bench generate --skip-no-cache --rounds "${ROUNDS:-2}" \
    --json "$out/generate-$name.json" || failed=yes
done
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
for i in "${!binaries[@]}"; do
  name=$([ "$i" = 0 ] && echo ember || echo fusion)
  # torch.compile's reference once, with the first binary.
  compile=$([ "$i" = 0 ] && echo --torch-compile)
  echo "== train bench ${CASE:-gpt2-small:1024:8}, $name binary, on $device ($(elapsed))"
  "${binaries[$i]}" --device "$device" bench train --case "${CASE:-gpt2-small:1024:8}" \
    --steps "${STEPS:-10}" $compile --json "$out/train-$name.json" || failed=yes
done
echo "== done ($(elapsed)); a bench failed: $failed; greedy text identical: $same"
[ "$same" = yes ] && [ "$failed" = no ]
