"""The rules the upstream verifier enforces that our simulator lacked (issue 15), each shown
refused over real gRPC by the verifying simulator, with the upstream reason beside ours.

Transactions are built by the real builder, altered where the rule needs it and re-signed
by whoever the rule is about, then sent through the gRPC adapter."""

from __future__ import annotations

import hashlib
import uuid
from datetime import timedelta

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from chalicelib.domain import CertificateType, CommandStatus, SliceState
from chalicelib.registry import keys, protocodec
from chalicelib.registry.crypto import pedersen
from chalicelib.registry.port import TransactionStatus
from chalicelib.registry.proto.project_origin.common.v1 import common_pb2
from chalicelib.registry.proto.project_origin.electricity.v1 import electricity_pb2 as el
from chalicelib.registry.proto.project_origin.registry.v1 import registry_pb2 as reg
from tests.registry_grpc.pipeline import REGISTRY, ProtoPipeline
from tests.registry_grpc.test_verifier import _built, _claim_built, _owner_secret, _resigned

COMMITTED, FAILED = TransactionStatus.COMMITTED, TransactionStatus.FAILED


@pytest.fixture
def p():
    pipeline = ProtoPipeline(grpc=True)
    yield pipeline
    pipeline.close()


def _send(p: ProtoPipeline, data: bytes):
    """Over gRPC: send, let it settle, read its status."""
    (receipt,) = p.client.send([data])
    p.vclock.advance(2)
    return p.client.status(receipt.transaction_id)


def _refused(p: ProtoPipeline, data: bytes) -> str:
    receipt = _send(p, data)
    assert receipt.status == FAILED, receipt
    return receipt.message


def _pair(p: ProtoPipeline, production_attributes=None, consumption_attributes=None, hour=0):
    production, pslice = p.issued(quantity=500, attributes=production_attributes, hour=hour)
    consumption, cslice = p.issued(
        quantity=500,
        hour=hour,
        gsrn="571313000000000002",
        type_=CertificateType.CONSUMPTION,
        attributes=consumption_attributes,
    )
    return (production, pslice), (consumption, cslice)


def _header_for(template: bytes, payload_type: str, payload: bytes) -> reg.TransactionHeader:
    header = reg.TransactionHeader()
    header.CopyFrom(protocodec.parse(template).transaction.header)
    header.payload_type = payload_type
    header.payload_sha512 = hashlib.sha512(payload).digest()
    header.nonce = str(uuid.uuid4())
    return header


def test_a_transaction_whose_header_names_another_registry_is_refused(p) -> None:
    # Upstream: the registry refuses a transaction for another registry.
    (tx,) = _built(p, p.issue())
    parsed = protocodec.parse(tx)
    header = reg.TransactionHeader()
    header.CopyFrom(parsed.transaction.header)
    header.federated_stream_id.registry = "another-registry"
    event = parsed.event
    event.certificate_id.registry = "another-registry"
    payload = event.SerializeToString(deterministic=True)
    header.payload_sha512 = hashlib.sha512(payload).digest()
    forged = protocodec.serialize(
        header, p.issuers.sign("DK1", protocodec.header_bytes(header)), payload
    )
    assert _refused(p, forged) == "the transaction is for registry 'another-registry', not this one"
    assert p.simulator.snapshot(parsed.stream_id) is None


def test_an_allocation_of_a_trial_production_against_a_real_consumption_is_refused(p) -> None:
    # Upstream: "Certificate {p} and {c} are not of the same trial type".
    production, consumption = _pair(p, production_attributes={"IsTrial": "true"})
    allocate_production, *_ = _claim_built(p, production, consumption)
    assert _refused(p, allocate_production) == (
        f"certificate {production[0]} and {consumption[0]} are not of the same trial type"
    )
    assert p.simulator.snapshot(production[0])["allocations"] == []


def test_istrial_keys_compare_ignoring_case_and_a_missing_key_is_not_trial(p) -> None:
    production, consumption = _pair(
        p, production_attributes={"istrial": "true"}, consumption_attributes={"IsTrial": "true"}
    )
    txs = _claim_built(p, production, consumption)
    assert [_send(p, tx).status for tx in txs] == [COMMITTED] * 4
    plain, plain_consumption = _pair(p, consumption_attributes={"IsTrial": "false"}, hour=1)
    txs = _claim_built(p, plain, plain_consumption)
    assert _send(p, txs[0]).status == COMMITTED


def test_an_allocation_in_a_grid_area_the_registry_does_not_configure_is_refused(p) -> None:
    # Upstream: "Area does not exist".
    production, consumption = _pair(p)
    allocate_production, *_ = _claim_built(p, production, consumption)
    p.retired_areas.add("DK1")
    assert _refused(p, allocate_production) == "Area does not exist: DK1"


def test_an_allocation_of_a_certificate_expired_by_the_registrys_clock_is_refused() -> None:
    # Upstream: "Certificate has expired", against the registry's clock when it verifies.
    p = ProtoPipeline(grpc=True, registry_expiry=timedelta(days=1))
    try:
        production, consumption = _pair(p)
        allocate_production, *_ = _claim_built(p, production, consumption)
        p.vclock.advance(timedelta(days=2).total_seconds())
        assert _refused(p, allocate_production) == "certificate has expired"
    finally:
        p.close()


