"""What the node knows of the protocol, read from `protocol/` at start-up.

- the generated Python bindings (made by setup.sh from `protocol/proto` into
  `_gen/`, never committed);
- `protocol/VERSION`, the descriptor-set hash (BLAKE3 of
  `protocol/generated/descriptor.binpb`, PROTO-002);
- `protocol/generated/registry.json`: per capability its version, stability,
  `min_trust`, streaming kind, request/response messages, timeout,
  `max_concurrent` and schema hash (decision 0005); the error table (wire
  names and HTTP statuses) and the constants.

Set HEARTHNET_PROTOCOL_DIR to read another copy of `protocol/`.
"""
import json
import os
import pathlib
import sys

HERE = pathlib.Path(__file__).resolve().parent
EXAMPLE_DIR = HERE.parent
GEN_DIR = EXAMPLE_DIR / "_gen"
PROTOCOL_DIR = pathlib.Path(os.environ.get("HEARTHNET_PROTOCOL_DIR", EXAMPLE_DIR.parent.parent / "protocol"))

if not (GEN_DIR / "hearthnet" / "bus" / "v1" / "bus_pb2.py").exists():
    sys.exit(f"error: no generated bindings in {GEN_DIR}; run examples/python-node/setup.sh first")
if str(GEN_DIR) not in sys.path:
    sys.path.insert(0, str(GEN_DIR))

import blake3  # noqa: E402
from google.protobuf import symbol_database  # noqa: E402

# Importing the generated modules registers their messages in the default pool.
from hearthnet.bus.v1 import bus_pb2, bus_pb2_grpc  # noqa: E402,F401
from hearthnet.common.v1 import common_pb2  # noqa: E402,F401
from hearthnet.diag.v1 import diag_pb2  # noqa: E402,F401
from hearthnet.identity.v1 import identity_pb2  # noqa: E402,F401
from hearthnet.node.v1 import node_pb2  # noqa: E402,F401
from hearthnet.options.v1 import options_pb2  # noqa: E402,F401
from hearthnet.protocol.v1 import protocol_pb2  # noqa: E402,F401

PROTOCOL_VERSION = (PROTOCOL_DIR / "VERSION").read_text().strip()
DESCRIPTOR_HASH = "blake3:" + blake3.blake3((PROTOCOL_DIR / "generated" / "descriptor.binpb").read_bytes()).hexdigest()

_registry = json.loads((PROTOCOL_DIR / "generated" / "registry.json").read_text())
CAPABILITIES = {c["name"]: c for c in _registry["capabilities"]}
ERRORS = {e["code"]: e for e in _registry["errors"]}
CONSTANTS = {c["name"]: c["value"] for c in _registry["constants"]}

TRUST_ORDER = ["unknown", "member", "trusted", "anchor", "operator"]


def trust_rank(name: str) -> int:
    """Rank of a trust level; unknown words are the strictest (operator)."""
    return TRUST_ORDER.index(name) if name in TRUST_ORDER else len(TRUST_ORDER) - 1


def message_class(full_name: str):
    """The generated class of a message, by full protobuf name."""
    return symbol_database.Default().GetSymbol(full_name)


def stability_enum(word: str) -> int:
    """`beta` → STABILITY_BETA."""
    return options_pb2.Stability.Value("STABILITY_" + word.upper())


def http_status(code: str) -> int:
    e = ERRORS.get(code)
    return e["http_status"] if e else 500
