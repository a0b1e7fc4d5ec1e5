"""The capability bus: admits, runs and frames every call (protocol/spec/bus.md).

`Bus.serve(call, rpc, timeout)` is an async generator of `Frame`s shared by
the gRPC binding (`Call`, `Open`) and the HTTP/JSON binding. Whatever happens,
the stream it yields ends with exactly one terminal frame, `done` or `error`
(BUS-003), with `seq` numbered from 0 (BUS-005).

Order of checks (decision 0040): size → version syntax → request id syntax →
signature → replay window → community → capability lookup → trust → rate
limit → concurrency → schema hash → rpc kind → payload decoding → execution
under the deadline.
"""
import asyncio
import base64
import collections
import json
import os
import re
import time

from google.protobuf import json_format
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import DecodeError

from . import identity
from .protocol import CAPABILITIES, CONSTANTS, bus_pb2, common_pb2, message_class, trust_rank

PROTO = bus_pb2.PAYLOAD_ENCODING_PROTO
JSON = bus_pb2.PAYLOAD_ENCODING_JSON
UNSPECIFIED = bus_pb2.PAYLOAD_ENCODING_UNSPECIFIED
MAX_PAYLOAD = CONSTANTS["BUS_MAX_PAYLOAD_BYTES"]
REPLAY_WINDOW = CONSTANTS["REPLAY_WINDOW_SECONDS"]
DEFAULT_TIMEOUT = CONSTANTS["RPC_DEFAULT_TIMEOUT_SECONDS"]
RPS_PER_CAP = CONSTANTS["RATE_LIMIT_HARD_RPS_PER_CAP"]
RPS_TOTAL = CONSTANTS["RATE_LIMIT_HARD_RPS_TOTAL"]
_VERSION = re.compile(r"^(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)$")


class CallError(Exception):
    """A refusal or failure that ends a call with an `error` frame."""

    def __init__(self, code, message, retry_after_ms=0, schema_hash_expected=""):
        super().__init__(message)
        self.code = code
        self.message = message
        self.retry_after_ms = retry_after_ms
        self.schema_hash_expected = schema_hash_expected

    def to_wire(self):
        # `code` is the snake_case wire name, never the enum name (BUS-017).
        return common_pb2.Error(
            code=self.code, message=self.message, retry_after_ms=self.retry_after_ms,
            schema_hash_expected=self.schema_hash_expected)


def bad_request(message):
    return CallError("bad_request", message)


def error_frame(seq, err):
    return bus_pb2.Frame(seq=seq, error=err.to_wire())


def new_ulid() -> str:
    """A fresh ULID: 48-bit milliseconds and 80 random bits, Crockford base32."""
    alphabet = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
    n = (int(time.time() * 1000) << 80) | int.from_bytes(os.urandom(10), "big")
    return "".join(alphabet[(n >> (5 * i)) & 31] for i in reversed(range(26)))


# --- JSON wire form ---------------------------------------------------------

def _no_duplicate_keys(pairs):
    keys = [k for k, _ in pairs]
    if len(keys) != len(set(keys)):
        raise ValueError("an object names one key twice")
    return dict(pairs)


def _check_base64(text, path):
    """BUS-025: standard or URL-safe base64, padded or not, with canonical
    (zero) trailing bits; the stock parser accepts non-canonical ones."""
    if not isinstance(text, str):
        return
    bare = text.rstrip("=")
    if not re.fullmatch(r"[A-Za-z0-9+/_-]*", bare) or len(bare) % 4 == 1:
        raise ValueError(f"{path}: not base64")
    std = bare.replace("-", "+").replace("_", "/")
    raw = base64.b64decode(std + "=" * (-len(std) % 4))
    if base64.b64encode(raw).decode().rstrip("=") != std:
        raise ValueError(f"{path}: base64 with non-canonical trailing bits")


