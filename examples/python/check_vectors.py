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
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey, VerifyKey

ROOT = pathlib.Path(__file__).resolve().parents[2]
VECTORS = ROOT / "protocol" / "vectors"
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


_pool = None


def message_class(name):
    """A Python class for a protocol message, built from the published descriptor set."""
    global _pool
    if _pool is None:
        fds = descriptor_pb2.FileDescriptorSet.FromString((ROOT / "protocol" / "generated" / "descriptor.binpb").read_bytes())
        _pool = descriptor_pool.DescriptorPool()
        for f in fds.file:
            _pool.Add(f)
    return message_factory.GetMessageClass(_pool.FindMessageTypeByName(name))


def b64url_decode(s):
    if "=" in s:
        raise ValueError("padding")
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


def parse_node_id(text):
    if not text.startswith("ed25519:"):
        raise ValueError("prefix")
    raw = b64url_decode(text[len("ed25519:"):])
    if len(raw) != 32:
        raise ValueError("length")
    return raw


def verify_envelope(pk, domain, payload, sig):
    if len(sig) != 64:
        raise ValueError("signature length")
    VerifyKey(pk).verify(signing_input(domain, [blake3.blake3(payload).digest()]), sig)


def split_text(scheme, text, max_len):
    if len(text) > max_len or not text.startswith(scheme) or "." not in text[len(scheme):]:
        raise ValueError("malformed")
    p, s = text[len(scheme):].split(".", 1)
    return b64url_decode(p), b64url_decode(s)


def token_verdict(v, audience, revoked):
    try:
        payload, sig = split_text("hntoken://v1/", v["text"], 800)
        claims = message_class("hearthnet.auth.v1.CapabilityToken").FromString(payload)
        pk = parse_node_id(claims.iss)
        if len(sig) != 64:
            return "bad_request"
    except Exception:
        return "bad_request"
    try:
        verify_envelope(pk, "auth.token", payload, sig)
    except BadSignatureError:
        return "token_invalid"
    now = v["now"]
    if now >= claims.exp:
        return "token_expired"
    if now < (claims.nbf or claims.iat):
        return "token_expired"
    if claims.aud and claims.aud != audience:
        return "unauthorized"
    if claims.jti in revoked:
        return "token_revoked"
    return None


def invite_verdict(v):
    try:
        payload, sig = split_text("hearthnet://v1/", v["text"], 500)
        inv = message_class("hearthnet.identity.v1.Invite").FromString(payload)
        pk = parse_node_id(inv.inviter_node_id)
    except Exception:
        return "bad_request"
    try:
        verify_envelope(pk, "community.invite", payload, sig)
    except (BadSignatureError, ValueError):
        return "invalid_signature"
    if v["now"] >= inv.expires_at.seconds:
        return "expired"
    if inv.invitee_node_id != v["us"]:
        return "unauthorized"
    return None


def open_envelope(e, domain, message):
    if e["domain"] != domain:
        raise BadSignatureError("domain")
    pk = parse_node_id(e["signer"])
    payload = bytes.fromhex(e["payload_hex"])
    verify_envelope(pk, domain, payload, bytes.fromhex(e["signature_hex"]))
    return message_class(message).FromString(payload)


def node_manifest_verdict(v):
    try:
        m = open_envelope(v["envelope"], "node.manifest", "hearthnet.identity.v1.NodeManifest")
    except (BadSignatureError, ValueError):
        return "invalid_signature"
    if m.node_id != v["envelope"]["signer"]:
        return "invalid_signature"
    iat, exp, now = m.issued_at.seconds, m.expires_at.seconds, v["now"]
    if iat > now + 120 or exp <= iat or exp - iat > 30:
        return "bad_request"
    if now >= exp:
        return "expired"
    return None


def community_manifest_verdict(v):
    try:
        m = open_envelope(v["envelope"], "community.manifest", "hearthnet.identity.v1.CommunityManifest")
    except (BadSignatureError, ValueError):
        return "invalid_signature"
    signer = v["envelope"]["signer"]
    anchor = 3  # MEMBER_LEVEL_ANCHOR
    ok = m.community_id == signer or any(x.node_id == signer and x.level == anchor for x in m.members)
    if not ok or any(r.node_id == signer for r in m.revoked):
        return "unauthorized"
    return None


def check_records():
    f = json.loads((VECTORS / "records" / "records.json").read_text())
    revoked = set(f["revoked_jtis"])
    for v in f["vectors"]:
        kind = v["kind"]
        if kind == "token":
            got = token_verdict(v, f["audience"], revoked)
        elif kind == "invite":
            got = invite_verdict(v)
        elif kind == "node_manifest":
            got = node_manifest_verdict(v)
        else:
            got = community_manifest_verdict(v)
        expect(got == v["error"] and (got is None) == v["valid"], f"{v['name']}: python says {got}, file says {v['error']}")
    return len(f["vectors"])


def main():
    n = check_keys() + check_cids() + check_signatures() + check_records()
    for f in failures:
        print("MISMATCH:", f)
    print(f"python vectors: {n - len(failures)} passed, {len(failures)} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
