"""A certificate lives in one registry for good: chosen from its grid area when it is issued,
named in every transaction of it (the header's FederatedStreamId is what a federation routes
by), and shown in the API. A claim may span two registries: each side's transactions name
their own certificate's registry."""

from __future__ import annotations

import base64

import pytest

from chalicelib.adapters.memory import InMemoryBook, InMemoryQueue
from chalicelib.api import models as m
from chalicelib.domain import Actor, CertificateType, Role, RuleViolation
from chalicelib.registry import protocodec
from chalicelib.registry.builder import PlainTransactionBuilder
from chalicelib.registry.envelope import Transaction
from chalicelib.usecases import accept
from tests.builders import (
    active_certificate,
    claim_command,
    issue_spec,
    ref_of,
    transfer_command,
)
from tests.test_accept import request

pytestmark = pytest.mark.usefixtures("groups_both_ways")

AREAS = {"DK1": "dk1", "DK2": "dk2"}
ISSUER = Actor(owner="issuer-dk", roles=frozenset({Role.ISSUER}))


def _registries(transactions: tuple[str, ...]) -> list[tuple[str, str]]:
    """(header registry, payload stream registry) of each plain transaction."""
    found = []
    for tx in transactions:
        parsed = Transaction.parse(base64.b64decode(tx))
        payload = parsed.payload
        stream = payload.get("certificate_id") or payload.get("production_certificate_id")
        found.append((parsed.header.registry, stream["registry"] if stream else None))
    return found


def test_an_issue_is_in_the_registry_of_its_grid_area() -> None:
    command = accept.issue(
        InMemoryBook(),
        InMemoryQueue(),
        _issuer_request(),
        issue_spec(grid_area="DK2"),
        registry_of=AREAS.get,
    )
    assert command.issue is not None and command.issue.registry == "dk2"
    built = PlainTransactionBuilder("the-one").build(command, {})
    assert _registries(built.transactions) == [("dk2", "dk2")]


def test_an_issue_in_a_grid_area_no_registry_issues_in_is_refused_and_records_nothing() -> None:
    book, queue = InMemoryBook(), InMemoryQueue()
    spec = issue_spec(grid_area="SE3")
    with pytest.raises(RuleViolation, match="no registry issues certificates of grid area SE3"):
        accept.issue(book, queue, _issuer_request(), spec, registry_of=AREAS.get)
    assert queue.messages == []
    assert book.get_certificates([domain_id(spec)]) == []


def test_a_certificate_of_before_federation_stays_in_the_one_registry() -> None:
    cert = active_certificate(issue_spec())
    assert cert.registry is None
    transfer = transfer_command(ref_of(cert), cert.quantity_wh)
    built = PlainTransactionBuilder("the-one").build(transfer, {cert.certificate_id: cert})
    assert _registries(built.transactions) == [("the-one", "the-one")]
    assert m.CertificateView.of(cert, None, registry="the-one").registry == "the-one"


def test_a_claim_across_registries_sends_each_side_to_its_own() -> None:
    production = active_certificate(
        issue_spec(grid_area="DK1").model_copy(update={"registry": "dk1"}), key="p"
    )
    consumption = active_certificate(
        issue_spec(
            grid_area="DK2", type_=CertificateType.CONSUMPTION, meter="571234567890000002"
        ).model_copy(update={"registry": "dk2"}),
        key="c",
    )
    claim = claim_command(
        ref_of(production), ref_of(consumption), quantity_wh=production.quantity_wh
    )
    certs = {production.certificate_id: production, consumption.certificate_id: consumption}
    built = PlainTransactionBuilder("the-one").build(claim, certs)
    # allocation on each side, then the claimed events: each in its certificate's registry;
    # the allocation names both certificates with their registries
    headers = [Transaction.parse(base64.b64decode(t)) for t in built.transactions]
    assert [h.header.registry for h in headers] == ["dk1", "dk2", "dk1", "dk2"]
    allocated = headers[0].payload
    assert allocated["production_certificate_id"]["registry"] == "dk1"
    assert allocated["consumption_certificate_id"]["registry"] == "dk2"
    assert m.CertificateView.of(consumption, "alice", registry="the-one").registry == "dk2"


def test_the_proto_builder_names_the_certificates_registry_in_header_and_event() -> None:
    from tests.registry_grpc.pipeline import ProtoPipeline

    p = ProtoPipeline()
    try:
        command = accept.issue(
            p.book,
            p.queue,
            p.request(ISSUER),
            issue_spec(grid_area="DK1"),
            registry_of={"DK1": "dk1"}.get,
        )
        built = p.builder.build(command, {})
        parsed = protocodec.parse(base64.b64decode(built.transactions[0]))
        assert parsed.transaction.header.federated_stream_id.registry == "dk1"
        assert parsed.event.certificate_id.registry == "dk1"
    finally:
        p.close()