def _check_nulls(value, descriptor, path=""):
    """What the stock parser lets through: a field named both ways (BUS-020);
    `null` for a field without presence (BUS-027: only message fields,
    `optional` fields and oneof members may be null)."""
    if not isinstance(value, dict):
        return
    by_name = {}
    for f in descriptor.fields:
        by_name[f.name] = f
        by_name[f.json_name] = f
        if f.name != f.json_name and f.name in value and f.json_name in value:
            raise ValueError(f"{path}/{f.json_name}: field named both ways (`{f.name}`, `{f.json_name}`)")
    for key, v in value.items():
        f = by_name.get(key)
        if f is None:
            continue  # unknown keys are refused by the parser (BUS-021)
        if f.type == FieldDescriptor.TYPE_BYTES and v is not None:
            for i, item in enumerate(v if _is_repeated(f) and isinstance(v, list) else [v]):
                _check_base64(item, f"{path}/{key}" + (f"/{i}" if _is_repeated(f) else ""))
        if v is None:
            has_presence = (f.type == FieldDescriptor.TYPE_MESSAGE and not _is_repeated(f)) \
                or f.containing_oneof is not None
            if not has_presence:
                raise ValueError(f"{path}/{key}: null for a field without presence")
        elif f.type == FieldDescriptor.TYPE_MESSAGE and f.message_type.full_name.startswith("hearthnet."):
            if f.message_type.GetOptions().map_entry:
                continue
            items = v if _is_repeated(f) and isinstance(v, list) else [v]
            for i, item in enumerate(items):
                _check_nulls(item, f.message_type, f"{path}/{key}" + (f"/{i}" if _is_repeated(f) else ""))


def _is_repeated(f):
    repeated = getattr(f, "is_repeated", None)  # newer protobuf releases
    if repeated is None:
        repeated = f.label == FieldDescriptor.LABEL_REPEATED
    return bool(repeated)


