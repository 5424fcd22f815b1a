"""The registry's transaction envelope, as REGISTRY.md describes it.

A transaction is header + header signature + payload. The header names the stream (registry +
certificate UUID), the payload type, the SHA-512 of the payload and a random nonce; the id is
base64(SHA-256(serialized transaction)). Because of the nonce, building the same command twice
gives another id: the worker therefore builds each transaction once, stores its bytes with the
command, and only ever sends those bytes.

The serialization here is canonical JSON with payloads that mirror the protobuf events field
for field (quantities in clear, owners by id, signatures as the signer's id). The gRPC adapter
of the real registry swaps in the protobuf encoding and real proofs and signatures behind the
same `Transaction` shape; the worker only ever handles ids and bytes.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
from dataclasses import dataclass
from typing import Any

PAYLOAD_PREFIX = "project_origin.electricity.v1."
ISSUED = PAYLOAD_PREFIX + "IssuedEvent"
SLICED = PAYLOAD_PREFIX + "SlicedEvent"
TRANSFERRED = PAYLOAD_PREFIX + "TransferredEvent"
ALLOCATED = PAYLOAD_PREFIX + "AllocatedEvent"
CLAIMED = PAYLOAD_PREFIX + "ClaimedEvent"
WITHDRAWN = PAYLOAD_PREFIX + "WithdrawnEvent"
UNCLAIMED = PAYLOAD_PREFIX + "UnclaimedEvent"
PAYLOAD_TYPES = frozenset({ISSUED, SLICED, TRANSFERRED, ALLOCATED, CLAIMED, WITHDRAWN, UNCLAIMED})


class MalformedTransaction(ValueError):
    """Bytes that are not a transaction of ours."""


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _canonical(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


@dataclass(frozen=True)
class Header:
    registry: str
    stream_id: str  # the certificate's UUID, lowercase
    payload_type: str
    payload_sha512: str  # base64
    nonce: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "federated_stream_id": {"registry": self.registry, "stream_id": self.stream_id},
            "payload_type": self.payload_type,
            "payload_sha512": self.payload_sha512,
            "nonce": self.nonce,
        }


@dataclass(frozen=True)
class Transaction:
    header: Header
    header_signature: str  # who signed; the crypto codec puts a real signature here
    payload: dict[str, Any]

    @classmethod
    def build(
        cls, registry: str, stream_id: str, payload_type: str, payload: dict[str, Any], signer: str
    ) -> Transaction:
        """A new transaction with a fresh nonce: call once per transaction, then store it."""
        if payload_type not in PAYLOAD_TYPES:
            raise ValueError(f"unknown payload type {payload_type}")
        header = Header(
            registry=registry,
            stream_id=stream_id,
            payload_type=payload_type,
            payload_sha512=_b64(hashlib.sha512(_canonical(payload)).digest()),
            nonce=secrets.token_hex(16),
        )
        return cls(header=header, header_signature=signer, payload=payload)

    def serialize(self) -> bytes:
        return _canonical(
            {
                "header": self.header.to_dict(),
                "header_signature": self.header_signature,
                "payload": self.payload,
            }
        )

    @property
    def transaction_id(self) -> str:
        return transaction_id_of(self.serialize())

    @classmethod
    def parse(cls, data: bytes) -> Transaction:
        try:
            raw = json.loads(data)
            h = raw["header"]
            header = Header(
                registry=h["federated_stream_id"]["registry"],
                stream_id=h["federated_stream_id"]["stream_id"],
                payload_type=h["payload_type"],
                payload_sha512=h["payload_sha512"],
                nonce=h["nonce"],
            )
            tx = cls(
                header=header, header_signature=raw["header_signature"], payload=raw["payload"]
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise MalformedTransaction(f"not a transaction: {exc}") from exc
        if header.payload_type not in PAYLOAD_TYPES:
            raise MalformedTransaction(f"unknown payload type {header.payload_type}")
        if _b64(hashlib.sha512(_canonical(tx.payload)).digest()) != header.payload_sha512:
            raise MalformedTransaction("payload does not match its SHA-512 in the header")
        return tx


def transaction_id_of(data: bytes) -> str:
    return _b64(hashlib.sha256(data).digest())
