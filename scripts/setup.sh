#!/usr/bin/env bash
# Provides libtorch 2.13.0 for tch 0.26.0 and records where it is, so that
# scripts/with-libtorch.sh can point cargo at it, fetches the embedded
# default model (scripts/fetch-embedded-model.sh) and installs the Python
# packages the tests use. Safe to run again: a finished step is skipped.
#
# Where libtorch comes from, in order:
#   LIBTORCH=/path/to/libtorch        an existing libtorch (lib/ and include/)
#   LIBTORCH_USE_PYTORCH=1            the torch package of the python3 on PATH
#   otherwise                         torch==2.13.0 from PyPI in .venv/
# In .venv, a machine where nvidia-smi lists a GPU gets the full CUDA wheel;
# any other machine gets the lean CPU install: the wheel without its
# dependencies plus the two CUDA runtime libraries libtorch_cpu.so links to.
# IHS_TORCH=cuda or IHS_TORCH=cpu overrides that choice.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.venv"
torch_version="2.13.0"
cuda_runtime="cuda-toolkit[cudart,cupti]==13.0.3"

log() { printf 'setup: %s\n' "$*" >&2; }

setup_torch() {
    if [[ -n "${LIBTORCH:-}" ]]; then
        if [[ ! -e "$LIBTORCH/lib/libtorch_cpu.so" ]]; then
            log "LIBTORCH=$LIBTORCH has no lib/libtorch_cpu.so; point it at the folder holding lib/ and include/"
            exit 1
        fi
        log "using libtorch from LIBTORCH=$LIBTORCH"
        return 0
    fi
    if [[ -n "${LIBTORCH_USE_PYTORCH:-}" ]]; then
        log "using the torch package of $(command -v python3) (LIBTORCH_USE_PYTORCH is set)"
        return 0
    fi

    mode="${IHS_TORCH:-}"
    if [[ -z "$mode" ]]; then
        if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
            mode=cuda
        else
            mode=cpu
        fi
    fi
    if [[ "$mode" != cpu && "$mode" != cuda ]]; then
        log "IHS_TORCH=$mode is invalid; use cpu or cuda"
        exit 1
    fi

    stamp="$venv/.ihs-torch"
    if [[ -f "$stamp" && "$(cat "$stamp")" == "$torch_version-$mode" ]]; then
        return 0
    fi

    if ! command -v python3 >/dev/null 2>&1; then
        log "python3 not found: install Python 3 with pip and venv, or set LIBTORCH"
        exit 1
    fi
    started=$(date +%s)
    log "installing torch==$torch_version ($mode) into $venv"
    python3 -m venv "$venv"
    pip=("$venv/bin/python" -m pip --disable-pip-version-check --quiet)
    if [[ "$mode" == cuda ]]; then
        "${pip[@]}" install "torch==$torch_version"
    else
        "${pip[@]}" install --no-deps "torch==$torch_version"
        "${pip[@]}" install "$cuda_runtime"
    fi

    site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
    libtorch="$site/torch"
    if [[ ! -e "$libtorch/lib/libtorch_cpu.so" ]]; then
        log "the torch wheel has no lib/libtorch_cpu.so under $libtorch"
        exit 1
    fi
    echo "$libtorch" > "$venv/.ihs-libtorch"
    echo "$torch_version-$mode" > "$stamp"
    log "torch ready in $(( $(date +%s) - started ))s, $(du -sh "$venv" | cut -f1) in $venv"
}

# Installs the Python packages the tests call (scikit-learn, pyarrow, polars,
# pandas, DuckDB, and nbclient with matplotlib for the notebook) into .venv;
# skipped while the requirements are unchanged.
setup_test_packages() {
    local requirements="$root/scripts/requirements-test.txt"
    local python="$venv/bin/python"
    if [[ ! -x "$python" ]]; then
        python3 -m venv "$venv"
    fi
    local stamp="$venv/.ihs-test-packages"
    local digest
    digest="$(sha256sum "$requirements" | cut -d' ' -f1)"
    if [[ -f "$stamp" && "$(cat "$stamp")" == "$digest" ]]; then
        return 0
    fi
    log "installing the test packages of scripts/requirements-test.txt into $venv"
    "$python" -m pip --disable-pip-version-check --quiet install -r "$requirements"
    echo "$digest" > "$stamp"
}

setup_torch
"$root/scripts/fetch-embedded-model.sh"
setup_test_packages
