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

Not checked, because REGISTRY.md does not pin them down (a first run against a real registry
must tell): the AllocatedEvent's chronicler_signature (who signs it and over what), hashed
attributes' salts, and whether the real registry also bounds quantities or attribute sets.
The equality proofs follow the transcript described in crypto/equality.py, an assumption.
Unlike the real verifier, malformed proof bytes are refused here with a reason (the real one
throws and leaves the transaction PENDING); the builder never sends them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, NoReturn

from chalicelib.registry import keys, protocodec
from chalicelib.registry.crypto import equality, pedersen
from chalicelib.registry.crypto.interface import DEFAULT_RANGE_PROVER, RangeProver
from chalicelib.registry.crypto.ristretto import InvalidEncoding, Point
from chalicelib.registry.proto.project_origin.electricity.v1 import electricity_pb2 as el
from chalicelib.registry.protocodec import Parsed
from chalicelib.registry.simulator import TransactionRefused

MIN_PERIOD = timedelta(minutes=1)
MAX_PERIOD = timedelta(hours=1)
AVAILABLE, ALLOCATED, CLAIMED = "available", "allocated", "claimed"


def _refuse(message: str) -> NoReturn:
    raise TransactionRefused(message)


@dataclass
class _Slice:
    commitment: bytes
    owner_key: bytes
    state: str = AVAILABLE


@dataclass(frozen=True)
class _Allocation:
    production_id: str
    consumption_id: str
    production_slice: bytes
    consumption_slice: bytes
    proof: bytes


@dataclass
class _Certificate:
    certificate_id: str
    registry: str
    type: int
    start: datetime
    end: datetime
    grid_area: str
    withdrawn: bool = False
    slices: dict[bytes, _Slice] = field(default_factory=dict)  # by SHA-256 of the commitment
    seen: set[bytes] = field(default_factory=set)  # every slice ever made: never made again
    allocations: dict[str, _Allocation] = field(default_factory=dict)
    claimed: set[str] = field(default_factory=set)

    def to_plain(self) -> dict[str, Any]:
        return {
            "certificate_id": self.certificate_id,
            "registry": self.registry,
            "type": el.GranularCertificateType.Name(self.type),
            "period": {"start": self.start.isoformat(), "end": self.end.isoformat()},
            "grid_area": self.grid_area,
            "withdrawn": self.withdrawn,
            "slices": [
                {"ref": ref.hex(), "owner": s.owner_key.hex(), "quantity": None, "state": s.state}
                for ref, s in self.slices.items()
            ],
            "allocations": [
                {
                    "allocation_id": aid,
                    "production_certificate_id": a.production_id,
                    "consumption_certificate_id": a.consumption_id,
                    "production_slice": a.production_slice.hex(),
                    "consumption_slice": a.consumption_slice.hex(),
                    "claimed": aid in self.claimed,
                }
                for aid, a in self.allocations.items()
            ],
        }


