"""The capabilities this node serves (Bronze: the built-ins a client needs).

- protocol.version.list, protocol.describe   (protocol/spec/protocol.md)
- node.capabilities, node.manifest           (protocol/spec/node.md)
- diag.echo, diag.echo.stream                (protocol/spec/diag.md)

Each handler is an async generator yielding response messages; the bus frames
and signs them. Errors are raised as `CallError`.
"""
import asyncio
import os
import threading
import time

from google.protobuf import struct_pb2, timestamp_pb2

from .bus import CallError, bad_request
from .protocol import (CONSTANTS, DESCRIPTOR_HASH, ERRORS, PROTOCOL_VERSION, common_pb2, diag_pb2,
                       identity_pb2, node_pb2, protocol_pb2, stability_enum)

IMPLEMENTATION = "hearthnet-py-example"
IMPLEMENTATION_VERSION = "0.1.0"
MANIFEST_TTL = CONSTANTS["MANIFEST_TTL_SECONDS"]
MANIFEST_REISSUE = CONSTANTS["MANIFEST_REPUBLISH_INTERVAL_SECONDS"]
DIAG_MAX = 10000


def _ms(ctx_started):
    return int((time.monotonic() - ctx_started) * 1000)


class Manifests:
    """Issues the node's signed manifest (IDENT-020 … IDENT-026): `expires_at`
    is `issued_at` + 30 s, re-issued every 20 s, never handed out expired."""

    def __init__(self, bus, display_name, host, port):
        self.bus = bus
        self.display_name = display_name
        self.host = host
        self.port = port
        self.started = time.time()
        self._lock = threading.Lock()
        self._current = None  # (issued_at, expires_at, envelope bytes)

    def _issue(self, now):
        issued = int(now)
        m = identity_pb2.NodeManifest(
            version=1,
            contract_version=".".join(PROTOCOL_VERSION.split(".")[:2]),
            node_id=self.bus.node_id,
            display_name=self.display_name,
            community_id=self.bus.community,
            profile=identity_pb2.PROFILE_HEARTH,
            endpoints=[common_pb2.Endpoint(transport="http", host=self.host, port=self.port)],
            hardware=identity_pb2.Hardware(cpu_cores=os.cpu_count() or 0),
            capabilities=[identity_pb2.OfferedCapability(name=c.name, version=c.version,
                                                         schema_hash=c.schema_hash,
                                                         max_concurrent=c.max_concurrent)
                          for c in self.bus.offered()],
            uptime_seconds=int(now - self.started),
            issued_at=timestamp_pb2.Timestamp(seconds=issued),
            expires_at=timestamp_pb2.Timestamp(seconds=issued + MANIFEST_TTL),
        )
        payload = m.SerializeToString()
        env = identity_pb2.SignedEnvelope(payload=payload, signer=self.bus.node_id,
                                          signature=self.bus.key.sign_envelope("node.manifest", payload),
                                          domain="node.manifest")
        return issued, issued + MANIFEST_TTL, env.SerializeToString()

    def current(self):
        """(envelope bytes, expires_at seconds) of a fresh manifest."""
        now = time.time()
        with self._lock:
            if self._current is None or now >= self._current[0] + MANIFEST_REISSUE or now >= self._current[1] - 1:
                self._current = self._issue(now)
            return self._current[2], self._current[1]

    def output(self):
        env, expires = self.current()
        return node_pb2.ManifestOutput(signed_manifest=env, expires_at=timestamp_pb2.Timestamp(seconds=expires))


def install(bus, manifests):
    """Registers every capability of this node on `bus`."""

    async def version_list(ctx, req):
        t = time.monotonic()
        yield protocol_pb2.ListVersionsResponse(
            output=protocol_pb2.ListVersionsOutput(versions=[PROTOCOL_VERSION], preferred=PROTOCOL_VERSION),
            meta=protocol_pb2.ListVersionsMeta(ms=_ms(t)))

    async def describe(ctx, req):
        t = time.monotonic()
        with_hashes = req.input.include_schema_hashes
        caps = [protocol_pb2.AdvertisedCapability(
            name=c.name, version=c.version, schema_hash=c.schema_hash if with_hashes else "",
            stability=stability_enum(c.stability)) for c in bus.offered()]
        yield protocol_pb2.DescribeResponse(
            output=protocol_pb2.DescribeOutput(
                implementation=IMPLEMENTATION, implementation_version=IMPLEMENTATION_VERSION,
                protocol_version=PROTOCOL_VERSION, descriptor_hash=DESCRIPTOR_HASH,
                node=bus.node_id, capabilities=caps),
            meta=protocol_pb2.DescribeMeta(ms=_ms(t)))

    async def capabilities(ctx, req):
        t = time.monotonic()
        local = [node_pb2.CapabilitySpec(name=c.name, version=c.version, stability=stability_enum(c.stability),
                                         schema_hash=c.schema_hash, params=struct_pb2.Struct(),
                                         max_concurrent=c.max_concurrent) for c in bus.offered()]
        # This node follows no peers, so `remote` stays empty even with include_remote.
        yield node_pb2.CapabilitiesResponse(output=node_pb2.CapabilitiesOutput(local=local),
                                            meta=node_pb2.CapabilitiesMeta(ms=_ms(t)))

    async def manifest(ctx, req):
        t = time.monotonic()
        yield node_pb2.ManifestResponse(output=manifests.output(), meta=node_pb2.ManifestMeta(ms=_ms(t)))

    async def echo(ctx, req):
        t = time.monotonic()
        fail = req.input.fail_with
        if fail:
            if fail not in ERRORS:
                raise bad_request(f"fail_with `{fail}` is not an error code wire name")
            raise CallError(fail, "failure requested by fail_with", retry_after_ms=1000 if ERRORS[fail]["retryable"] else 0)
        yield diag_pb2.EchoResponse(
            output=diag_pb2.EchoOutput(text=req.input.text, data=req.input.data, served_by=bus.node_id),
            meta=diag_pb2.EchoMeta(ms=_ms(t)))

    async def echo_stream(ctx, req):
        n, interval = req.input.repeat, req.input.interval_ms
        if n > DIAG_MAX or interval > DIAG_MAX:
            raise bad_request(f"repeat and interval_ms must be at most {DIAG_MAX}")
        for i in range(n):
            if interval:
                await asyncio.sleep(interval / 1000)
            yield diag_pb2.EchoStreamResponse(
                output=diag_pb2.EchoStreamOutput(index=i, text=req.input.text, served_by=bus.node_id),
                meta=diag_pb2.EchoStreamMeta())

    bus.register("protocol.version.list", version_list)
    bus.register("protocol.describe", describe)
    bus.register("node.capabilities", capabilities)
    bus.register("node.manifest", manifest)
    bus.register("diag.echo", echo)
    bus.register("diag.echo.stream", echo_stream)
