#!/usr/bin/env bash
# Launches our node for `hearthnet-conformance run --launch`: loopback only,
# no discovery or internet probes, no models, an empty data directory, and
# the runner's caller trusted. HEARTHNET_BIN names the binary (default:
# `hearthnet` on PATH).
set -euo pipefail
data="$HEARTHNET_CONFORMANCE_DATA"
export HEARTHNET_DATA_DIR="$data" HEARTHNET_CONFIG_DIR="$data/config" HEARTHNET_CACHE_DIR="$data/cache"
export HEARTHNET__TRANSPORT__HOST=127.0.0.1
export HEARTHNET__DISCOVERY__MDNS_ENABLED=false HEARTHNET__DISCOVERY__UDP_ENABLED=false
export HEARTHNET__EMERGENCY__ENABLED=false
export HEARTHNET__TRUST__TRUSTED="[\"$HEARTHNET_CONFORMANCE_CALLER\"]"
exec "${HEARTHNET_BIN:-hearthnet}" run --no-models --port "$HEARTHNET_CONFORMANCE_PORT"
