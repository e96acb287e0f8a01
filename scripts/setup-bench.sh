#!/usr/bin/env bash
# Creates the reference environment of `ember bench` (train, generate, tokenize): PyTorch and
# transformers (through scripts/setup_hf_venv.sh, the same venv scripts/.venv-hf that the
# HuggingFace checks use) plus tiktoken and HF tokenizers. Idempotent; prints the venv's python
# at the end. The bench finds it at scripts/.venv-hf/bin/python (or $EMBER_PYTHON); without it
# the bench prints ember's figures alone. Tests never need it.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
python="$(bash "$here/setup_hf_venv.sh" | tail -n 1)"
"$python" -m pip install --quiet --disable-pip-version-check tiktoken==0.14.0 tokenizers==0.22.2
echo "$python"
