#!/usr/bin/env bash
# Checks ihs on a machine with an NVIDIA GPU. It installs the CUDA build of
# torch and runs the HF parity tests with the models on the GPU. Then it
# prints the bf16 matmul throughput there and loads the embedded model in
# bf16 on it. The first failed step ends the check with exit status 1.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

log() { printf 'gpu-check: %s\n' "$*" >&2; }
fail() {
    log "FAILED: $*"
    exit 1
}

if ! command -v nvidia-smi >/dev/null 2>&1; then
    fail "nvidia-smi not found; run this check on a machine with an NVIDIA GPU and its driver"
fi
gpus="$(nvidia-smi -L 2>/dev/null | grep -c '^GPU ' || true)"
if [[ "$gpus" -eq 0 ]]; then
    fail "nvidia-smi lists no GPU; run this check on a machine with a CUDA device"
fi
nvidia-smi -L >&2

log "installing the CUDA build of torch"
IHS_TORCH=cuda scripts/setup.sh
if [[ -z "${LIBTORCH:-}" && -z "${LIBTORCH_USE_PYTORCH:-}" ]]; then
    .venv/bin/python -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' ||
        fail "the torch in .venv does not see the GPU; delete .venv and run this check again"
fi

# The f32 tolerances assume libtorch's default IEEE f32 matmuls, not TF32.
unset TORCH_ALLOW_TF32_CUBLAS_OVERRIDE

log "parity tests on cuda (the worst differences are printed per family and dtype)"
IHS_TEST_DEVICE=cuda scripts/with-libtorch.sh \
    cargo test -p ihs-model --test parity --test family_parity -- --nocapture ||
    fail "parity on cuda"

log "building ihs in release mode"
scripts/with-libtorch.sh cargo build --release -p ihs-cli || fail "release build"

log "bf16 matmul throughput on cuda"
target/release/ihs roofline --device cuda --dtype bf16 || fail "ihs roofline on cuda"

log "embedded model loaded in bf16 on cuda"
target/release/ihs inspect models/SmolLM2-135M-Instruct.Q4_1.gguf \
    --load --devices cuda --dtype bf16 || fail "ihs inspect --load on cuda"

log "all checks passed"
