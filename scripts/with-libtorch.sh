#!/usr/bin/env bash
# Runs a command with cargo pointed at the libtorch that scripts/setup.sh
# chose. A LIBTORCH or LIBTORCH_USE_PYTORCH already set is left alone.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [[ -z "${LIBTORCH:-}" && -z "${LIBTORCH_USE_PYTORCH:-}" ]]; then
    recorded="$root/.venv/.ihs-libtorch"
    if [[ ! -f "$recorded" ]]; then
        echo "libtorch is not set up: run 'just setup' (or set LIBTORCH)" >&2
        exit 1
    fi
    LIBTORCH="$(cat "$recorded")"
    export LIBTORCH
fi
exec "$@"
