"""The Rust bulletproofs crate's own published vectors: all must verify, none may survive a
changed byte. This is what shows the verifier speaks the crate's proof format."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chalicelib.registry.crypto.pedersen import DEFAULT_GENS
from chalicelib.registry.crypto.range_proof import RangeProof, proof_size, verify_multiple

# A copy of /work/shared/vectors/bulletproofs_range_proof.json (the crate's MIT-licensed vectors).
VECTORS = json.loads((Path(__file__).parent / "data" / "bulletproofs_range_proof.json").read_text())
LABEL = VECTORS["transcript_label"].encode()
CASES = VECTORS["cases"]
CASE_IDS = [f"n{c['bits']}_m{c['parties']}" for c in CASES]


def _verify(case, proof: bytes, commitments=None, bits=None, label=LABEL) -> bool:
    commitments = commitments or [bytes.fromhex(h) for h in case["commitments_hex"]]
    return verify_multiple(proof, commitments, bits or case["bits"], label, DEFAULT_GENS)


def _sections(proof_len: int) -> dict[str, int]:
    """Start offset of each part of a serialized proof."""
    rounds = (proof_len // 32 - 9) // 2
    return {
        "A": 0,
        "S": 32,
        "T_1": 64,
        "T_2": 96,
        "t_x": 128,
        "t_x_blinding": 160,
        "e_blinding": 192,
        "L_first": 224,
        "R_first": 256,
        "L_last": 224 + 64 * (rounds - 1),
        "R_last": 256 + 64 * (rounds - 1),
        "a": proof_len - 64,
        "b": proof_len - 32,
    }


def _flip(proof: bytes, position: int, mask: int) -> bytes:
    changed = bytearray(proof)
    changed[position] ^= mask
    return bytes(changed)


def test_the_file_holds_the_sixteen_expected_cases():
    sizes = {(c["bits"], c["parties"]) for c in CASES}
    assert sizes == {(n, m) for n in (8, 16, 32, 64) for m in (1, 2, 4, 8)}


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_every_published_vector_verifies(case):
    proof = bytes.fromhex(case["proof_hex"])
    assert len(proof) == proof_size(case["bits"], case["parties"])
    assert len(case["commitments_hex"]) == case["parties"]
    assert _verify(case, proof)


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_a_proof_reserializes_to_the_same_bytes(case):
    proof = bytes.fromhex(case["proof_hex"])
    assert RangeProof.from_bytes(proof).to_bytes() == proof


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_changing_one_byte_in_any_section_makes_the_vector_fail(case):
    proof = bytes.fromhex(case["proof_hex"])
    for section, start in _sections(len(proof)).items():
        # First byte and a middle byte, with different masks: points mostly become invalid
        # encodings, scalars mostly stay canonical and must fail the equations instead.
        for offset, mask in ((0, 0x01), (17, 0x5A)):
            changed = _flip(proof, start + offset, mask)
            assert not _verify(case, changed), f"{section}+{offset} accepted"


def test_every_single_byte_of_the_smallest_vector_matters():
    case = CASES[0]
    proof = bytes.fromhex(case["proof_hex"])
    assert (case["bits"], case["parties"]) == (8, 1)
    accepted = [i for i in range(len(proof)) if _verify(case, _flip(proof, i, 0x01))]
    assert accepted == []


@settings(max_examples=40, deadline=None)
@given(position=st.integers(0, 479), mask=st.integers(1, 255))
def test_any_change_to_any_byte_of_the_smallest_vector_is_rejected(position, mask):
    case = CASES[0]
    assert not _verify(case, _flip(bytes.fromhex(case["proof_hex"]), position, mask))


def test_a_vector_is_rejected_under_another_label_bit_size_or_commitment():
    case = next(c for c in CASES if (c["bits"], c["parties"]) == (32, 1))
    proof = bytes.fromhex(case["proof_hex"])
    assert not _verify(case, proof, label=b"another label")
    assert not _verify(case, proof, bits=16)
    other = next(c for c in CASES if (c["bits"], c["parties"]) == (32, 2))
    assert not _verify(case, proof, commitments=[bytes.fromhex(other["commitments_hex"][1])])


def test_aggregated_commitments_in_another_order_are_rejected():
    case = next(c for c in CASES if (c["bits"], c["parties"]) == (16, 2))
    commitments = [bytes.fromhex(h) for h in case["commitments_hex"]]
    assert commitments[0] != commitments[1]
    proof = bytes.fromhex(case["proof_hex"])
    assert not _verify(case, proof, commitments=list(reversed(commitments)))


@pytest.mark.parametrize(
    "mangle",
    [
        lambda p: p[:-32],  # one element short
        lambda p: p + bytes(32),  # one element too many
        lambda p: p[:-1],  # not a multiple of 32
        lambda p: b"",
        lambda p: bytes(32) + p[32:],  # A is the identity
        lambda p: b"\xff" * 32 + p[32:],  # A is not a point
        lambda p: p[:128] + b"\xff" * 32 + p[160:],  # t_x is not a canonical scalar
        lambda p: p[:-32] + b"\xff" * 32,  # b is not a canonical scalar
        lambda p: p[:224] + bytes(32) + p[256:],  # L_0 is the identity
    ],
    ids=["short", "long", "ragged", "empty", "identity-A", "bad-A", "bad-t_x", "bad-b", "zero-L"],
)
def test_malformed_proofs_are_rejected_cleanly_without_an_exception(mangle):
    case = next(c for c in CASES if (c["bits"], c["parties"]) == (32, 1))
    assert not _verify(case, mangle(bytes.fromhex(case["proof_hex"])))


def test_a_malformed_commitment_is_rejected_cleanly():
    case = next(c for c in CASES if (c["bits"], c["parties"]) == (8, 1))
    proof = bytes.fromhex(case["proof_hex"])
    assert not _verify(case, proof, commitments=[b"\xff" * 32])
    assert not _verify(case, proof, commitments=[b"\x01" * 31])


def test_unsupported_parameters_are_a_caller_error():
    case = CASES[0]
    proof = bytes.fromhex(case["proof_hex"])
    with pytest.raises(ValueError):
        _verify(case, proof, bits=12)
    commitment = bytes.fromhex(case["commitments_hex"][0])
    with pytest.raises(ValueError):
        verify_multiple(proof, [commitment] * 3, 8, LABEL, DEFAULT_GENS)
    with pytest.raises(ValueError):
        verify_multiple(proof, [commitment] * 16, 8, LABEL, DEFAULT_GENS)
