"""Turn a command into the registry transactions that carry it out, in the order to send them.

Built once per command, before its first send, and stored with it (the worker never rebuilds):

- issue: Issued
- slice: Sliced
- transfer: Transferred; a part of a slice: Sliced (the part, the rest), then Transferred
- claim: on each side whose slice holds more than the claim, Sliced first; then Allocated on
  the production stream, Allocated on the consumption stream (the registry wants the
  production side first), Claimed on production, Claimed on consumption
- withdraw: Withdrawn

The slices a command creates get ids derived from the command (domain.slice_id_for), so the
book, once the command commits, names them exactly as these transactions did.
"""

from __future__ import annotations

import base64
import hashlib
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from chalicelib import domain
from chalicelib.domain import Certificate, CertificateType, Command, CommandKind, Slice
from chalicelib.registry import envelope
from chalicelib.registry.envelope import Transaction


@dataclass(frozen=True)
class Built:
    transactions: tuple[str, ...]  # base64 of each serialized transaction, in sending order


def allocation_id_for(command: Command) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"allocation/{command.command_id}"))


def issuer_of(cert: Certificate) -> str:
    return f"issuer/{cert.grid_area}"


class PlainTransactionBuilder:
    """Transactions in the envelope's JSON encoding, quantities in clear, signers by id."""

    def __init__(self, registry_name: str, hashed_attributes: frozenset[str] = frozenset()):
        self._registry = registry_name
        self._hashed = hashed_attributes

    def build(self, command: Command, certificates: Mapping[str, Certificate]) -> Built:
        txs = [
            base64.b64encode(tx.serialize()).decode()
            for tx in self._transactions(command, certificates)
        ]
        return Built(transactions=tuple(txs))

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
                return [self._tx(cert.certificate_id, envelope.WITHDRAWN, {}, issuer_of(cert))]
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
                cert.certificate_id,
                envelope.TRANSFERRED,
                {
                    "certificate_id": self._stream(cert.certificate_id),
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
            "production_certificate_id": self._stream(production.certificate_id),
            "consumption_certificate_id": self._stream(consumption.certificate_id),
            "production_source_slice_hash": refs[0],
            "consumption_source_slice_hash": refs[1],
            "equality_proof": "",
            "chronicler_signature": "",
        }
        for cert, owner in ((production, owners[0]), (consumption, owners[1])):
            txs.append(self._tx(cert.certificate_id, envelope.ALLOCATED, allocated, owner))
        for cert, owner in ((production, owners[0]), (consumption, owners[1])):
            txs.append(
                self._tx(
                    cert.certificate_id,
                    envelope.CLAIMED,
                    {
                        "certificate_id": self._stream(cert.certificate_id),
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

    def _stream(self, certificate_id: str) -> dict[str, str]:
        return {"registry": self._registry, "stream_id": certificate_id}

    def _tx(
        self, stream: str, payload_type: str, payload: dict[str, Any], signer: str
    ) -> Transaction:
        return Transaction.build(self._registry, stream, payload_type, payload, signer)

    def _issued(self, command: Command) -> Transaction:
        spec = command.issue
        assert spec is not None
        attributes = [
            {"key": key, "value": hashlib.sha256(value.encode()).hexdigest(), "type": "HASHED"}
            if key in self._hashed
            else {"key": key, "value": value, "type": "CLEARTEXT"}
            for key, value in sorted(spec.attributes.items())
        ]
        payload = {
            "certificate_id": self._stream(command.certificate_id),
            "type": "PRODUCTION" if spec.type == CertificateType.PRODUCTION else "CONSUMPTION",
            "period": {"start": spec.period.start.isoformat(), "end": spec.period.end.isoformat()},
            "grid_area": spec.grid_area,
            "asset_id_hash": hashlib.sha256(spec.gsrn.encode()).hexdigest(),
            "quantity": {
                "content": domain.slice_id_for(command.command_id, 0),
                "quantity": spec.quantity_wh,
            },
            "owner_public_key": {"content": spec.owner},
            "attributes": attributes,
        }
        return self._tx(
            command.certificate_id, envelope.ISSUED, payload, f"issuer/{spec.grid_area}"
        )

    def _sliced(self, cert: Certificate, source: Slice, parts: Any, ids: list[str]) -> Transaction:
        return self._tx(
            cert.certificate_id,
            envelope.SLICED,
            {
                "certificate_id": self._stream(cert.certificate_id),
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
