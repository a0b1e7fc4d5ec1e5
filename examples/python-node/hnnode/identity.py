"""Identity: NodeIDs, signing inputs, strict Ed25519, the node key file.

Everything here follows protocol/spec/identity.md (IDENT-001 … IDENT-016) and
decision 0007. The layouts are checked against protocol/vectors/ by
`python -m hnnode.vectors`.
"""
import base64
import binascii
import os
import re
import stat
import struct

import blake3
from nacl.bindings import crypto_core_ed25519_is_valid_point
from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey, VerifyKey

MAGIC = b"HEARTHNET-SIG-V1\x00"
PREFIX = "ed25519:"
_B64URL = re.compile(r"^[A-Za-z0-9_-]*$")
_ULID = re.compile(r"^[0-7][0-9A-HJKMNP-TV-Z]{25}$", re.IGNORECASE)


class IdentityError(ValueError):
    """A malformed identifier or key file."""


# --- text forms -------------------------------------------------------------

def b64url(raw: bytes) -> str:
    """base64url without padding (IDENT-001, IDENT-007)."""
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def b64url_decode_strict(text: str) -> bytes:
    """Decodes base64url without padding; refuses padding, other alphabets and
    non-canonical trailing bits."""
    if not _B64URL.match(text) or len(text) % 4 == 1:
        raise IdentityError("not unpadded base64url")
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError) as e:
        raise IdentityError(f"not base64url: {e}") from e
    if b64url(raw) != text:
        raise IdentityError("non-canonical base64url")
    return raw


def node_id(public_key: bytes) -> str:
    """The full NodeID of a 32-byte public key (IDENT-001)."""
    return PREFIX + b64url(public_key)


def short_id(public_key: bytes) -> str:
    """Display-only short id (IDENT-003)."""
    b32 = base64.b32encode(public_key[:10]).decode("ascii")
    return PREFIX + "-".join(b32[i:i + 4] for i in range(0, 16, 4))


def parse_node_id(text: str) -> bytes:
    """Parses a full NodeID into its public key; refuses everything IDENT-002
    lists (padding, other alphabets, lengths, invalid or small-order points,
    the short form)."""
    if not isinstance(text, str) or not text.startswith(PREFIX):
        raise IdentityError("NodeID must start with `ed25519:`")
    raw = b64url_decode_strict(text[len(PREFIX):])
    if len(raw) != 32:
        raise IdentityError("NodeID must hold 32 bytes")
    if not crypto_core_ed25519_is_valid_point(raw):
        raise IdentityError("NodeID is not a valid, non-small-order Ed25519 point")
    return raw


def cid(data: bytes) -> str:
    """`blake3:` + 64 lowercase hex digits (IDENT-005)."""
    return "blake3:" + blake3.blake3(data).hexdigest()


def signature_text(sig: bytes) -> str:
    """`ed25519:` + base64url of 64 signature bytes (IDENT-007)."""
    return PREFIX + b64url(sig)


def is_ulid(text: str) -> bool:
    """Whether `text` is a ULID (26 Crockford base32 characters, BUS-009)."""
    return bool(_ULID.match(text or ""))


# --- signing inputs ---------------------------------------------------------

def signing_input(domain: str, fields) -> bytes:
    """`"HEARTHNET-SIG-V1" 0x00 || u8 len(domain) || domain || u32be n ||
    n × (u32be len(field) || field)` (IDENT-008)."""
    d = domain.encode("ascii")
    out = bytearray(MAGIC)
    out.append(len(d))
    out += d
    out += struct.pack(">I", len(fields))
    for f in fields:
        out += struct.pack(">I", len(f)) + f
    return bytes(out)


def call_fields(call) -> list:
    """The `bus.call` fields of a `CallRequest` in order (IDENT-011)."""
    ts = call.timestamp
    return [
        call.capability.encode(),
        call.min_version.encode(),
        call.request_id.encode(),
        call.caller.encode(),
        call.community.encode(),
        struct.pack(">qI", ts.seconds, ts.nanos),
        struct.pack(">I", call.encoding & 0xFFFFFFFF),
        call.schema_hash.encode(),
        call.token.encode(),
        blake3.blake3(call.payload).digest(),
    ]


def envelope_fields(payload: bytes) -> list:
    """An envelope's one field: BLAKE3 of the exact payload (IDENT-010)."""
    return [blake3.blake3(payload).digest()]


class Transcript:
    """The running transcript of a stream's data frames (IDENT-012)."""

    def __init__(self):
        self._h = blake3.blake3()
        self.frames = 0

    def push(self, seq: int, data: bytes):
        self._h.update(struct.pack(">Q", seq))
        self._h.update(blake3.blake3(data).digest())
        self.frames += 1

    def digest(self) -> bytes:
        return self._h.copy().digest()

    def done_fields(self, request_id: str, signer: str) -> list:
        return [request_id.encode(), signer.encode(), struct.pack(">Q", self.frames), self.digest()]


def verify_strict(public_key: bytes, message: bytes, signature: bytes) -> bool:
    """Strict Ed25519 verification (IDENT-013): libsodium refuses
    non-canonical S, small-order R and small-order public keys."""
    if len(signature) != 64 or len(public_key) != 32:
        return False
    try:
        VerifyKey(public_key).verify(message, signature)
        return True
    except (BadSignatureError, ValueError, TypeError):
        return False


# --- the node key -----------------------------------------------------------

class NodeKey:
    """The node's Ed25519 key."""

    def __init__(self, seed: bytes):
        self._sk = SigningKey(seed)
        self.public_key = bytes(self._sk.verify_key)
        self.node_id = node_id(self.public_key)

    def sign(self, domain: str, fields) -> bytes:
        return self._sk.sign(signing_input(domain, fields)).signature

    def sign_envelope(self, domain: str, payload: bytes) -> bytes:
        return self.sign(domain, envelope_fields(payload))


def load_or_create_key(path: str) -> NodeKey:
    """Loads the raw 32-byte seed at `path`, creating it with mode 0600 when it
    does not exist (IDENT-015); never overwrites; refuses a file readable by
    group or others (IDENT-016)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        pass
    else:
        with os.fdopen(fd, "wb") as f:
            f.write(os.urandom(32))
    st = os.stat(path)
    if st.st_mode & (stat.S_IRGRP | stat.S_IROTH):
        raise IdentityError(f"{path} is readable by group or others; run chmod 600 {path}")
    with open(path, "rb") as f:
        seed = f.read()
    if len(seed) != 32:
        raise IdentityError(f"{path} must hold exactly 32 bytes (the raw seed)")
    return NodeKey(seed)
