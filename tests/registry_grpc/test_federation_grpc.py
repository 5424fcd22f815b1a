"""A claim across two registries over real gRPC, with the registry's wire format (range
proofs, signatures, sealed secrets): each side's allocation and claim go to the registry of its
certificate, and each verifying simulator checks its own side, the consumption side finding the
production side's allocation in the other registry (issue 17)."""

from __future__ import annotations

from chalicelib.domain import Actor, CertificateType, CommandStatus, SliceRef, SliceState
from chalicelib.registry.federation import Registries
from chalicelib.registry.grpc_client import GrpcRegistry
from chalicelib.registry.sandbox.simulator import RegistrySimulator, SimulatorConfig
from chalicelib.registry.sandbox.verifier import ProtoLedger
from chalicelib.usecases import accept
from chalicelib.usecases.reconcile import Reconciler
from devstack.registry_grpc import RegistryGrpcServer
from tests.builders import issue_spec
from tests.pipeline import ISSUER
from tests.registry_grpc.pipeline import REGISTRY, ProtoPipeline

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

        def issued(area: str, type_: CertificateType, meter: str) -> SliceRef:
            command = accept.issue(
                p.book,
                p.queue,
                p.request(ISSUER),
                issue_spec(grid_area=area, type_=type_, meter=meter, owner="alice"),
                registry_of=AREAS.get,
            )
            _settle(p, registries)
            cert = p.book.get_certificate(command.certificate_id)
            assert cert is not None and cert.registry == AREAS[area], cert
            return SliceRef(certificate_id=cert.certificate_id, slice_id=next(iter(cert.slices)))

        production = issued("DK1", CertificateType.PRODUCTION, "571313000000000001")
        consumption = issued("DK2", CertificateType.CONSUMPTION, "571313000000000002")
        claim = accept.claim(
            p.book,
            p.queue,
            p.request(Actor(owner="alice")),
            production,
            consumption,
            400,
            boundary={"DK": ["DK1", "DK2"]},
        )
        _settle(p, registries)

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
