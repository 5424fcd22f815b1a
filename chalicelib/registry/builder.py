"""Turn a command into the registry transactions that carry it out, in the order to send them.

Built once per command, before its first send, and stored with it (the worker never rebuilds):

- issue: Issued
- slice: Sliced
- transfer: Transferred; a part of a slice: Sliced (the part, the rest), then Transferred
- claim: on each side whose slice holds more than the claim, Sliced first; then Allocated on
  the production stream, Allocated on the consumption stream (the registry wants the
  production side first), Claimed on production, Claimed on consumption. Where a side's grid
  area names a chronicler, its Allocated carries that chronicler's signature, asked for while
  building (registry/chronicler.py): before the transactions are stored, never on a retry
- withdraw: Withdrawn

Two builders: PlainTransactionBuilder (the JSON envelope, for the simulator's default mode)
and ProtoTransactionBuilder (the real registry's protobuf transactions, proofs and signatures).

The slices a command creates get ids derived from the command (domain.slice_id_for), so the
book, once the command commits, names them exactly as these transactions did.
"""

from __future__ import annotations

import base64
import threading
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from chalicelib import domain
from chalicelib.domain import Certificate, CertificateType, Command, CommandKind, Slice
from chalicelib.registry import attributes as attributes_
from chalicelib.registry import envelope, keys, protocodec
from chalicelib.registry import secrets as secrets_
from chalicelib.registry.chronicler import Chroniclers
from chalicelib.registry.crypto import equality, pedersen
from chalicelib.registry.crypto.interface import DEFAULT_RANGE_PROVER, RangeProver
from chalicelib.registry.crypto.ristretto import L as ORDER
from chalicelib.registry.crypto.ristretto import Point, random_scalar
from chalicelib.registry.envelope import Transaction
from chalicelib.registry.proto.project_origin.common.v1 import common_pb2
from chalicelib.registry.proto.project_origin.electricity.v1 import electricity_pb2 as el
from chalicelib.registry.secrets import SliceSecret


@dataclass(frozen=True)
class Built:
    transactions: tuple[str, ...]  # base64 of each serialized transaction, in sending order
    # The slices the transactions create, by book slice id: their registry names and sealed
    # secrets (ProtoTransactionBuilder only), stored with the command until it commits.
    sealed_slices: Mapping[str, domain.SliceSeal] = field(default_factory=dict)
    # An issue's hashed attributes by key: the registry's value and the sealed salt.
    sealed_attributes: Mapping[str, domain.HashedAttribute] = field(default_factory=dict)


class AttributeHasher:
    """Which attributes the registry holds hashed, and how (registry/attributes.py): a fresh
    random salt per attribute per certificate, sealed so the owners can reveal the value.
    An attribute not named stays CLEARTEXT. Without a box no attribute can be hashed."""

    def __init__(self, keys: frozenset[str] = frozenset(), box: secrets_.SecretBox | None = None):
        if keys and box is None:
            raise ValueError("hashed attributes need a secret box to seal their salts")
        self._keys = keys
        self._box = box

    def is_hashed(self, key: str) -> bool:
        return key in self._keys

    def hash(self, certificate_id: str, key: str, value: str) -> domain.HashedAttribute:
        assert self._box is not None
        salt = attributes_.new_salt()
        return domain.HashedAttribute(
            registry_value=attributes_.hashed_value(key, value, certificate_id, salt),
            salt=attributes_.seal_salt(self._box, certificate_id, key, salt),
        )

    def issued(
        self, command: Command
    ) -> tuple[list[tuple[str, str, bool]], dict[str, domain.HashedAttribute]]:
        """The issue's attributes as (key, registry value, hashed), sorted by key, and the
        hashed ones with their sealed salts."""
        spec = command.issue
        assert spec is not None
        rows, sealed = [], {}
        for key, value in sorted(spec.attributes.items()):
            if self.is_hashed(key):
                sealed[key] = self.hash(command.certificate_id, key, value)
                rows.append((key, sealed[key].registry_value, True))
            else:
                rows.append((key, value, False))
        return rows, sealed


def allocation_id_for(command: Command) -> str:
    """A claim's allocation (an unclaim's: the allocation of the claim it gives back)."""
    claim_id = command.claim_id if command.kind == CommandKind.UNCLAIM else command.command_id
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"allocation/{claim_id}"))


def issuer_of(cert: Certificate) -> str:
    return f"issuer/{cert.grid_area}"


