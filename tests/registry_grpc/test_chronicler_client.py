"""The chronicler's gRPC adapter against a fake ChroniclerService in-process: what it sends,
and how it sorts every failure into the registry port's kinds (nothing is ever ambiguous: a
claim intent is not a registry transaction)."""

from __future__ import annotations

import socket
import threading
import uuid
from concurrent import futures

import grpc
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from chalicelib.registry import chronicler
from chalicelib.registry.chronicler_grpc import GrpcChronicler
from chalicelib.registry.crypto import pedersen
from chalicelib.registry.crypto.ristretto import random_scalar, scalar_to_bytes
from chalicelib.registry.port import RegistryRefused, RegistryUnavailable
from chalicelib.registry.proto.project_origin.chronicler.v1 import chronicler_pb2 as ch
from chalicelib.registry.proto.project_origin.chronicler.v1 import chronicler_pb2_grpc

REGISTRY = "test-registry"


class FakeChronicler(chronicler_pb2_grpc.ChroniclerServiceServicer):
    """Answers as told: `abort` a status code, `hang` until released, `signature` bytes."""

    def __init__(self) -> None:
        self.key = Ed25519PrivateKey.generate()
        self.requests: list[ch.ClaimIntentRequest] = []
        self.abort: grpc.StatusCode | None = None
        self.hang = threading.Event()
        self.release = threading.Event()
        self.signature: bytes | None = None

    def RegisterClaimIntent(self, request, context):
        self.requests.append(request)
        if self.abort is not None:
            context.abort(self.abort, "told to")
        if self.hang.is_set():
            self.release.wait(10)
        if self.signature is not None:
            return ch.ClaimIntentResponse(signature=self.signature)
        commitment = pedersen.commit(request.quantity, int.from_bytes(request.random_r, "little"))
        intent = chronicler.claim_intent(
            request.certificate_id.registry, request.certificate_id.stream_id.value, commitment
        )
        return ch.ClaimIntentResponse(signature=self.key.sign(intent))


@pytest.fixture
def fake():
    servicer = FakeChronicler()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    chronicler_pb2_grpc.add_ChroniclerServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    clients: list[GrpcChronicler] = []

    def client(**options) -> GrpcChronicler:
        made = GrpcChronicler(f"127.0.0.1:{port}", tls=False, **options)
        clients.append(made)
        return made

    yield servicer, client
    servicer.release.set()
    for made in clients:
        made.close()
    server.stop(0.5).wait()


def test_the_request_names_the_certificate_the_quantity_and_the_blinding(fake) -> None:
    servicer, client = fake
    public = servicer.key.public_key().public_bytes_raw()
    cert, blinding = str(uuid.uuid4()), random_scalar()
    signature = client(public_keys=[public]).register_claim_intent(REGISTRY, cert, 300, blinding)
    (request,) = servicer.requests
    assert (request.certificate_id.registry, request.certificate_id.stream_id.value) == (
        REGISTRY,
        cert,
    )
    assert (request.quantity, request.random_r) == (300, scalar_to_bytes(blinding))
    assert chronicler.signed_by_chronicler(
        [public], signature, REGISTRY, cert, pedersen.commit(300, blinding)
    )


def test_a_chronicler_that_cannot_be_reached_is_unavailable() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens there once closed
    client = GrpcChronicler(f"127.0.0.1:{port}", tls=False, connect_timeout_s=0.3)
    with pytest.raises(RegistryUnavailable, match="cannot connect"):
        client.register_claim_intent(REGISTRY, str(uuid.uuid4()), 1, random_scalar())
    client.close()


def test_a_chronicler_that_does_not_answer_in_time_is_unavailable(fake) -> None:
    servicer, client = fake
    servicer.hang.set()
    with pytest.raises(RegistryUnavailable, match="DEADLINE_EXCEEDED"):
        client(timeout_s=0.2).register_claim_intent(REGISTRY, str(uuid.uuid4()), 1, 7)


@pytest.mark.parametrize(
    "code",
    [
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.UNIMPLEMENTED,
    ],
)
def test_a_failure_that_may_pass_is_unavailable_never_ambiguous(fake, code) -> None:
    servicer, client = fake
    servicer.abort = code
    with pytest.raises(RegistryUnavailable, match=code.name):
        client().register_claim_intent(REGISTRY, str(uuid.uuid4()), 1, 7)


@pytest.mark.parametrize(
    "code",
    [
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.OUT_OF_RANGE,
    ],
)
def test_a_request_refused_as_such_is_refused(fake, code) -> None:
    servicer, client = fake
    servicer.abort = code
    with pytest.raises(RegistryRefused, match=code.name):
        client().register_claim_intent(REGISTRY, str(uuid.uuid4()), 1, 7)


def test_an_answer_without_a_signature_is_not_used(fake) -> None:
    servicer, client = fake
    servicer.signature = b""
    with pytest.raises(RegistryUnavailable, match="no signature"):
        client().register_claim_intent(REGISTRY, str(uuid.uuid4()), 1, 7)


def test_a_signature_under_none_of_the_configured_keys_is_not_used(fake) -> None:
    _, client = fake
    elsewhere = Ed25519PrivateKey.generate().public_key().public_bytes_raw()
    with pytest.raises(RegistryUnavailable, match="none of its configured keys"):
        client(public_keys=[elsewhere]).register_claim_intent(REGISTRY, str(uuid.uuid4()), 1, 7)


def test_a_quantity_beyond_the_wire_fields_int32_is_refused_before_any_call(fake) -> None:
    servicer, client = fake
    with pytest.raises(RegistryRefused, match="quantity"):
        client().register_claim_intent(REGISTRY, str(uuid.uuid4()), 2**31, 7)
    assert servicer.requests == []
