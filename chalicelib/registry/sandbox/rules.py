"""The registry's rules, once, for both of the simulator's wire formats.

The plain envelope (sandbox/simulator.py) and the real protobuf format (sandbox/verifier.py)
parse their bytes into the events below and hand them to `Rules`; what differs between the two
is only how a signature, a key, a quantity and a proof are checked, which each format supplies
as `Checks`. So a rule added here holds for both.

Each rule checks everything first and changes state last: a refused transaction changes
nothing. The rules follow REGISTRY.md (the upstream verifier's table and its "More facts"):

- every transaction: its header names this registry (when the registry knows its name);
- Issued: certificate new; an issuer of the grid area signed; type set; owner key parses;
  period from 1 minute to 1 hour; the quantity is valid (range proof, or 1..2^32-1 in clear);
- Sliced: source slice available and signed by its owner; new keys parse; no slice made twice;
  each new quantity valid; the parts add up to the source;
- Transferred: source available and signed by its owner; new key parses;
- Allocated: production side first. Each side: certificate live and not expired (against the
  registry's clock, when an expiry is configured), its slice available and signed by its
  owner, its grid area configured ("Area does not exist"), and where the area names a
  chronicler, the side's chronicler signature verifies over its claim intent ("Not signed by
  Chronicler"; the two sides carry one each). Production side: the consumption
  certificate exists and is CONSUMPTION, both have the same IsTrial ("not of the same trial
  type"), periods enclose one another, the consumption slice exists, the slices are equal.
  Consumption side: the production side holds the same allocation already.
- Claimed: production side first; the allocation exists; neither certificate withdrawn;
  signed by the owner of this side's slice.
- Unclaimed: this certificate live; the allocation claimed on it; signed by the claimed
  slice's owner; the opposite certificate exists and is withdrawn. The slice is available
  again, same commitment and owner.
- Withdrawn: issuer-signed, not withdrawn yet. A withdrawn certificate takes no later event.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, NoReturn, Protocol

MIN_PERIOD = timedelta(minutes=1)
MAX_PERIOD = timedelta(hours=1)
PRODUCTION, CONSUMPTION = "PRODUCTION", "CONSUMPTION"
AVAILABLE, ALLOCATED, CLAIMED = "available", "allocated", "claimed"
IS_TRIAL = "istrial"  # attribute keys are compared ignoring case


def same_trial_type(production: str | None, consumption: str | None) -> bool:
    """Upstream Rules/IsTrial.Match: the values are equal (exactly: "TRUE" is not "true"), or
    one is missing and the other is "false"."""
    return (
        production == consumption
        or (production is None and consumption == "false")
        or (production == "false" and consumption is None)
    )


class TransactionRefused(Exception):
    """A well-formed transaction that the registry's verifier rejects; the message says why."""


def refuse(message: str) -> NoReturn:
    raise TransactionRefused(message)


# --- what a transaction says, whatever its wire format ---------------------------------------


@dataclass(frozen=True)
class Envelope:
    """The header of a transaction: the stream it names and who signed it (opaque here)."""

    registry: str
    stream: str
    signature: Any


@dataclass(frozen=True)
class StreamRef:
    registry: str
    stream: str


@dataclass(frozen=True)
class Issue:
    certificate: StreamRef
    type: str  # PRODUCTION, CONSUMPTION, or anything else (refused)
    start: datetime | None
    end: datetime | None
    grid_area: str
    ref: Any  # the slice's id
    value: Any  # what Checks judges: a quantity in clear, or a commitment
    owner: Any
    attributes: dict[str, str]  # by key, CLEARTEXT and HASHED alike (as the registry holds them)


@dataclass(frozen=True)
class Part:
    ref: Any
    value: Any
    owner: Any


@dataclass(frozen=True)
class Slicing:
    certificate: StreamRef
    source: Any
    parts: Sequence[Part]
    proof: Any


@dataclass(frozen=True)
class Transfer:
    certificate: StreamRef
    source: Any
    new_owner: Any


@dataclass(frozen=True)
class Allocate:
    allocation_id: str
    production: StreamRef
    consumption: StreamRef
    production_slice: Any
    consumption_slice: Any
    proof: Any
    chronicler_signature: Any = b""  # this side's; each side's allocation carries its own


@dataclass(frozen=True)
class Claim:
    certificate: StreamRef
    allocation_id: str


@dataclass(frozen=True)
class Unclaim:
    allocation_id: str


@dataclass(frozen=True)
class Withdraw:
    pass


Event = Issue | Slicing | Transfer | Allocate | Claim | Unclaim | Withdraw