def _issuer_request():
    return request("issuer-dk", "key-1", "body", Role.ISSUER)


def domain_id(spec) -> str:
    from chalicelib import domain

    return domain.certificate_id_for(spec.gsrn, spec.type, spec.period.start)


# --- one registry's trouble stays its own ------------------------------------------------------


@pytest.mark.parametrize("queries", [False, True], ids=["no-queries", "queries"])
def test_a_registry_down_for_30_minutes_holds_back_none_of_the_others_commands(queries) -> None:
    from chalicelib.domain import CommandStatus
    from chalicelib.registry.federation import Registries
    from chalicelib.registry.sandbox.simulator import RegistrySimulator, SimulatorConfig
    from chalicelib.usecases.reconcile import Reconciler
    from tests.pipeline import ISSUER, T0, Pipeline

    p = Pipeline(queries=queries)  # its simulator is DK2's registry
    outage_end = 30 * 60
    dk1 = RegistrySimulator(
        SimulatorConfig(queries=queries, outages=((0, outage_end),)),
        clock=p.vclock,
        sleep=p.vclock.sleep,
    )
    # The builder names the one registry "test-registry": DK1's, the default.
    registries = Registries({"test-registry": dk1, "dk2": p.registry}, "test-registry")
    p.worker = p.make_worker(registry=registries)
    areas = {"DK1": "test-registry", "DK2": "dk2"}
    commands = [
        accept.issue(
            p.book,
            p.queue,
            p.request(ISSUER),
            issue_spec(grid_area=area, meter=f"57131300000000{n:04d}"),
            registry_of=areas.get,
        )
        for n, area in enumerate(["DK1", "DK2"] * 4)
    ]
    p.run()
    # DK1's steps outlived their message's receives (sent as the outage ended, still PENDING):
    # the reconciler asks DK1's registry about them, not DK2's.
    reconciler = Reconciler(
        book=p.book, queue=p.queue, registry=registries, worker=p.worker, clock=p.now
    )
    p.vclock.advance(301)
    reconciler.run()
    p.run()
    done = {c.command_id: p.command(c.command_id) for c in commands}
    assert {(c.status, c.error) for c in done.values()} == {(CommandStatus.COMMITTED, None)}
    for command in commands:
        committed_s = (done[command.command_id].updated_at - T0).total_seconds()
        if command.issue.grid_area == "DK2":
            assert committed_s < 60, "DK2's commands waited for DK1's registry"
        else:
            assert committed_s >= outage_end
    # each registry took its own transactions, once each
    assert sorted(e.stream_id for e in dk1.log()) == sorted(
        c.certificate_id for c in commands if c.issue.grid_area == "DK1"
    )
    assert sorted(e.stream_id for e in p.registry.log()) == sorted(
        c.certificate_id for c in commands if c.issue.grid_area == "DK2"
    )


# --- a claim across two registries ---------------------------------------------------------------


def claim_across_registries(p, areas: dict[str, str], settle):
    """Alice's DK1 production and DK2 consumption, each issued in its grid area's registry
    (`areas`) and settled, then a claim of 400 Wh across the two, accepted and settled:
    (the claim, the production slice, the consumption slice)."""
    from chalicelib.domain import SliceRef
    from tests.pipeline import ISSUER

    def issued(area: str, type_: CertificateType, meter: str) -> SliceRef:
        command = accept.issue(
            p.book,
            p.queue,
            p.request(ISSUER),
            issue_spec(grid_area=area, type_=type_, meter=meter, owner="alice"),
            registry_of=areas.get,
        )
        settle()
        cert = p.book.get_certificate(command.certificate_id)
        assert cert is not None and cert.registry == areas[area], cert
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
    settle()
    return claim, production, consumption


