"""A claim across two registries over real gRPC, with the registry's wire format (range
proofs, signatures, sealed secrets): each side's allocation and claim go to the registry of its
certificate, and each verifying simulator checks its own side, the consumption side finding the
production side's allocation in the other registry (issue 17)."""

from __future__ import annotations

from chalicelib.domain import CommandStatus, SliceState
from chalicelib.registry.federation import Registries
from chalicelib.registry.grpc_client import GrpcRegistry
from chalicelib.registry.sandbox.simulator import RegistrySimulator, SimulatorConfig
from chalicelib.registry.sandbox.verifier import ProtoLedger
from chalicelib.usecases.reconcile import Reconciler
from devstack.registry_grpc import RegistryGrpcServer
from tests.registry_grpc.pipeline import REGISTRY, ProtoPipeline
from tests.test_federation import claim_across_registries

AREAS = {"DK1": REGISTRY, "DK2": "dk2"}


def test_a_claim_across_two_registries_over_grpc_is_verified_by_both() -> None:
    p = ProtoPipeline(grpc=True)  # DK1's registry
    dk2 = RegistrySimulator(
        SimulatorConfig(queries=True),
        clock=p.vclock,
        sleep=p.vclock.sleep,
        ledger=ProtoLedger(p.issuers.public_keys, registry="dk2", now=p.now),
    )
    server = RegistryGrpcServer(dk2)
    client = GrpcRegistry(server.target, tls=False, timeout_s=5, sleep=p.vclock.sleep)
    try:
        simulators = {REGISTRY: p.simulator, "dk2": dk2}
        for name, simulator in simulators.items():
            simulator.federate(name, simulators)
        registries = Registries({REGISTRY: p.client, "dk2": client}, REGISTRY, p.codec)
        p.worker = p.make_worker(registry=registries)

        claim, production, consumption = claim_across_registries(
            p, AREAS, lambda: _settle(p, registries)
        )

        done = p.command(claim.command_id)
        assert (done.status, done.error) == (CommandStatus.COMMITTED, None)
        for simulator, ref in ((p.simulator, production), (dk2, consumption)):
            mine = [e for e in simulator.log() if e.stream_id == ref.certificate_id]
            kinds = {e.payload_type.rsplit(".", 1)[-1] for e in mine if e.payload_type}
            assert {"AllocatedEvent", "ClaimedEvent"} <= kinds, kinds
            assert all(e.verdict.value == "COMMITTED" for e in simulator.log())
            assert simulator.log() and all(
                e.stream_id in (production.certificate_id, consumption.certificate_id)
                for e in simulator.log()
            )
        for ref in (production, consumption):
            cert = p.book.get_certificate(ref.certificate_id)
            assert cert is not None
            assert any(s.state == SliceState.CLAIMED for s in cert.slices.values())
    finally:
        client.close()
        server.stop()
        p.close()


def _settle(p: ProtoPipeline, registries: Registries) -> None:
    """Deliver; a step still PENDING when its message ran out is the reconciler's."""
    p.run()
    p.vclock.advance(301)
    Reconciler(
        book=p.book,
        queue=p.queue,
        registry=registries,
        worker=p.worker,
        clock=p.now,
        codec=p.codec,
    ).run()
    p.run()
