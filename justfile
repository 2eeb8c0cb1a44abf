# Tasks for ihs. `just --list` shows them all.

set shell := ["bash", "-euo", "pipefail", "-c"]

# Show the available tasks.
default:
    @just --list

# Install libtorch 2.13.0 (see scripts/setup.sh); skipped when already done.
setup:
    scripts/setup.sh

# Build the ihs binary in release mode.
build: setup
    scripts/with-libtorch.sh cargo build --release -p ihs-cli

# Run every test of the workspace.
test: setup
    scripts/with-libtorch.sh cargo test --workspace

# On a CUDA machine: install CUDA torch, run the parity tests on the GPU, print throughput.
gpu-check:
    scripts/gpu-check.sh

# Run a pipeline; with no argument, the main job on the embedded default model.
run SPEC="pipelines/default.yaml" *ARGS: build
    target/release/ihs run {{SPEC}} {{ARGS}}

# Benchmark ihs against HF transformers and scikit-learn and rewrite
# docs/benchmarks.md (`--size full` for every prompt, `--device cuda` on a GPU).
bench *ARGS: build
    scripts/setup-bench.sh
    .venv-bench/bin/python scripts/bench.py run {{ARGS}}

# Show what a pipeline would compute and what is cached.
plan SPEC="pipelines/default.yaml": build
    target/release/ihs plan {{SPEC}}

# Check pipeline specs (all of pipelines/ by default).
validate *SPECS: build
    for spec in {{ if SPECS == "" { "pipelines/*.yaml" } else { SPECS } }}; do target/release/ihs validate "$spec"; done

# Show a model's architecture and a prompt rendered through its chat template.
inspect MODEL *ARGS: build
    target/release/ihs inspect {{MODEL}} {{ARGS}}

# Check formatting and clippy lints.
lint: setup
    cargo fmt --all --check
    scripts/with-libtorch.sh cargo clippy --workspace --all-targets -- -D warnings

# Rewrite the HF reference data of the parity tests (needs the packages in
# scripts/requirements-reference.txt and, for the GGUF references, `just setup`).
parity-fixtures:
    python3 scripts/make_parity_fixtures.py
    python3 scripts/make_family_fixtures.py
    python3 scripts/make_gguf_reference.py
    python3 scripts/make_embedded_reference.py
