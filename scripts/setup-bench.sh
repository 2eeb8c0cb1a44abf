#!/usr/bin/env bash
# Installs the Python packages of `just bench` (scripts/requirements-bench.txt)
# into .venv-bench. Skipped while the requirements are unchanged. The torch
# wheel there is PyPI's full one (about 4.7 GB with its CUDA libraries): the
# HF baselines import torch from Python, which the lean libtorch in .venv
# does not allow.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.venv-bench"
requirements="$root/scripts/requirements-bench.txt"
stamp="$venv/.ihs-bench-packages"
digest="$(sha256sum "$requirements" | cut -d' ' -f1)"
if [[ -f "$stamp" && "$(cat "$stamp")" == "$digest" ]]; then
    exit 0
fi
if ! command -v python3 >/dev/null 2>&1; then
    echo "setup-bench: python3 not found: install Python 3 with pip and venv" >&2
    exit 1
fi
started=$(date +%s)
echo "setup-bench: installing scripts/requirements-bench.txt into $venv" >&2
python3 -m venv "$venv"
"$venv/bin/python" -m pip --disable-pip-version-check --quiet install -r "$requirements"
echo "$digest" > "$stamp"
echo "setup-bench: ready in $(( $(date +%s) - started ))s, $(du -sh "$venv" | cut -f1) in $venv" >&2
