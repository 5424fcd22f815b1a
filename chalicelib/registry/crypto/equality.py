"""Equality proof: two commitments hide the same quantity (slice ``sum_proof``, allocation
``equality_proof``).

If ``C1 = m*G + r1*H`` and ``C2 = m*G + r2*H`` then ``C1 - C2 = k*H`` with ``k = r1 - r2``: the
``G`` part cancels exactly when the quantities are equal. A Schnorr proof of knowledge of ``k``
for base ``H`` therefore proves equality without revealing ``m``::

    prover:   a random, A = a*H, c = challenge(...A...), z = a - c*k
    verifier: A' = z*H + c*(C1 - C2), accept iff challenge(...A'...) == c

The proof is 64 bytes: ``c || z`` (canonical little-endian scalars). For a slice, ``C1`` is the
source slice and ``C2`` the sum of the new slices, label = certificate id; for an allocation,
``C1``/``C2`` are the production and consumption slices, label = allocation id (REGISTRY.md).

ASSUMPTION - TO BE CONFIRMED AGAINST A REAL REGISTRY ON FIRST RUN. REGISTRY.md does not say
what goes into the challenge. We follow the Merlin-based revision of Project Origin's own
``SigmaProof.cs`` (``EqualProof`` over ``ZeroProof``, read in the public project-origin/registry
repository; not copied). Its challenge is, on a Merlin transcript:

1. ``Transcript::new(label as UTF-8)``;
2. ``append_message(b"message_pair", C1)`` then ``append_message(b"message_pair", C2)``;
3. ``append_message(b"message_A", A)``;
4. ``append_message(b"generator_GH", G)`` then ``append_message(b"generator_GH", H)``;
5. ``c = challenge_bytes(b"challenge_c", 64)`` reduced modulo the group order.

That C# code also calls ``Add("domain_equalproof")`` and ``Add("domain_zeroproof")`` with no
points; its ``Add`` appends one message per point, so those calls add nothing and are omitted
here. Earlier revisions of the same file used different challenges (plain hashes of ``A`` and the
label), so if the deployed registry runs an older library our proofs will be refused. The
registry parses ``c`` and ``z`` with ``from_bytes_mod_order``; this verifier is stricter and
refuses non-canonical scalars (our prover never emits them).
"""

from __future__ import annotations

from .pedersen import REGISTRY_GENS, PedersenGens
from .ristretto import (
    InvalidEncoding,
    Point,
    multiscalar_mul,
    random_scalar,
    scalar_from_canonical_bytes,
    scalar_to_bytes,
)
from .ristretto import L as ORDER
from .transcript import Transcript

EQUALITY_PROOF_BYTES = 64


class NotEqual(ValueError):
    """The prover was given commitments and blindings that do not hide the same quantity."""


def _challenge(label: str, c1: Point, c2: Point, A: Point, gens: PedersenGens) -> int:
    transcript = Transcript(label.encode("utf-8"))
    transcript.append_point(b"message_pair", c1.to_bytes())
    transcript.append_point(b"message_pair", c2.to_bytes())
    transcript.append_point(b"message_A", A.to_bytes())
    transcript.append_point(b"generator_GH", gens.B.to_bytes())
    transcript.append_point(b"generator_GH", gens.B_blinding.to_bytes())
    return transcript.challenge_scalar(b"challenge_c")


def prove_equality(
    commitment_1: bytes,
    commitment_2: bytes,
    blinding_1: int,
    blinding_2: int,
    label: str,
    gens: PedersenGens = REGISTRY_GENS,
) -> bytes:
    """A 64-byte proof that the two commitments hide the same quantity.

    Refuses (:class:`NotEqual`) when ``commitment_1 - commitment_2`` is not
    ``(blinding_1 - blinding_2) * H``, rather than emit a proof the registry would reject.
    """
    c1, c2 = Point.from_bytes(commitment_1), Point.from_bytes(commitment_2)
    k = (blinding_1 - blinding_2) % ORDER
    if c1 - c2 != gens.B_blinding * k:
        raise NotEqual("the commitments do not hide the same quantity under these blindings")
    a = random_scalar()
    A = gens.B_blinding * a
    c = _challenge(label, c1, c2, A, gens)
    z = (a - c * k) % ORDER
    return scalar_to_bytes(c) + scalar_to_bytes(z)


def verify_equality(
    commitment_1: bytes,
    commitment_2: bytes,
    proof: bytes,
    label: str,
    gens: PedersenGens = REGISTRY_GENS,
) -> bool:
    """True iff ``proof`` shows both commitments hide the same quantity. Never raises on bad
    bytes (wrong length, invalid point, non-canonical scalar): those are ``False``."""
    try:
        proof = bytes(proof)
        if len(proof) != EQUALITY_PROOF_BYTES:
            return False
        c = scalar_from_canonical_bytes(proof[:32])
        z = scalar_from_canonical_bytes(proof[32:])
        c1, c2 = Point.from_bytes(commitment_1), Point.from_bytes(commitment_2)
    except (InvalidEncoding, TypeError):
        return False
    # A' = z*H + c*(C1 - C2) equals the prover's A exactly when C1 - C2 = k*H and z = a - c*k.
    A = multiscalar_mul((z, c), (gens.B_blinding, c1 - c2))
    return _challenge(label, c1, c2, A, gens) == c
