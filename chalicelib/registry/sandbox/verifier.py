"""The registry's verifier for the real wire format: what the simulator checks in "proto" mode.

Every transaction is checked as REGISTRY.md's table says the real verifier checks it, then
applied to the stream's state; a refused transaction changes nothing (every rule checks first
and changes state last). Per event:

- Issued: certificate new; issuer of the grid area signed the header (Ed25519); type set;
  owner key parses; period from 1 minute to 1 hour; range proof valid (label = certificate id).
- Sliced: source slice available and its owner signed (secp256k1, SHA-256 of the header, DER);
  new owner keys parse; no slice made twice; each range proof valid; the sum proof shows the
  source commitment equals the sum of the new ones (label = certificate id).
- Transferred: source available and its owner signed; new key parses.
- Allocated: production side first, then consumption with the same allocation; each side's
  slice available and signed by its owner; the other certificate exists with the other type;
  periods enclose one another; the equality proof of the two slices holds (label = allocation
  id). Claimed: production side first; the allocation exists on this stream; neither
  certificate withdrawn; signed by the owner of this side's slice. Withdrawn: issuer-signed,
  not withdrawn yet.

The rules themselves are registry/sandbox/rules.py's, shared with the plain envelope; this module
turns protobuf transactions into its events and checks keys, signatures and proofs for it.
Owner keys may be secp256k1 (what we sign with) or Ed25519 (KeyType.ED25519), as upstream.

Where a grid area names a chronicler (`chronicler_keys`), each side's AllocatedEvent must carry
that chronicler's Ed25519 signature over its ClaimIntent (registry/chronicler.py).
Not checked yet: whether the real registry also bounds quantities or attribute sets.
The equality proofs follow the transcript described in crypto/equality.py, an assumption.
Unlike the real verifier, malformed proof bytes are refused here with a reason (the real one
throws and leaves the transaction PENDING); the builder never sends them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from chalicelib.registry import chronicler, keys, protocodec
from chalicelib.registry.crypto import equality, pedersen
from chalicelib.registry.crypto.interface import DEFAULT_RANGE_PROVER, RangeProver
from chalicelib.registry.crypto.ristretto import InvalidEncoding, Point
from chalicelib.registry.proto.project_origin.electricity.v1 import electricity_pb2 as el
from chalicelib.registry.protocodec import Parsed
from chalicelib.registry.sandbox import rules
from chalicelib.registry.sandbox.rules import TransactionRefused, refuse

MIN_PERIOD, MAX_PERIOD = rules.MIN_PERIOD, rules.MAX_PERIOD
AVAILABLE, ALLOCATED, CLAIMED = rules.AVAILABLE, rules.ALLOCATED, rules.CLAIMED
_TYPES = {el.PRODUCTION: rules.PRODUCTION, el.CONSUMPTION: rules.CONSUMPTION}

__all__ = ["ProtoLedger", "TransactionRefused"]


class _ProtoChecks:
    """Owners are (key type, key bytes); values are commitment contents."""

    def __init__(self, issuer_keys: Callable[[str], list[bytes]], prover: RangeProver) -> None:
        self._issuer_keys = issuer_keys
        self._prover = prover

    def signed_by_owner(self, tx: rules.Envelope, owner: Any) -> bool:
        parsed: Parsed = tx.signature
        key_type, content = owner
        if key_type == el.ED25519:
            return keys.signed_by_issuer([content], parsed.signature, parsed.header_bytes)
        return keys.signed_by_owner(content, parsed.signature, parsed.header_bytes)

    def signed_by_issuer(self, tx: rules.Envelope, grid_area: str) -> bool:
        parsed: Parsed = tx.signature
        return keys.signed_by_issuer(
            self._issuer_keys(grid_area), parsed.signature, parsed.header_bytes
        )

    def owner_key(self, owner: Any, what: str) -> None:
        key_type, content = owner
        if key_type == el.ED25519:
            if not _is_ed25519_key(content):
                refuse(f"{what} does not parse")
            return
        if key_type != el.Secp256k1:
            refuse(f"{what} is neither a secp256k1 nor an Ed25519 key")
        try:
            keys.parse_owner_key(content)
        except keys.InvalidKey:
            refuse(f"{what} does not parse")

    def quantity(self, value: Any, label: str) -> None:
        commitment: el.Commitment = value
        try:
            Point.from_bytes(commitment.content)
        except (InvalidEncoding, TypeError):
            refuse("quantity commitment is not a Ristretto point")
        if not self._prover.verify_range(commitment.content, commitment.range_proof, label):
            refuse("invalid range proof")

    def parts_add_up(self, source: Any, parts: Sequence[Any], proof: Any, label: str) -> None:
        total = Point.identity()
        for part in parts:
            total = total + Point.from_bytes(part.content)
        if not equality.verify_equality(source.content, total.to_bytes(), proof, label):
            refuse("sum proof invalid: the new slices do not add up to the source slice")

    def equal(self, production: Any, consumption: Any, proof: Any, label: str) -> None:
        if not equality.verify_equality(production.content, consumption.content, proof, label):
            refuse("equality proof invalid: the slices do not hold the same quantity")

    def signed_by_chronicler(
        self, keys: list[bytes], signature: Any, certificate: rules.StreamRef, value: Any
    ) -> bool:
        return chronicler.signed_by_chronicler(
            keys, signature, certificate.registry, certificate.stream, bytes(value.content)
        )


def _is_ed25519_key(content: bytes) -> bool:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    try:
        Ed25519PublicKey.from_public_bytes(bytes(content))
    except ValueError:
        return False
    return True


def _stored(commitment: el.Commitment) -> el.Commitment:
    """What the state keeps of a commitment: its content (the proof is checked once)."""
    return el.Commitment(content=bytes(commitment.content), range_proof=commitment.range_proof)


def _owner(key: el.PublicKey) -> tuple[int, bytes]:
    return (key.type, bytes(key.content))


def _ref(certificate_id: Any) -> rules.StreamRef:
    return rules.StreamRef(certificate_id.registry, certificate_id.stream_id.value)


def _event(tx: Parsed) -> rules.Event:
    e = tx.event
    match tx.payload_type:
        case protocodec.ISSUED:
            has_period = e.period.HasField("start") and e.period.HasField("end")
            return rules.Issue(
                certificate=_ref(e.certificate_id),
                type=_TYPES.get(e.type, "INVALID"),
                start=e.period.start.ToDatetime(UTC) if has_period else None,
                end=e.period.end.ToDatetime(UTC) if has_period else None,
                grid_area=e.grid_area,
                ref=pedersen.slice_hash(e.quantity_commitment.content),
                value=_stored(e.quantity_commitment),
                owner=_owner(e.owner_public_key),
                attributes={a.key: a.value for a in e.attributes},
            )
        case protocodec.SLICED:
            parts = [
                rules.Part(pedersen.slice_hash(n.quantity.content), n.quantity, _owner(n.new_owner))
                for n in e.new_slices
            ]
            return rules.Slicing(
                _ref(e.certificate_id), bytes(e.source_slice_hash), parts, e.sum_proof
            )
        case protocodec.TRANSFERRED:
            return rules.Transfer(
                _ref(e.certificate_id), bytes(e.source_slice_hash), _owner(e.new_owner)
            )
        case protocodec.ALLOCATED:
            return rules.Allocate(
                allocation_id=e.allocation_id.value,
                production=_ref(e.production_certificate_id),
                consumption=_ref(e.consumption_certificate_id),
                production_slice=bytes(e.production_source_slice_hash),
                consumption_slice=bytes(e.consumption_source_slice_hash),
                proof=bytes(e.equality_proof),
                chronicler_signature=bytes(e.chronicler_signature),
            )
        case protocodec.CLAIMED:
            return rules.Claim(_ref(e.certificate_id), e.allocation_id.value)
        case protocodec.UNCLAIMED:
            return rules.Unclaim(e.allocation_id.value)
        case protocodec.WITHDRAWN:
            return rules.Withdraw()
    refuse(f"{tx.payload_type} is not accepted")


class ProtoLedger:
    """The simulator's `Ledger` for protobuf transactions. `issuer_keys(grid_area)` gives the
    raw Ed25519 public keys accepted for a grid area; an area without keys has no configuration
    ("Area does not exist" at allocation). `registry`: this registry's name (None: any).
    `expiry`, `now` and `chronicler_keys`: see rules.Rules."""

    def __init__(
        self,
        issuer_keys: Callable[[str], list[bytes]],
        range_prover: RangeProver = DEFAULT_RANGE_PROVER,
        *,
        registry: str | None = None,
        expiry: timedelta | None = None,
        now: Callable[[], datetime] | None = None,
        chronicler_keys: Callable[[str], list[bytes]] | None = None,
    ) -> None:
        self.rules = rules.Rules(
            _ProtoChecks(issuer_keys, range_prover),
            registry=registry,
            area_exists=lambda area: bool(issuer_keys(area)),
            expiry=expiry,
            now=now,
            chronicler_keys=chronicler_keys,
        )

    @property
    def certificates(self) -> dict[str, rules.Certificate]:
        return self.rules.certificates

    def parse(self, data: bytes) -> tuple[str, str, Parsed]:
        parsed = protocodec.parse(data)
        return parsed.stream_id, parsed.payload_type, parsed

    def snapshot(self, certificate_id: str) -> dict[str, Any] | None:
        cert = self.rules.certificates.get(certificate_id)
        if cert is None:
            return None
        # The proto format hides quantities in commitments and keys slices by their bytes.
        return cert.plain(
            lambda ref, s: {
                "ref": ref.hex(),
                "owner": s.owner[1].hex(),
                "quantity": None,
                "state": s.state,
            }
        )

    def apply(self, tx: Parsed) -> None:
        self.rules.apply(rules.Envelope(tx.registry, tx.stream_id, tx), _event(tx))
