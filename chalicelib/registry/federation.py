"""The registries a service talks to, by name, and which one each transaction goes to.

Project Origin federates registries: every certificate's stream id names its registry
(`FederatedStreamId{registry, stream_id}`), each issuing body runs one, and a claim may span two.
The header of every transaction names the registry of the stream it changes, so that is what
routes it: the builders write the certificate's registry there (registry/builder.py), and
`Registries.for_transaction` reads it back with the codec the builders' format needs.

With one registry (no CERTS_REGISTRIES) every transaction goes to it, whatever its header says,
as before federation.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from chalicelib.registry.codec import PLAIN, TransactionCodec
from chalicelib.registry.port import Registry


class UnknownRegistry(LookupError):
    """A transaction or certificate names a registry this service is not configured for."""


class Registries:
    def __init__(
        self,
        registries: Mapping[str, Registry],
        default: str,
        codec: TransactionCodec = PLAIN,
    ) -> None:
        if default not in registries:
            raise ValueError(f"the default registry {default!r} is not among {sorted(registries)}")
        self._by_name = dict(registries)
        self._default = default
        self._codec = codec

    @classmethod
    def one(cls, registry: Registry, name: str = "", codec: TransactionCodec = PLAIN) -> Registries:
        return cls({name: registry}, name, codec)

    @property
    def federated(self) -> bool:
        return len(self._by_name) > 1

    def __iter__(self) -> Iterator[tuple[str, Registry]]:
        return iter(self._by_name.items())

    def name_of(self, transaction: bytes) -> str:
        """The registry a serialized transaction goes to (the one, unless federated)."""
        if not self.federated:
            return self._default
        name = self._codec.registry(transaction)
        if name not in self._by_name:
            raise UnknownRegistry(f"a transaction names registry {name!r}, not configured")
        return name

    def for_transaction(self, transaction: bytes) -> Registry:
        return self._by_name[self.name_of(transaction)]

    def named(self, name: str | None) -> Registry:
        """A certificate's registry by the name it records (None: the one it had before
        federation, the default)."""
        if not self.federated or name is None:
            return self._by_name[self._default]
        try:
            return self._by_name[name]
        except KeyError:
            raise UnknownRegistry(f"registry {name!r} is not configured") from None

    def reachable(self) -> None:
        """Raise, naming it, when one of the registries cannot be reached (the health check)."""
        for name, registry in self._by_name.items():
            try:
                registry.reachable()  # type: ignore[attr-defined]
            except Exception as exc:
                raise type(exc)(f"registry {name!r}: {exc}") from exc

    def any_supports_queries(self, transactions: list[bytes]) -> bool:
        """Whether the registry of any of the transactions answers queries (the default's
        word when there are none yet)."""
        if not transactions:
            return self.named(None).supports_queries
        return any(self.for_transaction(t).supports_queries for t in transactions)
