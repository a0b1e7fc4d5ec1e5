#!/usr/bin/env bash
# The whole test suite, set-up included. `.ci/run` calls exactly this.
#   formatting, clippy, every Rust test (nextest + doctests), generated-artefact
#   drift, our protocol lint, buf lint/build, and the Python jsonschema cross-check.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/hearthnet/target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
TOOLS="${HEARTHNET_TOOLS:-$HOME/.cache/hearthnet/tools}"
step() { printf '\n== %s\n' "$*"; }

step "setup"
bash scripts/setup.sh

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "default models (provisioned once into ~/.cache/hearthnet/models)"
cargo run --quiet --locked -p hearthnet -- models fetch

step "cargo nextest"
CORPUS_OUT="$(mktemp -d)/differential.json"
HEARTHNET_CORPUS_OUT="$CORPUS_OUT" cargo nextest run --workspace --locked --no-fail-fast --success-output never --failure-output final \
  -E 'not binary(differential)'
HEARTHNET_CORPUS_OUT="$CORPUS_OUT" cargo nextest run --workspace --locked --success-output immediate -E 'binary(differential)'

step "doctests"
cargo test --workspace --locked --doc

step "generated artefacts and protocol lint"
cargo run --quiet --locked -p hearthnet-codegen -- check
cargo run --quiet --locked -p hearthnet-codegen -- lint
cargo run --quiet --locked -p hearthnet-codegen -- breaking --against protocol/baseline/descriptor.binpb
EXPORT_DIR="$(mktemp -d)"
cargo run --quiet --locked -p hearthnet-codegen -- export --out "$EXPORT_DIR"
for f in descriptor.binpb registry.json reference/capabilities.md schemas/hearthnet.llm.v1.ChatRequest.schema.json; do
  test -s "$EXPORT_DIR/$f" || { echo "export is missing $f"; exit 1; }
done

step "buf lint / buf build"
"$TOOLS/npm/node_modules/.bin/buf" lint protocol
"$TOOLS/npm/node_modules/.bin/buf" build protocol -o "$EXPORT_DIR/buf-image.binpb"

step "python jsonschema cross-check"
"$TOOLS/venv/bin/python" scripts/check_schemas.py "$CORPUS_OUT"

step "second implementation: examples/python-node against the Rust CLI and node"
HEARTHNET_BIN="$CARGO_TARGET_DIR/debug/hearthnet" bash examples/python-node/selftest.sh

step "conformance: the suite against our node and the Python node"
cargo build --quiet --locked -p hearthnet-conformance
CONF="$CARGO_TARGET_DIR/debug/hearthnet-conformance"
CONF_OUT="$(mktemp -d)"
HEARTHNET_BIN="$CARGO_TARGET_DIR/debug/hearthnet" "$CONF" run --key "$CONF_OUT/runner.key" \
  --launch 'bash conformance/targets/hearthnet-rs.sh' --expect-tier gold --out "$CONF_OUT/rust"
"$CONF" verify "$CONF_OUT/rust"
"$CONF" run --key "$CONF_OUT/runner.key" --expect-tier bronze --out "$CONF_OUT/python" \
  --launch 'exec examples/python-node/run.sh --port {port} --data-dir {data} --trust {caller}=trusted'
"$CONF" verify "$CONF_OUT/python"
# The committed example reports still verify under the current verdict rules.
"$CONF" verify conformance/reports/hearthnet-rs
"$CONF" verify examples/python-node/conformance-report

step "conformance: our node certifies itself (protocol.conformance.report, M32)"
HEARTHNET_BIN="$CARGO_TARGET_DIR/debug/hearthnet" HEARTHNET_CONFORMANCE_BIN="$CONF" \
  PYTHON="$TOOLS/venv/bin/python" bash conformance/self-report.sh "$CONF_OUT/self"

step "conformance mutants: every injected node fault is caught by the suite"
HEARTHNET_BIN="$CARGO_TARGET_DIR/debug/hearthnet" HEARTHNET_CONFORMANCE_BIN="$CONF" \
  PYTHON="$TOOLS/venv/bin/python" bash conformance/mutants/run.sh "$CONF_OUT/mutants"

step "python identity and signing vectors"
"$TOOLS/venv/bin/python" examples/python/check_vectors.py

printf '\nall checks passed\n'
