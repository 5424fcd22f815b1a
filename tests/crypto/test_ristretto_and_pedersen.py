"""Scalars, points and Pedersen commitments: encodings, validation and the generator recipes."""

from __future__ import annotations

import hashlib

import pytest
import rbcl

from chalicelib.registry.crypto.generators import BulletproofGens, generators_chain
from chalicelib.registry.crypto.pedersen import (
    DEFAULT_GENS,
    REGISTRY_GENERATOR_SEED,
    REGISTRY_GENS,
    commit,
    slice_hash,
)
from chalicelib.registry.crypto.ristretto import (
    InvalidEncoding,
    L,
    Point,
    multiscalar_mul,
    random_scalar,
    scalar_from_bytes_mod_order,
    scalar_from_canonical_bytes,
    scalar_from_wide_bytes,
    scalar_invert,
    scalar_to_bytes,
)

BASEPOINT_HEX = "e2f2ae0a6abc4e71a884a961c500515f58e30b6aa582dd8db6a65945e08d2d76"


@pytest.mark.parametrize(
    "encoding",
    [
        b"",
        bytes(31),
        bytes(33),
        b"\xff" * 32,  # field element >= p: non-canonical
        bytes([1]) + bytes(31),  # "negative" field element: not a Ristretto encoding
        bytes.fromhex(BASEPOINT_HEX)[:31] + b"\xf6",  # top bit set (libsodium ignores it)
        bytes(31) + b"\x80",  # identity with the top bit set
    ],
)
def test_a_malformed_point_encoding_raises_invalid_encoding(encoding):
    with pytest.raises(InvalidEncoding):
        Point.from_bytes(encoding)


def test_rbcl_would_silently_treat_a_bad_point_as_identity_which_is_why_we_validate():
    bad = b"\xff" * 32
    assert rbcl.crypto_core_ristretto255_add(bad, bytes.fromhex(BASEPOINT_HEX)) == bytes(32)
    with pytest.raises(InvalidEncoding):
        Point.from_bytes(bad)


def test_point_arithmetic_is_consistent():
    p = Point.base() * random_scalar()
    a, b = random_scalar(), random_scalar()
    assert p * a + p * b == p * ((a + b) % L)
    assert a * p == p * a
    assert (p - p).is_identity()
    assert (-p + p).is_identity()
    assert (p * 0).is_identity()
    assert (p * L).is_identity()
    assert multiscalar_mul([a, b, 0], [p, Point.base(), p]) == p * a + Point.base() * b
    assert Point.from_bytes(p.to_bytes()) == p
    assert Point.identity().to_bytes() == bytes(32)


def test_the_basepoint_and_hash_to_point_match_published_values():
    assert Point.base().to_bytes().hex() == BASEPOINT_HEX
    # RFC 9496 appendix A.3, first hash-to-group vector.
    digest = hashlib.sha512(b"Ristretto is traditionally a short shot of espresso coffee").digest()
    assert Point.from_uniform_bytes(digest).to_bytes().hex() == (
        "3066f82a1a747d45120d1740f14358531a8f04bbffe6a819f86dfe50f44a0a46"
    )


def test_scalars_must_be_canonical_and_wide_reduction_is_modulo_the_order():
    assert scalar_from_canonical_bytes(scalar_to_bytes(L - 1)) == L - 1
    with pytest.raises(InvalidEncoding):
        scalar_from_canonical_bytes(L.to_bytes(32, "little"))
    with pytest.raises(InvalidEncoding):
        scalar_from_canonical_bytes(bytes(31))
    assert scalar_from_bytes_mod_order((L + 5).to_bytes(32, "little")) == 5
    assert scalar_from_wide_bytes((3 * L + 7).to_bytes(64, "little")) == 7
    s = random_scalar()
    assert s * scalar_invert(s) % L == 1
    with pytest.raises(ZeroDivisionError):
        scalar_invert(L)


def test_registry_generators_follow_the_pi_seed_recipe():
    first = hashlib.sha512(REGISTRY_GENERATOR_SEED).digest()
    second = hashlib.sha512(first).digest()
    assert REGISTRY_GENS.B.to_bytes() == rbcl.crypto_core_ristretto255_from_hash(first)
    assert REGISTRY_GENS.B_blinding.to_bytes() == rbcl.crypto_core_ristretto255_from_hash(second)
    assert REGISTRY_GENS.B.to_bytes() != REGISTRY_GENS.B_blinding.to_bytes()


def test_the_crates_default_blinding_generator_is_the_sha3_hash_of_the_basepoint():
    assert DEFAULT_GENS.B.to_bytes().hex() == BASEPOINT_HEX
    assert DEFAULT_GENS.B_blinding.to_bytes().hex() == (
        "8c9240b456a9e6dc65c377a1048d745f94a08cdb7f44cbcd7b46f34048871134"
    )


def test_commitments_add_up_like_the_quantities_they_hide():
    r1, r2 = random_scalar(), random_scalar()
    c1, c2 = commit(60, r1), commit(40, r2)
    total = Point.from_bytes(c1) + Point.from_bytes(c2)
    assert total.to_bytes() == commit(100, (r1 + r2) % L)
    assert commit(100, r1) != commit(101, r1)
    assert commit(7, r1) == (REGISTRY_GENS.B * 7 + REGISTRY_GENS.B_blinding * r1).to_bytes()


def test_slice_hash_is_sha256_of_the_commitment_bytes():
    c = commit(5, random_scalar())
    assert slice_hash(c) == hashlib.sha256(c).digest()
    assert len(slice_hash(c)) == 32


def test_generator_chains_do_not_depend_on_capacity():
    small, large = BulletproofGens(8, 1), BulletproofGens(16, 2)
    assert small.G(8, 1) == large.G(8, 1)
    assert small.H(8, 1) == large.share_H(0, 8)
    assert large.G(8, 2)[8:] == large.share_G(1, 8)
    assert generators_chain(b"G\x00\x00\x00\x00", 3) == large.share_G(0, 3)
    assert large.share_G(0, 8) != large.share_H(0, 8)
