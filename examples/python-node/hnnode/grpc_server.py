"""The gRPC binding: `hearthnet.bus.v1.BusService` (`Call`, `Open`), gRPC
health checking and server reflection (BUS-001 … BUS-005, BUS-016).

grpcio cannot share its port with an HTTP/1.1 server, so it listens on an
internal loopback port and the front listener (`front.py`) hands it every
connection that opens with the HTTP/2 preface.
"""
import asyncio

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from .bus import CallError, error_frame
from .protocol import CONSTANTS, bus_pb2, bus_pb2_grpc

SERVICE = "hearthnet.bus.v1.BusService"


class BusServicer(bus_pb2_grpc.BusServiceServicer):
    def __init__(self, bus):
        self.bus = bus

    async def Call(self, request, context):
        async for frame in self.bus.serve(request, "call", context.time_remaining()):
            yield bus_pb2.CallResponse(frame=frame)

    async def Open(self, request_iterator, context):
        it = request_iterator.__aiter__()
        try:
            first = await it.__anext__()
        except StopAsyncIteration:
            first = None
        if first is None or first.WhichOneof("kind") != "call":
            # BUS-004: the first client message must be the call header.
            yield bus_pb2.OpenResponse(frame=error_frame(0, CallError(
                "bad_request", "the first message of Open must be a call header")))
            return
        second_header = asyncio.Event()

        async def watch_client():
            # Client frames after the header; a second header breaks BUS-004.
            try:
                async for m in it:
                    if m.WhichOneof("kind") == "call":
                        second_header.set()
                        return
            except Exception:
                return

        watcher = asyncio.ensure_future(watch_client())
        seq = 0
        try:
            async for frame in self.bus.serve(first.call, "open", context.time_remaining()):
                if second_header.is_set() and frame.WhichOneof("kind") not in ("done", "error"):
                    yield bus_pb2.OpenResponse(frame=error_frame(seq, CallError(
                        "bad_request", "a second call header on one Open stream")))
                    return
                seq = frame.seq + 1
                yield bus_pb2.OpenResponse(frame=frame)
        finally:
            watcher.cancel()


async def start(bus, host="127.0.0.1", port=0):
    """Starts the gRPC server; returns (server, bound port)."""
    limit = CONSTANTS["BUS_MAX_MESSAGE_BYTES"]
    server = grpc.aio.server(options=[
        ("grpc.max_receive_message_length", limit),
        ("grpc.max_send_message_length", limit),
        ("grpc.so_reuseport", 0),
    ])
    bus_pb2_grpc.add_BusServiceServicer_to_server(BusServicer(bus), server)
    checker = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(checker, server)
    reflection.enable_server_reflection(
        (SERVICE, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME), server)
    bound = server.add_insecure_port(f"{host}:{port}")
    await server.start()
    await checker.set("", health_pb2.HealthCheckResponse.SERVING)
    await checker.set(SERVICE, health_pb2.HealthCheckResponse.SERVING)
    return server, bound
