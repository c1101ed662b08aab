#!/usr/bin/env bash
# Create .venv and install the harness with the exact versions of constraints.txt.
# Idempotent: a second run only checks. Works with no GPU and no network beyond the package index.
#   NAS_KEEP_TORCH=1  use the torch/torchvision already importable by python3 (e.g. your CUDA build):
#                     the venv sees system site-packages and torch/torchvision are not pinned.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
constraints=constraints.txt
if [ "${NAS_KEEP_TORCH:-0}" = "1" ]; then
  [ -d .venv ] || "$PY" -m venv --system-site-packages .venv
  constraints=$(mktemp)
  grep -viE '^(torch|torchvision|nvidia-|triton|cuda-)' constraints.txt > "$constraints"
else
  [ -d .venv ] || "$PY" -m venv .venv
fi
export PIP_DISABLE_PIP_VERSION_CHECK=1
stamp=.venv/.nas-installed
want=$(cat pyproject.toml "$constraints" | sha256sum | cut -c1-16)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  echo "setup: .venv up to date"
  exit 0
fi
if [ "${NAS_KEEP_TORCH:-0}" != "1" ]; then
  # torch first: its wheel is the big one; the pair is fixed in constraints.txt
  .venv/bin/python -m pip install -q -c "$constraints" torch torchvision
fi
.venv/bin/python -m pip install -q -c "$constraints" -e ".[test]"
.venv/bin/dvc config --local core.analytics false 2>/dev/null || true
echo "$want" > "$stamp"
echo "setup: done ($(.venv/bin/python -c 'import torch; print("torch", torch.__version__, "cuda" if torch.cuda.is_available() else "cpu")'))"
