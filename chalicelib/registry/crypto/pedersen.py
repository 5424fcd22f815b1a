"""Pedersen commitments to certificate quantities.

A quantity ``m`` is hidden as ``C = m*G + r*H`` with a random blinding ``r``; ``C`` goes on the
registry (32 bytes, compressed Ristretto) and ``(m, r)`` stays with the owner. Commitments add
up: ``commit(a, r1) + commit(b, r2) == commit(a + b, r1 + r2)``, which is what lets a slice be
split and the registry check the parts against the whole without seeing any quantity.

Two generator pairs matter here:

- :data:`REGISTRY_GENS`, the pair Project Origin uses (REGISTRY.md): seed = the ASCII string
  of pi to 42 decimals, ``G = from_uniform(SHA-512(seed))`` and
  ``H = from_uniform(SHA-512(SHA-512(seed)))``.
- :data:`DEFAULT_GENS`, the Rust ``bulletproofs`` crate's default ``PedersenGens``:
  ``B`` = the Ristretto basepoint, ``B_blinding = from_uniform(SHA3-512(compressed B))``.
  Only needed to check the crate's published range-proof vectors.

The slice id used in events (``source_slice_hash``) is SHA-256 of the commitment bytes.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from .ristretto import Point, multiscalar_mul

REGISTRY_GENERATOR_SEED = b"3.141592653589793238462643383279502884197169"


@dataclass(frozen=True)
class PedersenGens:
    """A pair of independent generators: ``B`` for the value, ``B_blinding`` for the blinding."""

    B: Point
    B_blinding: Point

    def commit(self, value: int, blinding: int) -> Point:
        return multiscalar_mul((value, blinding), (self.B, self.B_blinding))


def _registry_gens() -> PedersenGens:
    first = hashlib.sha512(REGISTRY_GENERATOR_SEED).digest()
    second = hashlib.sha512(first).digest()
    return PedersenGens(
        B=Point.from_uniform_bytes(first), B_blinding=Point.from_uniform_bytes(second)
    )


def _crate_default_gens() -> PedersenGens:
    base = Point.base()
    blinding = Point.from_uniform_bytes(hashlib.sha3_512(base.to_bytes()).digest())
    return PedersenGens(B=base, B_blinding=blinding)


REGISTRY_GENS = _registry_gens()
DEFAULT_GENS = _crate_default_gens()


def commit(quantity: int, blinding: int, gens: PedersenGens = REGISTRY_GENS) -> bytes:
    """The 32-byte commitment ``quantity*G + blinding*H`` (registry generators by default)."""
    return gens.commit(quantity, blinding).to_bytes()


def slice_hash(commitment: bytes) -> bytes:
    """The slice id used in events: SHA-256 of the commitment's 32 bytes."""
    return hashlib.sha256(bytes(commitment)).digest()
