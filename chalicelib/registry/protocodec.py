"""The registry's protobuf wire format: transactions, their events, and reading a stream back.

A transaction is `Transaction{header, header_signature, payload}`; the payload is one serialized
event of package project_origin.electricity.v1 and the header names its full type name and its
SHA-512 (REGISTRY.md). Its id is base64(SHA-256(serialized transaction)), as for the plain
envelope, so the worker and the reconciler handle both alike.

Signatures cover the *serialized header*. Protobuf serialization is not canonical in general,
but these headers hold only scalar and nested message fields with no unknown fields, and every
protobuf implementation writes such messages in field-number order, so the bytes we sign are
the bytes the registry re-serializes. `header_bytes` is the one place that serializes a header.

Folding a stream (for the reconciler's drift check) gives the same `RegistryCertificate` as the
plain fold, but the registry holds commitments and public keys, not quantities and owner ids.
They are resolved through a `SliceDirectory`: the slices the book knows for the certificate
with their sealed secrets. A registry slice's quantity is the one its secret opens to (checked
against the commitment itself); its owner is the book owner whose slice key is the registry's
owner key. What the registry holds that we have no secret for (slices cut by an owner outside
this service) cannot be read, by design of the commitments: such a slice's owner reads
"key:<hex>" and quantities are inferred only as far as sums allow (a single unknown part of a
known whole is the difference; otherwise the unknown rest goes to the first unknown part), so
that conservation per certificate still holds in the book after alignment.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol

from google.protobuf.message import DecodeError, Message

from chalicelib.registry.crypto.pedersen import commit
from chalicelib.registry.envelope import MalformedTransaction, transaction_id_of
from chalicelib.registry.proto.project_origin.common.v1 import common_pb2
from chalicelib.registry.proto.project_origin.electricity.v1 import electricity_pb2 as el
from chalicelib.registry.proto.project_origin.registry.v1 import registry_pb2 as reg
from chalicelib.registry.stream import RegistryCertificate, RegistrySlice

EVENT_TYPES: dict[str, type[Message]] = {
    el.IssuedEvent.DESCRIPTOR.full_name: el.IssuedEvent,
    el.SlicedEvent.DESCRIPTOR.full_name: el.SlicedEvent,
    el.TransferredEvent.DESCRIPTOR.full_name: el.TransferredEvent,
    el.AllocatedEvent.DESCRIPTOR.full_name: el.AllocatedEvent,
    el.ClaimedEvent.DESCRIPTOR.full_name: el.ClaimedEvent,
    el.WithdrawnEvent.DESCRIPTOR.full_name: el.WithdrawnEvent,
    el.UnclaimedEvent.DESCRIPTOR.full_name: el.UnclaimedEvent,
}
ISSUED = el.IssuedEvent.DESCRIPTOR.full_name
SLICED = el.SlicedEvent.DESCRIPTOR.full_name
TRANSFERRED = el.TransferredEvent.DESCRIPTOR.full_name
ALLOCATED = el.AllocatedEvent.DESCRIPTOR.full_name
CLAIMED = el.ClaimedEvent.DESCRIPTOR.full_name
WITHDRAWN = el.WithdrawnEvent.DESCRIPTOR.full_name
UNCLAIMED = el.UnclaimedEvent.DESCRIPTOR.full_name


def slice_ref(commitment: bytes) -> str:
    """The registry's name of a slice as the book stores it: hex of SHA-256(commitment)."""
    return hashlib.sha256(bytes(commitment)).hexdigest()


def stream_ref(registry: str, certificate_id: str) -> common_pb2.FederatedStreamId:
    return common_pb2.FederatedStreamId(
        registry=registry, stream_id=common_pb2.Uuid(value=certificate_id)
    )


def header_bytes(header: reg.TransactionHeader) -> bytes:
    return header.SerializeToString(deterministic=True)


