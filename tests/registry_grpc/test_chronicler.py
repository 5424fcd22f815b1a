"""The chronicler (issue 15): where a grid area names one, the registry refuses an allocation
that does not carry its signature over the side's claim intent, with upstream's reason ("Not
signed by Chronicler"); a claim asks it for one signature per side before anything is stored,
so a retry sends the stored bytes and never asks again (I1).

Over real gRPC: the worker's registry adapter to the verifying simulator, and the builder's
chronicler adapter to a simulated chronicler with its own key."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from chalicelib.domain import CertificateType, CommandStatus, SliceState
from chalicelib.ports import Outcome
from chalicelib.registry import chronicler, keys, protocodec
from chalicelib.registry.builder import ProtoTransactionBuilder
from chalicelib.registry.chronicler import Chroniclers
from chalicelib.registry.crypto import pedersen
from chalicelib.registry.port import RegistryRefused, TransactionStatus
from chalicelib.registry.secrets import open_slice
from tests.registry_grpc.pipeline import REGISTRY, ProtoPipeline
from tests.registry_grpc.test_verifier import _claim_built, _owner_secret, _resigned

COMMITTED, FAILED = TransactionStatus.COMMITTED, TransactionStatus.FAILED
UPSTREAM_REASON = "Not signed by Chronicler"


@pytest.fixture
def p():
    pipeline = ProtoPipeline(grpc=True, chronicler_areas=frozenset({"DK1"}))
    yield pipeline
    pipeline.close()


def _send(p: ProtoPipeline, data: bytes):
    (receipt,) = p.client.send([data])
    p.vclock.advance(2)
    return p.client.status(receipt.transaction_id)


def _pair(p: ProtoPipeline, grid_area: str = "DK1"):
    production = p.issued(quantity=500, grid_area=grid_area)
    consumption = p.issued(
        quantity=500,
        grid_area=grid_area,
        gsrn="571313000000000002",
        type_=CertificateType.CONSUMPTION,
    )
    return production, consumption


def _with_signature(p: ProtoPipeline, tx: bytes, side, signature: bytes) -> bytes:
    """The allocation re-signed by the side's owner, carrying `signature` instead."""
    event = protocodec.parse(tx).event
    event.chronicler_signature = signature
    secret = _owner_secret(p, *side)
    return _resigned(tx, lambda header: keys.sign_as_owner(secret, header), event)


def _commitment(p: ProtoPipeline, side) -> bytes:
    cert, slice_id = side
    sealed = p.book.get_certificate(cert).slices[slice_id].secret
    secret = open_slice(p.box, cert, slice_id, sealed)
    return pedersen.commit(secret.quantity, secret.blinding)


def test_each_side_of_a_claim_carries_its_own_chronicler_signature(p) -> None:
    production, consumption = _pair(p)
    allocate_production, allocate_consumption, *_ = _claim_built(p, production, consumption)
    for tx, side in ((allocate_production, production), (allocate_consumption, consumption)):
        signature = protocodec.parse(tx).event.chronicler_signature
        assert chronicler.signed_by_chronicler(
            [p.chronicler.public_key], signature, REGISTRY, side[0], _commitment(p, side)
        )
    assert [(i.certificate_id, i.quantity) for i in p.chronicler.intents] == [
        (production[0], 500),
        (consumption[0], 500),
    ]


def test_an_allocation_without_the_chroniclers_signature_is_refused(p) -> None:
    production, consumption = _pair(p)
    allocate_production, *_ = _claim_built(p, production, consumption)
    unsigned = _with_signature(p, allocate_production, production, b"")
    receipt = _send(p, unsigned)
    assert (receipt.status, receipt.message) == (FAILED, UPSTREAM_REASON)
    assert p.simulator.snapshot(production[0])["allocations"] == []


def test_an_allocation_signed_by_another_key_is_refused(p) -> None:
    production, consumption = _pair(p)
    allocate_production, *_ = _claim_built(p, production, consumption)
    intent = chronicler.claim_intent(REGISTRY, production[0], _commitment(p, production))
    forged = _with_signature(
        p, allocate_production, production, Ed25519PrivateKey.generate().sign(intent)
    )
    receipt = _send(p, forged)
    assert (receipt.status, receipt.message) == (FAILED, UPSTREAM_REASON)


def test_the_consumption_side_needs_its_own_signature_not_the_production_sides(p) -> None:
    production, consumption = _pair(p)
    allocate_production, allocate_consumption, claim_production, claim_consumption = _claim_built(
        p, production, consumption
    )
    assert _send(p, allocate_production).status == COMMITTED
    borrowed = protocodec.parse(allocate_production).event.chronicler_signature
    receipt = _send(p, _with_signature(p, allocate_consumption, consumption, borrowed))
    assert (receipt.status, receipt.message) == (FAILED, UPSTREAM_REASON)
    receipt = _send(p, _with_signature(p, allocate_consumption, consumption, b""))
    assert (receipt.status, receipt.message) == (FAILED, UPSTREAM_REASON)
    # the genuine transactions go through: the refusals changed nothing
    for tx in (allocate_consumption, claim_production, claim_consumption):
        assert _send(p, tx).status == COMMITTED


