"""The range-proof interface the rest of the service uses, so the prover can be swapped.

The pure-Python prover here takes tens of milliseconds per proof. If that ever becomes the
bottleneck (large slicing batches), a faster implementation - for example a small binding to
the Rust crate - only has to satisfy :class:`RangeProver`; callers never touch the maths.

Registry conventions baked in (REGISTRY.md): 32-bit proofs, one value per proof, the registry's
Pedersen generators, and the certificate UUID string as the transcript label. The label must be
passed exactly as it appears in the payload (lowercase UUID); it is encoded as UTF-8.
"""

from __future__ import annotations

from typing import Protocol

from .pedersen import REGISTRY_GENS, PedersenGens
from .range_proof import prove_single, verify_single

REGISTRY_RANGE_BITS = 32


class RangeProver(Protocol):
    def prove_range(self, value: int, blinding: int, label: str) -> bytes:
        """Proof that ``commit(value, blinding)`` hides a value in ``[0, 2^32)``."""
        ...

    def verify_range(self, commitment: bytes, proof: bytes, label: str) -> bool:
        """True iff ``proof`` is valid for ``commitment`` under ``label``; never raises on
        malformed bytes."""
        ...


class BulletproofsRangeProver:
    """The pure-Python Bulletproofs implementation of :class:`RangeProver`."""

    def __init__(self, gens: PedersenGens = REGISTRY_GENS, bits: int = REGISTRY_RANGE_BITS):
        self.gens = gens
        self.bits = bits

    def prove_range(self, value: int, blinding: int, label: str) -> bytes:
        proof, _ = prove_single(value, blinding, self.bits, label.encode("utf-8"), self.gens)
        return proof

    def verify_range(self, commitment: bytes, proof: bytes, label: str) -> bool:
        return verify_single(proof, commitment, self.bits, label.encode("utf-8"), self.gens)


DEFAULT_RANGE_PROVER: RangeProver = BulletproofsRangeProver()


def prove_range(value: int, blinding: int, label: str) -> bytes:
    """A 608-byte registry range proof for ``commit(value, blinding)``; raises
    ``ValueOutOfRange`` unless ``0 <= value < 2^32``."""
    return DEFAULT_RANGE_PROVER.prove_range(value, blinding, label)


def verify_range(commitment: bytes, proof: bytes, label: str) -> bool:
    """Check a registry range proof; ``False`` for anything invalid or malformed."""
    return DEFAULT_RANGE_PROVER.verify_range(commitment, proof, label)