class Checks(Protocol):
    """How one wire format checks what the rules ask; each `refuse`s with its own reason."""

    def signed_by_owner(self, tx: Envelope, owner: Any) -> bool: ...

    def signed_by_issuer(self, tx: Envelope, grid_area: str) -> bool: ...

    def owner_key(self, owner: Any, what: str) -> None: ...

    def quantity(self, value: Any, label: str) -> None: ...

    def parts_add_up(self, source: Any, parts: Sequence[Any], proof: Any, label: str) -> None: ...

    def equal(self, production: Any, consumption: Any, proof: Any, label: str) -> None: ...

    def signed_by_chronicler(
        self, keys: list[bytes], signature: Any, certificate: StreamRef, value: Any
    ) -> bool: ...


# --- the registry's state ------------------------------------------------------------------


@dataclass
class Slice:
    value: Any
    owner: Any
    state: str = AVAILABLE


@dataclass
class Allocation:
    production_id: str
    consumption_id: str
    production_slice: Any
    consumption_slice: Any
    claimed: bool = False
    # The registries of the two sides (federation): where the other side is looked up.
    production_registry: str | None = None
    consumption_registry: str | None = None


@dataclass
class Certificate:
    certificate_id: str
    registry: str
    type: str
    start: datetime
    end: datetime
    grid_area: str
    attributes: dict[str, str] = field(default_factory=dict)
    withdrawn: bool = False
    slices: dict[Any, Slice] = field(default_factory=dict)
    seen: set[Any] = field(default_factory=set)  # every slice ever made: never made again
    allocations: dict[str, Allocation] = field(default_factory=dict)

    def trial_value(self) -> str | None:
        # Upstream (GranularCertificate.GetAttribute): the attribute whose key is IsTrial
        # ignoring case, CLEARTEXT or HASHED alike (a hashed one compares by its hash).
        for key, value in self.attributes.items():
            if key.lower() == IS_TRIAL:
                return value
        return None

    def plain(self, slice_plain: Callable[[Any, Slice], dict[str, Any]]) -> dict[str, Any]:
        """The certificate as a sandbox's snapshot shows it; each format renders its own
        slices (refs and owner keys are text in one, bytes in the other)."""
        return {
            "certificate_id": self.certificate_id,
            "registry": self.registry,
            "type": self.type,
            "period": {"start": self.start.isoformat(), "end": self.end.isoformat()},
            "grid_area": self.grid_area,
            "withdrawn": self.withdrawn,
            "slices": [slice_plain(ref, s) for ref, s in self.slices.items()],
            "allocations": [
                {
                    "allocation_id": aid,
                    "production_certificate_id": a.production_id,
                    "consumption_certificate_id": a.consumption_id,
                    "production_slice": _text(a.production_slice),
                    "consumption_slice": _text(a.consumption_slice),
                    "claimed": a.claimed,
                }
                for aid, a in self.allocations.items()
            ],
        }


def _text(ref: Any) -> str:
    return ref.hex() if isinstance(ref, bytes) else str(ref)


def enclose(a: Certificate, b: Certificate) -> bool:
    return (a.start <= b.start and b.end <= a.end) or (b.start <= a.start and a.end <= b.end)


