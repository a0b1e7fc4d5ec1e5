"""Checks this node's identity code against protocol/vectors/ (byte-exact).

`python -m hnnode.vectors` exits 1 on any difference. It runs the node's own
functions (not a second implementation): NodeIDs and short ids from seeds,
the NodeID parser on the invalid texts, CIDs, the signing-input layout of
every domain, the `bus.call` fields of the named call, the `bus.stream.done`
transcript, strict verification verdicts, and — where a vector's key is one of
the seeds in keys.json — the exact signature bytes (Ed25519 is deterministic).
"""
import json
import sys

from . import identity
from .protocol import PROTOCOL_DIR, bus_pb2

VECTORS = PROTOCOL_DIR / "vectors"


def main():
    failures = []
    checked = 0

    def expect(cond, what):
        nonlocal checked
        checked += 1
        if not cond:
            failures.append(what)

    keys = json.loads((VECTORS / "identity" / "keys.json").read_text())
    seeds = {}
    for v in keys["vectors"]:
        k = identity.NodeKey(bytes.fromhex(v["seed_hex"]))
        seeds[k.public_key.hex()] = k
        expect(k.public_key.hex() == v["public_key_hex"], f"public key of {v['node_id']}")
        expect(k.node_id == v["node_id"], f"node id {v['node_id']}")
        expect(identity.short_id(k.public_key) == v["short_id"], f"short id {v['short_id']}")
        expect(identity.parse_node_id(v["node_id"]) == k.public_key, f"parse {v['node_id']}")
    for v in keys["invalid_node_ids"]:
        try:
            identity.parse_node_id(v["text"])
            ok = False
        except identity.IdentityError:
            ok = True
        expect(ok, f"NodeID parser accepts {v['text']} ({v['error']})")

    cids = json.loads((VECTORS / "identity" / "cids.json").read_text())
    for v in cids["vectors"]:
        expect(identity.cid(bytes.fromhex(v["input_hex"])) == v["cid"], f"cid {v['cid']}")

    sigs = json.loads((VECTORS / "signing" / "signatures.json").read_text())
    for v in sigs["vectors"]:
        name = v["name"]
        fields = [bytes.fromhex(x) for x in v["fields_hex"]]
        if "payload_hex" in v:
            expect(identity.envelope_fields(bytes.fromhex(v["payload_hex"])) == fields, f"{name}: envelope field")
        if "call" in v and v["valid"]:
            c = v["call"]
            call = bus_pb2.CallRequest(capability=c["capability"], min_version=c["min_version"],
                                       request_id=c["request_id"], caller=c["caller"], community=c["community"],
                                       encoding=c["encoding"], payload=bytes.fromhex(c["payload_hex"]),
                                       schema_hash=c["schema_hash"], token=c["token"])
            call.timestamp.seconds = c["timestamp_seconds"]
            call.timestamp.nanos = c["timestamp_nanos"]
            expect(identity.call_fields(call) == fields, f"{name}: bus.call fields")
        if "transcript" in v:
            t = identity.Transcript()
            for f in v["transcript"]["frames"]:
                t.push(f["seq"], bytes.fromhex(f["data_hex"]))
            signer = identity.node_id(bytes.fromhex(v["public_key_hex"]))
            expect(t.done_fields(v["transcript"]["request_id"], signer) == fields, f"{name}: done fields")
        data = identity.signing_input(v["domain"], fields)
        expect(data.hex() == v["signing_input_hex"], f"{name}: signing input bytes")
        pk = bytes.fromhex(v["public_key_hex"])
        sig = bytes.fromhex(v["signature_hex"])
        expect(identity.verify_strict(pk, data, sig) == v["valid"], f"{name}: verdict")
        if v["valid"] and v["public_key_hex"] in seeds:
            expect(seeds[v["public_key_hex"]].sign(v["domain"], fields) == sig, f"{name}: signature bytes")

    for f in failures:
        print("MISMATCH:", f)
    print(f"vectors: {checked - len(failures)} passed, {len(failures)} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
