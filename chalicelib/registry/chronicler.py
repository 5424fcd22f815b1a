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

from collections.abc import Mapping
from typing import Protocol

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from chalicelib.registry import protocodec
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
