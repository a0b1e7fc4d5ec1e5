#!/usr/bin/env python3
"""Checks HearthNet's identity and signing vectors in a second language.

Uses PyNaCl (libsodium: strict Ed25519 verification) and the `blake3`
package, nothing from the Rust code. For every vector it rebuilds the derived
values (NodeID, short id, CID) and the exact signing-input bytes from the
documented layout (decision 0007), verifies the signature, and compares
verdicts with the file. Exits 1 on any difference.
"""
import base64
import json
import pathlib
import struct
import sys

import blake3
from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey, VerifyKey

VECTORS = pathlib.Path(__file__).resolve().parents[2] / "protocol" / "vectors"
MAGIC = b"HEARTHNET-SIG-V1\x00"
failures = []


def b64url(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def node_id(pk):
    return "ed25519:" + b64url(pk)


def short_id(pk):
    b32 = base64.b32encode(pk[:10]).decode()
    return "ed25519:" + "-".join(b32[i:i + 4] for i in range(0, 16, 4))


def signing_input(domain, fields):
    d = domain.encode("ascii")
    out = MAGIC + bytes([len(d)]) + d + struct.pack(">I", len(fields))
    for f in fields:
        out += struct.pack(">I", len(f)) + f
    return out


def call_fields(c):
    return [
        c["capability"].encode(), c["min_version"].encode(), c["request_id"].encode(),
        c["caller"].encode(), c["community"].encode(),
        struct.pack(">qI", c["timestamp_seconds"], c["timestamp_nanos"]),
        struct.pack(">I", c["encoding"]), c["schema_hash"].encode(), c["token"].encode(),
        blake3.blake3(bytes.fromhex(c["payload_hex"])).digest(),
    ]


def done_fields(t, signer):
    h = blake3.blake3()
    for f in t["frames"]:
        h.update(struct.pack(">Q", f["seq"]))
        h.update(blake3.blake3(bytes.fromhex(f["data_hex"])).digest())
    return [t["request_id"].encode(), signer.encode(), struct.pack(">Q", len(t["frames"])), h.digest()]


def expect(cond, what):
    if not cond:
        failures.append(what)


def check_keys():
    f = json.loads((VECTORS / "identity" / "keys.json").read_text())
    for v in f["vectors"]:
        pk = bytes(SigningKey(bytes.fromhex(v["seed_hex"])).verify_key)
        expect(pk.hex() == v["public_key_hex"], f"public key of seed {v['seed_hex']}")
        expect(node_id(pk) == v["node_id"], f"node id {v['node_id']}")
        expect(short_id(pk) == v["short_id"], f"short id {v['short_id']} vs {short_id(pk)}")
    return len(f["vectors"])


def check_cids():
    f = json.loads((VECTORS / "identity" / "cids.json").read_text())
    for v in f["vectors"]:
        cid = "blake3:" + blake3.blake3(bytes.fromhex(v["input_hex"])).hexdigest()
        expect(cid == v["cid"], f"cid {v['cid']}")
    return len(f["vectors"])


def check_signatures():
    f = json.loads((VECTORS / "signing" / "signatures.json").read_text())
    for v in f["vectors"]:
        name = v["name"]
        fields = [bytes.fromhex(x) for x in v["fields_hex"]]
        if "payload_hex" in v:
            expect(fields == [blake3.blake3(bytes.fromhex(v["payload_hex"])).digest()], f"{name}: payload hash field")
        if "call" in v and v["valid"]:
            expect(call_fields(v["call"]) == fields, f"{name}: call fields rebuilt from named values")
        if "transcript" in v:
            signer = node_id(bytes.fromhex(v["public_key_hex"]))
            expect(done_fields(v["transcript"], signer) == fields, f"{name}: transcript fields")
        data = signing_input(v["domain"], fields)
        expect(data.hex() == v["signing_input_hex"], f"{name}: signing input bytes")
        sig = bytes.fromhex(v["signature_hex"])
        try:
            if len(sig) != 64:
                raise ValueError("length")
            VerifyKey(bytes.fromhex(v["public_key_hex"])).verify(data, sig)
            ok = True
        except (BadSignatureError, ValueError):
            ok = False
        expect(ok == v["valid"], f"{name}: python says valid={ok}, file says {v['valid']}")
    return len(f["vectors"])


def main():
    n = check_keys() + check_cids() + check_signatures()
    for f in failures:
        print("MISMATCH:", f)
    print(f"python vectors: {n - len(failures)} passed, {len(failures)} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
