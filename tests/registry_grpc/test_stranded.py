"""A stranded allocation is never hidden (issue 15), over real gRPC against the verifying
simulator: a claim whose consumption-side allocation is refused after its production
allocation committed leaves the production slice allocated in the registry for good, and the
book, the command, the operators' stuck list and a metric all say so. A transient refusal at
that step is only a wait: the claim completes, and nothing reaches the registry twice."""

from __future__ import annotations

import base64
import json
import logging
import uuid
from collections import Counter
from collections.abc import Callable, Sequence

import pytest
from chalice.test import Client

import app as app_module
from chalicelib import composition, domain
from chalicelib.adapters.memory import InMemoryQueue
from chalicelib.api.auth import SharedSecretVerifier
from chalicelib.domain import CertificateType, CommandKind, CommandStatus, SliceState
from chalicelib.registry.builder import allocation_id_for
from chalicelib.registry.envelope import transaction_id_of
from chalicelib.registry.port import Receipt
from tests.conftest import SECRET, settings, token
from tests.registry_grpc.pipeline import ProtoPipeline

OPERATOR = {"Authorization": "Bearer " + token("ops", "operator")}
ALICE = {"Authorization": "Bearer " + token("alice")}


class Interposed:
    """The worker's registry, with `before(batch)` run before each send goes on to it."""

    def __init__(self, registry, before: Callable[[Sequence[bytes]], None]) -> None:
        self._registry = registry
        self._before = before
        self.offered: Counter[str] = Counter()  # transaction id -> sends the worker tried

    def send(self, transactions: Sequence[bytes]) -> list[Receipt]:
        self.offered.update(transaction_id_of(bytes(t)) for t in transactions)
        self._before(transactions)
        return self._registry.send(transactions)

    def __getattr__(self, name: str):
        return getattr(self._registry, name)


@pytest.fixture
def p():
    pipeline = ProtoPipeline(grpc=True)
    yield pipeline
    pipeline.close()


def _claim_with_a_cut(p: ProtoPipeline):
    """A claim of 300 Wh of a 1,000 Wh production slice (cut first) against a 300 Wh
    consumption slice: Sliced, Allocated x2, Claimed x2."""
    production, whole = p.issued(quantity=1000)
    consumption, used = p.issued(
        quantity=300, gsrn="571313000000000002", type_=CertificateType.CONSUMPTION
    )
    claim = p.claim("alice", (production, whole), (consumption, used), 300)
    return production, whole, consumption, used, claim


def _tx(p: ProtoPipeline, command_id: str, step: int) -> bytes:
    return p.transactions_of(command_id)[step]


def _withdraw_in_the_registry(p: ProtoPipeline, certificate_id: str) -> None:
    """The issuer withdraws the certificate in the registry, behind the book's back."""
    now = p.now()
    command = domain.Command(
        command_id=str(uuid.uuid4()),
        kind=CommandKind.WITHDRAW,
        certificate_id=certificate_id,
        caller="issuer-dk",
        request_hash="test",
        created_at=now,
        updated_at=now,
        step=0,
    )
    cert = p.book.get_certificate(certificate_id)
    (withdrawn,) = p.builder.build(command, {certificate_id: cert}).transactions
    assert p.simulator.inject(base64.b64decode(withdrawn)).status.value == "COMMITTED"


def _api(p: ProtoPipeline):
    services = composition.Services(
        settings=settings(),
        book=p.book,
        queue=InMemoryQueue(),
        verifier=SharedSecretVerifier(SECRET),
        clock=p.now,
    )
    app_module.use_services(services)
    return Client(app_module.app)


