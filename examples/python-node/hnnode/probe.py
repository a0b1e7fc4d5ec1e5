"""Wire checks of a running node: `python -m hnnode.probe http://127.0.0.1:PORT`.

A small client (its own throw-away key) that checks what the Rust CLI does
not: every `done` signature and transcript, the manifest envelope, the HTTP
binding's signed headers and SSE, and the refusals (bad signature, replay,
stale timestamp, unknown capability, versions, schema hash, trust, Open
misuse). Prints one line per check and `N passed, N failed`; exits 1 on any
failure. Works against any HearthNet node, not only this one.
"""
import base64
import http.client
import json
import os
import sys
import time
import urllib.parse

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from . import identity
from .bus import new_ulid
from .protocol import CAPABILITIES, bus_pb2, bus_pb2_grpc, diag_pb2, identity_pb2, node_pb2, protocol_pb2

results = []


def check(name, cond, detail=""):
    results.append((name, bool(cond)))
    print(("ok   " if cond else "FAIL ") + name + ("" if cond else f"  -- {detail}"), flush=True)


class Probe:
    def __init__(self, url):
        u = urllib.parse.urlparse(url)
        self.host, self.port = u.hostname, u.port
        self.channel = grpc.insecure_channel(f"{self.host}:{self.port}")
        self.stub = bus_pb2_grpc.BusServiceStub(self.channel)
        self.key = identity.NodeKey(os.urandom(32))
        self.node = None  # the target's NodeID, from protocol.describe

    def call(self, capability, request=None, *, payload=None, encoding=bus_pb2.PAYLOAD_ENCODING_PROTO,
             min_version=None, community="", schema_hash="", tamper=None, request_id=None, ts=None):
        c = bus_pb2.CallRequest(
            capability=capability,
            min_version=min_version or (CAPABILITIES[capability]["version"].split(".")[0] + ".0"
                                        if capability in CAPABILITIES else "1.0"),
            request_id=request_id or new_ulid(), caller=self.key.node_id, community=community,
            encoding=encoding, payload=payload if payload is not None else request.SerializeToString(),
            schema_hash=schema_hash)
        c.timestamp.seconds = int(time.time()) if ts is None else ts
        c.signature = self.key.sign("bus.call", identity.call_fields(c))
        if tamper:
            tamper(c)
        return c, [r.frame for r in self.stub.Call(c, timeout=15)]

    def verify_stream(self, name, call, frames, expect_data=None):
        """BUS-003/005/014: seq from 0, one terminal done, transcript and signature."""
        seqs_ok = [f.seq for f in frames] == list(range(len(frames)))
        kinds = [f.WhichOneof("kind") for f in frames]
        if not (seqs_ok and kinds and kinds[-1] == "done" and kinds.count("done") == 1 and "error" not in kinds):
            check(f"{name}: frames", False, f"seq/kinds {[(f.seq, k) for f, k in zip(frames, kinds)]} "
                                            f"{frames[-1] if frames else ''}")
            return []
        t = identity.Transcript()
        data = []
        for f in frames[:-1]:
            if f.WhichOneof("kind") == "data":
                t.push(f.seq, f.data)
                data.append(f.data)
        done = frames[-1].done
        sig_ok = identity.verify_strict(identity.parse_node_id(done.signer),
                                        identity.signing_input("bus.stream.done",
                                                               t.done_fields(call.request_id, done.signer)),
                                        done.signature)
        check(f"{name}: done (frames, transcript, signer, signature)",
              done.frames == t.frames and done.transcript_hash == t.digest() and sig_ok
              and (self.node is None or done.signer == self.node) and
              (expect_data is None or len(data) == expect_data),
              f"frames {done.frames}/{t.frames} sig {sig_ok} signer {done.signer}")
        return data

    def expect_error(self, name, frames, code):
        ok = (len(frames) == 1 and frames[0].seq == 0 and frames[0].WhichOneof("kind") == "error"
              and frames[0].error.code == code)
        check(f"{name} -> {code}", ok, f"got {[str(f).strip() for f in frames]}")
        return frames[0].error if frames else None

    # -- the checks ------------------------------------------------------------

    def run(self):
        resp = health_pb2_grpc.HealthStub(self.channel).Check(
            health_pb2.HealthCheckRequest(service="hearthnet.bus.v1.BusService"), timeout=5)
        check("gRPC health: BusService SERVING", resp.status == health_pb2.HealthCheckResponse.SERVING)
        names = []
        for r in reflection_pb2_grpc.ServerReflectionStub(self.channel).ServerReflectionInfo(
                iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5):
            names += [s.name for s in r.list_services_response.service]
        check("gRPC reflection lists BusService (BUS-016)", "hearthnet.bus.v1.BusService" in names, names)

        c, frames = self.call("protocol.describe", protocol_pb2.DescribeRequest(
            input=protocol_pb2.DescribeInput(include_schema_hashes=True)))
        data = self.verify_stream("protocol.describe", c, frames, 1)
        desc = protocol_pb2.DescribeResponse.FromString(data[0]).output if data else None
        if desc:
            self.node = desc.node
            identity.parse_node_id(desc.node)
            check("describe: signer of done is the described node", frames[-1].done.signer == desc.node)
            check("describe: schema hashes match the registry", all(
                cap.schema_hash == CAPABILITIES[cap.name]["schema_hash"] for cap in desc.capabilities))
            c, frames = self.call("protocol.version.list", protocol_pb2.ListVersionsRequest())
            data = self.verify_stream("protocol.version.list", c, frames, 1)
            if data:
                out = protocol_pb2.ListVersionsResponse.FromString(data[0]).output
                check("describe: protocol_version is listed (PROTO-008)",
                      desc.protocol_version in out.versions and out.preferred in out.versions)

        c, frames = self.call("node.manifest", node_pb2.ManifestRequest())
        data = self.verify_stream("node.manifest", c, frames, 1)
        if data:
            self.check_manifest(node_pb2.ManifestResponse.FromString(data[0]).output.signed_manifest, "node.manifest")

        c, frames = self.call("diag.echo", diag_pb2.EchoRequest(input=diag_pb2.EchoInput(text="hé", data=b"\x00\x01")))
        data = self.verify_stream("diag.echo (proto)", c, frames, 1)
        if data:
            o = diag_pb2.EchoResponse.FromString(data[0]).output
            check("diag.echo echoes (DIAG-001)", o.text == "hé" and o.data == b"\x00\x01" and o.served_by == self.node)
        body = b'{"params":{},"input":{"text":"json","data":"AAE"}}'
        c, frames = self.call("diag.echo", payload=body, encoding=bus_pb2.PAYLOAD_ENCODING_JSON)
        data = self.verify_stream("diag.echo (JSON)", c, frames, 1)
        if data:
            o = json.loads(data[0])["output"]
            check("diag.echo JSON answer", o["text"] == "json" and o["data"] == "AAE=", data[0])

        c, frames = self.call("diag.echo.stream", diag_pb2.EchoStreamRequest(
            input=diag_pb2.EchoStreamInput(text="s", repeat=5, interval_ms=10)))
        data = self.verify_stream("diag.echo.stream", c, frames, 5)
        check("diag.echo.stream indexes (DIAG-003)", [diag_pb2.EchoStreamResponse.FromString(d).output.index
                                                      for d in data] == list(range(5)))
        c, frames = self.call("diag.echo.stream", diag_pb2.EchoStreamRequest(input=diag_pb2.EchoStreamInput(repeat=0)))
        self.verify_stream("diag.echo.stream repeat 0", c, frames, 0)

        echo = diag_pb2.EchoRequest(input=diag_pb2.EchoInput(text="x"))

        def flip(c):
            c.signature = bytes([c.signature[0] ^ 1]) + c.signature[1:]
        self.expect_error("flipped signature bit", self.call("diag.echo", echo, tamper=flip)[1], "invalid_signature")

        def other_payload(c):
            c.payload = diag_pb2.EchoRequest(input=diag_pb2.EchoInput(text="y")).SerializeToString()
        self.expect_error("payload changed after signing", self.call("diag.echo", echo, tamper=other_payload)[1],
                          "invalid_signature")

        def short_id(c):
            c.caller = identity.short_id(self.key.public_key)
        self.expect_error("short id as caller", self.call("diag.echo", echo, tamper=short_id)[1], "invalid_signature")

        rid = new_ulid()
        c, frames = self.call("diag.echo", echo, request_id=rid)
        check("first use of a request id", frames and frames[-1].WhichOneof("kind") == "done")
        self.expect_error("replayed request id (IDENT-018)", self.call("diag.echo", echo, request_id=rid)[1], "expired")
        self.expect_error("timestamp 10 min old (IDENT-017)",
                          self.call("diag.echo", echo, ts=int(time.time()) - 600)[1], "expired")
        self.expect_error("timestamp 10 min ahead (IDENT-017)",
                          self.call("diag.echo", echo, ts=int(time.time()) + 600)[1], "expired")
        self.expect_error("request id not a ULID (BUS-009)",
                          self.call("diag.echo", echo, request_id="not-a-ulid")[1], "bad_request")
        self.expect_error("unknown capability (BUS-012)",
                          self.call("foo.bar", payload=b"", min_version="1.0")[1], "not_found")
        self.expect_error("unadvertised capability llm.chat", self.call("llm.chat", payload=b"")[1], "not_found")
        e = self.expect_error("min_version 2.0 (BUS-034)", self.call("diag.echo", echo, min_version="2.0")[1],
                              "schema_mismatch")
        check("schema_mismatch lists the versions served", e is not None and "1.0" in e.message, e)
        self.expect_error("min_version 1.9", self.call("diag.echo", echo, min_version="1.9")[1], "schema_mismatch")
        self.expect_error("min_version `1` (BUS-034)", self.call("diag.echo", echo, min_version="1")[1], "bad_request")
        e = self.expect_error("wrong schema hash (BUS-013)",
                              self.call("diag.echo", echo, schema_hash="blake3:" + "0" * 64)[1], "schema_mismatch")
        check("schema_hash_expected set", e is not None and
              e.schema_hash_expected == CAPABILITIES["diag.echo"]["schema_hash"])
        c, frames = self.call("diag.echo", echo, schema_hash=CAPABILITIES["diag.echo"]["schema_hash"])
        self.verify_stream("right schema hash", c, frames, 1)
        self.expect_error("unknown JSON key (BUS-021)", self.call(
            "diag.echo", payload=b'{"input":{"txt":"x"}}', encoding=bus_pb2.PAYLOAD_ENCODING_JSON)[1], "bad_request")
        self.expect_error("field named both ways (BUS-020)", self.call(
            "diag.echo", payload=b'{"input":{"failWith":"","fail_with":""}}',
            encoding=bus_pb2.PAYLOAD_ENCODING_JSON)[1], "bad_request")
        self.expect_error("null for a scalar (BUS-027)", self.call(
            "diag.echo", payload=b'{"input":{"text":null}}', encoding=bus_pb2.PAYLOAD_ENCODING_JSON)[1], "bad_request")
        self.expect_error("malformed protobuf payload", self.call("diag.echo", payload=b"\xff\xff\xff")[1],
                          "bad_request")
        self.expect_error("fail_with not_implemented (DIAG-002)", self.call(
            "diag.echo", diag_pb2.EchoRequest(input=diag_pb2.EchoInput(fail_with="not_implemented")))[1],
            "not_implemented")
        self.expect_error("fail_with unknown name (DIAG-002)", self.call(
            "diag.echo", diag_pb2.EchoRequest(input=diag_pb2.EchoInput(fail_with="ERROR_CODE_NOT_FOUND")))[1],
            "bad_request")
        self.expect_error("repeat 10001 (DIAG-004)", self.call("diag.echo.stream", diag_pb2.EchoStreamRequest(
            input=diag_pb2.EchoStreamInput(repeat=10001)))[1], "bad_request")
        self.expect_error("node.capabilities by a stranger (BUS-044)",
                          self.call("node.capabilities", node_pb2.CapabilitiesRequest())[1], "unauthorized")
        self.expect_error("node.capabilities from another community (BUS-043)", self.call(
            "node.capabilities", node_pb2.CapabilitiesRequest(), community=self.key.node_id)[1],
            "not_federated")
        c, frames = self.call("diag.echo", echo, community=self.key.node_id)
        self.verify_stream("unknown-trust capability from another community", c, frames, 1)

        # A deadline shorter than the stream (BUS-040).
        c = bus_pb2.CallRequest(capability="diag.echo.stream", min_version="1.0", request_id=new_ulid(),
                                caller=self.key.node_id, encoding=bus_pb2.PAYLOAD_ENCODING_PROTO,
                                payload=diag_pb2.EchoStreamRequest(input=diag_pb2.EchoStreamInput(
                                    repeat=10, interval_ms=300)).SerializeToString())
        c.timestamp.seconds = int(time.time())
        c.signature = self.key.sign("bus.call", identity.call_fields(c))
        try:
            frames = [r.frame for r in self.stub.Call(c, timeout=1.0)]
            check("deadline 1 s on a 3 s stream -> timeout", frames[-1].WhichOneof("kind") == "error"
                  and frames[-1].error.code == "timeout", frames[-1])
        except grpc.RpcError as e:
            check("deadline 1 s on a 3 s stream -> timeout (gRPC DEADLINE_EXCEEDED)",
                  e.code() == grpc.StatusCode.DEADLINE_EXCEEDED, e)

        # Open (BUS-004, decision 0044).
        c = bus_pb2.CallRequest(capability="diag.echo", min_version="1.0", request_id=new_ulid(),
                                caller=self.key.node_id, payload=echo.SerializeToString())
        c.timestamp.seconds = int(time.time())
        c.signature = self.key.sign("bus.call", identity.call_fields(c))
        frames = [r.frame for r in self.stub.Open(iter([bus_pb2.OpenRequest(call=c)]), timeout=10)]
        self.expect_error("unary capability through Open", frames, "bad_request")
        frames = [r.frame for r in self.stub.Open(iter([bus_pb2.OpenRequest(frame=bus_pb2.Frame(seq=0, data=b"x"))]),
                                                  timeout=10)]
        self.expect_error("Open without a call header", frames, "bad_request")

        self.http_checks()

    def check_manifest(self, envelope_bytes, where):
        env = identity_pb2.SignedEnvelope.FromString(envelope_bytes)
        m = identity_pb2.NodeManifest.FromString(env.payload)
        sig_ok = env.domain == "node.manifest" and identity.verify_strict(
            identity.parse_node_id(env.signer), identity.signing_input("node.manifest",
                                                                      identity.envelope_fields(env.payload)),
            env.signature)
        now = time.time()
        check(f"{where}: envelope verifies, signer = node_id = node (IDENT-021)",
              sig_ok and m.node_id == env.signer == self.node)
        check(f"{where}: lifetime 30 s, not expired (IDENT-022, NODE-002)",
              m.expires_at.seconds - m.issued_at.seconds == 30 and now < m.expires_at.seconds
              and m.issued_at.seconds <= now + 120)
        check(f"{where}: manifest lists the described capabilities",
              {c.name for c in m.capabilities} >= {"diag.echo", "node.manifest", "protocol.describe"})

    # -- HTTP/JSON binding ------------------------------------------------------

    def http(self, method, path, body=b"", headers=None):
        conn = http.client.HTTPConnection(self.host, self.port, timeout=15)
        conn.request(method, path, body=body, headers=headers or {})
        r = conn.getresponse()
        data = r.read()
        conn.close()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, data

    def signed_headers(self, capability, body, **over):
        c = bus_pb2.CallRequest(capability=capability, min_version="1.0", request_id=new_ulid(),
                                caller=self.key.node_id, encoding=bus_pb2.PAYLOAD_ENCODING_JSON, payload=body)
        c.timestamp.seconds = int(time.time())
        c.signature = self.key.sign("bus.call", identity.call_fields(c))
        h = {"X-HearthNet-Capability": capability, "X-HearthNet-Capability-Version": "1.0",
             "X-HearthNet-Request-Id": c.request_id, "X-HearthNet-From": c.caller,
             "X-HearthNet-Timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(c.timestamp.seconds)),
             "X-HearthNet-Signature": identity.signature_text(c.signature), "Content-Type": "application/json"}
        h.update(over)
        return c, h

    def http_checks(self):
        status, _, body = self.http("GET", "/health")
        check("GET /health 200 (NODE-007)", status == 200)
        status, _, body = self.http("GET", "/ready")
        check("GET /ready 200 (NODE-007)", status == 200)
        status, _, body = self.http("GET", "/manifest")
        if status == 200:
            out = json.loads(body)
            self.check_manifest(base64.b64decode(out["signedManifest"]), "GET /manifest")
        else:
            check("GET /manifest 200 (BUS-031)", False, status)

        body = b'{"input":{"text":"over http"}}'
        c, h = self.signed_headers("diag.echo", body)
        status, rh, data = self.http("POST", "/bus/v1/call", body, h)
        ok = status == 200
        if ok:
            t = identity.Transcript()
            t.push(0, data)
            sig = rh.get("x-hearthnet-signature", "")
            ok = (rh.get("x-hearthnet-from") == self.node and rh.get("x-hearthnet-request-id") == c.request_id
                  and identity.verify_strict(identity.parse_node_id(self.node), identity.signing_input(
                      "bus.stream.done", t.done_fields(c.request_id, self.node)),
                      identity.b64url_decode_strict(sig[len("ed25519:"):])))
        check("signed HTTP call: 200, X-HearthNet-Signature over a one-frame transcript (BUS-038)", ok,
              f"{status} {rh} {data[:200]}")

        c, h = self.signed_headers("diag.echo", body)
        h["X-HearthNet-Signature"] = identity.signature_text(bytes(64))
        status, _, data = self.http("POST", "/bus/v1/call", body, h)
        check("HTTP bad signature -> 401 invalid_signature", status == 401 and
              json.loads(data).get("code") == "invalid_signature", f"{status} {data}")
        c, h = self.signed_headers("foo.bar", b"{}")
        status, _, data = self.http("POST", "/bus/v1/call", b"{}", h)
        check("HTTP unknown capability -> 404 not_found (BUS-018)", status == 404 and
              json.loads(data).get("code") == "not_found", f"{status} {data}")
        status, _, data = self.http("POST", "/bus/v1/call", b'{"input":{"bogus":1}}',
                                    {"X-HearthNet-Capability": "diag.echo"})
        check("HTTP body outside the schema -> 400 bad_request (BUS-032)", status == 400 and
              json.loads(data).get("code") == "bad_request", f"{status} {data}")

        body = b'{"input":{"text":"sse","repeat":3}}'
        c, h = self.signed_headers("diag.echo.stream", body)
        status, rh, data = self.http("POST", "/bus/v1/call", body, h)
        events = []
        for block in data.decode().split("\n\n"):
            ev = {}
            for line in block.splitlines():
                k, _, v = line.partition(": ")
                ev[k] = v
            if ev:
                events.append(ev)
        ok = status == 200 and [e.get("event") for e in events] == ["data"] * 3 + ["done"] and \
            [e.get("id") for e in events] == ["0", "1", "2", "3"]
        if ok:
            t = identity.Transcript()
            for e in events[:3]:
                t.push(int(e["id"]), e["data"].encode())
            done = json.loads(events[3]["data"])
            ok = int(done["frames"]) == 3 and base64.b64decode(done["transcriptHash"]) == t.digest() and \
                identity.verify_strict(identity.parse_node_id(done["signer"]), identity.signing_input(
                    "bus.stream.done", t.done_fields(c.request_id, done["signer"])),
                    base64.b64decode(done["signature"]))
        check("HTTP SSE stream: ids = seq, 3 data + signed done (BUS-039)", ok, f"{status} {data[:300]}")

        body = b'{"input":{"text":"slow","repeat":10,"intervalMs":300}}'
        c, h = self.signed_headers("diag.echo.stream", body, **{"X-HearthNet-Deadline-Ms": "1000"})
        status, rh, data = self.http("POST", "/bus/v1/call", body, h)
        last = data.decode().strip().split("\n\n")[-1]
        check("HTTP deadline 1 s on a 3 s stream -> error event timeout (BUS-040)",
              status == 200 and "event: error" in last and '"code":"timeout"' in last, data[-300:])


def main(argv):
    if len(argv) != 1:
        sys.exit("usage: python -m hnnode.probe http://HOST:PORT")
    Probe(argv[0]).run()
    failed = sum(1 for _, ok in results if not ok)
    print(f"probe: {len(results) - failed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
