"""Transactions for the registry tests, built the way the worker will build them."""

from __future__ import annotations

import uuid
from typing import Any

from chalicelib.registry.envelope import (
    ALLOCATED,
    CLAIMED,
    ISSUED,
    SLICED,
    TRANSFERRED,
    UNCLAIMED,
    WITHDRAWN,
    Transaction,
)

REGISTRY = "sim"
ISSUER = "issuer-dk1"
HOUR = {"start": "2025-01-01T10:00:00+00:00", "end": "2025-01-01T11:00:00+00:00"}
QUARTER = {"start": "2025-01-01T10:15:00+00:00", "end": "2025-01-01T10:30:00+00:00"}


def new_id() -> str:
    return str(uuid.uuid4())


def ref(stream: str) -> dict[str, str]:
    return {"registry": REGISTRY, "stream_id": stream}


def _tx(stream: str, payload_type: str, payload: dict[str, Any], signer: str) -> bytes:
    return Transaction.build(REGISTRY, stream, payload_type, payload, signer).serialize()


def issue(
    cert: str,
    *,
    slice_ref: str = "s0",
    quantity: int = 1000,
    owner: str = "alice",
    kind: str = "PRODUCTION",
    period: dict[str, str] | None = None,
    signer: str = ISSUER,
) -> bytes:
    return _tx(
        cert,
        ISSUED,
        {
            "certificate_id": ref(cert),
            "type": kind,
            "period": period or HOUR,
            "grid_area": "DK1",
            "asset_id_hash": "aGFzaA==",
            "quantity": {"content": slice_ref, "quantity": quantity},
            "owner_public_key": {"content": owner},
            "attributes": [{"key": "fuel", "value": "F01", "type": "CLEARTEXT"}],
        },
        signer,
    )


def slice_(cert: str, source: str, parts: list[tuple[str, int, str]], signer: str) -> bytes:
    """Slice `source` into parts of (ref, quantity, new owner)."""
    return _tx(
        cert,
        SLICED,
        {
            "certificate_id": ref(cert),
            "source_slice_hash": source,
            "new_slices": [
                {"quantity": {"content": r, "quantity": q}, "new_owner": {"content": o}}
                for r, q, o in parts
            ],
            "sum_proof": "",
        },
        signer,
    )


def transfer(cert: str, source: str, new_owner: str, signer: str) -> bytes:
    payload = {
        "certificate_id": ref(cert),
        "source_slice_hash": source,
        "new_owner": {"content": new_owner},
    }
    return _tx(cert, TRANSFERRED, payload, signer)


def allocate(
    on: str,
    allocation: str,
    production: str,
    consumption: str,
    production_slice: str,
    consumption_slice: str,
    signer: str,
) -> bytes:
    """The AllocatedEvent on stream `on`: the production or the consumption certificate."""
    payload = {
        "allocation_id": allocation,
        "production_certificate_id": ref(production),
        "consumption_certificate_id": ref(consumption),
        "production_source_slice_hash": production_slice,
        "consumption_source_slice_hash": consumption_slice,
        "equality_proof": "",
        "chronicler_signature": "",
    }
    return _tx(on, ALLOCATED, payload, signer)


def claim(cert: str, allocation: str, signer: str) -> bytes:
    return _tx(cert, CLAIMED, {"certificate_id": ref(cert), "allocation_id": allocation}, signer)


def withdraw(cert: str, signer: str = ISSUER) -> bytes:
    return _tx(cert, WITHDRAWN, {}, signer)


def unclaim(cert: str, allocation: str, signer: str) -> bytes:
    return _tx(cert, UNCLAIMED, {"allocation_id": allocation}, signer)
