"""Runs the node: `python -m hnnode --port 7080 --data-dir ./data`.

Prints one readiness line once both the gRPC server and the public port
accept connections:

    READY hearthnet-py-example node=<NodeID> url=http://HOST:PORT

`GET /health` answers 200 and gRPC health reports SERVING from then on.
"""
import argparse
import asyncio
import os
import signal
import sys

from . import identity
from .bus import Bus
from .capabilities import IMPLEMENTATION, Manifests, install
from .front import Front
from .grpc_server import start as start_grpc
from .protocol import CONSTANTS, PROTOCOL_VERSION, TRUST_ORDER


def parse_args(argv):
    p = argparse.ArgumentParser(prog="hnnode", description="A minimal third-party HearthNet node (Bronze tier).")
    p.add_argument("--port", type=int, default=CONSTANTS["BUS_HTTP_PORT"],
                   help="public TCP port for gRPC (h2c) and HTTP/JSON; 0 picks a free one (default 7080)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--data-dir", required=True, help="directory holding the node key (created if missing)")
    p.add_argument("--name", default="python-node", help="display name in the manifest")
    p.add_argument("--community", default="", help="full CommunityID this node belongs to (default: none)")
    p.add_argument("--trust", action="append", default=[], metavar="NODEID=LEVEL",
                   help="static trust level of a caller in this node's community (member, trusted, anchor); repeatable")
    p.add_argument("--no-unsigned-loopback", action="store_true",
                   help="refuse unsigned HTTP calls from loopback too (decision 0041)")
    return p.parse_args(argv)


async def main(argv):
    args = parse_args(argv)
    os.makedirs(args.data_dir, mode=0o700, exist_ok=True)
    key = identity.load_or_create_key(os.path.join(args.data_dir, "node.key"))
    trust = {}
    for item in args.trust:
        node, _, level = item.partition("=")
        identity.parse_node_id(node)
        if level not in TRUST_ORDER[1:4]:
            raise SystemExit(f"error: --trust {item}: level must be member, trusted or anchor")
        trust[node] = level
    if args.community:
        identity.parse_node_id(args.community)  # a CommunityID is the root's NodeID form

    bus = Bus(key, community=args.community, trust=trust)
    grpc_server, grpc_port = await start_grpc(bus)
    # The manifest needs the public port, known only after binding; bind first.
    manifests = Manifests(bus, args.name, args.host if args.host not in ("0.0.0.0", "::") else "127.0.0.1", 0)
    install(bus, manifests)
    front = Front(bus, manifests, grpc_port, allow_unsigned_loopback=not args.no_unsigned_loopback)
    server, port = await front.start(args.host, args.port)
    manifests.port = port
    manifests.current()

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    host = args.host if ":" not in args.host else f"[{args.host}]"
    print(f"hearthnet-py node {key.node_id} (short {identity.short_id(key.public_key)}), protocol {PROTOCOL_VERSION}, "
          f"{len(bus.caps)} capabilities, data dir {args.data_dir}", flush=True)
    print(f"READY {IMPLEMENTATION} node={key.node_id} url=http://{host}:{port}", flush=True)
    await stop.wait()
    print("stopping", flush=True)
    server.close()
    await grpc_server.stop(1)


if __name__ == "__main__":
    try:
        asyncio.run(main(sys.argv[1:]))
    except identity.IdentityError as e:
        sys.exit(f"error: {e}")