@pytest.mark.parametrize("queries", [False, True], ids=["no-queries", "queries"])
def test_a_claim_across_two_registries_commits_each_side_in_its_own(queries) -> None:
    """DK1's production in its registry, DK2's consumption in another: the production
    allocation goes to the first, the consumption allocation to the second, whose verifier
    finds the production side allocated by asking the first (federated simulators)."""
    from chalicelib.domain import CommandStatus, SliceState
    from chalicelib.registry.federation import Registries
    from chalicelib.registry.sandbox.simulator import RegistrySimulator, SimulatorConfig
    from tests.pipeline import Pipeline

    p = Pipeline(queries=queries)  # its simulator is DK1's registry, "test-registry"
    dk2 = RegistrySimulator(SimulatorConfig(queries=queries), clock=p.vclock, sleep=p.vclock.sleep)
    simulators = {"test-registry": p.registry, "dk2": dk2}
    for name, simulator in simulators.items():
        simulator.federate(name, simulators)
    registries = Registries(simulators, "test-registry")
    p.worker = p.make_worker(registry=registries)

    def settle() -> None:
        p.run()
        if queries:  # a step still PENDING when its message ran out: the reconciler settles it
            from chalicelib.usecases.reconcile import Reconciler

            p.vclock.advance(301)
            Reconciler(
                book=p.book, queue=p.queue, registry=registries, worker=p.worker, clock=p.now
            ).run()
            p.run()

    claim, production, consumption = claim_across_registries(
        p, {"DK1": "test-registry", "DK2": "dk2"}, settle
    )
    done = p.command(claim.command_id)
    assert (done.status, done.error) == (CommandStatus.COMMITTED, None)
    # each side's transactions went to its own registry, and both committed there
    for simulator, ref in ((p.registry, production), (dk2, consumption)):
        kinds = [e.payload_type for e in simulator.log() if e.stream_id == ref.certificate_id]
        assert "AllocatedEvent" in str(kinds) and "ClaimedEvent" in str(kinds), kinds
        assert all(e.verdict.value == "COMMITTED" for e in simulator.log())
    for ref in (production, consumption):
        cert = p.book.get_certificate(ref.certificate_id)
        assert any(s.state == SliceState.CLAIMED for s in cert.slices.values())


# --- a bound on what is in flight, a back-off after a refusal ------------------------------------


class _Refusing:
    """A registry that refuses (or takes) each call as told, and counts the calls it got."""

    supports_queries = False

    def __init__(self) -> None:
        self.calls = 0
        self.refuse = True
        self.during = None  # a call made while this one is in flight

    def send(self, transactions):
        from chalicelib.registry.port import Receipt, RegistryUnavailable, TransactionStatus

        self.calls += 1
        if self.during:
            during, self.during = self.during, None
            during()
        if self.refuse:
            raise RegistryUnavailable("RESOURCE_EXHAUSTED")
        return [Receipt(str(i), TransactionStatus.COMMITTED) for i, _ in enumerate(transactions)]


def test_after_a_refusal_sends_back_off_doubling_without_calling_the_registry() -> None:
    from chalicelib.registry.federation import Guarded
    from chalicelib.registry.port import RegistryUnavailable

    now = [0.0]
    inner = _Refusing()
    guarded = Guarded(inner, "dk1", backoff_s=1.0, max_backoff_s=4.0, clock=lambda: now[0])
    # refused at 0, then each time its back-off has passed: 1, 2, 4 and (the most) 4 s later
    for refused_at, backing_off_at in ((0, 0.5), (1, 2.9), (3, 6.9), (7, 10.9), (11, None)):
        now[0] = refused_at
        with pytest.raises(RegistryUnavailable, match="RESOURCE_EXHAUSTED"):
            guarded.send([b"tx"])
        if backing_off_at is not None:
            now[0] = backing_off_at
            with pytest.raises(RegistryUnavailable, match="backing off for"):
                guarded.send([b"tx"])
    assert inner.calls == 5  # one call per back-off, none during one
    inner.refuse = False
    now[0] += 4.0
    assert len(guarded.send([b"a", b"b"])) == 2
    inner.refuse = True  # a success started the back-off over: 1 s again
    with pytest.raises(RegistryUnavailable):
        guarded.send([b"tx"])
    now[0] += 1.0
    with pytest.raises(RegistryUnavailable, match="RESOURCE_EXHAUSTED"):
        guarded.send([b"tx"])


def test_a_send_beyond_the_bound_in_flight_is_refused_without_a_call() -> None:
    from chalicelib.registry.federation import Guarded
    from chalicelib.registry.port import RegistryUnavailable

    inner = _Refusing()
    inner.refuse = False
    guarded = Guarded(inner, "dk1", max_in_flight=3)
    refused = []

    def meanwhile() -> None:  # another poller, while two are in flight
        try:
            guarded.send([b"c", b"d"])
        except RegistryUnavailable as exc:
            refused.append(str(exc))
        guarded.send([b"e"])  # within the bound

    inner.during = meanwhile
    assert len(guarded.send([b"a", b"b"])) == 2
    assert refused == ["registry 'dk1' has 2 transactions in flight from here (at most 3)"]
    assert inner.calls == 2  # the first and the one within the bound
    assert len(guarded.send([b"a", b"b", b"c"])) == 3  # nothing in flight any more
