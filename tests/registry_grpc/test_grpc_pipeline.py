"""Every command kind from accept to COMMITTED through the real gRPC adapter, over real gRPC, to
the simulator verifying every transaction as the real registry's verifier does."""

from __future__ import annotations

import hashlib
import json

import pytest

from chalicelib.domain import CertificateType, CommandKind, CommandStatus, SliceState
from chalicelib.registry import protocodec
from chalicelib.registry.crypto.pedersen import commit
from chalicelib.registry.port import TransactionStatus
from chalicelib.registry.secrets import open_slice
from tests.registry_grpc.pipeline import ProtoPipeline


@pytest.fixture
def p():
    pipeline = ProtoPipeline(grpc=True)
    yield pipeline
    pipeline.close()


def _available(p: ProtoPipeline, cert: str, owner: str = "alice") -> dict[int, str]:
    return {
        s.quantity_wh: s.slice_id
        for s in p.book.get_certificate(cert).slices.values()
        if s.state == SliceState.AVAILABLE and s.owner == owner
    }


def _kinds(p: ProtoPipeline, command_id: str) -> list[str]:
    return [
        protocodec.parse(data).payload_type.rsplit(".", 1)[1]
        for data in p.transactions_of(command_id)
    ]


def test_every_command_kind_commits_through_grpc_with_every_transaction_verified(p) -> None:
    production, whole = p.issued(quantity=1000)
    consumption, used = p.issued(
        quantity=300, gsrn="571313000000000002", type_=CertificateType.CONSUMPTION
    )
    sliced = p.slice("alice", production, whole, [600, 400])
    p.run()
    parts = _available(p, production)
    whole_transfer = p.transfer("alice", production, parts[400], "bob", 400)
    part_transfer = p.transfer("alice", production, parts[600], "carol", 100)
    p.run()
    rest = _available(p, production)[500]
    claim = p.claim("alice", (production, rest), (consumption, used), 300)  # production is cut
    p.run()
    withdraw = p.withdraw(consumption)  # a claimed consumption: its claim is undone
    p.run()
    (unclaim,) = [c for c in p.book.commands.values() if c.kind == CommandKind.UNCLAIM]

    commands = [sliced, whole_transfer, part_transfer, claim, withdraw, unclaim]
    assert [p.command(c.command_id).status for c in commands] == [CommandStatus.COMMITTED] * 6
    assert _kinds(p, sliced.command_id) == ["SlicedEvent"]
    assert _kinds(p, whole_transfer.command_id) == ["TransferredEvent"]
    assert _kinds(p, part_transfer.command_id) == ["SlicedEvent", "TransferredEvent"]
    assert _kinds(p, claim.command_id) == [
        "SlicedEvent",
        "AllocatedEvent",
        "AllocatedEvent",
        "ClaimedEvent",
        "ClaimedEvent",
    ]
    assert _kinds(p, withdraw.command_id) == ["WithdrawnEvent"]
    assert _kinds(p, unclaim.command_id) == ["UnclaimedEvent"]
    log = p.simulator.log()
    assert len(log) == 2 + 1 + 1 + 2 + 5 + 1 + 1
    assert {e.verdict for e in log} == {TransactionStatus.COMMITTED}
    p.check_invariants()
    actions = p.reconcile()
    assert actions["aligned"] == 2 and actions["drift_repaired"] == 0

    book = p.book.get_certificate(production)
    owners = sorted(
        (s.owner, s.quantity_wh, s.state.value) for s in book.slices.values() if s.is_live
    )
    assert owners == [
        ("alice", 200, "available"),
        ("alice", 300, "available"),  # claimed, and given back by the unclaim
        ("bob", 400, "available"),
        ("carol", 100, "available"),
    ]
    # The book names every live slice as the registry does, SHA-256 of its commitment, and
    # keeps its sealed secret, which opens to the slice's quantity.
    registry_refs = {s["ref"] for s in p.simulator.snapshot(production)["slices"]}
    for s in book.slices.values():
        if s.is_live:
            assert s.registry_ref in registry_refs
            secret = open_slice(p.box, production, s.slice_id, s.secret)
            assert secret.quantity == s.quantity_wh
            assert hashlib.sha256(commit(secret.quantity, secret.blinding)).hexdigest() == (
                s.registry_ref
            )
            stored = json.dumps(book.model_dump(mode="json"))
            assert secret.blinding.to_bytes(32, "little").hex() not in stored
    p.check_never_twice()


def test_the_reconciler_reads_the_registry_streams_back_into_owners_and_quantities(p) -> None:
    cert, whole = p.issued(quantity=1000)
    p.transfer("alice", cert, whole, "bob", 250)
    p.run()
    truth = p.codec.fold(cert, p.client.stream(cert))
    assert sorted((s.owner, s.quantity_wh) for s in truth.slices.values()) == [
        ("alice", 750),
        ("bob", 250),
    ]
    assert truth.transaction_ids == {e.transaction_id for e in p.simulator.log()}


def test_an_ambiguous_grpc_send_is_in_doubt_then_resolved_from_the_registry_never_resent() -> None:
    p = ProtoPipeline(grpc=True, ambiguous_rate=1.0)
    try:
        command = p.issue()
        p.run()
        assert p.command(command.command_id).status == CommandStatus.IN_DOUBT
        p.simulator.configure(ambiguous_rate=0.0)
        p.vclock.advance(10)
        p.reconcile()
        assert p.command(command.command_id).status == CommandStatus.COMMITTED
        assert len(p.simulator.log()) == 1
    finally:
        p.close()


def test_commands_wait_out_a_grpc_outage_and_are_sent_once_after_it() -> None:
    p = ProtoPipeline(grpc=True)
    try:
        p.simulator.set_available(False)
        command = p.issue()
        batch = p.queue.receive()
        assert {o.value for o in p.worker.process([m.delivery for m in batch])} == {"retry"}
        p.queue.give_back(batch)
        assert p.command(command.command_id).status == CommandStatus.ACCEPTED
        p.simulator.set_available(True)
        p.run()
        assert p.command(command.command_id).status == CommandStatus.COMMITTED
        assert len(p.simulator.log()) == 1
    finally:
        p.close()
