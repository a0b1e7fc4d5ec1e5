#!/usr/bin/env bash
# Self-test of the Python HearthNet node against the Rust `hearthnet` binary.
#
#   HEARTHNET_BIN=/path/to/hearthnet examples/python-node/selftest.sh
#
# 1. setup.sh (venv, requirements, bindings, identity vectors);
# 2. starts the Python node on a free loopback port with a fresh data dir;
# 3. the Rust CLI (`hearthnet call --node URL`, both http:// and grpc:// URL
#    forms) calls diag.echo, diag.echo.stream, protocol.describe,
#    protocol.version.list and node.manifest — the CLI checks seq, the terminal
#    frame and the transcript — and gets the right exit codes for not_found,
#    unauthorized and a fail_with error;
# 4. a Rust node (`hearthnet run`, loopback only) adds the Python node with
#    discovery.peer.add, which fetches and verifies its signed manifest;
# 5. the wire probe (python -m hnnode.probe): every done signature and
#    transcript, bad signatures, replays, versions, schema hashes, trust, the
#    HTTP/JSON binding and SSE;
# 6. restarts the node and checks the key persisted.
# Exits non-zero when any check fails. Binds only 127.0.0.1.
set -uo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
BIN="${HEARTHNET_BIN:-hearthnet}"
if ! command -v "$BIN" >/dev/null 2>&1 && [ ! -x "$BIN" ]; then
  echo "selftest: no hearthnet binary ($BIN); set HEARTHNET_BIN" >&2
  exit 2
fi

"$HERE/setup.sh" || { echo "selftest: setup failed" >&2; exit 1; }
PY="$HERE/.venv/bin/python"

TMP="$(mktemp -d)"
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null; done
  rm -rf "$TMP"
}
trap cleanup EXIT

# The Rust CLI and node keep their key and config under $HOME.
export HOME="$TMP/home"
export HEARTHNET__EMERGENCY__ENABLED=false
export HEARTHNET__MODELS__ENABLED=false
export HEARTHNET__TRANSPORT__HOST=127.0.0.1
export HEARTHNET__DISCOVERY__MDNS_ENABLED=false
export HEARTHNET__DISCOVERY__UDP_ENABLED=false
unset HEARTHNET_CONFIG
mkdir -p "$HOME"
"$BIN" init --name selftest-cli >"$TMP/init.log" 2>&1 || { cat "$TMP/init.log"; echo "selftest: hearthnet init failed" >&2; exit 1; }

PASS=0
FAIL=0
ok() { PASS=$((PASS + 1)); echo "ok   $*"; }
bad() { FAIL=$((FAIL + 1)); echo "FAIL $*"; }

start_node() {  # start_node LOG [OPTIONS...]: starts the Python node, sets URL and NODE_ID
  local log="$1"
  shift
  "$HERE/run.sh" --port 0 --data-dir "$TMP/pydata" "$@" >"$log" 2>&1 &
  PIDS+=($!)
  URL=""
  for _ in $(seq 1 150); do
    URL="$(sed -n 's/^READY .* url=\([^ ]*\).*/\1/p' "$log")"
    [ -n "$URL" ] && break
    sleep 0.2
  done
  NODE_ID="$(sed -n 's/^READY .* node=\([^ ]*\) .*/\1/p' "$log")"
  [ -n "$URL" ]
}

if start_node "$TMP/py.log"; then ok "python node ready at $URL ($NODE_ID)"; else cat "$TMP/py.log"; bad "python node did not start"; exit 1; fi
PORT="${URL##*:}"
if "$PY" -c "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('$URL/health', timeout=5).status == 200 else 1)"; then
  ok "GET /health"
else
  bad "GET /health"
fi

# expect NAME RC PATTERN -- CLI ARGS...: runs the Rust CLI, checks its exit code and output.
expect() {
  local name="$1" want_rc="$2" pattern="$3"
  shift 4
  local out rc
  out="$(timeout 20 "$BIN" "$@" 2>&1)"
  rc=$?
  if [ "$rc" = "$want_rc" ] && grep -q -- "$pattern" <<<"$out"; then
    ok "$name"
  else
    bad "$name (exit $rc, want $want_rc; output: ${out:0:300})"
  fi
}

