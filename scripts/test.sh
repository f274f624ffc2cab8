#!/usr/bin/env bash
# The whole test suite: builds the binaries the firmware tests run, then every test.
# Uses cargo-nextest when installed, plain `cargo test` otherwise.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --workspace --bins
if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run --workspace --no-fail-fast "$@"
else
    cargo test --workspace --no-fail-fast "$@"
fi
