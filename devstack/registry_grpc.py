"""The registry simulator over gRPC: Project Origin's RegistryService, on 127.0.0.1 only.

So that the real adapter (chalicelib/registry/grpc_client.py) runs over real gRPC in the
end-to-end tests and, when configured, in the embedded stack. The simulator behind it keeps its
faults, mapped to what a client of the real registry would see:

- an outage: UNAVAILABLE with trailing metadata `registry-refused: before-apply` (nothing was
  looked at, the client may send the same bytes again);
- an ambiguous or lost send: DEADLINE_EXCEEDED after the simulator applied (or lost) the batch;
- a registry without queries: UNIMPLEMENTED for status and stream queries. The real registry's
  SendTransactions answers nothing about the outcome, so over gRPC the verdicts are learnt only
  from status queries: serve a simulator with queries switched on.

    python -m devstack.registry_grpc --port 8101 --seed 1 --sandbox-secret <secret>

verifies protobuf transactions (registry/sandbox/verifier.py) with the sandbox issuer keys
derived from the secret, as the service derives them from CERTS_REGISTRY_SANDBOX_SECRET. With
`--chronicler DK1,DK2 --chronicler-port 8102` it also serves a chronicler of its own (a fresh
Ed25519 key, printed) and requires its signature on allocations in those grid areas.
"""

from __future__ import annotations

import argparse
import ipaddress
from concurrent import futures

import grpc

from chalicelib.registry.grpc_client import REFUSED_BEFORE_APPLY, REFUSED_KEY
from chalicelib.registry.port import (
    QueriesNotSupported,
    RegistryAmbiguous,
    RegistryRefused,
    RegistryUnavailable,
)
from chalicelib.registry.proto.project_origin.registry.v1 import registry_pb2 as reg
from chalicelib.registry.proto.project_origin.registry.v1 import registry_pb2_grpc
from chalicelib.registry.sandbox.simulator import RegistrySimulator, SimulatorConfig


class RegistryServicer(registry_pb2_grpc.RegistryServiceServicer):
    def __init__(self, simulator: RegistrySimulator) -> None:
        self.simulator = simulator

    def SendTransactions(self, request, context):
        batch = [tx.SerializeToString(deterministic=True) for tx in request.transactions]
        try:
            self.simulator.send(batch)
        except RegistryUnavailable as exc:
            context.set_trailing_metadata(((REFUSED_KEY, REFUSED_BEFORE_APPLY),))
            context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
        except RegistryAmbiguous as exc:
            context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, str(exc))
        except RegistryRefused as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        return reg.SubmitTransactionResponse()

    def GetTransactionStatus(self, request, context):
        receipt = self._query(context, lambda: self.simulator.status(request.id))
        return reg.GetTransactionStatusResponse(
            status=reg.TransactionState.Value(receipt.status.value), message=receipt.message
        )

    def GetStreamTransactions(self, request, context):
        found = self._query(context, lambda: self.simulator.stream(request.stream_id.value))
        return reg.GetStreamTransactionsResponse(
            transactions=[reg.Transaction.FromString(data) for data in found]
        )

    @staticmethod
    def _query(context, call):
        try:
            return call()
        except QueriesNotSupported as exc:
            context.abort(grpc.StatusCode.UNIMPLEMENTED, str(exc))
        except RegistryUnavailable as exc:
            context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))


class RegistryGrpcServer:
    """A running server: `target` is host:port for the client. Stop with `stop()`."""

    def __init__(self, simulator: RegistrySimulator, host: str = "127.0.0.1", port: int = 0):
        if not ipaddress.ip_address(host).is_loopback:
            raise ValueError("the simulator serves the loopback address only")
        self.simulator = simulator
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        registry_pb2_grpc.add_RegistryServiceServicer_to_server(
            RegistryServicer(simulator), self._server
        )
        self.port = self._server.add_insecure_port(f"{host}:{port}")
        self.target = f"{host}:{self.port}"
        self._server.start()

    def stop(self, grace_s: float = 0.5) -> None:
        self._server.stop(grace_s).wait()


def serve(simulator: RegistrySimulator, host: str = "127.0.0.1", port: int = 0):
    return RegistryGrpcServer(simulator, host, port)


def main(argv: list[str] | None = None) -> None:
    from chalicelib.registry.keys import IssuerKeys
    from chalicelib.registry.sandbox.verifier import ProtoLedger

    parser = argparse.ArgumentParser(
        prog="python -m devstack.registry_grpc",
        description="Serve the verifying registry simulator over gRPC on 127.0.0.1.",
    )
    parser.add_argument("--port", type=int, default=8101)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--ambiguous-rate", type=float, default=0.0)
    parser.add_argument("--sandbox-secret", required=True, help="derives the issuer keys")
    parser.add_argument("--chronicler", metavar="AREAS", default="", help="e.g. DK1,DK2")
    parser.add_argument("--chronicler-port", type=int, default=8102)
    args = parser.parse_args(argv)
    issuers = IssuerKeys.sandbox(args.sandbox_secret.encode())
    areas = {a.strip() for a in args.chronicler.split(",") if a.strip()}
    chronicler = None
    if areas:
        import base64

        from chalicelib.registry.sandbox.chronicler import SimulatedChronicler
        from devstack.chronicler_grpc import ChroniclerGrpcServer

        chronicler = ChroniclerGrpcServer(SimulatedChronicler(), port=args.chronicler_port)
        key = base64.b64encode(chronicler.chronicler.public_key).decode()
        print(
            f"chronicler of {','.join(sorted(areas))} on {chronicler.target}, key {key}",
            flush=True,
        )
    simulator = RegistrySimulator(
        SimulatorConfig(
            seed=args.seed,
            queries=True,
            latency_s=args.latency_ms / 1000,
            ambiguous_rate=args.ambiguous_rate,
        ),
        ledger=ProtoLedger(
            issuers.public_keys,
            chronicler_keys=lambda area: (
                [chronicler.chronicler.public_key] if chronicler and area in areas else []
            ),
        ),
    )
    server = serve(simulator, port=args.port)
    print(f"registry simulator (gRPC, verifying) on {server.target}", flush=True)
    try:
        server._server.wait_for_termination()
    except KeyboardInterrupt:
        server.stop()
        if chronicler is not None:
            chronicler.stop()


if __name__ == "__main__":
    main()
