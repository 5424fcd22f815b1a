"""Our prover: registry-shaped proofs (32 bits, registry generators, certificate-id label)."""

from __future__ import annotations

import pytest

from chalicelib.registry.crypto.interface import (
    DEFAULT_RANGE_PROVER,
    BulletproofsRangeProver,
    RangeProver,
    prove_range,
    verify_range,
)
from chalicelib.registry.crypto.pedersen import DEFAULT_GENS, REGISTRY_GENS, commit
from chalicelib.registry.crypto.range_proof import (
    ValueOutOfRange,
    prove_multiple,
    prove_single,
    verify_multiple,
    verify_single,
)
from chalicelib.registry.crypto.ristretto import random_scalar

CERTIFICATE_ID = "6f1c9a52-3d4e-4b8f-9a1c-2e5d7f8a9b0c"


@pytest.fixture(scope="module")
def issued():
    """One registry range proof, made once for the module (proving takes tens of ms)."""
    quantity, blinding = 1_250_000, random_scalar()
    return (
        quantity,
        blinding,
        commit(quantity, blinding),
        prove_range(quantity, blinding, CERTIFICATE_ID),
    )


def test_a_32_bit_proof_for_a_certificate_verifies_and_is_608_bytes(issued):
    _, _, commitment, proof = issued
    assert len(proof) == 608
    assert verify_range(commitment, proof, CERTIFICATE_ID)


def test_the_commitment_the_prover_returns_is_the_registry_commitment():
    blinding = random_scalar()
    _, commitment = prove_single(42, blinding, 32, CERTIFICATE_ID.encode(), REGISTRY_GENS)
    assert commitment == commit(42, blinding)


@pytest.mark.parametrize("quantity", [0, 1, 2**31, 2**32 - 1])
def test_the_edges_of_the_32_bit_range_can_be_proven(quantity):
    blinding = random_scalar()
    proof = prove_range(quantity, blinding, CERTIFICATE_ID)
    assert verify_range(commit(quantity, blinding), proof, CERTIFICATE_ID)


@pytest.mark.parametrize("quantity", [-1, 2**32, 2**64, True])
def test_the_prover_refuses_a_value_outside_the_range(quantity):
    with pytest.raises(ValueOutOfRange):
        prove_range(quantity, random_scalar(), CERTIFICATE_ID)


def test_a_proof_is_rejected_under_another_certificate_id(issued):
    _, _, commitment, proof = issued
    assert not verify_range(commitment, proof, "6f1c9a52-3d4e-4b8f-9a1c-2e5d7f8a9b0d")
    assert not verify_range(commitment, proof, CERTIFICATE_ID.upper())


def test_a_proof_is_rejected_for_a_commitment_to_another_value_or_blinding(issued):
    quantity, blinding, _, proof = issued
    assert not verify_range(commit(quantity + 1, blinding), proof, CERTIFICATE_ID)
    assert not verify_range(commit(quantity, random_scalar()), proof, CERTIFICATE_ID)


def test_a_proof_is_rejected_with_the_crates_default_generators(issued):
    _, _, commitment, proof = issued
    assert not verify_single(proof, commitment, 32, CERTIFICATE_ID.encode(), DEFAULT_GENS)


def test_a_changed_byte_in_our_own_proof_is_rejected(issued):
    _, _, commitment, proof = issued
    for position in (0, 40, 100, 130, 170, 200, 230, 300, 500, 550, 580, 607):
        changed = bytearray(proof)
        changed[position] ^= 0x04
        assert not verify_range(commitment, bytes(changed), CERTIFICATE_ID), position


def test_garbage_is_rejected_without_an_exception(issued):
    _, _, commitment, proof = issued
    assert not verify_range(commitment, b"", CERTIFICATE_ID)
    assert not verify_range(commitment, b"\x00" * 608, CERTIFICATE_ID)
    assert not verify_range(b"\xff" * 32, proof, CERTIFICATE_ID)
    assert not verify_range(commitment[:16], proof, CERTIFICATE_ID)
    assert not verify_range(commitment, proof.hex(), CERTIFICATE_ID)  # type: ignore[arg-type]
    assert not verify_range(commitment.hex(), proof, CERTIFICATE_ID)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("bits", "values"), [(8, [0, 255]), (16, [7, 65535, 1, 300]), (64, [2**64 - 1])]
)
def test_other_sizes_and_aggregated_proofs_round_trip(bits, values):
    label = b"aggregation test"
    blindings = [random_scalar() for _ in values]
    proof, commitments = prove_multiple(values, blindings, bits, label, DEFAULT_GENS)
    assert verify_multiple(proof, commitments, bits, label, DEFAULT_GENS)
    if len(values) > 1:
        assert not verify_multiple(proof, commitments[::-1], bits, label, DEFAULT_GENS)


def test_the_pure_python_prover_satisfies_the_range_prover_interface():
    prover: RangeProver = BulletproofsRangeProver()
    assert isinstance(DEFAULT_RANGE_PROVER, BulletproofsRangeProver)
    blinding = random_scalar()
    proof = prover.prove_range(9, blinding, CERTIFICATE_ID)
    assert prover.verify_range(commit(9, blinding), proof, CERTIFICATE_ID)
