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

import base64
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from chalicelib.registry.codec import PLAIN, TransactionCodec
from chalicelib.registry.port import Receipt, Registry, RegistryUnavailable


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

    def of_step(self, transactions: Sequence[str], step: int) -> Registry:
        """Where a command's current step goes: the registry its stored transaction (base64)
        names; the default before the command is built."""
        if not self.federated or not transactions:
            return self.named(None)
        return self.for_transaction(base64.b64decode(transactions[step]))

    def reachable(self) -> None:
        """Raise, naming it, when one of the registries cannot be reached (the health check)."""
        for name, registry in self._by_name.items():
            try:
                registry.reachable()  # type: ignore[attr-defined]
            except Exception as exc:  # whatever the client raised, said with the registry
                raise RegistryUnavailable(f"registry {name!r}: {exc}") from exc

    def any_supports_queries(self, transactions: Sequence[str]) -> bool:
        """Whether the registry of any of a command's stored transactions (base64) answers
        queries; the default's word when there are none yet, or there is one registry."""
        if not self.federated or not transactions:
            return self.named(None).supports_queries
        return any(self.for_transaction(base64.b64decode(t)).supports_queries for t in transactions)


class RegistriesOf:
    """The `registry` attribute of a worker or reconciler as Registries: itself when it is
    one, else a federation of that one registry, remembered while it is the same object (a
    test may swap the registry of a built worker). `codec`: the attribute naming the codec."""

    def __init__(self, codec: str | None = None) -> None:
        self._codec = codec

    def __get__(self, owner: Any, kind: Any = None) -> Registries:
        registry = owner.registry
        if isinstance(registry, Registries):
            return registry
        remembered = owner.__dict__.get("_registries_of")
        if remembered is None or remembered[0] is not registry:
            codec = getattr(owner, self._codec) if self._codec else PLAIN
            remembered = (registry, Registries.one(registry, codec=codec))
            owner.__dict__["_registries_of"] = remembered
        return remembered[1]


class Guarded:
    """One registry behind a bound on the transactions this process has in flight to it, and a
    back-off after it refused a call (RESOURCE_EXHAUSTED, UNAVAILABLE before receiving, HTTP
    429/503): for `backoff_s`, doubling up to `max_backoff_s` while refusals go on, a send is
    refused here without a call. Both refusals are `RegistryUnavailable`, "certainly not sent":
    the worker puts the commands back and their messages come again later, so one busy or
    down registry costs its own commands a wait and no one else's anything.

    The bound is per process (a Lambda container sends one batch at a time, the embedded stack
    from several pollers); across a fleet, the worker's reserved concurrency times its batch
    size bounds what is in flight to all registries together (docs/DEPLOY.md, "Concurrency")."""

    def __init__(
        self,
        inner: Registry,
        name: str,
        max_in_flight: int = 200,
        backoff_s: float = 1.0,
        max_backoff_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._inner = inner
        self.name = name
        self._max_in_flight = max_in_flight
        self._backoff_s, self._max_backoff_s = backoff_s, max_backoff_s
        self._clock = clock
        self._lock = threading.Lock()
        self._in_flight = 0
        self._refusals = 0  # in a row
        self._until = 0.0  # refused here until then

    @property
    def supports_queries(self) -> bool:
        return self._inner.supports_queries

    def send(self, transactions: Sequence[bytes]) -> list[Receipt]:
        with self._lock:
            now = self._clock()
            if now < self._until:
                raise RegistryUnavailable(
                    f"registry {self.name!r} refused a call: backing off for "
                    f"{self._until - now:.1f} s more"
                )
            if self._in_flight + len(transactions) > self._max_in_flight:
                raise RegistryUnavailable(
                    f"registry {self.name!r} has {self._in_flight} transactions in flight "
                    f"from here (at most {self._max_in_flight})"
                )
            self._in_flight += len(transactions)
        try:
            receipts = self._inner.send(transactions)
        except RegistryUnavailable:
            with self._lock:
                self._refusals += 1
                wait = min(self._backoff_s * 2 ** (self._refusals - 1), self._max_backoff_s)
                self._until = self._clock() + wait
            raise
        else:
            with self._lock:
                self._refusals = 0
            return receipts
        finally:
            with self._lock:
                self._in_flight -= len(transactions)

    def status(self, transaction_id: str) -> Receipt:
        return self._inner.status(transaction_id)

    def stream(self, certificate_id: str) -> list[bytes]:
        return self._inner.stream(certificate_id)

    def __getattr__(self, name: str) -> Any:  # reachable, tallies, the simulator's controls
        return getattr(self._inner, name)
