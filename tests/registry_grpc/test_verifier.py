"""Tampered transactions are refused with the verifier's reason, and change nothing.

The transactions are built by the real builder for real commands, then altered the way a bug
or an attacker would (another signer, parts that do not add up, a spent slice, a proof with a
byte changed, events out of order) and re-signed where the alteration needs it, so that each
test reaches the one rule it is about."""

from __future__ import annotations

import base64
import hashlib
import uuid

import pytest

from chalicelib import domain
from chalicelib.domain import CertificateType, CommandKind, CommandStatus, SliceRef, SliceState
from chalicelib.registry import keys, protocodec
from chalicelib.registry.crypto.interface import prove_range
from chalicelib.registry.crypto.pedersen import commit
from chalicelib.registry.crypto.ristretto import random_scalar
from chalicelib.registry.port import TransactionStatus
from chalicelib.registry.proto.project_origin.registry.v1 import registry_pb2 as reg
from chalicelib.registry.secrets import open_slice
from chalicelib.usecases import holds
from tests.registry_grpc.pipeline import ProtoPipeline


@pytest.fixture
def p():
    pipeline = ProtoPipeline()
    yield pipeline
    pipeline.close()


def _built(p: ProtoPipeline, command) -> list[bytes]:
    """The command's transactions as the worker would build them; nothing is sent, and the
    command lets go of its slices again."""
    p.queue.pending.clear()
    certs = {c.certificate_id: c for c in p.book.get_certificates(command.certificate_ids())}
    built = p.builder.build(command, certs)
    holds.release(p.book, command)
    return [base64.b64decode(t) for t in built.transactions]


def _claim_built(p: ProtoPipeline, production, consumption) -> list[bytes]:
    """The four transactions of a claim of 500 Wh, built without asking accept (which refuses
    some of the pairs the registry refuses): allocate x2, claim x2."""
    now = p.now()
    command = domain.Command(
        command_id=str(uuid.uuid4()),
        kind=CommandKind.CLAIM,
        certificate_id=production[0],
        caller="alice",
        request_hash="test",
        created_at=now,
        updated_at=now,
        slices=(
            SliceRef(certificate_id=production[0], slice_id=production[1]),
            SliceRef(certificate_id=consumption[0], slice_id=consumption[1]),
        ),
        quantity_wh=500,
    )
    return _built(p, command)


def _send(p: ProtoPipeline, data: bytes):
    (receipt,) = p.simulator.send([data])
    p.vclock.advance(2)
    return p.simulator.status(receipt.transaction_id)


def _owner_secret(p: ProtoPipeline, cert: str, slice_id: str, owner: str = "alice") -> bytes:
    sealed = p.book.get_certificate(cert).slices[slice_id].secret
    path = open_slice(p.box, cert, slice_id, sealed).path
    return p.owner_keys.master(owner).derive(path).secret


def _resigned(data: bytes, sign, event=None, nonce: str | None = None) -> bytes:
    """The transaction with `event` as payload (if given), its header re-signed by `sign`."""
    parsed = protocodec.parse(data)
    header = reg.TransactionHeader()
    header.CopyFrom(parsed.transaction.header)
    header.nonce = nonce or header.nonce
    payload = (event or parsed.event).SerializeToString(deterministic=True)
    header.payload_sha512 = hashlib.sha512(payload).digest()
    return protocodec.serialize(header, sign(protocodec.header_bytes(header)), payload)


def test_a_slice_signed_by_someone_else_than_its_owner_is_refused(p) -> None:
    cert, whole = p.issued()
    (tx,) = _built(p, p.slice("alice", cert, whole, [600, 400]))
    mallory = p.owner_keys.master("mallory").derive((1, 1)).secret
    forged = _resigned(tx, lambda header: keys.sign_as_owner(mallory, header))
    receipt = _send(p, forged)
    assert (receipt.status, receipt.message) == (
        TransactionStatus.FAILED,
        "not signed by the slice's owner",
    )
    assert len(p.simulator.snapshot(cert)["slices"]) == 1


def test_an_issuance_signed_by_another_grid_areas_issuer_is_refused(p) -> None:
    (tx,) = _built(p, p.issue(grid_area="DK1"))
    forged = _resigned(tx, lambda header: p.issuers.sign("DK2", header))
    receipt = _send(p, forged)
    assert receipt.message == "not signed by an issuer of grid area DK1"
    assert p.simulator.snapshot(protocodec.parse(tx).stream_id) is None


def test_a_slicing_whose_parts_do_not_add_up_is_refused(p) -> None:
    cert, whole = p.issued(quantity=1000)
    (tx,) = _built(p, p.slice("alice", cert, whole, [600, 400]))
    event = protocodec.parse(tx).event
    # Swap the 400 for a 300 with a valid range proof: the old sum proof no longer holds, and
    # no sum proof could, since 600 + 300 is not 1000.
    blinding = random_scalar()
    event.new_slices[1].quantity.content = commit(300, blinding)
    event.new_slices[1].quantity.range_proof = prove_range(300, blinding, cert)
    secret = _owner_secret(p, cert, whole)
    forged = _resigned(tx, lambda header: keys.sign_as_owner(secret, header), event)
    receipt = _send(p, forged)
    assert receipt.message == "sum proof invalid: the new slices do not add up to the source slice"


