#!/usr/bin/env bash
# Launches our node for `hearthnet-conformance run --launch`: loopback only,
# no discovery or internet probes, no models, the runner's caller trusted,
# and — so that the community log and services are advertised and tested —
# a community founded by the node itself, with the runner's caller invited
# (the suite redeems the invite). HEARTHNET_BIN names the binary (default:
# `hearthnet` on PATH); HEARTHNET_CONFORMANCE_NO_COMMUNITY=1 runs the node
# without a community.
set -euo pipefail
data="$HEARTHNET_CONFORMANCE_DATA"
port="$HEARTHNET_CONFORMANCE_PORT"
caller="$HEARTHNET_CONFORMANCE_CALLER"
bin="${HEARTHNET_BIN:-hearthnet}"
export HEARTHNET_DATA_DIR="$data" HEARTHNET_CONFIG_DIR="$data/config" HEARTHNET_CACHE_DIR="$data/cache"
export HEARTHNET__TRANSPORT__HOST=127.0.0.1
export HEARTHNET__DISCOVERY__MDNS_ENABLED=false HEARTHNET__DISCOVERY__UDP_ENABLED=false
export HEARTHNET__EMERGENCY__ENABLED=false
export HEARTHNET__TRUST__TRUSTED="[\"$caller\"]"
# A second instance of a multi-node scenario knows the first as a static peer.
if [ -n "${HEARTHNET_CONFORMANCE_PEER:-}" ]; then
  export HEARTHNET__DISCOVERY__STATIC_PEERS="[\"$HEARTHNET_CONFORMANCE_PEER\"]"
fi
if [ "${HEARTHNET_CONFORMANCE_NO_COMMUNITY:-0}" != 1 ]; then
  # `init` is idempotent and prints the node id; the founder's id is the community id.
  node_id="$("$bin" init | awk '$1 == "node" && $2 == "id" { print $3 }')"
  export HEARTHNET__COMMUNITY__COMMUNITY_ID="$node_id"
  if [ ! -e "$data/.conformance-invited" ]; then
    # Only the node itself may invite (decision 0067): start it once on a
    # port of its own choosing (the runner waits on $port), invite the
    # runner's caller as the node, stop it, then serve.
    # The set-up start never injects faults (HEARTHNET_TEST_FAULTS is for the
    # served node only; see conformance/mutants/run.sh).
    env -u HEARTHNET_TEST_FAULTS "$bin" run --no-models --port 0 >"$data/.conformance-setup.log" 2>&1 &
    setup=$!
    for _ in $(seq 1 300); do
      url="$(sed -n 's/^hearthnet node .* listening on \(http:[^ ]*\).*/\1/p' "$data/.conformance-setup.log")"
      if [ -n "$url" ] && "$bin" call --node "$url" community.invite \
        "{\"input\":{\"invitee_node_id\":\"$caller\",\"display_name\":\"conformance runner\"}}" \
        >/dev/null 2>&1; then
        touch "$data/.conformance-invited"
        break
      fi
      sleep 0.2
    done
    kill -TERM "$setup"
    wait "$setup" || true
    [ -e "$data/.conformance-invited" ] || { echo "could not invite the runner" >&2; exit 1; }
  fi
fi
exec "$bin" run --no-models --port "$port"
