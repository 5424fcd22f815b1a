"""The Bulletproofs inner-product argument, in the Rust ``bulletproofs`` crate's format.

The argument convinces a verifier that a committed pair of vectors ``a, b`` (length
``n = 2^k``) has inner product ``<a, b>``, with ``2k`` points and two scalars: each round halves
the vectors, publishing a cross-term commitment pair ``(L, R)`` and folding with a transcript
challenge ``u``. The verifier never folds: :func:`verification_scalars` turns the challenges
into the per-generator scalars ``s_i`` so the whole check becomes one multi-scalar sum in the
range-proof verifier (see ``range_proof.py``).

Wire format (``to_bytes``): ``L_0, R_0, ..., L_{k-1}, R_{k-1}, a, b`` (32 bytes each). Points
stay as raw bytes until the verifier needs them, as in the crate; scalars must be canonical.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .ristretto import (
    InvalidEncoding,
    Point,
    multiscalar_mul,
    scalar_from_canonical_bytes,
    scalar_invert,
    scalar_to_bytes,
)
from .ristretto import L as ORDER
from .transcript import Transcript


class InnerProductRejected(ValueError):
    """The argument does not fit the claimed length, or a challenge was degenerate."""


@dataclass(frozen=True)
class InnerProductProof:
    L_vec: tuple[bytes, ...]
    R_vec: tuple[bytes, ...]
    a: int
    b: int

    def to_bytes(self) -> bytes:
        parts: list[bytes] = []
        for left, right in zip(self.L_vec, self.R_vec, strict=True):
            parts += [left, right]
        parts += [scalar_to_bytes(self.a), scalar_to_bytes(self.b)]
        return b"".join(parts)

    @classmethod
    def from_bytes(cls, data: bytes) -> InnerProductProof:
        if len(data) % 32 != 0:
            raise InvalidEncoding("inner-product proof length is not a multiple of 32")
        elements = len(data) // 32
        if elements < 2 or (elements - 2) % 2 != 0:
            raise InvalidEncoding("inner-product proof must hold 2k points and 2 scalars")
        lg_n = (elements - 2) // 2
        if lg_n >= 32:
            raise InvalidEncoding("inner-product proof is too long")
        chunks = [bytes(data[32 * i : 32 * (i + 1)]) for i in range(elements)]
        return cls(
            L_vec=tuple(chunks[0 : 2 * lg_n : 2]),
            R_vec=tuple(chunks[1 : 2 * lg_n : 2]),
            a=scalar_from_canonical_bytes(chunks[-2]),
            b=scalar_from_canonical_bytes(chunks[-1]),
        )


def inner_product(a: Sequence[int], b: Sequence[int]) -> int:
    return sum(x * y for x, y in zip(a, b, strict=True)) % ORDER


def create(
    transcript: Transcript,
    Q: Point,
    H_factors: Sequence[int],
    G_vec: Sequence[Point],
    H_vec: Sequence[Point],
    a_vec: Sequence[int],
    b_vec: Sequence[int],
) -> InnerProductProof:
    """Prove ``<a, b>`` for ``P = <a, G> + <b, H'> + <a, b> Q`` with ``H'_i = H_factors_i H_i``.

    Mirrors the crate's prover with all G factors equal to one (the only use in range proofs).
    The first round applies ``H_factors`` inside the sums instead of scaling ``H`` up front.
    """
    n = len(G_vec)
    if not (n > 0 and n & (n - 1) == 0):
        raise ValueError("inner-product length must be a power of two")
    if not (len(H_vec) == len(a_vec) == len(b_vec) == len(H_factors) == n):
        raise ValueError("inner-product inputs must all have the same length")
    transcript.innerproduct_domain_sep(n)

    G = list(G_vec)
    H = list(H_vec)
    a = [x % ORDER for x in a_vec]
    b = [x % ORDER for x in b_vec]
    h_fac = [x % ORDER for x in H_factors]  # all ones after the first fold
    L_vec: list[bytes] = []
    R_vec: list[bytes] = []

    while n != 1:
        n //= 2
        a_L, a_R = a[:n], a[n:]
        b_L, b_R = b[:n], b[n:]
        G_L, G_R = G[:n], G[n:]
        H_L, H_R = H[:n], H[n:]
        hf_L, hf_R = h_fac[:n], h_fac[n:]

        c_L = inner_product(a_L, b_R)
        c_R = inner_product(a_R, b_L)
        # L = <a_L, G_R> + <b_R, H'_L> + c_L Q ;  R = <a_R, G_L> + <b_L, H'_R> + c_R Q
        L = multiscalar_mul(
            [*a_L, *(x * f for x, f in zip(b_R, hf_L, strict=True)), c_L], [*G_R, *H_L, Q]
        )
        R = multiscalar_mul(
            [*a_R, *(x * f for x, f in zip(b_L, hf_R, strict=True)), c_R], [*G_L, *H_R, Q]
        )
        L_vec.append(L.to_bytes())
        R_vec.append(R.to_bytes())
        transcript.append_point(b"L", L.to_bytes())
        transcript.append_point(b"R", R.to_bytes())

        u = transcript.challenge_scalar(b"u")
        u_inv = scalar_invert(u)

        a = [(x * u + u_inv * y) % ORDER for x, y in zip(a_L, a_R, strict=True)]
        b = [(x * u_inv + u * y) % ORDER for x, y in zip(b_L, b_R, strict=True)]
        if n > 1:  # the generators are not needed after the last round
            G = [multiscalar_mul((u_inv, u), (gl, gr)) for gl, gr in zip(G_L, G_R, strict=True)]
            H = [
                multiscalar_mul((u * fl, u_inv * fr), (hl, hr))
                for hl, hr, fl, fr in zip(H_L, H_R, hf_L, hf_R, strict=True)
            ]
        h_fac = [1] * n  # the folded H already carries the factors

    return InnerProductProof(L_vec=tuple(L_vec), R_vec=tuple(R_vec), a=a[0], b=b[0])


def verification_scalars(
    proof: InnerProductProof, n: int, transcript: Transcript
) -> tuple[list[int], list[int], list[int]]:
    """Replay the challenges and return ``(u_k^2, u_k^-2, s)`` as the crate does.

    ``s_i`` is the product over rounds of ``u_j`` or ``u_j^-1`` chosen by the bits of ``i``;
    it is the scalar the folded generator ``G_final`` puts on the original ``G_i``, and
    ``1/s_i = s_{n-1-i}``, which the caller uses for ``H``.
    """
    lg_n = len(proof.L_vec)
    if lg_n >= 32 or n != (1 << lg_n):
        raise InnerProductRejected("inner-product proof length does not match n")
    transcript.innerproduct_domain_sep(n)

    challenges: list[int] = []
    for left, right in zip(proof.L_vec, proof.R_vec, strict=True):
        transcript.validate_and_append_point(b"L", left)
        transcript.validate_and_append_point(b"R", right)
        challenges.append(transcript.challenge_scalar(b"u"))

    if any(u == 0 for u in challenges):  # probability ~2^-252; only to avoid a crash
        raise InnerProductRejected("zero challenge")
    challenges_inv = [scalar_invert(u) for u in challenges]
    all_inv = 1
    for u_inv in challenges_inv:
        all_inv = all_inv * u_inv % ORDER

    challenges_sq = [u * u % ORDER for u in challenges]
    challenges_inv_sq = [u * u % ORDER for u in challenges_inv]

    # s_0 = prod u_j^-1; then each further bit of i swaps one u_j^-1 for u_j, i.e. multiplies
    # by u_j^2. Challenges are stored in creation order [u_k, ..., u_1], hence the index flip.
    s = [all_inv]
    for i in range(1, n):
        lg_i = i.bit_length() - 1
        k = 1 << lg_i
        s.append(s[i - k] * challenges_sq[(lg_n - 1) - lg_i] % ORDER)
    return challenges_sq, challenges_inv_sq, s
