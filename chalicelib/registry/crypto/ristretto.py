"""Ristretto255 scalars and points, as a thin typed layer over libsodium (through rbcl).

Why this layer exists:

- Scalars are plain Python ``int`` values reduced modulo the group order ``L``. Scalar
  arithmetic in Python is exact and fast enough; only the point operations need C.
- Points are :class:`Point` objects that always hold a *valid, canonical* 32-byte encoding.
  This matters: rbcl's point functions do not raise on an invalid encoding, they silently
  return the all-zero encoding (the identity). An unchecked invalid point would therefore act
  as the identity inside a verification equation. Also, the libsodium bundled in rbcl 1.1.2
  ignores the top bit of an encoding, which dalek rejects. Every encoding that comes from
  outside is checked once, in :meth:`Point.from_bytes`, which raises :class:`InvalidEncoding`.
- Scalars handed to libsodium are always reduced first: libsodium silently drops the top bit
  of a scalar, so an unreduced 256-bit value would be multiplied wrongly.

The encodings are the ones the Rust ``curve25519-dalek`` crate uses (compressed Ristretto,
little-endian scalars), so bytes produced here are byte-for-byte what the Rust side expects.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable

import rbcl

# Order of the Ristretto255 group (the prime l of Curve25519's prime-order subgroup).
L = 2**252 + 27742317777372353535851937790883648493

POINT_BYTES = 32
SCALAR_BYTES = 32
_IDENTITY_BYTES = bytes(POINT_BYTES)


class InvalidEncoding(ValueError):
    """Bytes that are not a canonical encoding of a point or scalar."""


# --------------------------------------------------------------------------- scalars


def scalar_from_canonical_bytes(data: bytes) -> int:
    """Decode a 32-byte little-endian scalar, refusing values >= L (non-canonical)."""
    if len(data) != SCALAR_BYTES:
        raise InvalidEncoding(f"a scalar is {SCALAR_BYTES} bytes, got {len(data)}")
    value = int.from_bytes(data, "little")
    if value >= L:
        raise InvalidEncoding("scalar is not canonical (not reduced modulo the group order)")
    return value


def scalar_from_bytes_mod_order(data: bytes) -> int:
    """Decode 32 little-endian bytes and reduce modulo L (dalek ``from_bytes_mod_order``)."""
    if len(data) != SCALAR_BYTES:
        raise InvalidEncoding(f"a scalar is {SCALAR_BYTES} bytes, got {len(data)}")
    return int.from_bytes(data, "little") % L


def scalar_from_wide_bytes(data: bytes) -> int:
    """Reduce 64 uniformly random bytes modulo L (dalek ``from_bytes_mod_order_wide``)."""
    if len(data) != 64:
        raise InvalidEncoding(f"wide reduction takes 64 bytes, got {len(data)}")
    return int.from_bytes(data, "little") % L


def scalar_to_bytes(value: int) -> bytes:
    """Canonical 32-byte little-endian encoding of ``value mod L``."""
    return (value % L).to_bytes(SCALAR_BYTES, "little")


def random_scalar() -> int:
    """A uniformly random scalar (64 random bytes reduced mod L, as dalek does)."""
    return scalar_from_wide_bytes(secrets.token_bytes(64))


def scalar_invert(value: int) -> int:
    """Multiplicative inverse modulo L. Raises ``ZeroDivisionError`` for zero."""
    value %= L
    if value == 0:
        raise ZeroDivisionError("zero has no inverse modulo L")
    return pow(value, -1, L)


# --------------------------------------------------------------------------- points


class Point:
    """A Ristretto255 group element, held as its canonical compressed encoding.

    Construct with :meth:`from_bytes` (validates), :meth:`from_uniform_bytes`,
    :meth:`identity` or :meth:`base`. Supports ``+``, ``-``, unary ``-`` and multiplication by
    an ``int`` scalar on either side. Equality compares encodings, which is sound because
    Ristretto encodings are canonical (one encoding per group element).
    """

    __slots__ = ("_encoding",)
    _encoding: bytes

    def __init__(self) -> None:  # unchecked construction would defeat the validation above
        raise TypeError("use Point.from_bytes, Point.from_uniform_bytes, identity() or base()")

    @classmethod
    def _trusted(cls, encoding: bytes) -> Point:
        # Only for encodings produced by libsodium itself, which are valid by construction.
        point = object.__new__(cls)
        point._encoding = bytes(encoding)
        return point

    @classmethod
    def from_bytes(cls, data: bytes) -> Point:
        """Decode a compressed point; raises :class:`InvalidEncoding` if it is not valid."""
        if not isinstance(data, bytes | bytearray | memoryview):
            raise InvalidEncoding(f"a point encoding is bytes, got {type(data).__name__}")
        data = bytes(data)
        if len(data) != POINT_BYTES:
            raise InvalidEncoding(f"a point is {POINT_BYTES} bytes, got {len(data)}")
        if not rbcl.crypto_core_ristretto255_is_valid_point(data):
            raise InvalidEncoding("not a canonical Ristretto255 point encoding")
        # The libsodium inside rbcl ignores the top bit of the last byte, so it accepts two
        # encodings per point; dalek rejects the one with the bit set. Re-encoding (adding the
        # identity) yields the canonical form, which must be what we were given.
        if rbcl.crypto_core_ristretto255_add(data, _IDENTITY_BYTES) != data:
            raise InvalidEncoding("not a canonical Ristretto255 point encoding (top bit set)")
        return cls._trusted(data)

    @classmethod
    def from_uniform_bytes(cls, data: bytes) -> Point:
        """Hash-to-group: map 64 uniform bytes to a point (Ristretto "from uniform bytes").

        Same map as dalek ``RistrettoPoint::from_uniform_bytes`` and libsodium
        ``crypto_core_ristretto255_from_hash``.
        """
        if len(data) != 64:
            raise InvalidEncoding(f"from_uniform_bytes takes 64 bytes, got {len(data)}")
        return cls._trusted(rbcl.crypto_core_ristretto255_from_hash(bytes(data)))

    @classmethod
    def identity(cls) -> Point:
        return cls._trusted(_IDENTITY_BYTES)

    @classmethod
    def base(cls) -> Point:
        """The Ristretto255 basepoint."""
        return _BASEPOINT

    def __bytes__(self) -> bytes:
        return self._encoding

    def to_bytes(self) -> bytes:
        return self._encoding

    def is_identity(self) -> bool:
        return self._encoding == _IDENTITY_BYTES

    def __add__(self, other: Point) -> Point:
        if not isinstance(other, Point):
            return NotImplemented
        return Point._trusted(rbcl.crypto_core_ristretto255_add(self._encoding, other._encoding))

    def __sub__(self, other: Point) -> Point:
        if not isinstance(other, Point):
            return NotImplemented
        return Point._trusted(rbcl.crypto_core_ristretto255_sub(self._encoding, other._encoding))

    def __neg__(self) -> Point:
        return Point._trusted(rbcl.crypto_core_ristretto255_sub(_IDENTITY_BYTES, self._encoding))

    def __mul__(self, scalar: int) -> Point:
        if not isinstance(scalar, int):
            return NotImplemented
        return Point._trusted(_scalarmult(scalar, self._encoding))

    __rmul__ = __mul__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Point) and self._encoding == other._encoding

    def __hash__(self) -> int:
        return hash(self._encoding)

    def __repr__(self) -> str:
        return f"Point({self._encoding.hex()})"


def _scalarmult(scalar: int, encoding: bytes) -> bytes:
    # Reduce first: libsodium ignores the top bit of the scalar. The "allow_scalar_zero"
    # variant returns the identity instead of raising when the product is the identity.
    return rbcl.crypto_scalarmult_ristretto255_allow_scalar_zero(scalar_to_bytes(scalar), encoding)


def multiscalar_mul(scalars: Iterable[int], points: Iterable[Point]) -> Point:
    """Sum of ``s_i * P_i``.

    libsodium has no multi-scalar multiplication, and a Python-level Pippenger/Straus loses to
    simply calling the C scalar multiplication once per term, so this is the plain sum. Zero
    scalars are skipped. ``scalars`` and ``points`` must have the same length.
    """
    acc = _IDENTITY_BYTES
    for scalar, point in zip(scalars, points, strict=True):
        scalar %= L
        if scalar == 0:
            continue
        term = point._encoding if scalar == 1 else _scalarmult(scalar, point._encoding)
        acc = rbcl.crypto_core_ristretto255_add(acc, term)
    return Point._trusted(acc)


_BASEPOINT = Point._trusted(rbcl.crypto_scalarmult_ristretto255_base(scalar_to_bytes(1)))