def decode_json(cls, data: bytes):
    """Decodes the canonical proto3 JSON of `cls` strictly (BUS-007, BUS-020 …
    BUS-028): unknown keys, a field named both ways, duplicate keys and
    misplaced nulls are `bad_request`."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise bad_request("JSON payload is not UTF-8")
    if not text.strip():
        text = "{}"
    try:
        value = json.loads(text, object_pairs_hook=_no_duplicate_keys)
        if not isinstance(value, dict):
            raise ValueError("the request must be a JSON object")
        _check_nulls(value, cls.DESCRIPTOR)
        msg = cls()
        json_format.ParseDict(value, msg, ignore_unknown_fields=False)
        return msg
    except (ValueError, json_format.ParseError) as e:
        raise bad_request(f"JSON does not match {cls.DESCRIPTOR.full_name}: {e}")


def encode_json(msg) -> bytes:
    """Canonical proto3 JSON (lowerCamel names, defaults omitted), one line."""
    d = json_format.MessageToDict(msg)
    return json.dumps(d, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


# --- replay window and rate limits --------------------------------------------

class ReplayGuard:
    """Timestamp window and a bounded cache of request ids (IDENT-017 … 019)."""

    def __init__(self, capacity=100_000, window=REPLAY_WINDOW):
        self.capacity = capacity
        self.window = window
        self.seen = collections.OrderedDict()  # request id -> forget-after (unix seconds)

    def check(self, request_id, ts_seconds, now):
        if abs(now - ts_seconds) > self.window:
            raise CallError("expired", f"call timestamp is {now - ts_seconds:+d} s from this node's clock "
                                       f"(window ±{self.window} s)")
        while self.seen:  # drop ids that can no longer pass the timestamp check
            oldest_id, until = next(iter(self.seen.items()))
            if until >= now:
                break
            self.seen.popitem(last=False)
        if request_id in self.seen:
            raise CallError("expired", f"request id {request_id} was already seen within the replay window")
        if len(self.seen) >= self.capacity:
            raise CallError("rate_limited", "replay cache is full of unexpired request ids", retry_after_ms=1000)
        # Kept until its timestamp has left the window; insertion order is close
        # enough to expiry order because timestamps are within ±window of now.
        self.seen[request_id] = max(ts_seconds, now) + self.window


class TokenBucket:
    def __init__(self, rate):
        self.rate = float(rate)
        self.tokens = float(rate)
        self.at = time.monotonic()

    def take(self):
        """0 when a token was taken, otherwise milliseconds until the next one."""
        now = time.monotonic()
        self.tokens = min(self.rate, self.tokens + (now - self.at) * self.rate)
        self.at = now
        if self.tokens >= 1:
            self.tokens -= 1
            return 0
        return max(1, int((1 - self.tokens) / self.rate * 1000))


# --- capabilities -------------------------------------------------------------

class Capability:
    """A capability served here: its registry entry plus a handler, an async
    generator `handler(ctx, request_message)` yielding response messages."""

    def __init__(self, name, handler):
        entry = CAPABILITIES[name]
        self.entry = entry
        self.name = name
        self.version = entry["version"]
        self.major, self.minor = (int(x) for x in self.version.split("."))
        self.min_trust = entry["min_trust"]
        self.streaming = entry["streaming"]  # unary | server | client | bidi
        self.request_cls = message_class(entry["request"])
        self.response_cls = message_class(entry["response"])
        self.schema_hash = entry["schema_hash"]
        self.stability = entry["stability"]
        self.timeout = entry["timeout_seconds"] or DEFAULT_TIMEOUT
        self.max_concurrent = entry["max_concurrent"]
        self.in_flight = 0
        self.handler = handler


class Context:
    """What a handler learns about the call it serves."""

    def __init__(self, bus, caller, trust, request_id, deadline):
        self.bus = bus
        self.caller = caller
        self.trust = trust
        self.request_id = request_id
        self.deadline = deadline


class Bus:
    def __init__(self, key, community="", trust=None, replay_capacity=100_000):
        self.key = key
        self.node_id = key.node_id
        self.community = community or ""
        self.trust = dict(trust or {})
        self.caps = {}
        self.replay = ReplayGuard(replay_capacity)
        self.buckets = {}
        self.traces = collections.deque(maxlen=CONSTANTS["TRACE_RING_BUFFER"])

    def register(self, name, handler):
        self.caps[name] = Capability(name, handler)

    def offered(self):
        return [self.caps[n] for n in sorted(self.caps)]

    def sign_call(self, call):
        """Signs a call as this node (the loopback operator, BUS-037)."""
        call.caller = self.node_id
        call.signature = self.key.sign("bus.call", identity.call_fields(call))

    # -- admission ---------------------------------------------------------

    def _trust_of(self, caller, community):
        if caller == self.node_id:
            return "operator"
        if community and community != self.community:
            return "unknown"  # a federated call (BUS-043)
        return self.trust.get(caller, "unknown")

    def _lookup(self, name, major, minor):
        cap = self.caps.get(name)
        if cap is None:
            raise CallError("not_found", f"no capability {name}")
        if cap.major != major or cap.minor < minor:
            raise CallError("schema_mismatch", f"{name}@{major}.{minor} is not served; versions offered: {cap.version}")
        return cap

    def _rate_limit(self, caller, cap):
        for key, rate in (((caller, cap), RPS_PER_CAP), ((caller, None), RPS_TOTAL)):
            bucket = self.buckets.get(key)
            if bucket is None:
                if len(self.buckets) > 100_000:
                    self.buckets.clear()
                bucket = self.buckets[key] = TokenBucket(rate)
            wait = bucket.take()
            if wait:
                raise CallError("rate_limited", f"too many calls to {cap}", retry_after_ms=wait)

    def admit(self, call, rpc):
        """Every check before the capability runs; returns (capability,
        trust, decoded request)."""
        if len(call.payload) > MAX_PAYLOAD:
            raise bad_request(f"payload of {len(call.payload)} bytes exceeds {MAX_PAYLOAD} bytes")
        m = _VERSION.match(call.min_version)
        if not m:
            raise bad_request(f"min_version `{call.min_version}` is not MAJOR.MINOR")
        if not identity.is_ulid(call.request_id):
            raise bad_request("request_id is not a ULID")
        if not call.HasField("timestamp"):
            raise bad_request("timestamp is missing")
        # Signature (BUS-010, IDENT-011, IDENT-013), before anything is decoded (IDENT-014).
        try:
            pk = identity.parse_node_id(call.caller)
        except identity.IdentityError as e:
            raise CallError("invalid_signature", f"caller is not a full NodeID: {e}")
        if not identity.verify_strict(pk, identity.signing_input("bus.call", identity.call_fields(call)),
                                      call.signature):
            raise CallError("invalid_signature", "call signature does not verify")
        # Replay window (BUS-011).
        self.replay.check(call.request_id, call.timestamp.seconds, int(time.time()))
        foreign = bool(call.community) and call.community != self.community
        trust = self._trust_of(call.caller, call.community)
        cap = self._lookup(call.capability, int(m.group(1)), int(m.group(2)))
        if foreign and trust_rank(cap.min_trust) > 0:
            raise CallError("not_federated", f"{call.community} is not federated with this node's community")
        if trust_rank(trust) < trust_rank(cap.min_trust):
            raise CallError("unauthorized", f"{cap.name} needs trust `{cap.min_trust}`; caller is `{trust}`")
        if call.caller != self.node_id:
            self._rate_limit(call.caller, cap.name)
        if cap.max_concurrent and cap.in_flight >= cap.max_concurrent:
            raise CallError("capacity_exceeded", f"{cap.name} is at its concurrency limit", retry_after_ms=1000)
        if call.schema_hash and call.schema_hash != cap.schema_hash:
            raise CallError("schema_mismatch", f"schema hash differs for {cap.name}@{cap.version}",
                            schema_hash_expected=cap.schema_hash)
        # Which rpc carries which capability (decision 0044).
        wants_open = cap.streaming in ("client", "bidi")
        if (rpc == "open") != wants_open:
            raise bad_request(f"{cap.name} is a {cap.streaming} capability; call it with "
                              f"{'Open' if wants_open else 'Call'}")
        if call.encoding == JSON:
            request = decode_json(cap.request_cls, call.payload)
        elif call.encoding in (PROTO, UNSPECIFIED):  # BUS-006
            try:
                request = cap.request_cls.FromString(call.payload)
            except DecodeError as e:
                raise bad_request(f"payload is not a {cap.request_cls.DESCRIPTOR.full_name}: {e}")
        else:
            raise bad_request(f"unknown payload encoding {call.encoding}")
        return cap, trust, request

    # -- serving -------------------------------------------------------------

    async def serve(self, call, rpc="call", timeout=None):
        """Serves one call; yields its frames, ending with one terminal frame."""
        started = time.monotonic()
        seq = 0
        code = "ok"
        cap = None
        try:
            try:
                cap, trust, request = self.admit(call, rpc)
            except CallError as e:
                code = e.code
                yield error_frame(0, e)
                return
            limit = cap.timeout if timeout is None else min(cap.timeout, max(timeout, 0))
            deadline = started + limit
            json_wire = call.encoding == JSON
            transcript = identity.Transcript()
            cap.in_flight += 1
            agen = cap.handler(Context(self, call.caller, trust, call.request_id, deadline), request)
            try:
                while True:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise CallError("timeout", f"deadline of {cap.name} passed")
                    try:
                        msg = await asyncio.wait_for(agen.__anext__(), remaining)
                    except StopAsyncIteration:
                        break
                    except asyncio.TimeoutError:
                        raise CallError("timeout", f"deadline of {cap.name} passed")
                    if isinstance(msg, bus_pb2.Progress):
                        yield bus_pb2.Frame(seq=seq, progress=msg)
                        seq += 1
                        continue
                    if cap.streaming == "unary" and transcript.frames >= 1:
                        raise CallError("internal_error", "unary capability produced two responses")
                    data = encode_json(msg) if json_wire else msg.SerializeToString()
                    if len(data) > MAX_PAYLOAD:
                        raise CallError("internal_error", "response frame exceeds the payload limit")
                    transcript.push(seq, data)
                    yield bus_pb2.Frame(seq=seq, data=data)
                    seq += 1
                if cap.streaming == "unary" and transcript.frames != 1:
                    raise CallError("internal_error", "unary capability finished without a response")
                # The signed terminal frame (BUS-014, IDENT-012).
                fields = transcript.done_fields(call.request_id, self.node_id)
                done = bus_pb2.Done(frames=transcript.frames, transcript_hash=transcript.digest(),
                                    signer=self.node_id, signature=self.key.sign("bus.stream.done", fields))
                yield bus_pb2.Frame(seq=seq, done=done)
            except CallError as e:
                code = e.code
                yield error_frame(seq, e)
            except Exception as e:  # a handler bug: still one terminal frame
                code = "internal_error"
                yield error_frame(seq, CallError("internal_error", f"{type(e).__name__}: {e}"))
            finally:
                cap.in_flight -= 1
                await agen.aclose()
        finally:
            self.traces.append({
                "trace_id": call.request_id, "capability": call.capability,
                "version": cap.version if cap else "", "peer": call.caller,
                "ms": int((time.monotonic() - started) * 1000), "code": "" if code == "ok" else code,
                "frames": seq,
            })
