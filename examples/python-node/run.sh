#!/usr/bin/env bash
# Starts the Python HearthNet node (runs setup.sh first when it was never run).
#
#   run.sh [--port PORT] [--data-dir DIR] [--host ADDR] [--name NAME]
#          [--community ID] [--trust NODEID=LEVEL ...] [--no-unsigned-loopback]
#
# --port 0 picks a free port. Defaults: port 7080, data dir
# examples/python-node/.data, host 127.0.0.1. When the node accepts calls it
# prints one line
#   READY hearthnet-py-example node=ed25519:... url=http://127.0.0.1:PORT
# and answers GET /health (200) and gRPC health (SERVING) on that port.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
if [ ! -x "$HERE/.venv/bin/python" ] || [ ! -f "$HERE/_gen/hearthnet/bus/v1/bus_pb2.py" ]; then
  echo "run: not set up yet; running setup.sh" >&2
  "$HERE/setup.sh" >&2
fi
ARGS=("$@")
case " $* " in
  *" --data-dir "*|*" --data-dir="*) ;;
  *) ARGS+=(--data-dir "$HERE/.data") ;;
esac
export PYTHONPATH="$HERE${PYTHONPATH:+:$PYTHONPATH}"
exec "$HERE/.venv/bin/python" -u -m hnnode "${ARGS[@]}"