def test_an_owner_key_may_be_ed25519_and_then_signs_with_it(p) -> None:
    # Upstream: KeyType.ED25519 owner keys verify Ed25519 signatures over the header.
    owner = Ed25519PrivateKey.generate()
    raw = owner.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    (issue,) = _built(p, p.issue())
    event = protocodec.parse(issue).event
    event.owner_public_key.CopyFrom(el.PublicKey(content=raw, type=el.ED25519))
    issued = _resigned(issue, lambda h: p.issuers.sign("DK1", h), event)
    assert _send(p, issued).status == COMMITTED
    cert = event.certificate_id.stream_id.value

    bob = p.owner_keys.master("bob").derive((0, 1)).public_key
    transfer = el.TransferredEvent(
        certificate_id=protocodec.stream_ref(REGISTRY, cert),
        source_slice_hash=pedersen.slice_hash(event.quantity_commitment.content),
        new_owner=el.PublicKey(content=bob, type=el.Secp256k1),
    )
    payload = transfer.SerializeToString(deterministic=True)
    header = _header_for(issued, protocodec.TRANSFERRED, payload)
    mallory = Ed25519PrivateKey.generate().sign(protocodec.header_bytes(header))
    assert _refused(p, protocodec.serialize(header, mallory, payload)) == (
        "not signed by the slice's owner"
    )
    signed = owner.sign(protocodec.header_bytes(header))
    assert _send(p, protocodec.serialize(header, signed, payload)).status == COMMITTED
    (only,) = p.simulator.snapshot(cert)["slices"]
    assert only["owner"] == bob.hex()


def test_an_owner_key_of_an_unknown_type_is_refused(p) -> None:
    (issue,) = _built(p, p.issue())
    event = protocodec.parse(issue).event
    event.owner_public_key.type = 7
    forged = _resigned(issue, lambda h: p.issuers.sign("DK1", h), event)
    assert _refused(p, forged) == ("owner public key is neither a secp256k1 nor an Ed25519 key")


def _unclaim(p: ProtoPipeline, template: bytes, allocation_id: str, sign) -> bytes:
    payload = el.UnclaimedEvent(
        allocation_id=common_pb2.Uuid(value=allocation_id)
    ).SerializeToString(deterministic=True)
    header = _header_for(template, protocodec.UNCLAIMED, payload)
    return protocodec.serialize(header, sign(protocodec.header_bytes(header)), payload)


def test_unclaim_gives_the_claimed_slice_back_once_the_opposite_side_is_withdrawn(p) -> None:
    # Upstream UnclaimedEvent: "Opposite certificate is NOT withdrawn", "Invalid signature for
    # claim", "Certificate claim does not exist", "Certificate is withdrawn".
    production, consumption = _pair(p)
    command = p.claim("alice", production, consumption, 500)
    p.run()
    assert p.command(command.command_id).status == CommandStatus.COMMITTED
    claim_production = p.transactions_of(command.command_id)[2]
    aid = protocodec.parse(claim_production).event.allocation_id.value
    claimed = next(
        s.slice_id
        for s in p.book.get_certificate(production[0]).slices.values()
        if s.state == SliceState.CLAIMED
    )
    secret = _owner_secret(p, production[0], claimed)

    def by_owner(h: bytes) -> bytes:
        return keys.sign_as_owner(secret, h)

    assert _refused(p, _unclaim(p, claim_production, aid, by_owner)) == (
        "opposite certificate is NOT withdrawn"
    )
    withdrawal = p.withdraw(consumption[0])
    # A worker that queues nothing: the service's own unclaim (tests/test_unclaim.py) stays in
    # the book, and the registry's rules are tried here with transactions made by hand.
    by_hand = p.make_worker()
    by_hand.queue = None
    p.run(worker=by_hand)
    assert p.command(withdrawal.command_id).status == CommandStatus.COMMITTED
    mallory = p.owner_keys.master("mallory").derive((1, 1)).secret
    forged = _unclaim(p, claim_production, aid, lambda h: keys.sign_as_owner(mallory, h))
    assert _refused(p, forged) == "not signed by the claimed slice's owner"

    assert _send(p, _unclaim(p, claim_production, aid, by_owner)).status == COMMITTED
    snapshot = p.simulator.snapshot(production[0])
    assert [s["state"] for s in snapshot["slices"]] == ["available"]
    assert snapshot["allocations"] == []
    (folded,) = p.codec.fold(production[0], p.client.stream(production[0])).slices.values()
    assert (folded.allocated, folded.claimed, folded.quantity_wh) == (False, False, 500)
    assert _refused(p, _unclaim(p, claim_production, aid, by_owner)) == (
        "certificate claim does not exist"
    )
    claim_consumption = p.transactions_of(command.command_id)[3]
    on_withdrawn = _unclaim(p, claim_consumption, aid, by_owner)
    assert _refused(p, on_withdrawn) == "certificate withdrawn"


def test_the_send_reply_is_named_as_upstream_in_the_service_descriptor() -> None:
    service = reg.DESCRIPTOR.services_by_name["RegistryService"]
    reply = service.methods_by_name["SendTransactions"].output_type
    assert reply.full_name == "project_origin.registry.v1.SubmitTransactionResponse"
