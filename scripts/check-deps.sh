#!/usr/bin/env bash
# Architecture invariants from docs/ARCHITECTURE.md, checked with `cargo tree -i`:
# - fleetml-shared pulls no runtime, web, database, MQTT or ONNX crate;
# - the agent never depends on the control plane and never links the broker or a database.
set -euo pipefail
cd "$(dirname "$0")/.."
fail=0
forbid() { # forbid PACKAGE DEPENDENCY
    if cargo tree -e normal -p "$1" -i "$2" >/dev/null 2>&1; then
        echo "architecture invariant broken: $1 depends on $2"
        cargo tree -e normal -p "$1" -i "$2" | head -20
        fail=1
    fi
}
for dependency in tokio rumqttc rumqttd axum sqlx tract-onnx reqwest; do
    forbid fleetml-shared "$dependency"
done
for dependency in fleetml-plane rumqttd sqlx reqwest; do
    forbid fleetml-agent "$dependency"
done
[ "$fail" = 0 ] && echo "dependency direction: ok"
exit "$fail"