class ProtoLedger:
    """The simulator's `Ledger` for protobuf transactions. `issuer_keys(grid_area)` gives the
    raw Ed25519 public keys accepted for a grid area."""

    def __init__(
        self,
        issuer_keys: Callable[[str], list[bytes]],
        range_prover: RangeProver = DEFAULT_RANGE_PROVER,
    ) -> None:
        self._issuer_keys = issuer_keys
        self._prover = range_prover
        self.certificates: dict[str, _Certificate] = {}

    def parse(self, data: bytes) -> tuple[str, str, Parsed]:
        parsed = protocodec.parse(data)
        return parsed.stream_id, parsed.payload_type, parsed

    def snapshot(self, certificate_id: str) -> dict[str, Any] | None:
        cert = self.certificates.get(certificate_id)
        return None if cert is None else cert.to_plain()

    def apply(self, tx: Parsed) -> None:
        rule = {
            protocodec.ISSUED: self._issue,
            protocodec.SLICED: self._slice,
            protocodec.TRANSFERRED: self._transfer,
            protocodec.ALLOCATED: self._allocate,
            protocodec.CLAIMED: self._claim,
            protocodec.WITHDRAWN: self._withdraw,
        }.get(tx.payload_type)
        if rule is None:
            _refuse(f"{tx.payload_type} is not accepted")
        rule(tx, tx.event)

    # --- events -----------------------------------------------------------------------------

    def _issue(self, tx: Parsed, e: el.IssuedEvent) -> None:
        stream = self._own_stream(tx, e.certificate_id)
        if stream in self.certificates:
            _refuse("certificate already exists")
        if not keys.signed_by_issuer(self._issuer_keys(e.grid_area), tx.signature, tx.header_bytes):
            _refuse(f"not signed by an issuer of grid area {e.grid_area}")
        if e.type not in (el.PRODUCTION, el.CONSUMPTION):
            _refuse("certificate type is not set")
        _owner_key(e.owner_public_key, "owner public key")
        if not (e.period.HasField("start") and e.period.HasField("end")):
            _refuse("period is not set")
        start = e.period.start.ToDatetime(UTC)
        end = e.period.end.ToDatetime(UTC)
        if not MIN_PERIOD <= end - start <= MAX_PERIOD:
            _refuse("period must last from 1 minute to 1 hour")
        self._range_proof(e.quantity_commitment, stream)
        cert = _Certificate(stream, tx.registry, e.type, start, end, e.grid_area)
        ref = pedersen.slice_hash(e.quantity_commitment.content)
        cert.slices[ref] = _Slice(bytes(e.quantity_commitment.content), e.owner_public_key.content)
        cert.seen.add(ref)
        self.certificates[stream] = cert

    def _slice(self, tx: Parsed, e: el.SlicedEvent) -> None:
        stream = self._own_stream(tx, e.certificate_id)
        cert = self._live(stream)
        source = self._spendable(tx, cert, e.source_slice_hash)
        if not e.new_slices:
            _refuse("no new slices")
        refs = []
        for new in e.new_slices:
            _owner_key(new.new_owner, "new owner key")
            refs.append(pedersen.slice_hash(new.quantity.content))
        if len(set(refs)) != len(refs) or cert.seen.intersection(refs):
            _refuse("slice already exists")
        total = Point.identity()
        for new in e.new_slices:
            self._range_proof(new.quantity, stream)
            total = total + Point.from_bytes(new.quantity.content)
        if not equality.verify_equality(source.commitment, total.to_bytes(), e.sum_proof, stream):
            _refuse("sum proof invalid: the new slices do not add up to the source slice")
        del cert.slices[bytes(e.source_slice_hash)]
        for ref, new in zip(refs, e.new_slices, strict=True):
            cert.slices[ref] = _Slice(bytes(new.quantity.content), bytes(new.new_owner.content))
            cert.seen.add(ref)

    def _transfer(self, tx: Parsed, e: el.TransferredEvent) -> None:
        stream = self._own_stream(tx, e.certificate_id)
        cert = self._live(stream)
        source = self._spendable(tx, cert, e.source_slice_hash)
        _owner_key(e.new_owner, "new owner key")
        source.owner_key = bytes(e.new_owner.content)

    def _allocate(self, tx: Parsed, e: el.AllocatedEvent) -> None:
        aid = e.allocation_id.value
        new = _Allocation(
            e.production_certificate_id.stream_id.value,
            e.consumption_certificate_id.stream_id.value,
            bytes(e.production_source_slice_hash),
            bytes(e.consumption_source_slice_hash),
            bytes(e.equality_proof),
        )
        if not aid:
            _refuse("allocation id is not set")
        if tx.stream_id == new.production_id:
            self._allocate_production(tx, aid, new)
        elif tx.stream_id == new.consumption_id:
            self._allocate_consumption(tx, aid, new)
        else:
            _refuse("the stream is neither side of the allocation")

    def _allocate_production(self, tx: Parsed, aid: str, new: _Allocation) -> None:
        cert = self._live(new.production_id)
        if cert.type != el.PRODUCTION:
            _refuse("not a production certificate")
        if aid in cert.allocations:
            _refuse("allocation already exists")
        production_slice = self._spendable(tx, cert, new.production_slice)
        consumption = self.certificates.get(new.consumption_id)
        if consumption is None:
            _refuse("consumption certificate not found")
        if consumption.type != el.CONSUMPTION:
            _refuse("consumption certificate is not CONSUMPTION")
        if not _enclose(cert, consumption):
            _refuse("periods do not enclose one another")
        consumption_slice = consumption.slices.get(new.consumption_slice)
        if consumption_slice is None or consumption_slice.state != AVAILABLE:
            _refuse("consumption slice not found")
        self._equal(production_slice, consumption_slice, new.proof, aid)
        production_slice.state = ALLOCATED
        cert.allocations[aid] = new

    def _allocate_consumption(self, tx: Parsed, aid: str, new: _Allocation) -> None:
        cert = self._live(new.consumption_id)
        if cert.type != el.CONSUMPTION:
            _refuse("not a consumption certificate")
        if aid in cert.allocations:
            _refuse("allocation already exists")
        production = self.certificates.get(new.production_id)
        production_side = production.allocations.get(aid) if production else None
        if production is None or production_side is None:
            _refuse("production side not allocated")
        if (production_side.production_slice, production_side.consumption_slice) != (
            new.production_slice,
            new.consumption_slice,
        ):
            _refuse("allocation differs from its production side")
        consumption_slice = self._spendable(tx, cert, new.consumption_slice)
        self._equal(production.slices[new.production_slice], consumption_slice, new.proof, aid)
        consumption_slice.state = ALLOCATED
        cert.allocations[aid] = new

    def _claim(self, tx: Parsed, e: el.ClaimedEvent) -> None:
        stream = self._own_stream(tx, e.certificate_id)
        cert = self._existing(stream)
        aid = e.allocation_id.value
        allocation = cert.allocations.get(aid)
        if allocation is None:
            _refuse("allocation not found")
        if aid in cert.claimed:
            _refuse("allocation already claimed")
        production = self.certificates[allocation.production_id]
        consumption = self.certificates[allocation.consumption_id]
        if production.withdrawn or consumption.withdrawn:
            _refuse("certificate withdrawn")
        on_production = stream == allocation.production_id
        if on_production and aid not in consumption.allocations:
            _refuse("consumption side not allocated")
        if not on_production and aid not in production.claimed:
            _refuse("production side not claimed")
        ref = allocation.production_slice if on_production else allocation.consumption_slice
        claimed_slice = cert.slices[ref]
        if not keys.signed_by_owner(claimed_slice.owner_key, tx.signature, tx.header_bytes):
            _refuse("not signed by the slice's owner")
        cert.claimed.add(aid)
        claimed_slice.state = CLAIMED

    def _withdraw(self, tx: Parsed, e: el.WithdrawnEvent) -> None:
        cert = self._existing(tx.stream_id)
        if not keys.signed_by_issuer(
            self._issuer_keys(cert.grid_area), tx.signature, tx.header_bytes
        ):
            _refuse(f"not signed by an issuer of grid area {cert.grid_area}")
        if cert.withdrawn:
            _refuse("certificate already withdrawn")
        cert.withdrawn = True

    # --- checks -----------------------------------------------------------------------------

    def _own_stream(self, tx: Parsed, certificate_id: Any) -> str:
        stream = certificate_id.stream_id.value
        if stream != tx.stream_id or certificate_id.registry != tx.registry:
            _refuse("certificate_id does not match the stream")
        return stream

    def _existing(self, stream: str) -> _Certificate:
        cert = self.certificates.get(stream)
        if cert is None:
            _refuse("certificate not found")
        return cert

    def _live(self, stream: str) -> _Certificate:
        cert = self._existing(stream)
        if cert.withdrawn:
            _refuse("certificate withdrawn")
        return cert

    def _spendable(self, tx: Parsed, cert: _Certificate, ref: bytes) -> _Slice:
        found = cert.slices.get(bytes(ref))
        if found is None or found.state != AVAILABLE:
            _refuse("slice not found")
        if not keys.signed_by_owner(found.owner_key, tx.signature, tx.header_bytes):
            _refuse("not signed by the slice's owner")
        return found

    def _range_proof(self, commitment: el.Commitment, label: str) -> None:
        try:
            Point.from_bytes(commitment.content)
        except (InvalidEncoding, TypeError):
            _refuse("quantity commitment is not a Ristretto point")
        if not self._prover.verify_range(commitment.content, commitment.range_proof, label):
            _refuse("invalid range proof")

    @staticmethod
    def _equal(production: _Slice, consumption: _Slice, proof: bytes, label: str) -> None:
        if not equality.verify_equality(
            production.commitment, consumption.commitment, proof, label
        ):
            _refuse("equality proof invalid: the slices do not hold the same quantity")


def _owner_key(key: el.PublicKey, what: str) -> None:
    if key.type != el.Secp256k1:
        _refuse(f"{what} is not a secp256k1 key")
    try:
        keys.parse_owner_key(key.content)
    except keys.InvalidKey:
        _refuse(f"{what} does not parse")


def _enclose(a: _Certificate, b: _Certificate) -> bool:
    return (a.start <= b.start and b.end <= a.end) or (b.start <= a.start and a.end <= b.end)