class PlainTransactionBuilder:
    """Transactions in the envelope's JSON encoding, quantities in clear, signers by id."""

    def __init__(self, registry_name: str, hasher: AttributeHasher | None = None):
        self._registry = registry_name
        self._hasher = hasher or AttributeHasher()
        self._local = threading.local()  # the hashed attributes of the build in progress

    def build(self, command: Command, certificates: Mapping[str, Certificate]) -> Built:
        self._local.attributes = {}
        txs = [
            base64.b64encode(tx.serialize()).decode()
            for tx in self._transactions(command, certificates)
        ]
        return Built(transactions=tuple(txs), sealed_attributes=dict(self._local.attributes))

    def asks_outside(self, command: Command, certificates: Mapping[str, Certificate]) -> bool:
        return False

    # --- one function per command kind ------------------------------------------------------

    def _transactions(
        self, command: Command, certs: Mapping[str, Certificate]
    ) -> list[Transaction]:
        match command.kind:
            case CommandKind.ISSUE:
                return [self._issued(command)]
            case CommandKind.SLICE:
                cert, source = self._source(command, certs, 0)
                return [
                    self._sliced(
                        cert,
                        source,
                        command.quantities_wh,
                        [
                            domain.slice_id_for(command.command_id, i)
                            for i in range(len(command.quantities_wh))
                        ],
                    )
                ]
            case CommandKind.TRANSFER:
                return self._transfer(command, certs)
            case CommandKind.CLAIM:
                return self._claim(command, certs)
            case CommandKind.WITHDRAW:
                cert = certs[command.certificate_id]
                return [
                    self._tx(
                        cert.registry, cert.certificate_id, envelope.WITHDRAWN, {}, issuer_of(cert)
                    )
                ]
            case CommandKind.UNCLAIM:
                cert, claimed = self._source(command, certs, 0)
                return [
                    self._tx(
                        cert.registry,
                        cert.certificate_id,
                        envelope.UNCLAIMED,
                        {"allocation_id": allocation_id_for(command)},
                        claimed.owner,
                    )
                ]
        raise ValueError(f"no transactions for {command.kind}")

    def _transfer(self, command: Command, certs: Mapping[str, Certificate]) -> list[Transaction]:
        assert command.receiver is not None and command.quantity_wh is not None
        cert, source = self._source(command, certs, 0)
        txs = []
        given_ref = source.ref
        if domain.is_partial_transfer(command, source.quantity_wh):
            parts = [command.quantity_wh, source.quantity_wh - command.quantity_wh]
            ids = [domain.slice_id_for(command.command_id, i) for i in range(2)]
            txs.append(self._sliced(cert, source, parts, ids))
            given_ref = ids[0]
        txs.append(
            self._tx(
                cert.registry,
                cert.certificate_id,
                envelope.TRANSFERRED,
                {
                    "certificate_id": self._stream(cert.registry, cert.certificate_id),
                    "source_slice_hash": given_ref,
                    "new_owner": {"content": command.receiver},
                },
                source.owner,
            )
        )
        return txs

    def _claim(self, command: Command, certs: Mapping[str, Certificate]) -> list[Transaction]:
        assert command.quantity_wh is not None
        txs, refs, owners = [], [], []
        for side in (0, 1):
            cert, source = self._source(command, certs, side)
            ref = source.ref
            if source.quantity_wh != command.quantity_wh:
                # Claim a part: cut it off first (ids match domain.apply_claim_side).
                ids = [domain.slice_id_for(command.command_id, 2 * side + i) for i in range(2)]
                parts = [command.quantity_wh, source.quantity_wh - command.quantity_wh]
                txs.append(self._sliced(cert, source, parts, ids))
                ref = ids[0]
            refs.append(ref)
            owners.append(source.owner)
        production, consumption = (certs[command.slices[i].certificate_id] for i in (0, 1))
        allocation_id = allocation_id_for(command)
        allocated = {
            "allocation_id": allocation_id,
            "production_certificate_id": self._stream(
                production.registry, production.certificate_id
            ),
            "consumption_certificate_id": self._stream(
                consumption.registry, consumption.certificate_id
            ),
            "production_source_slice_hash": refs[0],
            "consumption_source_slice_hash": refs[1],
            "equality_proof": "",
            "chronicler_signature": "",
        }
        for cert, owner in ((production, owners[0]), (consumption, owners[1])):
            txs.append(
                self._tx(cert.registry, cert.certificate_id, envelope.ALLOCATED, allocated, owner)
            )
        for cert, owner in ((production, owners[0]), (consumption, owners[1])):
            txs.append(
                self._tx(
                    cert.registry,
                    cert.certificate_id,
                    envelope.CLAIMED,
                    {
                        "certificate_id": self._stream(cert.registry, cert.certificate_id),
                        "allocation_id": allocation_id,
                    },
                    owner,
                )
            )
        return txs

    # --- building blocks ----------------------------------------------------------------------

    def _source(
        self, command: Command, certs: Mapping[str, Certificate], index: int
    ) -> tuple[Certificate, Slice]:
        ref = command.slices[index]
        cert = certs[ref.certificate_id]
        return cert, cert.slices[ref.slice_id]

    def _stream(self, registry: str | None, certificate_id: str) -> dict[str, str]:
        return {"registry": registry or self._registry, "stream_id": certificate_id}

    def _tx(
        self,
        registry: str | None,
        stream: str,
        payload_type: str,
        payload: dict[str, Any],
        signer: str,
    ) -> Transaction:
        """A transaction of the stream, in the certificate's registry (None: the one)."""
        name = registry or self._registry
        return Transaction.build(name, stream, payload_type, payload, signer)

    def _issued(self, command: Command) -> Transaction:
        spec = command.issue
        assert spec is not None
        rows, self._local.attributes = self._hasher.issued(command)
        attributes = [
            {"key": key, "value": value, "type": "HASHED" if hashed else "CLEARTEXT"}
            for key, value, hashed in rows
        ]
        payload = {
            "certificate_id": self._stream(spec.registry, command.certificate_id),
            "type": "PRODUCTION" if spec.type == CertificateType.PRODUCTION else "CONSUMPTION",
            "period": {"start": spec.period.start.isoformat(), "end": spec.period.end.isoformat()},
            "grid_area": spec.grid_area,
            # Left empty as upstream's issuer does: a hash of an 18-digit GSRN is reversible.
            "asset_id_hash": "",
            "quantity": {
                "content": domain.slice_id_for(command.command_id, 0),
                "quantity": spec.quantity_wh,
            },
            "owner_public_key": {"content": spec.owner},
            "attributes": attributes,
        }
        return self._tx(
            spec.registry,
            command.certificate_id,
            envelope.ISSUED,
            payload,
            f"issuer/{spec.grid_area}",
        )

    def _sliced(self, cert: Certificate, source: Slice, parts: Any, ids: list[str]) -> Transaction:
        return self._tx(
            cert.registry,
            cert.certificate_id,
            envelope.SLICED,
            {
                "certificate_id": self._stream(cert.registry, cert.certificate_id),
                "source_slice_hash": source.ref,
                "new_slices": [
                    {
                        "quantity": {"content": slice_id, "quantity": quantity},
                        "new_owner": {"content": source.owner},
                    }
                    for slice_id, quantity in zip(ids, parts, strict=True)
                ],
                "sum_proof": "",
            },
            source.owner,
        )


