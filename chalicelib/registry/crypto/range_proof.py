"""Bulletproofs range proofs, speaking the Rust ``bulletproofs`` crate's bytes and transcript.

A range proof shows that a Pedersen commitment ``V = v*B + gamma*B_blinding`` hides a value
``0 <= v < 2^n`` without revealing ``v``. The registry needs one (``n = 32``, one party) on every
issued or sliced quantity. Aggregated proofs (``m`` values in one proof) are verified too, because
the crate's published test vectors use them.

Compatibility is the whole point of this module, so it follows the crate step by step:

- wire format: ``A, S, T_1, T_2`` (points), ``t_x, t_x_blinding, e_blinding`` (canonical
  scalars), then the inner-product proof ``L_0, R_0, ..., a, b``; ``32 * (9 + 2 log2(n*m))``
  bytes, so 608 bytes for one 32-bit value;
- transcript: ``rangeproof_domain_sep(n, m)``; every ``V``; ``A``, ``S`` -> challenges ``y``,
  ``z``; ``T_1``, ``T_2`` -> ``x``; ``t_x``, ``t_x_blinding``, ``e_blinding`` -> ``w``; then the
  inner-product argument (``ipp v1``, ``L``/``R`` -> ``u`` per round);
- verification is the crate's single "mega check": all the protocol's equations, combined with a
  random weight ``c``, must sum to the identity point.

Verification never raises on bad proof or commitment *bytes*: any malformed encoding, identity
point, wrong length or failed equation is a plain ``False``. A wrong *parameter* (unsupported bit
size, too many parties) is a caller bug and raises ``ValueError``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from . import inner_product
from .generators import BulletproofGens, default_bulletproof_gens
from .inner_product import InnerProductProof, InnerProductRejected
from .pedersen import PedersenGens
from .ristretto import (
    InvalidEncoding,
    Point,
    multiscalar_mul,
    random_scalar,
    scalar_from_canonical_bytes,
    scalar_invert,
    scalar_to_bytes,
)
from .ristretto import L as ORDER
from .transcript import IdentityPointInProof, Transcript

VALID_BIT_SIZES = (8, 16, 32, 64)


class ValueOutOfRange(ValueError):
    """The prover was asked to prove a value outside ``[0, 2^n)``."""


def proof_size(n: int, m: int = 1) -> int:
    """Serialized size in bytes of an ``n``-bit proof aggregating ``m`` values."""
    rounds = (n * m).bit_length() - 1  # log2(n*m) inner-product rounds, one (L, R) pair each
    return 32 * (7 + 2 * rounds + 2)


@dataclass(frozen=True)
class RangeProof:
    """A parsed proof. Points stay as raw encodings, checked only when verifying (as the crate)."""

    A: bytes
    S: bytes
    T_1: bytes
    T_2: bytes
    t_x: int
    t_x_blinding: int
    e_blinding: int
    ipp: InnerProductProof

    def to_bytes(self) -> bytes:
        return b"".join(
            [
                self.A,
                self.S,
                self.T_1,
                self.T_2,
                scalar_to_bytes(self.t_x),
                scalar_to_bytes(self.t_x_blinding),
                scalar_to_bytes(self.e_blinding),
                self.ipp.to_bytes(),
            ]
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> RangeProof:
        """Parse; raises :class:`InvalidEncoding` on a bad length or non-canonical scalar."""
        data = bytes(data)
        if len(data) % 32 != 0 or len(data) < 7 * 32:
            raise InvalidEncoding("range proof length must be a multiple of 32, at least 224")
        chunk = [data[32 * i : 32 * (i + 1)] for i in range(7)]
        return cls(
            A=chunk[0],
            S=chunk[1],
            T_1=chunk[2],
            T_2=chunk[3],
            t_x=scalar_from_canonical_bytes(chunk[4]),
            t_x_blinding=scalar_from_canonical_bytes(chunk[5]),
            e_blinding=scalar_from_canonical_bytes(chunk[6]),
            ipp=InnerProductProof.from_bytes(data[7 * 32 :]),
        )


def _check_parameters(n: int, m: int, bp_gens: BulletproofGens) -> None:
    if n not in VALID_BIT_SIZES:
        raise ValueError(f"bit size must be one of {VALID_BIT_SIZES}, got {n}")
    if m < 1 or m & (m - 1):
        raise ValueError(f"number of values must be a power of two, got {m}")
    if bp_gens.gens_capacity < n or bp_gens.party_capacity < m:
        raise ValueError("Bulletproofs generators are too small for this proof")


def _powers(x: int, count: int) -> list[int]:
    out, acc = [], 1
    for _ in range(count):
        out.append(acc)
        acc = acc * x % ORDER
    return out


def _delta(n: int, m: int, y: int, z: int) -> int:
    """delta(y, z) = (z - z^2) <1, y^(nm)> - sum_j z^(j+3) <1, 2^n>, the public part of t(x)."""
    sum_y = sum(_powers(y, n * m)) % ORDER
    sum_2 = (1 << n) - 1
    sum_z = sum(_powers(z, m)) % ORDER
    return ((z - z * z) * sum_y - pow(z, 3, ORDER) * sum_2 * sum_z) % ORDER


# --------------------------------------------------------------------------- verifier


def verify_multiple(
    proof: bytes,
    commitments: Sequence[bytes],
    n: int,
    label: bytes,
    pc_gens: PedersenGens,
    bp_gens: BulletproofGens | None = None,
) -> bool:
    """True iff ``proof`` shows every commitment hides a value in ``[0, 2^n)``.

    ``label`` is the Merlin transcript label the prover used.
    """
    bp_gens = bp_gens or default_bulletproof_gens()
    _check_parameters(n, len(commitments), bp_gens)
    if not isinstance(proof, bytes | bytearray | memoryview):
        return False
    try:
        return _verify(proof, commitments, n, label, pc_gens, bp_gens)
    except (InvalidEncoding, IdentityPointInProof, InnerProductRejected, ZeroDivisionError):
        return False


def verify_single(
    proof: bytes,
    commitment: bytes,
    n: int,
    label: bytes,
    pc_gens: PedersenGens,
    bp_gens: BulletproofGens | None = None,
) -> bool:
    return verify_multiple(proof, [commitment], n, label, pc_gens, bp_gens)


def _verify(
    proof_bytes: bytes,
    commitments: Sequence[bytes],
    n: int,
    label: bytes,
    pc_gens: PedersenGens,
    bp_gens: BulletproofGens,
) -> bool:
    m = len(commitments)
    proof = RangeProof.from_bytes(proof_bytes)
    # Decode every point up front: a bad encoding rejects before any expensive work.
    V = [Point.from_bytes(c) for c in commitments]
    A, S = Point.from_bytes(proof.A), Point.from_bytes(proof.S)
    T_1, T_2 = Point.from_bytes(proof.T_1), Point.from_bytes(proof.T_2)
    Ls = [Point.from_bytes(p) for p in proof.ipp.L_vec]
    Rs = [Point.from_bytes(p) for p in proof.ipp.R_vec]

    transcript = Transcript(label)
    transcript.rangeproof_domain_sep(n, m)
    for v in V:
        transcript.append_point(b"V", v.to_bytes())  # identity V is allowed, as in the crate
    transcript.validate_and_append_point(b"A", proof.A)
    transcript.validate_and_append_point(b"S", proof.S)
    y = transcript.challenge_scalar(b"y")
    z = transcript.challenge_scalar(b"z")
    transcript.validate_and_append_point(b"T_1", proof.T_1)
    transcript.validate_and_append_point(b"T_2", proof.T_2)
    x = transcript.challenge_scalar(b"x")
    transcript.append_scalar(b"t_x", proof.t_x)
    transcript.append_scalar(b"t_x_blinding", proof.t_x_blinding)
    transcript.append_scalar(b"e_blinding", proof.e_blinding)
    w = transcript.challenge_scalar(b"w")

    # Random weight so that the two checks (t(x) against the commitments, and the
    # inner-product relation) are combined into one sum without one cancelling the other.
    c = random_scalar()

    nm = n * m
    x_sq, x_inv_sq, s = inner_product.verification_scalars(proof.ipp, nm, transcript)
    a, b = proof.ipp.a, proof.ipp.b
    zz = z * z % ORDER
    z_powers = _powers(z, m)
    powers_of_2 = _powers(2, n)
    concat_z_and_2 = [zj * p2 % ORDER for zj in z_powers for p2 in powers_of_2]
    y_inv_powers = _powers(scalar_invert(y), nm)

    # Scalars on the G and H generators; 1/s_i = s_{nm-1-i} (reversed list).
    g = [(-z - a * s_i) % ORDER for s_i in s]
    h = [
        (z + y_inv_i * (zz * z2 - b * s_inv_i)) % ORDER
        for y_inv_i, z2, s_inv_i in zip(y_inv_powers, concat_z_and_2, reversed(s), strict=True)
    ]
    value_commitment_scalars = [c * zz * zj % ORDER for zj in z_powers]
    basepoint_scalar = (w * (proof.t_x - a * b) + c * (_delta(n, m, y, z) - proof.t_x)) % ORDER

    scalars = [
        1,
        x,
        c * x,
        c * x * x,
        *x_sq,
        *x_inv_sq,
        -proof.e_blinding - c * proof.t_x_blinding,
        basepoint_scalar,
        *g,
        *h,
        *value_commitment_scalars,
    ]
    points = [
        A,
        S,
        T_1,
        T_2,
        *Ls,
        *Rs,
        pc_gens.B_blinding,
        pc_gens.B,
        *bp_gens.G(n, m),
        *bp_gens.H(n, m),
        *V,
    ]
    return multiscalar_mul(scalars, points).is_identity()


# --------------------------------------------------------------------------- prover


@dataclass
class _Party:
    """One value's share of the aggregated proof (the crate's ``Party``), with its secrets."""

    j: int
    v: int
    gamma: int
    bits: list[int] = field(default_factory=list)
    alpha: int = 0
    rho: int = 0
    s_L: list[int] = field(default_factory=list)
    s_R: list[int] = field(default_factory=list)
    # l(X) = l0 + l1 X and r(X) = r0 + r1 X; t(X) = <l(X), r(X)> = t0 + t1 X + t2 X^2
    l0: list[int] = field(default_factory=list)
    l1: list[int] = field(default_factory=list)
    r0: list[int] = field(default_factory=list)
    r1: list[int] = field(default_factory=list)
    t1: int = 0
    t2: int = 0
    tau1: int = 0
    tau2: int = 0
    offset_zz: int = 0

    def bit_commitments(
        self, n: int, pc_gens: PedersenGens, bp_gens: BulletproofGens
    ) -> tuple[Point, Point, Point]:
        """Round 1: ``V_j``, and ``A_j``/``S_j`` committing to the bits and blinding vectors."""
        G, H = bp_gens.share_G(self.j, n), bp_gens.share_H(self.j, n)
        self.bits = [(self.v >> i) & 1 for i in range(n)]
        self.alpha, self.rho = random_scalar(), random_scalar()
        # A_j = alpha*B_blinding + <a_L, G> + <a_R, H> with a_R = a_L - 1, so each bit adds
        # either G_i (bit 1) or -H_i (bit 0).
        A = pc_gens.B_blinding * self.alpha
        for bit, G_i, H_i in zip(self.bits, G, H, strict=True):
            A = A + G_i if bit else A - H_i
        self.s_L = [random_scalar() for _ in range(n)]
        self.s_R = [random_scalar() for _ in range(n)]
        S = multiscalar_mul([self.rho, *self.s_L, *self.s_R], [pc_gens.B_blinding, *G, *H])
        return pc_gens.commit(self.v, self.gamma), A, S

    def poly_commitments(
        self, n: int, y: int, z: int, pc_gens: PedersenGens
    ) -> tuple[Point, Point]:
        """Round 2: build l(X), r(X), and commit to t(X)'s coefficients t1, t2."""
        exp_y = pow(y, self.j * n, ORDER)  # party j's slice of y^(nm) starts at y^(jn)
        self.offset_zz = z * z * pow(z, self.j, ORDER) % ORDER  # z^(2+j)
        for i, bit in enumerate(self.bits):
            self.l0.append((bit - z) % ORDER)
            self.l1.append(self.s_L[i])
            self.r0.append((exp_y * (bit - 1 + z) + self.offset_zz * (1 << i)) % ORDER)
            self.r1.append(exp_y * self.s_R[i] % ORDER)
            exp_y = exp_y * y % ORDER
        t0 = inner_product.inner_product(self.l0, self.r0)
        self.t2 = inner_product.inner_product(self.l1, self.r1)
        # Karatsuba: t1 = <l0 + l1, r0 + r1> - t0 - t2
        l_sum = [p + q for p, q in zip(self.l0, self.l1, strict=True)]
        r_sum = [p + q for p, q in zip(self.r0, self.r1, strict=True)]
        self.t1 = (inner_product.inner_product(l_sum, r_sum) - t0 - self.t2) % ORDER
        self.tau1, self.tau2 = random_scalar(), random_scalar()
        return pc_gens.commit(self.t1, self.tau1), pc_gens.commit(self.t2, self.tau2)

    def shares(self, x: int) -> tuple[int, int, int, list[int], list[int]]:
        """Round 3: ``t(x)``, its blinding, ``e`` blinding, and ``l(x)``, ``r(x)``."""
        l_x = [(p + q * x) % ORDER for p, q in zip(self.l0, self.l1, strict=True)]
        r_x = [(p + q * x) % ORDER for p, q in zip(self.r0, self.r1, strict=True)]
        t_x = inner_product.inner_product(l_x, r_x)
        t_x_blinding = self.offset_zz * self.gamma + self.tau1 * x + self.tau2 * x * x
        e_blinding = self.alpha + self.rho * x
        return t_x, t_x_blinding % ORDER, e_blinding % ORDER, l_x, r_x


