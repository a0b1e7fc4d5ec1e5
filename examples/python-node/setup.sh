#!/usr/bin/env bash
# Sets up the Python HearthNet node; safe to run again (idempotent).
#   1. creates the virtual environment .venv/ when it is missing;
#   2. installs the pinned requirements.txt into it when they changed;
#   3. generates the Python bindings from protocol/proto into _gen/
#      (grpcio-tools; regenerated every run, never committed);
#   4. checks the node's identity code against protocol/vectors/.
# Environment: PYTHON (default python3), HEARTHNET_PROTOCOL_DIR (default ../../protocol).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PROTOCOL_DIR="${HEARTHNET_PROTOCOL_DIR:-$HERE/../../protocol}"
PROTOCOL_DIR="$(cd "$PROTOCOL_DIR" && pwd)"
VENV="$HERE/.venv"
PY="$VENV/bin/python"

if [ ! -x "$PY" ]; then
  echo "setup: creating virtual environment $VENV"
  "${PYTHON:-python3}" -m venv "$VENV"
else
  echo "setup: virtual environment $VENV exists"
fi

STAMP="$VENV/.requirements.installed"
if [ -f "$STAMP" ] && cmp -s "$STAMP" "$HERE/requirements.txt"; then
  echo "setup: requirements already installed"
else
  echo "setup: installing requirements.txt"
  "$PY" -m pip install --disable-pip-version-check --quiet -r "$HERE/requirements.txt"
  cp "$HERE/requirements.txt" "$STAMP"
fi

echo "setup: generating bindings from $PROTOCOL_DIR/proto into $HERE/_gen"
WKT="$("$PY" -c 'import grpc_tools, os; print(os.path.join(os.path.dirname(grpc_tools.__file__), "_proto"))')"
TMP_GEN="$HERE/_gen.tmp.$$"
trap 'rm -rf "$TMP_GEN"' EXIT
rm -rf "$TMP_GEN"
mkdir -p "$TMP_GEN"
( cd "$PROTOCOL_DIR/proto" && find hearthnet -name '*.proto' | LC_ALL=C sort ) > "$TMP_GEN/.files"
( cd "$PROTOCOL_DIR/proto" && xargs "$PY" -m grpc_tools.protoc -I . -I "$WKT" \
    --python_out="$TMP_GEN" --grpc_python_out="$TMP_GEN" < "$TMP_GEN/.files" )
echo "setup: generated $(wc -l < "$TMP_GEN/.files") proto files"
rm -f "$TMP_GEN/.files"
rm -rf "$HERE/_gen"
mv "$TMP_GEN" "$HERE/_gen"

echo "setup: checking the identity code against protocol/vectors"
HEARTHNET_PROTOCOL_DIR="$PROTOCOL_DIR" PYTHONPATH="$HERE" "$PY" -m hnnode.vectors
echo "setup: done; start the node with $HERE/run.sh --port 7080 --data-dir ./data"
