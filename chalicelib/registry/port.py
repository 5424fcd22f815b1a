"""What the worker and the reconciler need from a registry, and nothing more.

Two worlds must be served (REGISTRY.md): a registry that can only take commands, whose answer
to a send is the verdict ("no queries", the seed's assumption), and one that answers a send
with PENDING and can then be asked for a transaction's status and a stream's transactions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol


class TransactionStatus(StrEnum):
    UNKNOWN = "UNKNOWN"
    PENDING = "PENDING"
    FAILED = "FAILED"
    COMMITTED = "COMMITTED"
    FINALIZED = "FINALIZED"


@dataclass(frozen=True)
class Receipt:
    """The registry's answer for one sent transaction."""

    transaction_id: str
    status: TransactionStatus  # COMMITTED, FAILED (definitely refused) or PENDING
    message: str = ""


class RegistryUnavailable(Exception):
    """The registry refused the call before anything was sent: safe to send again later."""


class RegistryAmbiguous(Exception):
    """The call may or may not have reached the registry (timeout, broken connection):
    the transactions it carried must never be sent again blindly."""


class RegistryRefused(Exception):
    """The registry refused the call as a whole, before looking at any transaction in it (a
    malformed or oversized request): nothing was applied, and the same call would be refused
    again. A batch refused so may hold one bad transaction among good ones."""


class QueriesNotSupported(Exception):
    """This registry answers no queries (the seed's assumption)."""


class Registry(Protocol):
    @property
    def supports_queries(self) -> bool: ...

    def send(self, transactions: Sequence[bytes]) -> list[Receipt]:
        """Send serialized transactions; one receipt each, in order. Raises RegistryUnavailable
        when nothing was sent, RegistryRefused when nothing was sent and never will be,
        RegistryAmbiguous when the outcome is unknown."""
        ...

    def status(self, transaction_id: str) -> Receipt:
        """The registry's current word on a transaction. Raises QueriesNotSupported."""
        ...

    def stream(self, certificate_id: str) -> list[bytes]:
        """Every transaction the registry applied to a certificate, in order.
        Raises QueriesNotSupported."""
        ...
