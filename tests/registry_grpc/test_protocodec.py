"""Reading protobuf transactions: what is refused as malformed, and a stream folded back into
the book's terms, drift included."""

from __future__ import annotations

import base64

import pytest

from chalicelib.domain import SliceState
from chalicelib.registry import protocodec
from chalicelib.registry.envelope import MalformedTransaction
from chalicelib.registry.port import TransactionStatus
from chalicelib.registry.proto.project_origin.electricity.v1 import electricity_pb2 as el
from chalicelib.registry.proto.project_origin.registry.v1 import registry_pb2 as reg
from chalicelib.usecases import holds
from tests.registry_grpc.pipeline import ProtoPipeline


def _withdrawal(stream: str = "6f1c9a52-5f0e-4c53-9f57-2a4b3f7c1d10") -> bytes:
    header, payload = protocodec.new_header("r", stream, el.WithdrawnEvent(), "nonce")
    return protocodec.serialize(header, b"sig", payload)


def test_a_transaction_parses_back_to_its_stream_type_and_event() -> None:
    parsed = protocodec.parse(_withdrawal())
    assert parsed.stream_id == "6f1c9a52-5f0e-4c53-9f57-2a4b3f7c1d10"
    assert parsed.payload_type == "project_origin.electricity.v1.WithdrawnEvent"
    assert protocodec.ProtoCodec().stream_id(_withdrawal()) == parsed.stream_id


@pytest.mark.parametrize(
    "mangle",
    [
        lambda tx: b"\xff\xff not protobuf",
        lambda tx: _with(tx, payload=b"\x08\x01"),
        lambda tx: _with(tx, payload_type="project_origin.electricity.v1.NoSuchEvent"),
        lambda tx: _with(tx, stream=""),
    ],
    ids=["not protobuf", "payload differs from its hash", "unknown type", "no stream"],
)
def test_malformed_transactions_are_refused_as_such(mangle) -> None:
    tx = reg.Transaction.FromString(_withdrawal())
    with pytest.raises(MalformedTransaction):
        protocodec.parse(mangle(tx))


def _with(tx: reg.Transaction, payload=None, payload_type=None, stream=None) -> bytes:
    copy = reg.Transaction()
    copy.CopyFrom(tx)
    if payload is not None:
        copy.payload = payload
    if payload_type is not None:
        copy.header.payload_type = payload_type
    if stream is not None:
        copy.header.federated_stream_id.stream_id.value = stream
    return copy.SerializeToString()


def test_a_slice_given_to_a_key_the_book_does_not_know_is_drift_the_reconciler_repairs() -> None:
    p = ProtoPipeline()
    cert, whole = p.issued(quantity=1000)
    # Behind the book's back, alice's slice goes to a key no book slice has.
    command = p.transfer("alice", cert, whole, "mallory", 1000)
    p.queue.pending.clear()
    built = p.builder.build(command, {cert: p.book.get_certificate(cert)})
    holds.release(p.book, command)
    p.book.forget_command(command)
    receipt = p.simulator.inject(base64.b64decode(built.transactions[0]))
    assert receipt.status == TransactionStatus.COMMITTED

    truth = p.codec.fold(cert, p.simulator.stream(cert))
    (view,) = truth.slices.values()
    assert view.owner.startswith("key:") and view.quantity_wh == 1000
    assert view.ref == p.book.get_certificate(cert).slices[whole].registry_ref

    p.vclock.advance(400)
    p.settle()
    slices = p.book.get_certificate(cert).slices.values()
    assert sorted((s.owner[:4], s.quantity_wh, s.state) for s in slices) == [
        ("alic", 1000, SliceState.TRANSFERRED),
        ("key:", 1000, SliceState.AVAILABLE),
    ]