class Rules:
    """The registry's verifier and state. `registry`: this registry's name, None to accept any
    (the plain sandbox). `area_exists(grid_area)`: whether the registry has a configuration for
    the area (None: every area). `expiry`: how long after its period ends a certificate expires
    (None: never, upstream's default); `now` is the registry's clock for it.
    `chronicler_keys(grid_area)`: the keys of the chronicler the area's configuration names
    (empty: none; None: no area names one). `peers(registry, stream)`: a certificate of another
    registry of the federation, as that registry holds it (None: unknown there, or no peers):
    upstream's verifier loads the other side of an allocation from its own registry."""

    def __init__(
        self,
        checks: Checks,
        *,
        registry: str | None = None,
        area_exists: Callable[[str], bool] | None = None,
        expiry: timedelta | None = None,
        now: Callable[[], datetime] | None = None,
        chronicler_keys: Callable[[str], list[bytes]] | None = None,
        peers: Callable[[str, str], Certificate | None] | None = None,
    ) -> None:
        if expiry is not None and now is None:
            raise ValueError("an expiry needs the registry's clock")
        self.checks = checks
        self.registry = registry
        self.area_exists = area_exists
        self.expiry = expiry
        self.now = now
        self.chronicler_keys = chronicler_keys
        self.peers = peers
        self.certificates: dict[str, Certificate] = {}

    def lookup(self, registry: str | None, stream: str) -> Certificate | None:
        """A certificate this registry holds, or (another registry named) its peer holds."""
        if registry is None or self.registry is None or registry == self.registry:
            return self.certificates.get(stream)
        return self.peers(registry, stream) if self.peers else None

    def apply(self, tx: Envelope, event: Event) -> None:
        if self.registry is not None and tx.registry != self.registry:
            refuse(f"the transaction is for registry {tx.registry!r}, not this one")
        match event:
            case Issue():
                self._issue(tx, event)
            case Slicing():
                self._slice(tx, event)
            case Transfer():
                self._transfer(tx, event)
            case Allocate():
                self._allocate(tx, event)
            case Claim():
                self._claim(tx, event)
            case Unclaim():
                self._unclaim(tx, event)
            case Withdraw():
                self._withdraw(tx)

    # --- events -----------------------------------------------------------------------------

    def _issue(self, tx: Envelope, e: Issue) -> None:
        stream = self._own_stream(tx, e.certificate)
        if stream in self.certificates:
            refuse("certificate already exists")
        if not self.checks.signed_by_issuer(tx, e.grid_area):
            refuse(f"not signed by an issuer of grid area {e.grid_area}")
        if e.type not in (PRODUCTION, CONSUMPTION):
            refuse("type must be PRODUCTION or CONSUMPTION")
        self.checks.owner_key(e.owner, "owner public key")
        if e.start is None or e.end is None:
            refuse("period is not set")
        if not MIN_PERIOD <= e.end - e.start <= MAX_PERIOD:
            refuse("period must last from 1 minute to 1 hour")
        self.checks.quantity(e.value, stream)
        cert = Certificate(
            stream, e.certificate.registry, e.type, e.start, e.end, e.grid_area, e.attributes
        )
        cert.slices[e.ref] = Slice(e.value, e.owner)
        cert.seen.add(e.ref)
        self.certificates[stream] = cert

    def _slice(self, tx: Envelope, e: Slicing) -> None:
        stream = self._own_stream(tx, e.certificate)
        cert = self._live(stream)
        source = self._spendable(tx, cert, e.source)
        if not e.parts:
            refuse("no new slices")
        for part in e.parts:
            self.checks.owner_key(part.owner, "new owner key")
        refs = [part.ref for part in e.parts]
        if len(set(refs)) != len(refs) or cert.seen.intersection(refs):
            refuse("slice already exists")
        for part in e.parts:
            self.checks.quantity(part.value, stream)
        self.checks.parts_add_up(source.value, [p.value for p in e.parts], e.proof, stream)
        del cert.slices[e.source]
        for part in e.parts:
            cert.slices[part.ref] = Slice(part.value, part.owner)
            cert.seen.add(part.ref)

    def _transfer(self, tx: Envelope, e: Transfer) -> None:
        stream = self._own_stream(tx, e.certificate)
        cert = self._live(stream)
        source = self._spendable(tx, cert, e.source)
        self.checks.owner_key(e.new_owner, "new owner key")
        source.owner = e.new_owner

    def _allocate(self, tx: Envelope, e: Allocate) -> None:
        if not e.allocation_id:
            refuse("allocation id is not set")
        new = Allocation(
            e.production.stream,
            e.consumption.stream,
            e.production_slice,
            e.consumption_slice,
            production_registry=e.production.registry,
            consumption_registry=e.consumption.registry,
        )
        if tx.stream == new.production_id:
            self._allocate_production(tx, e, new)
        elif tx.stream == new.consumption_id:
            self._allocate_consumption(tx, e, new)
        else:
            refuse("the stream is neither side of the allocation")

    def _allocating(self, tx: Envelope, stream: str, kind: str, e: Allocate, ref: Any) -> Slice:
        """What both sides check of their own certificate and slice."""
        aid = e.allocation_id
        cert = self._live(stream)
        if self._expired(cert):
            refuse("certificate has expired")
        if cert.type != kind:
            refuse(f"not a {kind.lower()} certificate")
        if aid in cert.allocations:
            refuse("allocation already exists")
        own = self._spendable(tx, cert, ref)
        if self.area_exists is not None and not self.area_exists(cert.grid_area):
            refuse(f"Area does not exist: {cert.grid_area}")
        keys = self.chronicler_keys(cert.grid_area) if self.chronicler_keys else []
        if keys and not self.checks.signed_by_chronicler(
            keys, e.chronicler_signature, StreamRef(cert.registry, cert.certificate_id), own.value
        ):
            refuse("Not signed by Chronicler")
        return own

    def _allocate_production(self, tx: Envelope, e: Allocate, new: Allocation) -> None:
        aid = e.allocation_id
        cert = self.certificates.get(new.production_id)
        production_slice = self._allocating(
            tx, new.production_id, PRODUCTION, e, new.production_slice
        )
        assert cert is not None
        consumption = self.lookup(new.consumption_registry, new.consumption_id)
        if consumption is None:
            refuse("consumption certificate not found")
        if consumption.type != CONSUMPTION:
            refuse("consumption certificate is not CONSUMPTION")
        if not same_trial_type(cert.trial_value(), consumption.trial_value()):
            refuse(
                f"certificate {cert.certificate_id} and {consumption.certificate_id} "
                "are not of the same trial type"
            )
        if not enclose(cert, consumption):
            refuse("periods do not enclose one another")
        consumption_slice = consumption.slices.get(new.consumption_slice)
        if consumption_slice is None or consumption_slice.state != AVAILABLE:
            refuse("consumption slice not found")
        self.checks.equal(production_slice.value, consumption_slice.value, e.proof, aid)
        production_slice.state = ALLOCATED
        cert.allocations[aid] = new

    def _allocate_consumption(self, tx: Envelope, e: Allocate, new: Allocation) -> None:
        aid = e.allocation_id
        consumption_slice = self._allocating(
            tx, new.consumption_id, CONSUMPTION, e, new.consumption_slice
        )
        cert = self.certificates[new.consumption_id]
        production = self.lookup(new.production_registry, new.production_id)
        production_side = production.allocations.get(aid) if production else None
        if production is None or production_side is None:
            refuse("production side not allocated")
        if (production_side.production_slice, production_side.consumption_slice) != (
            new.production_slice,
            new.consumption_slice,
        ):
            refuse("allocation differs from its production side")
        production_slice = production.slices[new.production_slice]
        self.checks.equal(production_slice.value, consumption_slice.value, e.proof, aid)
        consumption_slice.state = ALLOCATED
        cert.allocations[aid] = new

    def _claim(self, tx: Envelope, e: Claim) -> None:
        stream = self._own_stream(tx, e.certificate)
        cert = self._existing(stream)
        aid = e.allocation_id
        allocation = cert.allocations.get(aid)
        if allocation is None:
            refuse("allocation not found")
        if allocation.claimed:
            refuse("allocation already claimed")
        production = self.lookup(allocation.production_registry, allocation.production_id)
        consumption = self.lookup(allocation.consumption_registry, allocation.consumption_id)
        if production is None or consumption is None:
            refuse("the other side's certificate is not found")
        if production.withdrawn or consumption.withdrawn:
            refuse("certificate withdrawn")
        on_production = stream == allocation.production_id
        if on_production and aid not in consumption.allocations:
            refuse("consumption side not allocated")
        if not on_production and not production.allocations[aid].claimed:
            refuse("production side not claimed")
        ref = allocation.production_slice if on_production else allocation.consumption_slice
        claimed_slice = cert.slices[ref]
        if not self.checks.signed_by_owner(tx, claimed_slice.owner):
            refuse("not signed by the slice's owner")
        allocation.claimed = True
        claimed_slice.state = CLAIMED

    def _unclaim(self, tx: Envelope, e: Unclaim) -> None:
        cert = self._live(tx.stream)
        allocation = cert.allocations.get(e.allocation_id)
        if allocation is None or not allocation.claimed:
            refuse("certificate claim does not exist")
        on_production = tx.stream == allocation.production_id
        ref = allocation.production_slice if on_production else allocation.consumption_slice
        claimed_slice = cert.slices[ref]
        if not self.checks.signed_by_owner(tx, claimed_slice.owner):
            refuse("not signed by the claimed slice's owner")
        opposite = (
            self.lookup(allocation.consumption_registry, allocation.consumption_id)
            if on_production
            else self.lookup(allocation.production_registry, allocation.production_id)
        )
        if opposite is None:
            refuse("opposite certificate does not exist")
        if not opposite.withdrawn:
            refuse("opposite certificate is NOT withdrawn")
        del cert.allocations[e.allocation_id]
        claimed_slice.state = AVAILABLE

    def _withdraw(self, tx: Envelope) -> None:
        cert = self._existing(tx.stream)
        if not self.checks.signed_by_issuer(tx, cert.grid_area):
            refuse(f"not signed by an issuer of grid area {cert.grid_area}")
        if cert.withdrawn:
            refuse("certificate already withdrawn")
        cert.withdrawn = True

    # --- checks -----------------------------------------------------------------------------

    def _own_stream(self, tx: Envelope, ref: StreamRef) -> str:
        if ref.stream != tx.stream or ref.registry != tx.registry:
            refuse("certificate_id does not match the stream")
        return ref.stream

    def _existing(self, stream: str) -> Certificate:
        cert = self.certificates.get(stream)
        if cert is None:
            refuse("certificate not found")
        return cert

    def _live(self, stream: str) -> Certificate:
        cert = self._existing(stream)
        if cert.withdrawn:
            refuse("certificate withdrawn")
        return cert

    def _expired(self, cert: Certificate) -> bool:
        if self.expiry is None or self.now is None:
            return False
        return cert.end + self.expiry < self.now()

    def _spendable(self, tx: Envelope, cert: Certificate, ref: Any) -> Slice:
        found = cert.slices.get(ref)
        if found is None or found.state != AVAILABLE:
            refuse("slice not found")
        if not self.checks.signed_by_owner(tx, found.owner):
            refuse("not signed by the slice's owner")
        return found
