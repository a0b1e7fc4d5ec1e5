#!/usr/bin/env bash
# Installs the non-Rust tools the test suite needs, outside the clone:
#   - Python's jsonschema (independent schema check), pynacl and blake3
#     (independent vector check) in a virtualenv;
#   - buf (from the @bufbuild/buf npm package, which ships the binary).
# Idempotent; prints where the tools are. Source of truth for versions: here.
set -euo pipefail
TOOLS="${HEARTHNET_TOOLS:-$HOME/.cache/hearthnet/tools}"
JSONSCHEMA_VERSION="4.26.0"
PYNACL_VERSION="1.6.2"
BLAKE3_VERSION="1.0.11"
PROTOBUF_VERSION="7.36.2"
OPENAI_VERSION="3.60.0"
BUF_VERSION="1.75.0"
mkdir -p "$TOOLS"

if [ ! -x "$TOOLS/venv/bin/python" ] || ! "$TOOLS/venv/bin/python" -c "import jsonschema, nacl, blake3, google.protobuf, openai" 2>/dev/null; then
  echo "setup: installing jsonschema, pynacl, blake3, protobuf and openai into $TOOLS/venv"
  [ -x "$TOOLS/venv/bin/python" ] || python3 -m venv "$TOOLS/venv"
  "$TOOLS/venv/bin/pip" install --quiet --disable-pip-version-check \
    "jsonschema==$JSONSCHEMA_VERSION" "pynacl==$PYNACL_VERSION" "blake3==$BLAKE3_VERSION" "protobuf==$PROTOBUF_VERSION" \
    "openai==$OPENAI_VERSION"
fi

if [ ! -x "$TOOLS/npm/node_modules/.bin/buf" ]; then
  echo "setup: installing @bufbuild/buf $BUF_VERSION into $TOOLS/npm"
  mkdir -p "$TOOLS/npm"
  (cd "$TOOLS/npm" && { [ -f package.json ] || echo '{"name":"hearthnet-tools","private":true}' > package.json; } \
    && npm install --silent --no-audit --no-fund "@bufbuild/buf@$BUF_VERSION")
fi

if ! command -v cargo-nextest >/dev/null 2>&1; then
  echo "setup: cargo-nextest not found; installing it with cargo"
  cargo install --locked cargo-nextest
fi
# The discovery tests build network namespaces with `ip` (iproute2).
if ! command -v ip >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "setup: installing iproute2 for the network-namespace tests"
  apt-get install -y -qq iproute2 >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq iproute2; }
fi
echo "setup: tools ready in $TOOLS"
