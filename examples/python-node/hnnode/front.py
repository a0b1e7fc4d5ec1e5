"""The node's one public TCP port (decision 0042: gRPC over h2c and the
HTTP/JSON binding share it).

A connection that opens with the HTTP/2 client preface (`PRI * HTTP/2.0`) is
piped, byte for byte, to the internal gRPC server; anything else is read as
HTTP/1.1 and served here:

- `POST /bus/v1/call`  the HTTP/JSON binding (BUS-030, BUS-036 … BUS-039)
- `POST /bus/v1/open`  client-streaming calls as NDJSON (decision 0044)
- `GET /manifest`      the `node.manifest` output as proto3 JSON (NODE-006)
- `GET /health`, `GET /ready` (NODE-007); `GET /metrics` is 404 (metrics off, NODE-008)
"""
import asyncio
import ipaddress

from google.protobuf import timestamp_pb2

from . import identity
from .bus import CallError, bad_request, decode_json, encode_json, new_ulid
from .protocol import CAPABILITIES, CONSTANTS, bus_pb2, http_status, message_class

H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
MAX_BODY = CONSTANTS["BUS_MAX_MESSAGE_BYTES"]
MAX_HEAD = 64 * 1024
REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
           405: "Method Not Allowed", 408: "Request Timeout", 409: "Conflict", 410: "Gone",
           411: "Length Required", 413: "Payload Too Large", 429: "Too Many Requests",
           499: "Client Closed Request", 500: "Internal Server Error", 501: "Not Implemented",
           502: "Bad Gateway", 503: "Service Unavailable", 504: "Gateway Timeout",
           507: "Insufficient Storage"}


# A client given a `grpc://host:port` URL may send `:scheme: grpc`, which
# grpcio refuses ("Error parsing ':scheme' metadata"). The literal is rewritten
# to `http` in place: HPACK literal with the static name index 6 (`:scheme`),
# value "grpc" → "http", raw or Huffman-coded (both 3 bytes), so frame lengths
# and the HPACK dynamic table stay consistent on both sides.
_SCHEME_FIXES = []
for _prefix in (b"\x46", b"\x06", b"\x16"):  # incremental / without / never indexed
    _SCHEME_FIXES.append((_prefix + b"\x83\x9a\xca\xc9", _prefix + b"\x83\x9d\x29\xaf"))
    _SCHEME_FIXES.append((_prefix + b"\x04grpc", _prefix + b"\x04http"))


def fix_scheme(block: bytes) -> bytes:
    for old, new in _SCHEME_FIXES:
        if old in block:
            block = block.replace(old, new, 1)
    return block


