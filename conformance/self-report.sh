#!/usr/bin/env bash
# Our node certifies itself (M32, PROTO-003): starts the node as
# conformance/targets/hearthnet-rs.sh does (loopback, a community of its own),
# asks it for `protocol.conformance.report` as its operator, and checks the
# answer: the report verifies (`hearthnet-conformance verify`), is signed by
# the node itself (CONF-002), and is listed in the node's own
# `protocol.registry.list` entry. Writes OUT_DIR/report.json.
#
#   HEARTHNET_BIN=… HEARTHNET_CONFORMANCE_BIN=… bash conformance/self-report.sh OUT_DIR
set -euo pipefail
cd "$(dirname "$0")/.."
bin="${HEARTHNET_BIN:-hearthnet}"
conf="${HEARTHNET_CONFORMANCE_BIN:-hearthnet-conformance}"
py="${PYTHON:-python3}"
out="${1:?usage: self-report.sh OUT_DIR}"
mkdir -p "$out"
work="$(mktemp -d)"
port="$("$py" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
export HEARTHNET_BIN="$bin" HEARTHNET_CONFORMANCE_BIN="$(command -v "$conf")"
HEARTHNET_CONFORMANCE_DATA="$work" HEARTHNET_CONFORMANCE_PORT="$port" \
  HEARTHNET_CONFORMANCE_CALLER="$("$conf" caller)" \
  setsid bash conformance/targets/hearthnet-rs.sh >"$out/node.log" 2>&1 &
node=$!
trap 'kill -TERM -- -"$node" 2>/dev/null || true; wait "$node" 2>/dev/null || true; rm -rf "$work"' EXIT
export HEARTHNET_DATA_DIR="$work" HEARTHNET_CONFIG_DIR="$work/config" HEARTHNET_CACHE_DIR="$work/cache"
url="http://127.0.0.1:$port"
for _ in $(seq 1 300); do
  "$bin" call --node "$url" protocol.version.list >/dev/null 2>&1 && break
  sleep 0.2
done
started=$(date +%s%N)
"$bin" call --node "$url" protocol.conformance.report '{}' >"$out/response.json"
echo "protocol.conformance.report answered in $(( ($(date +%s%N) - started) / 1000000 )) ms"
"$bin" call --node "$url" protocol.registry.list '{}' >"$out/registry.json"
"$py" - "$out" <<'PY'
import json, sys
out = sys.argv[1]
resp = json.load(open(f"{out}/response.json"))["output"]
report = resp["report"]
json.dump(report, open(f"{out}/report.json", "w"), indent=2)
signer, node = report["signature"]["signer"], report["target"]["node"]
assert signer == node, f"signed by {signer}, not by the node {node} (CONF-002)"
own = [e for e in json.load(open(f"{out}/registry.json"))["output"]["entries"] if e["node"] == node]
assert own and own[0]["reports"][0]["reportCid"] == resp["reportCid"], "the node's registry entry does not list the report"
failures = [f"{f['testId']}: expected {f['expected']}, observed {f['observed']}"
            for s in report["sections"] for f in s.get("failures", [])]
assert resp["overall"] == "VERDICT_PASS", "the node fails its own suite:\n" + "\n".join(failures)
print(f"self-report {resp['reportCid']}: {resp.get('passed', 0)} passed, {resp.get('failed', 0)} failed, "
      f"{resp.get('skipped', 0)} skipped; overall {resp['overall']}; tiers {report.get('tiers', [])}")
PY
"$conf" verify "$out"
