"""tests/pipeline.py's Pipeline with real registry transactions: the proto builder, the
verifying simulator (in-process, or served over real gRPC to the real gRPC adapter), sealed
secrets and the proto codec for the reconciler."""

from __future__ import annotations

import base64
from datetime import timedelta
from typing import Any

from chalicelib.registry.builder import ProtoTransactionBuilder
from chalicelib.registry.chronicler import Chroniclers
from chalicelib.registry.chronicler_grpc import GrpcChronicler
from chalicelib.registry.grpc_client import GrpcRegistry
from chalicelib.registry.keys import IssuerKeys, SandboxOwnerKeys
from chalicelib.registry.protocodec import BookSliceDirectory, ProtoCodec
from chalicelib.registry.sandbox.chronicler import SimulatedChronicler
from chalicelib.registry.sandbox.simulator import RegistrySimulator, SimulatorConfig
from chalicelib.registry.sandbox.verifier import ProtoLedger
from chalicelib.registry.secrets import LocalSecretBox
from chalicelib.usecases.process import Worker
from chalicelib.usecases.reconcile import Reconciler
from devstack.chronicler_grpc import ChroniclerGrpcServer
from devstack.registry_grpc import RegistryGrpcServer
from tests.pipeline import Pipeline

SANDBOX_SECRET = b"tests: the sandbox root secret for issuer and owner keys"
SECRETS_KEY = bytes(range(32))
REGISTRY = "test-registry"


class ProtoPipeline(Pipeline):
    """Set `grpc=True` to put real gRPC between the worker and the simulator (and between the
    builder and the chronicler). `chronicler_areas`: grid areas that name a simulated
    chronicler, which the registry then requires on their allocations. Call close()."""

    def __init__(
        self,
        *,
        queries: bool = True,
        grpc: bool = False,
        registry_expiry: timedelta | None = None,
        chronicler_areas: frozenset[str] = frozenset(),
        **faults: Any,
    ) -> None:
        super().__init__(queries=queries, **faults)
        self.chronicler_areas = chronicler_areas
        self.chronicler = SimulatedChronicler()
        self.chronicler_server: ChroniclerGrpcServer | None = None
        self.chronicler_client: GrpcChronicler | None = None
        asked: Any = self.chronicler
        if chronicler_areas and grpc:
            self.chronicler_server = ChroniclerGrpcServer(self.chronicler)
            self.chronicler_client = asked = GrpcChronicler(
                self.chronicler_server.target, tls=False, timeout_s=5
            )
        self.chroniclers = Chroniclers({area: asked for area in chronicler_areas})
        self.retired_areas: set[str] = set()  # grid areas the registry no longer configures
        self.issuers = IssuerKeys.sandbox(SANDBOX_SECRET)
        self.owner_keys = SandboxOwnerKeys(SANDBOX_SECRET)
        self.box = LocalSecretBox(SECRETS_KEY)
        self.builder = ProtoTransactionBuilder(
            REGISTRY, self.issuers, self.owner_keys, self.box, chroniclers=self.chroniclers
        )
        self.simulator = RegistrySimulator(
            SimulatorConfig(queries=queries, **faults),
            clock=self.vclock,
            sleep=self.vclock.sleep,
            ledger=ProtoLedger(
                self._issuer_keys,
                registry=REGISTRY,
                expiry=registry_expiry,
                now=self.now,
                chronicler_keys=self._chronicler_keys,
            ),
        )
        self.server: RegistryGrpcServer | None = None
        if grpc:
            self.server = RegistryGrpcServer(self.simulator)
            self.client = GrpcRegistry(
                self.server.target, tls=False, timeout_s=5, sleep=self.vclock.sleep
            )
        self.registry = self.simulator  # what the Pipeline's checks read
        self.codec = ProtoCodec(BookSliceDirectory(self.book, self.box))
        self.worker = self.make_worker()

    def _issuer_keys(self, grid_area: str) -> list[bytes]:
        return [] if grid_area in self.retired_areas else self.issuers.public_keys(grid_area)

    def _chronicler_keys(self, grid_area: str) -> list[bytes]:
        return [self.chronicler.public_key] if grid_area in self.chronicler_areas else []

    def close(self) -> None:
        if self.server is not None:
            self.client.close()
            self.server.stop()
        if self.chronicler_server is not None:
            assert self.chronicler_client is not None
            self.chronicler_client.close()
            self.chronicler_server.stop()

    def make_worker(self, book: Any = None, registry: Any = None) -> Worker:
        worker = super().make_worker(book, registry or getattr(self, "client", None))
        if hasattr(self, "builder"):
            worker.builder = self.builder
        return worker

    def make_reconciler(self, **overrides: Any) -> Reconciler:
        reconciler = super().make_reconciler(**overrides)
        reconciler.registry = getattr(self, "client", self.simulator)
        reconciler.codec = self.codec
        return reconciler

    def transactions_of(self, command_id: str) -> list[bytes]:
        return [base64.b64decode(t) for t in self.command(command_id).transactions]
