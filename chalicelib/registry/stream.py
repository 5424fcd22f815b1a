"""What the registry says a certificate is: its stream of transactions, folded into slices.

The registry verified every transaction before applying it, so folding only reads them. The
reconciler compares the result with the book and, where they differ, the registry wins.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from chalicelib.registry import envelope
from chalicelib.registry.envelope import Transaction


@dataclass(frozen=True)
class RegistrySlice:
    ref: str
    owner: str
    quantity_wh: int
    claimed: bool = False
    allocated: bool = False


@dataclass
class RegistryCertificate:
    certificate_id: str
    withdrawn: bool = False
    slices: dict[str, RegistrySlice] = field(default_factory=dict)
    transaction_ids: set[str] = field(default_factory=set)


def fold(certificate_id: str, transactions: list[bytes]) -> RegistryCertificate | None:
    """The certificate as its stream leaves it; None when the registry has no such stream."""
    if not transactions:
        return None
    cert = RegistryCertificate(certificate_id)
    allocations: dict[str, str] = {}  # allocation id -> the slice on this stream
    for data in transactions:
        tx = Transaction.parse(data)
        cert.transaction_ids.add(envelope.transaction_id_of(data))
        p = tx.payload
        match tx.header.payload_type:
            case envelope.ISSUED:
                ref = p["quantity"]["content"]
                cert.slices[ref] = RegistrySlice(
                    ref, p["owner_public_key"]["content"], int(p["quantity"]["quantity"])
                )
            case envelope.SLICED:
                cert.slices.pop(p["source_slice_hash"], None)
                for new in p["new_slices"]:
                    ref = new["quantity"]["content"]
                    cert.slices[ref] = RegistrySlice(
                        ref, new["new_owner"]["content"], int(new["quantity"]["quantity"])
                    )
            case envelope.TRANSFERRED:
                old = cert.slices[p["source_slice_hash"]]
                cert.slices[old.ref] = RegistrySlice(
                    old.ref, p["new_owner"]["content"], old.quantity_wh
                )
            case envelope.ALLOCATED:
                production = p["production_certificate_id"]["stream_id"] == certificate_id
                ref = p[
                    "production_source_slice_hash"
                    if production
                    else "consumption_source_slice_hash"
                ]
                allocations[p["allocation_id"]] = ref
                old = cert.slices[ref]
                cert.slices[ref] = RegistrySlice(ref, old.owner, old.quantity_wh, allocated=True)
            case envelope.CLAIMED:
                ref = allocations[p["allocation_id"]]
                old = cert.slices[ref]
                cert.slices[ref] = RegistrySlice(ref, old.owner, old.quantity_wh, claimed=True)
            case envelope.UNCLAIMED:
                # The opposite side was withdrawn: the claimed slice is available again.
                ref = allocations.pop(p["allocation_id"])
                old = cert.slices[ref]
                cert.slices[ref] = RegistrySlice(ref, old.owner, old.quantity_wh)
            case envelope.WITHDRAWN:
                cert.withdrawn = True
    return cert
