"""The gRPC adapter's sorting of failures (the worker acts on it), its queries and its bytes."""

from __future__ import annotations

import socket
import uuid

import pytest

from chalicelib.registry import protocodec
from chalicelib.registry.envelope import transaction_id_of
from chalicelib.registry.grpc_client import (
    GrpcRegistry,
    encode_repeated_field_1,
    split_repeated_field_1,
)
from chalicelib.registry.port import (
    QueriesNotSupported,
    RegistryAmbiguous,
    RegistryUnavailable,
    TransactionStatus,
)
from chalicelib.registry.proto.project_origin.electricity.v1 import electricity_pb2 as el
from chalicelib.registry.proto.project_origin.registry.v1 import registry_pb2 as reg
from chalicelib.registry.sandbox.simulator import RegistrySimulator, SimulatorConfig
from devstack.registry_grpc import RegistryGrpcServer


class AcceptingLedger:
    """A registry that takes every well-formed transaction: the verifier is not what these
    tests are about (test_verifier.py is), the adapter's handling of calls is."""

    def parse(self, data: bytes):
        parsed = protocodec.parse(data)
        return parsed.stream_id, parsed.payload_type, parsed

    def apply(self, parsed) -> None:
        pass

    def snapshot(self, certificate_id: str):
        return None


def _tx(cert: str) -> bytes:
    header, payload = protocodec.new_header("r", cert, el.WithdrawnEvent(), str(uuid.uuid4()))
    return protocodec.serialize(header, b"signature", payload)


@pytest.fixture
def served():
    simulator = RegistrySimulator(
        SimulatorConfig(queries=True, commit_delay_s=0.0), ledger=AcceptingLedger()
    )
    server = RegistryGrpcServer(simulator)
    client = GrpcRegistry(server.target, tls=False, timeout_s=2, backoff_s=0.0)
    yield simulator, client
    client.close()
    server.stop()


def test_a_registry_that_cannot_be_reached_is_unavailable_and_got_nothing() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens there once closed
    client = GrpcRegistry(f"127.0.0.1:{port}", tls=False, connect_timeout_s=0.3)
    with pytest.raises(RegistryUnavailable):
        client.send([_tx(str(uuid.uuid4()))])
    client.close()


def test_a_send_is_pending_then_its_status_and_stream_say_what_happened(served) -> None:
    _, client = served
    cert = str(uuid.uuid4())
    data = _tx(cert)
    (receipt,) = client.send([data])
    assert (receipt.transaction_id, receipt.status) == (
        transaction_id_of(data),
        TransactionStatus.PENDING,
    )
    assert client.status(receipt.transaction_id).status == TransactionStatus.COMMITTED
    assert client.stream(cert) == [data]  # the very bytes, so the very id
    assert client.status(transaction_id_of(b"never sent")).status == TransactionStatus.UNKNOWN


def test_an_outage_is_unavailable_and_nothing_was_received(served) -> None:
    simulator, client = served
    simulator.set_available(False)
    with pytest.raises(RegistryUnavailable):
        client.send([_tx(str(uuid.uuid4()))])
    assert simulator.log() == []


def test_a_timeout_after_sending_is_ambiguous(served) -> None:
    simulator, client = served
    simulator.configure(ambiguous_rate=1.0)
    with pytest.raises(RegistryAmbiguous):
        client.send([_tx(str(uuid.uuid4()))])
    assert len(simulator.log()) == 1  # it was applied: never send it again


def test_a_batch_larger_than_one_call_fails_ambiguous_once_part_of_it_left(served) -> None:
    simulator, client = served
    small = GrpcRegistry("unused", channel=client._channel, max_batch=2)
    batch = [_tx(str(uuid.uuid4())) for _ in range(5)]
    assert [r.status for r in small.send(batch)] == [TransactionStatus.PENDING] * 5
    assert len(simulator.log()) == 5
    simulator.configure(max_batch=2, ambiguous_rate=0.0)
    sent = []
    original = small._send_one_call

    def second_call_refused(chunk):
        sent.append(chunk)
        if len(sent) == 2:
            raise RegistryUnavailable("down")
        original(chunk)

    small._send_one_call = second_call_refused
    with pytest.raises(RegistryAmbiguous):
        small.send([_tx(str(uuid.uuid4())) for _ in range(3)])


def test_queries_of_a_registry_without_them_say_so(served) -> None:
    simulator, client = served
    simulator.configure(queries=False)
    with pytest.raises(QueriesNotSupported):
        client.status(transaction_id_of(b"x"))
    with pytest.raises(QueriesNotSupported):
        client.stream(str(uuid.uuid4()))


def test_queries_are_retried_then_reported_unavailable(served) -> None:
    simulator, client = served
    simulator.set_available(False)
    with pytest.raises(RegistryUnavailable):
        client.status(transaction_id_of(b"x"))


def test_transactions_travel_as_field_one_exactly_as_stored() -> None:
    items = [b"", b"\x01" * 5, b"\x02" * 300]
    raw = encode_repeated_field_1(items)
    assert split_repeated_field_1(raw) == items
    # the protobuf library reads the same message
    parsed = reg.SendTransactionsRequest.FromString(encode_repeated_field_1([b"\x12\x00"]))
    assert len(parsed.transactions) == 1
    with pytest.raises(ValueError):
        split_repeated_field_1(raw[:-1])