def prove_multiple(
    values: Sequence[int],
    blindings: Sequence[int],
    n: int,
    label: bytes,
    pc_gens: PedersenGens,
    bp_gens: BulletproofGens | None = None,
) -> tuple[bytes, list[bytes]]:
    """Prove each ``values[j]`` is in ``[0, 2^n)``; returns ``(proof, commitments)``.

    Runs the crate's dealer/party protocol locally, one party per value, with the same
    transcript steps, so the crate's verifier accepts the result. Raises
    :class:`ValueOutOfRange` rather than produce a proof that would not verify.
    """
    bp_gens = bp_gens or default_bulletproof_gens()
    m = len(values)
    if len(blindings) != m:
        raise ValueError("one blinding per value is needed")
    _check_parameters(n, m, bp_gens)
    for v in values:
        if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < (1 << n):
            raise ValueOutOfRange(f"value must be an integer in [0, 2^{n})")
    pairs = zip(values, blindings, strict=True)
    parties = [_Party(j, v, gamma % ORDER) for j, (v, gamma) in enumerate(pairs)]

    transcript = Transcript(label)
    transcript.rangeproof_domain_sep(n, m)

    round1 = [p.bit_commitments(n, pc_gens, bp_gens) for p in parties]
    for V_j, _, _ in round1:
        transcript.append_point(b"V", V_j.to_bytes())
    A = _sum(A_j for _, A_j, _ in round1)
    S = _sum(S_j for _, _, S_j in round1)
    transcript.append_point(b"A", A.to_bytes())
    transcript.append_point(b"S", S.to_bytes())
    y = transcript.challenge_scalar(b"y")
    z = transcript.challenge_scalar(b"z")

    round2 = [p.poly_commitments(n, y, z, pc_gens) for p in parties]
    T_1 = _sum(T1_j for T1_j, _ in round2)
    T_2 = _sum(T2_j for _, T2_j in round2)
    transcript.append_point(b"T_1", T_1.to_bytes())
    transcript.append_point(b"T_2", T_2.to_bytes())
    x = transcript.challenge_scalar(b"x")
    if x == 0:  # the crate's parties refuse x = 0 (it would leak the witness); ~2^-252
        raise RuntimeError("degenerate challenge x = 0; retry")

    t_x = t_x_blinding = e_blinding = 0
    l_vec: list[int] = []
    r_vec: list[int] = []
    for party in parties:
        t, t_blind, e_blind, l_x, r_x = party.shares(x)
        t_x, t_x_blinding, e_blinding = t_x + t, t_x_blinding + t_blind, e_blinding + e_blind
        l_vec += l_x
        r_vec += r_x
    t_x, t_x_blinding, e_blinding = t_x % ORDER, t_x_blinding % ORDER, e_blinding % ORDER

    transcript.append_scalar(b"t_x", t_x)
    transcript.append_scalar(b"t_x_blinding", t_x_blinding)
    transcript.append_scalar(b"e_blinding", e_blinding)
    w = transcript.challenge_scalar(b"w")

    # The inner-product argument runs over H'_i = y^-i H_i, with Q = w*B binding <l, r> = t_x.
    ipp = inner_product.create(
        transcript,
        pc_gens.B * w,
        _powers(scalar_invert(y), n * m),
        bp_gens.G(n, m),
        bp_gens.H(n, m),
        l_vec,
        r_vec,
    )
    proof = RangeProof(
        A=A.to_bytes(),
        S=S.to_bytes(),
        T_1=T_1.to_bytes(),
        T_2=T_2.to_bytes(),
        t_x=t_x,
        t_x_blinding=t_x_blinding,
        e_blinding=e_blinding,
        ipp=ipp,
    )
    return proof.to_bytes(), [V_j.to_bytes() for V_j, _, _ in round1]


def prove_single(
    value: int,
    blinding: int,
    n: int,
    label: bytes,
    pc_gens: PedersenGens,
    bp_gens: BulletproofGens | None = None,
) -> tuple[bytes, bytes]:
    """Prove one value; returns ``(proof, commitment)``."""
    proof, commitments = prove_multiple([value], [blinding], n, label, pc_gens, bp_gens)
    return proof, commitments[0]


def _sum(points: Iterable[Point]) -> Point:
    total = Point.identity()
    for p in points:
        total = total + p
    return total