# --- the real registry's transactions ---------------------------------------------------------


@dataclass(frozen=True)
class _Spendable:
    """A slice the command spends: its commitment, opened, and the private key that owns it."""

    cert: Certificate
    slice: Slice
    secret: SliceSecret
    signing_key: bytes

    @property
    def commitment(self) -> bytes:
        return pedersen.commit(self.secret.quantity, self.secret.blinding)


@dataclass(frozen=True)
class _NewSlice:
    slice_id: str
    commitment: bytes
    range_proof: bytes
    secret: SliceSecret

    def event_slice(self) -> el.SlicedEvent.Slice:
        return el.SlicedEvent.Slice(
            quantity=el.Commitment(content=self.commitment, range_proof=self.range_proof),
            new_owner=_owner_key(self.secret.owner_key),
        )


class ProtoTransactionBuilder:
    """Transactions in the registry's protobuf wire format, with real proofs and signatures.

    The same command kinds and transaction order as PlainTransactionBuilder (module docstring).
    Every quantity is a fresh Pedersen commitment with a 32-bit range proof labelled with the
    certificate id; a slicing carries an equality proof of the source against the sum of the
    parts (commitments add up, so the sum's blinding is the sum of the parts' blindings); an
    allocation carries an equality proof of the production slice against the consumption slice,
    labelled with the allocation id, the same event on both streams but for the chronicler's
    signature, which is each side's own (`chroniclers`: by grid area). Issuers sign with the
    grid area's Ed25519 key; owners with the slice's secp256k1 key (keys.py for the paths).

    Every proof and signature is checked again before the transactions leave the builder: the
    real verifier does not refuse a malformed proof, it leaves the transaction PENDING for ever.
    A slice that has no sealed secret (it came from the plain world, or from someone outside
    this service) cannot be spent: the command is refused with that reason.
    """

    def __init__(
        self,
        registry_name: str,
        issuer_keys: keys.IssuerKeys,
        owner_keys: keys.OwnerKeys,
        secret_box: secrets_.SecretBox,
        hasher: AttributeHasher | None = None,
        range_prover: RangeProver = DEFAULT_RANGE_PROVER,
        chroniclers: Chroniclers | None = None,
    ) -> None:
        self._registry = registry_name
        self._chroniclers = chroniclers or Chroniclers()
        self._issuers = issuer_keys
        self._owners = owner_keys
        self._box = secret_box
        self._hasher = hasher or AttributeHasher()
        self._prover = range_prover
        self._local = threading.local()  # the seals of the build in progress, per thread

    def build(self, command: Command, certificates: Mapping[str, Certificate]) -> Built:
        self._local.seals = {}
        self._local.attributes = {}
        txs = self._transactions(command, certificates)
        return Built(
            transactions=tuple(base64.b64encode(tx).decode() for tx in txs),
            sealed_slices=dict(self._local.seals),
            sealed_attributes=dict(self._local.attributes),
        )

    def asks_outside(self, command: Command, certificates: Mapping[str, Certificate]) -> bool:
        """Whether building the command asks a chronicler (a claim in an area naming one)."""
        return command.kind == CommandKind.CLAIM and any(
            self._chroniclers.for_area(certificates[ref.certificate_id].grid_area) is not None
            for ref in command.slices
        )

    def _transactions(self, command: Command, certs: Mapping[str, Certificate]) -> list[bytes]:
        match command.kind:
            case CommandKind.ISSUE:
                return [self._issued(command)]
            case CommandKind.SLICE:
                source = self._spendable(command, certs, 0)
                ids = [
                    domain.slice_id_for(command.command_id, i)
                    for i in range(len(command.quantities_wh))
                ]
                tx, _ = self._sliced(source, list(command.quantities_wh), ids)
                return [tx]
            case CommandKind.TRANSFER:
                return self._transfer(command, certs)
            case CommandKind.CLAIM:
                return self._claim(command, certs)
            case CommandKind.WITHDRAW:
                cert = certs[command.certificate_id]
                return [
                    self._issuer_signed(
                        cert.registry, cert.certificate_id, cert.grid_area, el.WithdrawnEvent()
                    )
                ]
            case CommandKind.UNCLAIM:  # signed by the owner of the slice it gives back
                claimed = self._spendable(command, certs, 0)
                event = el.UnclaimedEvent(
                    allocation_id=common_pb2.Uuid(value=allocation_id_for(command))
                )
                return [self._owner_signed(claimed, event)]
        raise ValueError(f"no transactions for {command.kind}")

    # --- command kinds ----------------------------------------------------------------------

    def _issued(self, command: Command) -> bytes:
        spec = command.issue
        assert spec is not None
        slice_id = domain.slice_id_for(command.command_id, 0)
        new = self._new_slice(command.certificate_id, slice_id, spec.owner, spec.quantity_wh)
        rows, self._local.attributes = self._hasher.issued(command)
        start, end = Timestamp(), Timestamp()
        start.FromDatetime(spec.period.start)
        end.FromDatetime(spec.period.end)
        event = el.IssuedEvent(
            certificate_id=protocodec.stream_ref(
                spec.registry or self._registry, command.certificate_id
            ),
            type=el.PRODUCTION if spec.type == CertificateType.PRODUCTION else el.CONSUMPTION,
            period=el.DateInterval(start=start, end=end),
            grid_area=spec.grid_area,
            # Left empty as upstream's issuer does: a hash of an 18-digit GSRN is reversible.
            asset_id_hash=b"",
            quantity_commitment=el.Commitment(content=new.commitment, range_proof=new.range_proof),
            owner_public_key=_owner_key(new.secret.owner_key),
            attributes=[
                el.Attribute(key=key, value=value, type=el.HASHED if hashed else el.CLEARTEXT)
                for key, value, hashed in rows
            ],
        )
        return self._issuer_signed(spec.registry, command.certificate_id, spec.grid_area, event)

    def _transfer(self, command: Command, certs: Mapping[str, Certificate]) -> list[bytes]:
        assert command.receiver is not None and command.quantity_wh is not None
        source = self._spendable(command, certs, 0)
        txs = []
        if domain.is_partial_transfer(command, source.slice.quantity_wh):
            parts = [command.quantity_wh, source.slice.quantity_wh - command.quantity_wh]
            ids = [domain.slice_id_for(command.command_id, i) for i in range(2)]
            tx, news = self._sliced(source, parts, ids)
            txs.append(tx)
            source = self._spendable_new(source.cert, news[0], source.slice.owner)
        received_id = domain.slice_id_for(command.command_id, "received")
        path = self._owners.slice_path(command.receiver, received_id)
        receiver_key = self._owners.public_master(command.receiver, path).derive(path).key
        self._seal(
            source.cert.certificate_id,
            received_id,
            SliceSecret(source.secret.quantity, source.secret.blinding, receiver_key, path),
        )
        event = el.TransferredEvent(
            certificate_id=self._stream(source.cert),
            source_slice_hash=pedersen.slice_hash(source.commitment),
            new_owner=_owner_key(receiver_key),
        )
        txs.append(self._owner_signed(source, event))
        return txs

    def _claim(self, command: Command, certs: Mapping[str, Certificate]) -> list[bytes]:
        assert command.quantity_wh is not None
        txs, sides = [], []
        for side in (0, 1):
            source = self._spendable(command, certs, side)
            if source.slice.quantity_wh != command.quantity_wh:
                # Claim a part: cut it off first (ids match domain.apply_claim_side).
                ids = [domain.slice_id_for(command.command_id, 2 * side + i) for i in range(2)]
                parts = [command.quantity_wh, source.slice.quantity_wh - command.quantity_wh]
                tx, news = self._sliced(source, parts, ids)
                txs.append(tx)
                source = self._spendable_new(source.cert, news[0], source.slice.owner)
            sides.append(source)
        production, consumption = sides
        allocation_id = allocation_id_for(command)
        proof = equality.prove_equality(
            production.commitment,
            consumption.commitment,
            production.secret.blinding,
            consumption.secret.blinding,
            allocation_id,
        )
        _check(
            equality.verify_equality(
                production.commitment, consumption.commitment, proof, allocation_id
            ),
            "allocation equality proof",
        )
        # Asked last, once everything else is built and checked: a refused build asks nothing.
        signatures = [self._chronicler_signature(side) for side in sides]
        for side, signature in zip(sides, signatures, strict=True):
            allocated = el.AllocatedEvent(
                allocation_id=common_pb2.Uuid(value=allocation_id),
                production_certificate_id=self._stream(production.cert),
                consumption_certificate_id=self._stream(consumption.cert),
                production_source_slice_hash=pedersen.slice_hash(production.commitment),
                consumption_source_slice_hash=pedersen.slice_hash(consumption.commitment),
                equality_proof=proof,
                chronicler_signature=signature,
            )
            txs.append(self._owner_signed(side, allocated))
        for side in sides:
            claimed = el.ClaimedEvent(
                certificate_id=self._stream(side.cert),
                allocation_id=common_pb2.Uuid(value=allocation_id),
            )
            txs.append(self._owner_signed(side, claimed))
        return txs

    # --- building blocks --------------------------------------------------------------------

    def _chronicler_signature(self, side: _Spendable) -> bytes:
        """The signature of the side's claim intent by its grid area's chronicler; none (empty)
        where the area names none. Raises RegistryUnavailable or RegistryRefused."""
        found = self._chroniclers.for_area(side.cert.grid_area)
        if found is None:
            return b""
        return found.register_claim_intent(
            side.cert.registry or self._registry,
            side.cert.certificate_id,
            side.secret.quantity,
            side.secret.blinding,
        )

    def _sliced(
        self, source: _Spendable, parts: list[int], ids: list[str]
    ) -> tuple[bytes, list[_NewSlice]]:
        cert_id = source.cert.certificate_id
        news = [
            self._new_slice(cert_id, slice_id, source.slice.owner, quantity)
            for slice_id, quantity in zip(ids, parts, strict=True)
        ]
        # C_source - sum(C_i) = (m - sum m_i) G + (r - sum r_i) H: a multiple of H exactly when
        # the parts sum to the whole, which the equality proof shows without revealing any m.
        total = Point.identity()
        for new in news:
            total = total + Point.from_bytes(new.commitment)
        parts_blinding = sum(new.secret.blinding for new in news) % ORDER
        proof = equality.prove_equality(
            source.commitment, total.to_bytes(), source.secret.blinding, parts_blinding, cert_id
        )
        _check(
            equality.verify_equality(source.commitment, total.to_bytes(), proof, cert_id),
            "sum proof",
        )
        event = el.SlicedEvent(
            certificate_id=self._stream(source.cert),
            source_slice_hash=pedersen.slice_hash(source.commitment),
            new_slices=[new.event_slice() for new in news],
            sum_proof=proof,
        )
        return self._owner_signed(source, event), news

    def _new_slice(
        self, certificate_id: str, slice_id: str, owner: str, quantity: int
    ) -> _NewSlice:
        blinding = random_scalar()
        commitment = pedersen.commit(quantity, blinding)
        proof = self._prover.prove_range(quantity, blinding, certificate_id)
        _check(self._prover.verify_range(commitment, proof, certificate_id), "range proof")
        path = self._owners.slice_path(owner, slice_id)
        owner_key = self._owners.public_master(owner, path).derive(path).key
        secret = SliceSecret(quantity, blinding, owner_key, path)
        self._seal(certificate_id, slice_id, secret)
        return _NewSlice(slice_id, commitment, proof, secret)

    def _seal(self, certificate_id: str, slice_id: str, secret: SliceSecret) -> None:
        commitment = pedersen.commit(secret.quantity, secret.blinding)
        self._local.seals[slice_id] = domain.SliceSeal(
            registry_ref=protocodec.slice_ref(commitment),
            secret=secrets_.seal_slice(self._box, certificate_id, slice_id, secret),
        )

    def _spendable(
        self, command: Command, certs: Mapping[str, Certificate], index: int
    ) -> _Spendable:
        ref = command.slices[index]
        cert = certs[ref.certificate_id]
        found = cert.slices[ref.slice_id]
        if found.secret is None:
            raise domain.RuleViolation(
                f"slice {found.slice_id} has no sealed secret: it cannot be spent in the registry",
                subject=found.slice_id,
            )
        secret = secrets_.open_slice(self._box, cert.certificate_id, found.slice_id, found.secret)
        return self._with_key(cert, found, secret)

    def _spendable_new(self, cert: Certificate, new: _NewSlice, owner: str) -> _Spendable:
        part = Slice(slice_id=new.slice_id, owner=owner, quantity_wh=new.secret.quantity)
        return self._with_key(cert, part, new.secret)

    def _with_key(self, cert: Certificate, found: Slice, secret: SliceSecret) -> _Spendable:
        private = self._owners.master(found.owner, secret.path).derive(secret.path)
        if private.public_key != secret.owner_key:
            raise domain.RuleViolation(
                f"slice {found.slice_id} is not owned by a key of {found.owner}",
                subject=found.slice_id,
            )
        return _Spendable(cert, found, secret, private.secret)

    def _stream(self, cert: Certificate) -> common_pb2.FederatedStreamId:
        return protocodec.stream_ref(cert.registry or self._registry, cert.certificate_id)

    def _header(self, registry: str | None, certificate_id: str, event: Message) -> tuple:
        """The header of a transaction of the stream, in the certificate's registry (None: the
        one): the registry a federation routes it to."""
        name = registry or self._registry
        return protocodec.new_header(name, certificate_id, event, str(uuid.uuid4()))

    def _issuer_signed(
        self, registry: str | None, certificate_id: str, grid_area: str, event: Message
    ) -> bytes:
        header, payload = self._header(registry, certificate_id, event)
        signed = protocodec.header_bytes(header)
        signature = self._issuers.sign(grid_area, signed)
        _check(
            keys.signed_by_issuer(self._issuers.public_keys(grid_area), signature, signed),
            "issuer signature",
        )
        return protocodec.serialize(header, signature, payload)

    def _owner_signed(self, source: _Spendable, event: Message) -> bytes:
        header, payload = self._header(source.cert.registry, source.cert.certificate_id, event)
        signed = protocodec.header_bytes(header)
        signature = keys.sign_as_owner(source.signing_key, signed)
        _check(keys.signed_by_owner(source.secret.owner_key, signature, signed), "owner signature")
        return protocodec.serialize(header, signature, payload)


class TransactionSelfCheckFailed(AssertionError):
    """A proof or signature we made does not verify: a bug, never to be sent."""


def _check(ok: bool, what: str) -> None:
    if not ok:
        raise TransactionSelfCheckFailed(f"our own {what} does not verify")


def _owner_key(content: bytes) -> el.PublicKey:
    return el.PublicKey(content=content, type=el.Secp256k1)
