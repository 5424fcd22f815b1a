"""The chronicler: a grid area's record of claims, which signs each side of an allocation.

Where a grid area's configuration names a chronicler (REGISTRY.md, "More facts"), the registry
refuses an allocation on a certificate of that area ("Not signed by Chronicler") unless its
`AllocatedEvent.chronicler_signature` verifies, under one of the chronicler's Ed25519 keys,
over the serialized `ClaimIntent{certificate_id, commitment}` of that side: its certificate and
the content of the allocated slice's quantity commitment. A claim therefore asks the
chronicler of each side's grid area for one signature (`RegisterClaimIntent`, which is told
the slice's quantity and blinding so that it can count what is claimed) and puts it in that
side's `AllocatedEvent`: the two allocations of a claim differ in that field only.

Asking is not sending: a claim intent the claim never uses stays an unused record at the
chronicler, so a chronicler call is safe to repeat and none of its failures is ambiguous
(I1 concerns registry transactions). The builder asks before the transactions are stored
(usecases/process.py), so a retry sends the stored bytes and never asks again.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from chalicelib.registry import protocodec
from chalicelib.registry.crypto import pedersen
from chalicelib.registry.crypto.ristretto import scalar_to_bytes
from chalicelib.registry.port import RegistryRefused
from chalicelib.registry.proto.project_origin.chronicler.v1 import chronicler_pb2 as ch

MAX_QUANTITY = 2**31 - 1  # the request's quantity is an int32


class Chronicler(Protocol):
    def register_claim_intent(
        self, registry: str, certificate_id: str, quantity: int, blinding: int
    ) -> bytes:
        """The chronicler's signature of the claim intent of one slice (its certificate, its
        quantity and blinding). Raises RegistryUnavailable when no signature could be had now
        (ask again later), RegistryRefused when the chronicler refuses the request as such."""
        ...


def claim_intent(registry: str, certificate_id: str, commitment: bytes) -> bytes:
    """The bytes a chronicler signs and the registry verifies for one side of an allocation."""
    return ch.ClaimIntent(
        certificate_id=protocodec.stream_ref(registry, certificate_id), commitment=commitment
    ).SerializeToString(deterministic=True)


def signed_by_chronicler(
    public_keys: list[bytes],
    signature: bytes,
    registry: str,
    certificate_id: str,
    commitment: bytes,
) -> bool:
    signed = claim_intent(registry, certificate_id, commitment)
    for raw in public_keys:
        try:
            Ed25519PublicKey.from_public_bytes(raw).verify(bytes(signature), signed)
            return True
        except (InvalidSignature, ValueError):
            continue
    return False


def check_quantity(quantity: int) -> None:
    if not 0 < quantity <= MAX_QUANTITY:
        # The wire field is an int32: a larger slice cannot be registered with a chronicler.
        raise RegistryRefused(f"a claim intent's quantity must be 1..{MAX_QUANTITY}")


@dataclass(frozen=True)
class Intent:
    """A claim intent as a chronicler recorded it."""

    registry: str
    certificate_id: str
    quantity: int
    commitment: bytes


class SimulatedChronicler:
    """A chronicler with its own Ed25519 key: in-process for tests, served over gRPC by
    devstack/chronicler_grpc.py. It records every intent, as the real one stores them."""

    def __init__(self, signing_key: Ed25519PrivateKey | None = None) -> None:
        self._key = signing_key or Ed25519PrivateKey.generate()
        self._lock = threading.Lock()
        self.intents: list[Intent] = []

    def __repr__(self) -> str:  # never print key material
        return f"SimulatedChronicler({self.public_key.hex()[:12]}..)"

    @property
    def public_key(self) -> bytes:
        return self._key.public_key().public_bytes_raw()

    def register_claim_intent(
        self, registry: str, certificate_id: str, quantity: int, blinding: int
    ) -> bytes:
        check_quantity(quantity)
        return self.sign_request(registry, certificate_id, quantity, scalar_to_bytes(blinding))

    def sign_request(
        self, registry: str, certificate_id: str, quantity: int, random_r: bytes
    ) -> bytes:
        """What the service does with a ClaimIntentRequest: the commitment from the quantity
        and blinding, recorded, and the intent signed."""
        if len(random_r) != 32:
            raise RegistryRefused("random_r must be a 32-byte scalar")
        check_quantity(quantity)
        blinding = int.from_bytes(random_r, "little")
        commitment = pedersen.commit(quantity, blinding)
        with self._lock:
            self.intents.append(Intent(registry, certificate_id, quantity, commitment))
        return self._key.sign(claim_intent(registry, certificate_id, commitment))


class Chroniclers:
    """Which chronicler, if any, a grid area's configuration names."""

    def __init__(self, by_area: Mapping[str, Chronicler] | None = None) -> None:
        self._by_area = dict(by_area or {})

    def __repr__(self) -> str:
        return f"Chroniclers(grid areas {sorted(self._by_area)})"

    def __bool__(self) -> bool:
        return bool(self._by_area)

    def for_area(self, grid_area: str) -> Chronicler | None:
        return self._by_area.get(grid_area)
