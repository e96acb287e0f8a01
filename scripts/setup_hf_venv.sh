#!/usr/bin/env bash
# Creates scripts/.venv-hf with PyTorch + transformers + sentence-transformers for the
# HuggingFace-side checks (scripts/check_hf_export.py, scripts/make_gpt2_bin_fixture.py,
# scripts/check_embed.py). Idempotent; prints the
# venv's python at the end. Tests never need it. PyPI's Linux torch wheel brings its CUDA
# libraries (~3 GB): the checks use the CPU, `ember bench --device wgpu|cuda` the GPU.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
venv="$here/.venv-hf"
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
  torch==2.9.1 transformers==4.57.1 safetensors==0.6.2 numpy==2.3.4 \
  sentence-transformers==5.1.2
echo "$venv/bin/python"