def test_a_range_proof_with_one_byte_changed_is_refused(p) -> None:
    cert, whole = p.issued(quantity=1000)
    (tx,) = _built(p, p.slice("alice", cert, whole, [600, 400]))
    event = protocodec.parse(tx).event
    proof = bytearray(event.new_slices[0].quantity.range_proof)
    proof[100] ^= 1
    event.new_slices[0].quantity.range_proof = bytes(proof)
    secret = _owner_secret(p, cert, whole)
    receipt = _send(p, _resigned(tx, lambda header: keys.sign_as_owner(secret, header), event))
    assert receipt.message == "invalid range proof"


def test_a_spent_slice_cannot_be_spent_again_first_wins(p) -> None:
    cert, whole = p.issued(quantity=1000)
    first = p.slice("alice", cert, whole, [600, 400])
    (first_tx,) = _built(p, first)
    (second_tx,) = _built(p, first.model_copy(update={"command_id": "another-command"}))
    assert _send(p, first_tx).status == TransactionStatus.COMMITTED
    receipt = _send(p, second_tx)
    assert (receipt.status, receipt.message) == (TransactionStatus.FAILED, "slice not found")


def test_the_worker_rejects_a_command_whose_slice_was_spent_behind_its_back(p) -> None:
    cert, whole = p.issued(quantity=1000)
    other = p.slice("alice", cert, whole, [500, 500])
    (elsewhere,) = _built(p, other.model_copy(update={"command_id": "elsewhere"}))
    holds.release(p.book, other)  # the book never hears of this slicing
    assert _send(p, elsewhere).status == TransactionStatus.COMMITTED
    command = p.transfer("alice", cert, whole, "bob", 1000)
    p.run()
    rejected = p.command(command.command_id)
    assert rejected.status == CommandStatus.REJECTED
    assert rejected.error == "slice not found"
    assert p.book.get_certificate(cert).slices[whole].state == SliceState.AVAILABLE


def _claim_transactions(p: ProtoPipeline) -> tuple[list[bytes], str, str, str, str]:
    production, pslice = p.issued(quantity=500)
    consumption, cslice = p.issued(
        quantity=500, gsrn="571313000000000002", type_=CertificateType.CONSUMPTION
    )
    txs = _built(p, p.claim("alice", (production, pslice), (consumption, cslice), 500))
    return txs, production, pslice, consumption, cslice


def test_an_allocation_whose_equality_proof_fails_is_refused(p) -> None:
    txs, production, pslice, *_ = _claim_transactions(p)
    event = protocodec.parse(txs[0]).event
    proof = bytearray(event.equality_proof)
    proof[40] ^= 1
    event.equality_proof = bytes(proof)
    secret = _owner_secret(p, production, pslice)
    receipt = _send(p, _resigned(txs[0], lambda h: keys.sign_as_owner(secret, h), event))
    assert receipt.message == "equality proof invalid: the slices do not hold the same quantity"


def test_allocation_and_claim_go_production_side_first(p) -> None:
    txs, production, pslice, consumption, cslice = _claim_transactions(p)
    allocate_production, allocate_consumption, claim_production, claim_consumption = txs
    by_production = _owner_secret(p, production, pslice)
    by_consumption = _owner_secret(p, consumption, cslice)

    def early(tx: bytes, secret: bytes) -> bytes:  # the same event, sent too early
        return _resigned(tx, lambda h: keys.sign_as_owner(secret, h), nonce="early")

    assert _send(p, early(allocate_consumption, by_consumption)).message == (
        "production side not allocated"
    )
    assert _send(p, allocate_production).status == TransactionStatus.COMMITTED
    assert _send(p, early(claim_production, by_production)).message == (
        "consumption side not allocated"
    )
    assert _send(p, allocate_consumption).status == TransactionStatus.COMMITTED
    assert _send(p, early(claim_consumption, by_consumption)).message == (
        "production side not claimed"
    )
    assert _send(p, claim_production).status == TransactionStatus.COMMITTED
    assert _send(p, claim_consumption).status == TransactionStatus.COMMITTED


def test_a_withdrawn_certificate_takes_no_more_claims_nor_a_second_withdrawal(p) -> None:
    txs, production, *_ = _claim_transactions(p)
    for tx in txs[:2]:
        assert _send(p, tx).status == TransactionStatus.COMMITTED
    (withdraw,) = _built(p, p.withdraw(production))
    assert _send(p, withdraw).status == TransactionStatus.COMMITTED
    assert _send(p, txs[2]).message == "certificate withdrawn"
    again = _resigned(withdraw, lambda h: p.issuers.sign("DK1", h), nonce="again")
    assert _send(p, again).message == "certificate already withdrawn"
