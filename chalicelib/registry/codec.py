"""What the reconciler (and the demo) need to read from stored transactions: a seam.

The worker only ever handles transactions as bytes and ids. The reconciler needs two more
things: which stream (certificate) a stored transaction targets, and what a certificate's stream
says its slices are. How to read those depends on the encoding the builder wrote, so the codec is
chosen by the composition root together with the builder:

- `PlainCodec`: the JSON envelope (envelope.py) and its fold (stream.py), for the simulator;
- `protocodec.ProtoCodec`: the registry's protobuf wire format, with commitments and keys that
  are resolved back to owners and quantities through the secrets we hold.
"""

from __future__ import annotations

from typing import Protocol

from chalicelib.registry import stream
from chalicelib.registry.envelope import Transaction
from chalicelib.registry.stream import RegistryCertificate


class TransactionCodec(Protocol):
    def stream_id(self, data: bytes) -> str:
        """The certificate (stream UUID) a serialized transaction targets."""
        ...

    def registry(self, data: bytes) -> str:
        """The registry its header names: where a federation sends it (federation.py)."""
        ...

    def fold(self, certificate_id: str, transactions: list[bytes]) -> RegistryCertificate | None:
        """The certificate as its stream leaves it; None when the stream is empty."""
        ...


class PlainCodec:
    def stream_id(self, data: bytes) -> str:
        return Transaction.parse(data).header.stream_id

    def registry(self, data: bytes) -> str:
        return Transaction.parse(data).header.registry

    def fold(self, certificate_id: str, transactions: list[bytes]) -> RegistryCertificate | None:
        return stream.fold(certificate_id, transactions)


PLAIN = PlainCodec()