def test_a_claim_commits_end_to_end_with_the_chronicler_over_grpc(p) -> None:
    """Issue, claim a part (so each side is sliced first: the chronicler signs the new part's
    commitment), committed through the worker over gRPC."""
    production = p.issued(quantity=800)
    consumption = p.issued(
        quantity=500, gsrn="571313000000000002", type_=CertificateType.CONSUMPTION
    )
    command = p.claim("alice", production, consumption, 300)
    p.run()
    assert p.command(command.command_id).status == CommandStatus.COMMITTED
    assert [(i.certificate_id, i.quantity) for i in p.chronicler.intents] == [
        (production[0], 300),
        (consumption[0], 300),
    ]
    for cert in (production[0], consumption[0]):
        (allocation,) = p.simulator.snapshot(cert)["allocations"]
        assert allocation["claimed"]
    live = {
        s.quantity_wh: s.state
        for s in p.book.get_certificate(production[0]).slices.values()
        if s.state != SliceState.SLICED
    }
    assert live == {300: SliceState.CLAIMED, 500: SliceState.AVAILABLE}
    p.check_never_twice()


def test_a_grid_area_without_a_chronicler_asks_none(p) -> None:
    production, consumption = _pair(p, grid_area="DK2")
    command = p.claim("alice", production, consumption, 500)
    p.run()
    assert p.command(command.command_id).status == CommandStatus.COMMITTED
    assert p.chronicler.intents == []


def test_a_chronicler_that_is_down_postpones_the_claim_and_nothing_is_stored_or_sent(p) -> None:
    production, consumption = _pair(p)
    received = len(p.simulator.log())
    command = p.claim("alice", production, consumption, 500)
    assert p.chronicler_server is not None
    p.chronicler_server.servicer.available = False
    batch = p.queue.receive()
    assert p.worker.process([m.delivery for m in batch]) == [Outcome.RETRY]
    p.queue.give_back(batch)
    waiting = p.command(command.command_id)
    assert (waiting.status, waiting.transactions) == (CommandStatus.ACCEPTED, ())
    assert len(p.simulator.log()) == received  # nothing reached the registry
    p.chronicler_server.servicer.available = True
    p.run()
    assert p.command(command.command_id).status == CommandStatus.COMMITTED
    assert len(p.chronicler.intents) == 2
    p.check_never_twice()


def test_a_retry_sends_the_stored_transactions_and_never_asks_the_chronicler_again(p) -> None:
    """I1: the signatures are asked for once, before the transactions are stored; a send that
    fails (nothing sent) retries the stored bytes, signatures included."""
    production, consumption = _pair(p)
    command = p.claim("alice", production, consumption, 500)
    p.simulator.set_available(False)
    batch = p.queue.receive()
    assert p.worker.process([m.delivery for m in batch]) == [Outcome.RETRY]
    p.queue.give_back(batch)
    stored = p.command(command.command_id).transactions
    assert len(stored) == 4 and len(p.chronicler.intents) == 2
    p.simulator.set_available(True)
    p.run()
    done = p.command(command.command_id)
    assert (done.status, done.transactions) == (CommandStatus.COMMITTED, stored)
    assert len(p.chronicler.intents) == 2
    sent = [e.data for e in p.simulator.log() if e.payload_type.endswith("AllocatedEvent")]
    assert sent == p.transactions_of(command.command_id)[:2]
    p.check_never_twice()


class _Refusing:
    def register_claim_intent(self, registry, certificate_id, quantity, blinding) -> bytes:
        raise RegistryRefused("refused by the chronicler: INVALID_ARGUMENT no such registry")


def test_a_chronicler_that_refuses_the_intent_rejects_the_claim_and_frees_its_slices() -> None:
    p = ProtoPipeline(chronicler_areas=frozenset({"DK1"}))
    p.worker.builder = ProtoTransactionBuilder(
        REGISTRY, p.issuers, p.owner_keys, p.box, chroniclers=Chroniclers({"DK1": _Refusing()})
    )
    production, consumption = _pair(p)
    received = len(p.simulator.log())
    command = p.claim("alice", production, consumption, 500)
    p.run()
    rejected = p.command(command.command_id)
    assert rejected.status == CommandStatus.REJECTED
    assert "the chronicler refused the claim" in (rejected.error or "")
    assert len(p.simulator.log()) == received
    for cert, slice_id in (production, consumption):
        assert p.book.get_certificate(cert).slices[slice_id].state == SliceState.AVAILABLE


def test_two_workers_building_one_claim_at_once_send_one_set_of_transactions() -> None:
    """I1 under a race: while one worker waits for the chronicler, another builds, stores and
    sends the same claim. The first one's build is dropped at the guard: its intents stay
    unused at the chronicler, and nothing reaches the registry twice."""
    p = ProtoPipeline(chronicler_areas=frozenset({"DK1"}))
    production, consumption = _pair(p)
    command = p.claim("alice", production, consumption, 500)
    (message,) = p.queue.receive()
    rival = p.make_worker()
    asked = p.chronicler.register_claim_intent
    raced: list = []

    def slow_chronicler(*args):
        if not raced:
            raced.append("racing")
            raced.append(rival.process([message.delivery]))  # overtakes the first worker
        return asked(*args)

    p.chronicler.register_claim_intent = slow_chronicler  # type: ignore[method-assign]
    first = p.worker.process([message.delivery])
    assert raced and first in ([Outcome.DONE], [Outcome.LATER])
    p.queue.give_back([message])
    p.run()
    done = p.command(command.command_id)
    assert done.status == CommandStatus.COMMITTED
    assert len(p.chronicler.intents) == 4  # two builds asked; one was stored and sent
    allocations = [e.data for e in p.simulator.log() if e.payload_type.endswith("AllocatedEvent")]
    assert allocations == p.transactions_of(command.command_id)[:2]
    p.check_never_twice()