def test_a_refused_consumption_allocation_leaves_the_production_slice_allocated_and_shown(
    p, caplog
) -> None:
    production, whole, consumption, used, claim = _claim_with_a_cut(p)
    withdrawn = []

    def withdraw_before_the_consumption_allocation(batch: Sequence[bytes]) -> None:
        current = p.command(claim.command_id)
        if not withdrawn and current.transactions and _tx(p, claim.command_id, 2) in batch:
            _withdraw_in_the_registry(p, consumption)
            withdrawn.append(True)

    p.worker.registry = Interposed(p.client, withdraw_before_the_consumption_allocation)
    with caplog.at_level(logging.INFO, logger="certificates"):
        p.run()

    # The registry: the production part is allocated, for good; the consumption slice is not.
    assert withdrawn == [True]
    refused = [e for e in p.simulator.log() if e.verdict.value == "FAILED"]
    assert [e.transaction_id for e in refused] == [transaction_id_of(_tx(p, claim.command_id, 2))]
    assert "withdrawn" in refused[0].message
    folded = p.codec.fold(production, p.client.stream(production))
    assert sorted((s.quantity_wh, s.allocated, s.claimed) for s in folded.slices.values()) == [
        (300, True, False),
        (700, False, False),
    ]

    # The book: the part is allocated (live, not usable), the rest available.
    part = domain.slice_id_for(claim.command_id, 0)
    book = p.book.get_certificate(production)
    states = {s.slice_id: (s.quantity_wh, s.state) for s in book.slices.values()}
    assert states[whole] == (1000, SliceState.SLICED)
    assert states[part] == (300, SliceState.ALLOCATED)
    assert states[domain.slice_id_for(claim.command_id, 1)] == (700, SliceState.AVAILABLE)
    assert domain.conservation_holds(book)
    assert p.book.get_certificate(consumption).slices[used].state == SliceState.AVAILABLE

    # The command: REJECTED, and its reason names the stranded allocation.
    rejected = p.command(claim.command_id)
    allocation_tx = transaction_id_of(_tx(p, claim.command_id, 1))
    assert rejected.status == CommandStatus.REJECTED
    assert rejected.error is not None
    for named in ("stranded", part, production, allocation_id_for(claim), allocation_tx):
        assert named in rejected.error, named
    (stranded,) = rejected.stranded
    assert (stranded.side, stranded.slice_id, stranded.transaction_id) == (
        CertificateType.PRODUCTION,
        part,
        allocation_tx,
    )

    # A metric counts it.
    metrics = [json.loads(r.getMessage()) for r in caplog.records if "_aws" in r.getMessage()]
    assert [m["stranded_allocations"] for m in metrics if "stranded_allocations" in m] == [1]

    # The reconciler finds the production aligned (the registry has it allocated too), and
    # repairs only the withdrawal it was not told about.
    p.check_invariants()
    actions = p.reconcile()
    assert actions["drift_repaired"] == 1, actions
    assert p.book.audits(production) == []
    assert p.book.get_certificate(production).slices[part].state == SliceState.ALLOCATED
    assert p.book.get_certificate(consumption).status == domain.CertificateStatus.WITHDRAWN

    # Operators see it in the stuck list; the owner sees the slice allocated; it cannot be used.
    try:
        with _api(p) as client:
            stuck = json.loads(client.http.get("/v1/ops/commands", headers=OPERATOR).body)
            (item,) = [c for c in stuck["items"] if c["command_id"] == claim.command_id]
            assert item["status"] == "REJECTED"
            assert item["stranded"] == [
                {
                    "side": "production",
                    "certificate_id": production,
                    "slice_id": part,
                    "allocation_id": allocation_id_for(claim),
                    "transaction_id": allocation_tx,
                }
            ]
            assert allocation_tx in item["transaction_ids"]
            only = client.http.get("/v1/ops/commands?status=REJECTED", headers=OPERATOR)
            assert [c["command_id"] for c in json.loads(only.body)["items"]] == [claim.command_id]
            view = json.loads(client.http.get(f"/v1/certificates/{production}", headers=ALICE).body)
            assert {s["slice_id"]: s["state"] for s in view["slices"]}[part] == "allocated"
    finally:
        app_module.use_services(None)
    with pytest.raises(domain.Conflict, match="allocated"):
        p.transfer("alice", production, part, "bob", 300)


def test_a_transient_refusal_of_the_consumption_allocation_is_only_a_wait(p) -> None:
    production, _, consumption, used, claim = _claim_with_a_cut(p)
    outage = []

    def refuse_the_consumption_allocation_once(batch: Sequence[bytes]) -> None:
        current = p.command(claim.command_id)
        if current.transactions and _tx(p, claim.command_id, 2) in batch:
            p.simulator.set_available(bool(outage))  # down the first time, back after
            outage.append(True)

    registry = Interposed(p.client, refuse_the_consumption_allocation_once)
    p.worker.registry = registry
    p.run()

    committed = p.command(claim.command_id)
    assert committed.status == CommandStatus.COMMITTED, committed.error
    assert committed.stranded == ()
    # Offered twice: refused before the registry looked at it, then sent once.
    sent = [transaction_id_of(t) for t in p.transactions_of(claim.command_id)]
    assert registry.offered[sent[2]] == 2
    received = Counter(p.simulator.received_ids())
    assert [received[t] for t in sent] == [1] * 5
    assert p.simulator.duplicates() == []
    book = p.book.get_certificate(production)
    assert book.slices[domain.slice_id_for(claim.command_id, 0)].state == SliceState.CLAIMED
    assert p.book.get_certificate(consumption).slices[used].state == SliceState.CLAIMED
    p.check_invariants()
    actions = p.reconcile()
    assert actions["drift_repaired"] == 0, actions
    with _api(p) as client:
        try:
            stuck = json.loads(client.http.get("/v1/ops/commands", headers=OPERATOR).body)
        finally:
            app_module.use_services(None)
    assert stuck["items"] == []
