"""A chronicler for sandboxes and tests: signs claim intents with its own key, as the real one.

The port, the signed bytes and the signature check are the production side's
(registry/chronicler.py); this is only the stand-in that answers in their place.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from chalicelib.registry.chronicler import check_quantity, claim_intent
from chalicelib.registry.crypto import pedersen
from chalicelib.registry.crypto.ristretto import scalar_to_bytes
from chalicelib.registry.port import RegistryRefused


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
