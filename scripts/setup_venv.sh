#!/usr/bin/env bash
# Creates scripts/.venv with the Python packages ember's reference scripts use (tiktoken).
# Idempotent; prints the venv's python at the end. Tests never need this: they read the
# reference values these scripts stored in the test data.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
venv="$here/.venv"
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check tiktoken==0.14.0
echo "$venv/bin/python"