def new_header(
    registry: str, certificate_id: str, event: Message, nonce: str
) -> tuple[reg.TransactionHeader, bytes]:
    """The header for `event` on a stream, and the event's serialized bytes (the payload)."""
    payload = event.SerializeToString(deterministic=True)
    header = reg.TransactionHeader(
        federated_stream_id=stream_ref(registry, certificate_id),
        payload_type=event.DESCRIPTOR.full_name,
        payload_sha512=hashlib.sha512(payload).digest(),
        nonce=nonce,
    )
    return header, payload


def serialize(header: reg.TransactionHeader, signature: bytes, payload: bytes) -> bytes:
    tx = reg.Transaction(header=header, header_signature=signature, payload=payload)
    return tx.SerializeToString(deterministic=True)


@dataclass(frozen=True)
class Parsed:
    transaction: reg.Transaction
    event: Message

    @property
    def stream_id(self) -> str:
        return self.transaction.header.federated_stream_id.stream_id.value

    @property
    def registry(self) -> str:
        return self.transaction.header.federated_stream_id.registry

    @property
    def payload_type(self) -> str:
        return self.transaction.header.payload_type

    @property
    def header_bytes(self) -> bytes:
        return header_bytes(self.transaction.header)

    @property
    def signature(self) -> bytes:
        return self.transaction.header_signature


def parse(data: bytes) -> Parsed:
    """A transaction and its event; MalformedTransaction for anything else."""
    try:
        tx = reg.Transaction.FromString(bytes(data))
    except DecodeError as exc:
        raise MalformedTransaction(f"not a protobuf transaction: {exc}") from exc
    if not tx.HasField("header"):
        raise MalformedTransaction("transaction has no header")
    event_type = EVENT_TYPES.get(tx.header.payload_type)
    if event_type is None:
        raise MalformedTransaction(f"unknown payload type {tx.header.payload_type!r}")
    if hashlib.sha512(tx.payload).digest() != tx.header.payload_sha512:
        raise MalformedTransaction("payload does not match its SHA-512 in the header")
    if not tx.header.federated_stream_id.stream_id.value:
        raise MalformedTransaction("header names no stream")
    try:
        event = event_type.FromString(tx.payload)
    except DecodeError as exc:
        raise MalformedTransaction(f"payload is not a {tx.header.payload_type}: {exc}") from exc
    return Parsed(tx, event)


# --- reading a stream back into the book's terms ---------------------------------------------


@dataclass(frozen=True)
class KnownSlice:
    """A slice the book knows, with what its opened secret says."""

    ref: str
    owner: str
    quantity: int
    blinding: int
    owner_key: bytes

    def __repr__(self) -> str:
        return f"KnownSlice({self.ref[:12]}.., {self.owner})"


class SliceDirectory(Protocol):
    def known_slices(self, certificate_id: str) -> Iterable[KnownSlice]: ...


class NoDirectory:
    def known_slices(self, certificate_id: str) -> Iterable[KnownSlice]:
        return ()


@dataclass
class _Folded:
    key: bytes
    commitment: bytes
    allocated: bool = False
    claimed: bool = False