class Front:
    def __init__(self, bus, manifests, grpc_port, allow_unsigned_loopback=True):
        self.bus = bus
        self.manifests = manifests
        self.grpc_port = grpc_port
        self.allow_unsigned_loopback = allow_unsigned_loopback

    async def start(self, host, port):
        server = await asyncio.start_server(self._conn, host, port, limit=MAX_HEAD)
        return server, server.sockets[0].getsockname()[1]

    # -- connection dispatch ---------------------------------------------------

    async def _conn(self, reader, writer):
        try:
            first = b""
            while len(first) < 4:
                chunk = await reader.read(4 - len(first))
                if not chunk:
                    return
                first += chunk
            if H2_PREFACE.startswith(first):
                await self._pipe_to_grpc(first, reader, writer)
            else:
                await self._http1(first, reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass
        finally:
            try:
                writer.close()
            except Exception:
                pass

    async def _pipe_to_grpc(self, first, reader, writer):
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.grpc_port)
        up_writer.write(first)

        async def pump(src, dst):
            try:
                while True:
                    data = await src.read(65536)
                    if not data:
                        break
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, asyncio.CancelledError):
                pass
            finally:
                try:
                    dst.write_eof()
                except (OSError, RuntimeError, AttributeError):
                    pass

        async def pump_frames(src, dst, first):
            # Client → gRPC: whole HTTP/2 frames, so that HEADERS blocks can be
            # fixed up (see `fix_scheme`).
            try:
                rest = await src.readexactly(len(H2_PREFACE) - len(first))
                if first + rest != H2_PREFACE:
                    return
                dst.write(rest)
                while True:
                    head = await src.readexactly(9)
                    length = int.from_bytes(head[:3], "big")
                    payload = await src.readexactly(length)
                    if head[3] in (0x1, 0x9):  # HEADERS, CONTINUATION
                        payload = fix_scheme(payload)
                    dst.write(head + payload)
                    await dst.drain()
            except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
                pass
            finally:
                try:
                    dst.write_eof()
                except (OSError, RuntimeError, AttributeError):
                    pass

        try:
            await asyncio.gather(pump_frames(reader, up_writer, first), pump(up_reader, writer))
        finally:
            up_writer.close()

    # -- HTTP/1.1 ----------------------------------------------------------------

    async def _http1(self, first, reader, writer):
        buf = bytearray(first)
        peer = writer.get_extra_info("peername")
        loopback = False
        try:
            loopback = ipaddress.ip_address(peer[0]).is_loopback
        except (TypeError, ValueError, IndexError):
            pass
        while True:
            while b"\r\n\r\n" not in buf:
                if len(buf) > MAX_HEAD:
                    await self._send(writer, 431, b"request head too large\n", close=True)
                    return
                chunk = await reader.read(65536)
                if not chunk:
                    return
                buf += chunk
            head, _, rest = bytes(buf).partition(b"\r\n\r\n")
            buf = bytearray(rest)
            lines = head.decode("latin-1").split("\r\n")
            try:
                method, target, version = lines[0].split(" ", 2)
            except ValueError:
                await self._send(writer, 400, b"malformed request line\n", close=True)
                return
            headers = {}
            for line in lines[1:]:
                name, sep, value = line.partition(":")
                if sep:
                    headers[name.strip().lower()] = value.strip()
            if headers.get("expect", "").lower() == "100-continue" and not buf:
                writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            # Body: Content-Length or chunked, refused above BUS_MAX_MESSAGE_BYTES before reading.
            if "chunked" in headers.get("transfer-encoding", "").lower():
                body, buf = await self._read_chunked(reader, buf)
                if body is None:
                    await self._error(writer, "", bad_request(f"body exceeds {MAX_BODY} bytes"), close=True)
                    return
            else:
                try:
                    length = int(headers.get("content-length", "0"))
                except ValueError:
                    await self._send(writer, 400, b"bad Content-Length\n", close=True)
                    return
                if length > MAX_BODY:
                    await self._error(writer, "", bad_request(f"body of {length} bytes exceeds {MAX_BODY} bytes"),
                                      close=True)
                    return
                while len(buf) < length:
                    chunk = await reader.read(65536)
                    if not chunk:
                        return
                    buf += chunk
                body, buf = bytes(buf[:length]), bytearray(buf[length:])
            close = version == "HTTP/1.0" or headers.get("connection", "").lower() == "close"
            path = target.split("?", 1)[0]
            keep = await self._route(writer, method, path, headers, body, loopback, close)
            if close or not keep:
                return

    async def _read_chunked(self, reader, buf):
        body = bytearray()
        while True:
            while b"\r\n" not in buf:
                chunk = await reader.read(65536)
                if not chunk:
                    raise asyncio.IncompleteReadError(bytes(buf), None)
                buf += chunk
            size_line, _, rest = bytes(buf).partition(b"\r\n")
            size = int(size_line.split(b";")[0].strip() or b"0", 16)
            buf = bytearray(rest)
            if size == 0:
                while b"\r\n" not in buf:  # trailers end with an empty line
                    chunk = await reader.read(65536)
                    if not chunk:
                        break
                    buf += chunk
                idx = bytes(buf).find(b"\r\n\r\n") if not buf.startswith(b"\r\n") else -2
                buf = bytearray(buf[idx + 4:] if idx >= 0 else buf[2:])
                return bytes(body), buf
            if len(body) + size > MAX_BODY:
                return None, buf
            while len(buf) < size + 2:
                chunk = await reader.read(65536)
                if not chunk:
                    raise asyncio.IncompleteReadError(bytes(buf), None)
                buf += chunk
            body += buf[:size]
            buf = bytearray(buf[size + 2:])

    async def _send(self, writer, status, body=b"", headers=None, close=False):
        h = {"Content-Length": str(len(body)), "Content-Type": "text/plain; charset=utf-8"}
        h.update(headers or {})
        if close:
            h["Connection"] = "close"
        head = f"HTTP/1.1 {status} {REASONS.get(status, 'Status')}\r\n" + "".join(
            f"{k}: {v}\r\n" for k, v in h.items()) + "\r\n"
        writer.write(head.encode("latin-1") + body)
        await writer.drain()

    async def _error(self, writer, request_id, err, close=False):
        headers = {"Content-Type": "application/json"}
        if request_id:
            headers["X-HearthNet-Request-Id"] = request_id
        if err.retry_after_ms:
            headers["Retry-After"] = str(-(-err.retry_after_ms // 1000))
        # BUS-018: the key is `code`, the status the code's http_status option.
        await self._send(writer, http_status(err.code), encode_json(err.to_wire()), headers, close)

    async def _route(self, writer, method, path, headers, body, loopback, close):
        if path == "/health" and method in ("GET", "HEAD"):
            await self._send(writer, 200, b"ok\n", close=close)
        elif path == "/ready" and method in ("GET", "HEAD"):
            if self.bus.caps:
                await self._send(writer, 200, b"ready\n", close=close)
            else:
                await self._send(writer, 503, b"no capability registered\n", close=close)
        elif path == "/manifest" and method == "GET":
            await self._send(writer, 200, encode_json(self.manifests.output()),
                             {"Content-Type": "application/json"}, close)
        elif path in ("/bus/v1/call", "/bus/v1/open"):
            if method != "POST":
                await self._send(writer, 405, b"use POST\n", {"Allow": "POST"}, close)
                return True
            return await self._call(writer, headers, body, loopback, close, path.endswith("/open"))
        else:
            await self._error(writer, "", CallError("not_found", f"no route {method} {path}"), close)
        return True

    # -- the HTTP/JSON binding -------------------------------------------------

    def _build_call(self, headers, body, loopback, is_open):
        capability = headers.get("x-hearthnet-capability", "")
        if not capability:
            raise bad_request("X-HearthNet-Capability is missing")
        if is_open:
            # NDJSON: the first line is the request (decision 0044).
            body = body.split(b"\n", 1)[0]
        entry = CAPABILITIES.get(capability)
        min_version = headers.get("x-hearthnet-capability-version") or (
            entry["version"].split(".")[0] + ".0" if entry else "1.0")
        timeout = None
        if "x-hearthnet-deadline-ms" in headers:
            try:
                timeout = int(headers["x-hearthnet-deadline-ms"]) / 1000
            except ValueError:
                raise bad_request("X-HearthNet-Deadline-Ms is not a number")
        # Edge validation against the published shape (BUS-032); the bus
        # decodes the payload again after the signature holds.
        if entry is not None:
            decode_json(message_class(entry["request"]), body)
        signature = headers.get("x-hearthnet-signature")
        call = bus_pb2.CallRequest(
            capability=capability, min_version=min_version,
            request_id=headers.get("x-hearthnet-request-id", ""),
            caller=headers.get("x-hearthnet-from", ""),
            community=headers.get("x-hearthnet-community", ""),
            encoding=bus_pb2.PAYLOAD_ENCODING_JSON, payload=body,
            schema_hash=headers.get("x-hearthnet-schema-hash", ""),
            token=headers.get("x-hearthnet-token", ""))
        if signature is not None:
            if not call.request_id:
                raise bad_request("X-HearthNet-Request-Id is missing")
            ts = headers.get("x-hearthnet-timestamp")
            if not ts:
                raise bad_request("X-HearthNet-Timestamp is missing")
            try:
                t = timestamp_pb2.Timestamp()
                t.FromJsonString(ts)
            except ValueError as e:
                raise bad_request(f"X-HearthNet-Timestamp: {e}")
            call.timestamp.CopyFrom(t)
            try:
                if not signature.startswith(identity.PREFIX):
                    raise identity.IdentityError("no `ed25519:` prefix")
                sig = identity.b64url_decode_strict(signature[len(identity.PREFIX):])
            except identity.IdentityError as e:
                raise CallError("invalid_signature", f"X-HearthNet-Signature is not a signature: {e}")
            call.signature = sig
        else:
            # BUS-037 / decision 0041: unsigned only from loopback, as the operator.
            if not (self.allow_unsigned_loopback and loopback):
                raise CallError("invalid_signature",
                                "X-HearthNet-Signature is missing (unsigned calls are accepted only from loopback)")
            if not call.request_id:
                call.request_id = new_ulid()
            if not body.strip():
                call.payload = b"{}"
            call.timestamp.GetCurrentTime()
            call.timestamp.nanos = 0
            self.bus.sign_call(call)
        return call, timeout, entry

    async def _call(self, writer, headers, body, loopback, close, is_open):
        rid = headers.get("x-hearthnet-request-id", "")
        try:
            call, timeout, entry = self._build_call(headers, body, loopback, is_open)
        except CallError as e:
            await self._error(writer, rid, e, close)
            return True
        rid = call.request_id
        streaming = entry is not None and entry["streaming"] == "server"
        wants_sse = "text/event-stream" in headers.get("accept", "")
        frames = self.bus.serve(call, "open" if is_open else "call", timeout)
        if streaming or wants_sse:
            # BUS-039: one SSE event per frame, `id` = seq, ending with `done` or `error`.
            writer.write(("HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
                          f"X-HearthNet-Request-Id: {rid}\r\nConnection: close\r\n\r\n").encode("latin-1"))
            try:
                await self._sse(writer, frames)
            finally:
                await frames.aclose()  # the caller went away: stop the capability (DIAG-004)
            return False
        try:
            return await self._unary(writer, rid, frames, close)
        finally:
            await frames.aclose()

    async def _sse(self, writer, frames):
        """BUS-039: one SSE event per frame, `id` = seq; the data line is the
        exact data-frame bytes the transcript hashes (decision 0043)."""
        async for f in frames:
            kind = f.WhichOneof("kind")
            if kind == "data":
                data = f.data.decode("utf-8")
            elif kind == "progress":
                data = encode_json(f.progress).decode()
            elif kind == "done":
                data = encode_json(f.done).decode()
            elif kind == "error":
                data = encode_json(f.error).decode()
            else:
                continue
            writer.write(f"id: {f.seq}\nevent: {kind}\ndata: {data}\n\n".encode("utf-8"))
            await writer.drain()

    async def _unary(self, writer, rid, frames, close):
        data = None
        async for f in frames:
            kind = f.WhichOneof("kind")
            if kind == "data":
                data = f.data
            elif kind == "error":
                e = f.error
                await self._error(writer, rid, CallError(e.code, e.message, e.retry_after_ms, e.schema_hash_expected),
                                  close)
                return True
            elif kind == "done":
                # BUS-038: the body is the one data frame; the done signature goes in headers.
                await self._send(writer, 200, data or b"", {
                    "Content-Type": "application/json",
                    "X-HearthNet-Request-Id": rid,
                    "X-HearthNet-From": f.done.signer,
                    "X-HearthNet-Signature": identity.signature_text(f.done.signature),
                }, close)
                return True
        await self._error(writer, rid, CallError("internal_error", "stream ended without a terminal frame"), close)
        return True
