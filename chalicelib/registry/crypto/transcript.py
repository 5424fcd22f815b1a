"""Merlin transcripts, with the helper operations the Rust ``bulletproofs`` crate layers on top.

A Fiat-Shamir proof is only accepted by another implementation if both sides feed *exactly*
the same labelled messages into the transcript in the same order, so the label strings below
("dom-sep", "rangeproof v1", "n", "m", "ipp v1", ...) are part of the proof format. They
follow the crate's ``TranscriptProtocol`` trait (src/transcript.rs):

- a point or scalar is appended as its 32-byte encoding under its label;
- ``validate_and_append_point`` refuses the all-zero encoding (the identity), which the crate
  treats as a verification error;
- a challenge scalar is 64 challenge bytes reduced modulo the group order.

Merlin itself (STROBE-128 over Keccak-f[1600]) comes from the ``merlin-transcripts`` package,
a small pure-Python implementation of the same construction as the Rust ``merlin`` crate.
"""

from __future__ import annotations

from merlin_transcripts import MerlinTranscript

from .ristretto import POINT_BYTES, scalar_from_wide_bytes, scalar_to_bytes


class IdentityPointInProof(ValueError):
    """A proof point was the identity encoding, which the crate rejects."""


class Transcript:
    """A Merlin transcript; ``label`` is the application's domain-separation label."""

    def __init__(self, label: bytes) -> None:
        self._merlin = MerlinTranscript(bytes(label))

    def append_message(self, label: bytes, message: bytes) -> None:
        self._merlin.append_message(label, bytes(message))

    def append_u64(self, label: bytes, value: int) -> None:
        self._merlin.append_u64(label, value)

    def append_point(self, label: bytes, encoding: bytes) -> None:
        """Append a compressed point as-is (no validation, as the crate does for V)."""
        self.append_message(label, encoding)

    def validate_and_append_point(self, label: bytes, encoding: bytes) -> None:
        """Append a compressed point, refusing the identity encoding."""
        if bytes(encoding) == bytes(POINT_BYTES):
            raise IdentityPointInProof(f"point {label!r} is the identity")
        self.append_message(label, encoding)

    def append_scalar(self, label: bytes, scalar: int) -> None:
        self.append_message(label, scalar_to_bytes(scalar))

    def challenge_scalar(self, label: bytes) -> int:
        return scalar_from_wide_bytes(bytes(self._merlin.challenge_bytes(label, 64)))

    # Domain separators of the bulletproofs crate.

    def rangeproof_domain_sep(self, n: int, m: int) -> None:
        self.append_message(b"dom-sep", b"rangeproof v1")
        self.append_u64(b"n", n)
        self.append_u64(b"m", m)

    def innerproduct_domain_sep(self, n: int) -> None:
        self.append_message(b"dom-sep", b"ipp v1")
        self.append_u64(b"n", n)