class ProtoCodec:
    def __init__(self, directory: SliceDirectory | None = None) -> None:
        self._directory = directory or NoDirectory()

    def stream_id(self, data: bytes) -> str:
        return parse(data).stream_id

    def registry(self, data: bytes) -> str:
        return parse(data).transaction.header.federated_stream_id.registry

    def fold(self, certificate_id: str, transactions: list[bytes]) -> RegistryCertificate | None:
        if not transactions:
            return None
        cert = RegistryCertificate(certificate_id)
        slices: dict[str, _Folded] = {}
        allocations: dict[str, str] = {}
        cuts: list[tuple[str, list[str]]] = []  # (source, parts) in order, to infer quantities
        for data in transactions:
            parsed = parse(data)
            cert.transaction_ids.add(transaction_id_of(data))
            e = parsed.event
            match parsed.payload_type:
                case "project_origin.electricity.v1.IssuedEvent":
                    content = e.quantity_commitment.content
                    slices[slice_ref(content)] = _Folded(e.owner_public_key.content, content)
                case "project_origin.electricity.v1.SlicedEvent":
                    source = e.source_slice_hash.hex()
                    slices.pop(source, None)
                    parts = []
                    for new in e.new_slices:
                        ref = slice_ref(new.quantity.content)
                        slices[ref] = _Folded(new.new_owner.content, new.quantity.content)
                        parts.append(ref)
                    cuts.append((source, parts))
                case "project_origin.electricity.v1.TransferredEvent":
                    found = slices.get(e.source_slice_hash.hex())
                    if found is not None:
                        found.key = e.new_owner.content
                case "project_origin.electricity.v1.AllocatedEvent":
                    production = e.production_certificate_id.stream_id.value == certificate_id
                    ref = (
                        e.production_source_slice_hash
                        if production
                        else e.consumption_source_slice_hash
                    ).hex()
                    allocations[e.allocation_id.value] = ref
                    if ref in slices:
                        slices[ref].allocated = True
                case "project_origin.electricity.v1.ClaimedEvent":
                    ref = allocations.get(e.allocation_id.value, "")
                    if ref in slices:
                        slices[ref].claimed = True
                case "project_origin.electricity.v1.UnclaimedEvent":
                    # The opposite side was withdrawn: the claimed slice is available again.
                    ref = allocations.pop(e.allocation_id.value, "")
                    if ref in slices:
                        slices[ref].claimed = slices[ref].allocated = False
                case "project_origin.electricity.v1.WithdrawnEvent":
                    cert.withdrawn = True
        known = self._known(certificate_id, transactions)
        quantities = _quantities(known, cuts)
        for ref, folded in slices.items():
            owners = [k.owner for k in known.get(ref, ()) if k.owner_key == folded.key]
            cert.slices[ref] = RegistrySlice(
                ref,
                owners[0] if owners else f"key:{folded.key.hex()}",
                quantities.get(ref, 0),
                claimed=folded.claimed,
                allocated=folded.allocated,
            )
        return cert

    def _known(self, certificate_id: str, transactions: list[bytes]) -> dict[str, list[KnownSlice]]:
        """The book's slices of this certificate whose secrets open to their commitments."""
        commitments = {}
        for data in transactions:
            e = parse(data).event
            if isinstance(e, el.IssuedEvent):
                commitments[slice_ref(e.quantity_commitment.content)] = e.quantity_commitment
            elif isinstance(e, el.SlicedEvent):
                for new in e.new_slices:
                    commitments[slice_ref(new.quantity.content)] = new.quantity
        known: dict[str, list[KnownSlice]] = {}
        for k in self._directory.known_slices(certificate_id):
            found = commitments.get(k.ref)
            if found is not None and commit(k.quantity, k.blinding) == found.content:
                known.setdefault(k.ref, []).append(k)
        return known


def _quantities(
    known: Mapping[str, list[KnownSlice]], cuts: list[tuple[str, list[str]]]
) -> dict[str, int]:
    quantities = {ref: entries[0].quantity for ref, entries in known.items()}
    for source, parts in cuts:
        if source not in quantities:
            continue
        unknown = [ref for ref in parts if ref not in quantities]
        if unknown:
            rest = quantities[source] - sum(quantities[r] for r in parts if r in quantities)
            quantities[unknown[0]] = rest
            for ref in unknown[1:]:
                quantities[ref] = 0
    return quantities


class BookSliceDirectory:
    """The slices the book holds for a certificate, their secrets opened with `box`.
    `book` needs only get_certificate (chalicelib.ports.Book)."""

    def __init__(self, book, box) -> None:
        self._book = book
        self._box = box

    def known_slices(self, certificate_id: str) -> Iterable[KnownSlice]:
        from chalicelib.registry.secrets import SecretUnreadable, open_slice

        cert = self._book.get_certificate(certificate_id)
        if cert is None:
            return []
        known = []
        for s in cert.slices.values():
            if s.secret is None or s.registry_ref is None:
                continue
            try:
                secret = open_slice(self._box, certificate_id, s.slice_id, s.secret)
            except SecretUnreadable:
                continue  # reads as a slice we know nothing about: drift, reported as such
            known.append(
                KnownSlice(
                    s.registry_ref, s.owner, secret.quantity, secret.blinding, secret.owner_key
                )
            )
        return known
