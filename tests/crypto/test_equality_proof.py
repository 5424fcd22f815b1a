"""Equality (sum) proofs between a source slice and the sum of its parts."""

from __future__ import annotations

import pytest

from chalicelib.registry.crypto.equality import (
    EQUALITY_PROOF_BYTES,
    NotEqual,
    prove_equality,
    verify_equality,
)
from chalicelib.registry.crypto.pedersen import commit
from chalicelib.registry.crypto.ristretto import L, Point, random_scalar

CERTIFICATE_ID = "6f1c9a52-3d4e-4b8f-9a1c-2e5d7f8a9b0c"


@pytest.fixture(scope="module")
def sliced():
    """A source slice of 100 split into 60 + 40, with the sum proof."""
    r_source, r_a, r_b = random_scalar(), random_scalar(), random_scalar()
    source = commit(100, r_source)
    parts_sum = (Point.from_bytes(commit(60, r_a)) + Point.from_bytes(commit(40, r_b))).to_bytes()
    proof = prove_equality(source, parts_sum, r_source, (r_a + r_b) % L, CERTIFICATE_ID)
    return source, parts_sum, proof


def test_a_source_and_the_sum_of_its_slices_prove_equal(sliced):
    source, parts_sum, proof = sliced
    assert len(proof) == EQUALITY_PROOF_BYTES
    assert verify_equality(source, parts_sum, proof, CERTIFICATE_ID)


def test_the_proof_is_bound_to_its_label(sliced):
    source, parts_sum, proof = sliced
    assert not verify_equality(source, parts_sum, proof, "another-certificate")


def test_the_proof_is_bound_to_the_order_and_identity_of_the_commitments(sliced):
    source, parts_sum, proof = sliced
    assert not verify_equality(parts_sum, source, proof, CERTIFICATE_ID)
    assert not verify_equality(source, commit(100, random_scalar()), proof, CERTIFICATE_ID)


def test_the_prover_refuses_commitments_to_different_quantities():
    r1, r2 = random_scalar(), random_scalar()
    with pytest.raises(NotEqual):
        prove_equality(commit(100, r1), commit(99, r2), r1, r2, CERTIFICATE_ID)
    with pytest.raises(NotEqual):
        prove_equality(commit(100, r1), commit(100, r2), r1, random_scalar(), CERTIFICATE_ID)


def test_a_proof_for_equal_commitments_does_not_carry_over_to_unequal_ones(sliced):
    source, _, proof = sliced
    assert not verify_equality(source, commit(99, random_scalar()), proof, CERTIFICATE_ID)


def test_every_changed_byte_of_the_proof_is_rejected(sliced):
    source, parts_sum, proof = sliced
    for position in range(EQUALITY_PROOF_BYTES):
        for mask in (0x01, 0x80):
            changed = bytearray(proof)
            changed[position] ^= mask
            assert not verify_equality(source, parts_sum, bytes(changed), CERTIFICATE_ID)


def test_malformed_input_is_rejected_without_an_exception(sliced):
    source, parts_sum, proof = sliced
    c = int.from_bytes(proof[:32], "little")
    non_canonical = (c + L).to_bytes(32, "little") + proof[32:]
    assert not verify_equality(source, parts_sum, non_canonical, CERTIFICATE_ID)
    assert not verify_equality(source, parts_sum, proof[:63], CERTIFICATE_ID)
    assert not verify_equality(source, parts_sum, proof + b"\x00", CERTIFICATE_ID)
    assert not verify_equality(b"\xff" * 32, parts_sum, proof, CERTIFICATE_ID)
    assert not verify_equality(source, b"", proof, CERTIFICATE_ID)


def test_equal_quantities_with_the_same_blinding_still_prove_equal():
    r = random_scalar()
    c = commit(5, r)
    assert verify_equality(c, c, prove_equality(c, c, r, r, CERTIFICATE_ID), CERTIFICATE_ID)