for NODE_URL in "http://127.0.0.1:$PORT" "grpc://127.0.0.1:$PORT"; do
  f="${NODE_URL%%:*}"
  expect "[$f] diag.echo" 0 "\"servedBy\":\"$NODE_ID\"" -- call --node "$NODE_URL" diag.echo '{"input":{"text":"selftest","data":"AAE="}}'
  expect "[$f] protocol.describe" 0 "\"node\":\"$NODE_ID\"" -- call --node "$NODE_URL" protocol.describe '{"input":{"includeSchemaHashes":true}}'
  expect "[$f] protocol.version.list" 0 '"preferred"' -- call --node "$NODE_URL" protocol.version.list
  expect "[$f] node.manifest" 0 '"signedManifest"' -- call --node "$NODE_URL" node.manifest
  expect "[$f] diag.echo.stream (3 frames)" 0 '"index":2' -- call --node "$NODE_URL" diag.echo.stream '{"input":{"text":"s","repeat":3,"intervalMs":5}}'
  expect "[$f] unknown capability -> not_found (exit 6)" 6 'not_found' -- call --node "$NODE_URL" foo.bar '{}'
  expect "[$f] node.capabilities by a stranger -> unauthorized (exit 4)" 4 'unauthorized' -- call --node "$NODE_URL" node.capabilities
  expect "[$f] diag.echo fail_with timeout (exit 8)" 8 'timeout' -- call --node "$NODE_URL" diag.echo '{"input":{"failWith":"timeout"}}'
  expect "[$f] bad JSON for the schema -> bad_request (exit 7)" 7 'bad_request' -- call --node "$NODE_URL" diag.echo '{"input":{"nope":1}}'
  expect "[$f] diag.echo@2.0 -> schema_mismatch (exit 7)" 7 'schema_mismatch' -- call --node "$NODE_URL" diag.echo@2.0 '{}'
done

# A Rust node fetches and verifies the Python node's signed manifest.
RPORT="$("$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
"$BIN" run --port "$RPORT" >"$TMP/rust.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 1 150); do
  grep -q "listening on" "$TMP/rust.log" && break
  sleep 0.2
done
if grep -q "listening on" "$TMP/rust.log"; then
  ok "rust node listening on 127.0.0.1:$RPORT"
  expect "rust node: discovery.peer.add verifies the python manifest" 0 "\"nodeId\":\"$NODE_ID\"" -- \
    call --node "http://127.0.0.1:$RPORT" discovery.peer.add "{\"input\":{\"host\":\"127.0.0.1\",\"port\":$PORT,\"nodeId\":\"$NODE_ID\"}}"
  expect "rust node: python node listed in discovery.peers" 0 "\"displayName\":\"python-node\"" -- \
    call --node "http://127.0.0.1:$RPORT" discovery.peers
else
  bad "rust node did not start: $(tail -5 "$TMP/rust.log")"
fi

# The wire probe: signatures, transcripts, refusals, HTTP/JSON binding.
if PYTHONPATH="$HERE" "$PY" -m hnnode.probe "$URL" >"$TMP/probe.log" 2>&1; then
  ok "wire probe ($(tail -1 "$TMP/probe.log"))"
else
  grep -v '^ok' "$TMP/probe.log"
  bad "wire probe"
fi

# The key persists across restarts (IDENT-015); this time the CLI's key is a
# member by static trust, so node.capabilities (min_trust member) answers.
FIRST_ID="$NODE_ID"
kill "${PIDS[0]}" 2>/dev/null
wait "${PIDS[0]}" 2>/dev/null
CLI_ID="$(sed -n 's/^node id *\(ed25519:[^ ]*\).*/\1/p' "$TMP/init.log")"
if start_node "$TMP/py2.log" --trust "$CLI_ID=member" && [ "$NODE_ID" = "$FIRST_ID" ]; then
  ok "restart keeps the NodeID"
else
  bad "restart: NodeID $NODE_ID, was $FIRST_ID"
fi
expect "node.capabilities by a member lists diag.echo" 0 '"name":"diag.echo"' -- call --node "$URL" node.capabilities '{"input":{"includeRemote":true}}'

KEY_MODE="$(stat -c %a "$TMP/pydata/node.key" 2>/dev/null || stat -f %Lp "$TMP/pydata/node.key")"
if [ "$KEY_MODE" = "600" ]; then ok "node.key mode 0600"; else bad "node.key mode $KEY_MODE"; fi

echo "selftest: $PASS passed, $FAIL failed"
[ "$FAIL" -eq 0 ]
