"""A simulated chronicler over gRPC (Project Origin's ChroniclerService), on 127.0.0.1 only.

It signs claim intents with its own Ed25519 key (SimulatedChronicler, in
registry/sandbox/chronicler.py); a registry simulator told that key for a grid area then
refuses allocations there that it has not signed. `available = False` makes it answer
UNAVAILABLE, as a chronicler that is down.
"""

from __future__ import annotations

import ipaddress
from concurrent import futures

import grpc

from chalicelib.registry.port import RegistryRefused
from chalicelib.registry.proto.project_origin.chronicler.v1 import chronicler_pb2 as ch
from chalicelib.registry.proto.project_origin.chronicler.v1 import chronicler_pb2_grpc
from chalicelib.registry.sandbox.chronicler import SimulatedChronicler


class ChroniclerServicer(chronicler_pb2_grpc.ChroniclerServiceServicer):
    def __init__(self, chronicler: SimulatedChronicler) -> None:
        self.chronicler = chronicler
        self.available = True

    def RegisterClaimIntent(self, request, context):
        if not self.available:
            context.abort(grpc.StatusCode.UNAVAILABLE, "the chronicler is down")
        try:
            signature = self.chronicler.sign_request(
                request.certificate_id.registry,
                request.certificate_id.stream_id.value,
                request.quantity,
                bytes(request.random_r),
            )
        except RegistryRefused as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        return ch.ClaimIntentResponse(signature=signature)


class ChroniclerGrpcServer:
    """A running chronicler: `target` is host:port for the client. Stop with `stop()`."""

    def __init__(
        self, chronicler: SimulatedChronicler, host: str = "127.0.0.1", port: int = 0
    ) -> None:
        if not ipaddress.ip_address(host).is_loopback:
            raise ValueError("the simulated chronicler serves the loopback address only")
        self.chronicler = chronicler
        self.servicer = ChroniclerServicer(chronicler)
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        chronicler_pb2_grpc.add_ChroniclerServiceServicer_to_server(self.servicer, self._server)
        self.port = self._server.add_insecure_port(f"{host}:{port}")
        self.target = f"{host}:{self.port}"
        self._server.start()

    def stop(self, grace_s: float = 0.5) -> None:
        self._server.stop(grace_s).wait()
