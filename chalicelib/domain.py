"""The certificate book's domain: certificates, slices, commands and every rule about them.

Pure on purpose: no AWS, no HTTP, no environment and no clock. Callers pass `now` in. The
adapters store these models; the use cases decide with them; the tests exercise them without
fixtures. A rule lives here once, so the in-memory book and the DynamoDB book cannot disagree.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import uuid
from collections.abc import Collection, Iterable, Mapping
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

MAX_QUANTITY_WH = 2**32 - 1  # the registry commits quantities as 32-bit integers
MIN_PERIOD = timedelta(minutes=15)
MAX_PERIOD = timedelta(hours=1)
QUARTER_HOUR_S = 15 * 60
# A certificate and all its slices live in one DynamoDB item (400 KB), so that every change to a
# certificate is one atomic conditional write. This cap keeps the item far below that limit.
MAX_SLICES_PER_CERTIFICATE = 500
MAX_PARTS_PER_SLICE = 100
MAX_ATTRIBUTES = 32

# Ids derived from what identifies a thing make retries converge on the same record.
_COMMAND_NAMESPACE = uuid.UUID("6f1c9a52-5f0e-4c53-9f57-2a4b3f7c1d10")
_CERTIFICATE_NAMESPACE = uuid.UUID("0b8e4d6a-3c2f-4b71-8d3e-9a5c1e2f4b60")
_SLICE_NAMESPACE = uuid.UUID("a3d95e17-8c4b-4f2a-b6e1-7d0c2f9e8a41")


# --- errors -----------------------------------------------------------------------------------


class DomainError(Exception):
    """A request that breaks a rule. `field` names the offending input where there is one."""

    def __init__(self, detail: str, *, field: str | None = None, subject: str | None = None):
        super().__init__(detail)
        self.detail = detail
        self.field = field
        self.subject = subject  # the certificate, slice or command the error concerns


class RuleViolation(DomainError):
    """Well-formed, but breaks a rule of the domain (HTTP 422)."""


class NotFound(DomainError):
    """Unknown, or not the caller's: both read the same, so existence is not revealed (404)."""


class Conflict(DomainError):
    """Clashes with the book's state: reserved or spent slice, reused key, duplicate (409)."""


class StillRunning(Conflict):
    """The first request with this Idempotency-Key may still be at work on its command: nothing
    was done; send it again after `retry_after_s` (409 with Retry-After)."""

    def __init__(self, detail: str, *, retry_after_s: int, **where: str | None) -> None:
        super().__init__(detail, **where)
        self.retry_after_s = retry_after_s


class Forbidden(DomainError):
    """The caller lacks the role the action needs (403)."""


class Role(StrEnum):
    ISSUER = "issuer"
    OPERATOR = "operator"


class Actor(BaseModel):
    """Who is calling: their owner id, and the roles their token grants."""

    model_config = ConfigDict(frozen=True)

    owner: str
    roles: frozenset[Role] = frozenset()
    # The grid areas an issuer may issue and withdraw in, as its token names them; None (a
    # local HS256 token without the claim) is any.
    grid_areas: frozenset[str] | None = None

    def require(self, role: Role) -> None:
        if role not in self.roles:
            raise Forbidden(f"this needs the {role.value} role")

    def require_grid_area(self, grid_area: str) -> None:
        if self.grid_areas is not None and grid_area not in self.grid_areas:
            raise Forbidden(f"this token may not issue or withdraw in grid area {grid_area}")


class IllegalTransition(Exception):
    """A command state change that the state machine does not allow: a programming error."""


# --- certificates and slices ------------------------------------------------------------------


class CertificateType(StrEnum):
    PRODUCTION = "production"
    CONSUMPTION = "consumption"


class CertificateStatus(StrEnum):
    ISSUING = "issuing"  # accepted, not yet committed by the registry
    ACTIVE = "active"
    REJECTED = "rejected"  # the registry refused the issuance; the identity may be issued again
    WITHDRAWN = "withdrawn"
    EXPIRED = "expired"


class SliceState(StrEnum):
    AVAILABLE = "available"
    RESERVED = "reserved"  # used by a pending command
    CLAIMED = "claimed"
    # Allocated to a claim in the registry that was refused after the allocation committed:
    # only that claim could move it on, so it holds its quantity for good and is not usable.
    ALLOCATED = "allocated"
    TRANSFERRED = "transferred"  # given to another owner: the receiver holds a new slice
    SLICED = "sliced"  # replaced by its parts
    WITHDRAWN = "withdrawn"
    EXPIRED = "expired"
    REMOVED = "removed"  # the registry does not have it: removed when the book was aligned


# Slices that still hold their quantity. Conservation (I3): these sum to the issued quantity.
LIVE_SLICE_STATES = frozenset(
    {
        SliceState.AVAILABLE,
        SliceState.RESERVED,
        SliceState.CLAIMED,
        SliceState.ALLOCATED,
        SliceState.WITHDRAWN,
        SliceState.EXPIRED,
    }
)


class Period(BaseModel):
    model_config = ConfigDict(frozen=True)

    start: datetime
    end: datetime

    @classmethod
    def of(cls, start: datetime, end: datetime) -> Period:
        """The period [start, end) if it is one a certificate may cover, else RuleViolation."""
        for name, moment in (("start", start), ("end", end)):
            if moment.tzinfo is None:
                raise RuleViolation(f"{name} must carry a time zone (UTC)", field=name)
            seconds = int(moment.timestamp())
            if moment.microsecond or seconds % QUARTER_HOUR_S:
                raise RuleViolation(f"{name} must fall on a whole quarter hour", field=name)
        length = end - start
        if not MIN_PERIOD <= length <= MAX_PERIOD:
            raise RuleViolation("a period lasts from 15 minutes to 1 hour", field="end")
        return cls(start=start.astimezone(UTC), end=end.astimezone(UTC))

    def contains(self, other: Period) -> bool:
        return self.start <= other.start and other.end <= self.end


class Slice(BaseModel):
    model_config = ConfigDict(frozen=True)

    slice_id: str
    owner: str
    quantity_wh: int
    state: SliceState = SliceState.AVAILABLE
    reserved_by: str | None = None  # the pending command that holds this slice
    # How the registry knows this slice (its commitment's hash with real crypto). A transfer
    # gives the receiver a new slice in our book but the same slice in the registry.
    registry_ref: str | None = None
    # With real registry crypto: the slice's quantity, blinding and key path, sealed
    # (chalicelib/registry/secrets.py), so that a read of the book does not reveal them.
    secret: str | None = None
    # The claim that claimed it: when the other side is withdrawn, the slice is given back
    # by an unclaim of that claim's allocation.
    claimed_by: str | None = None

    @property
    def ref(self) -> str:
        return self.registry_ref or self.slice_id

    @property
    def is_live(self) -> bool:
        return self.state in LIVE_SLICE_STATES


class HashedAttribute(BaseModel):
    """An attribute the registry holds hashed: its value there, and the salt it was hashed
    with, sealed (only the certificate's owners are shown the clear value)."""

    model_config = ConfigDict(frozen=True)

    registry_value: str
    salt: str


class Certificate(BaseModel):
    model_config = ConfigDict(frozen=True)

    certificate_id: str
    type: CertificateType
    gsrn: str
    grid_area: str
    period: Period
    quantity_wh: int
    owner: str  # the first owner, to whom it was issued
    attributes: dict[str, str] = Field(default_factory=dict)
    # The registry that holds its stream, for good (every transaction of it goes there);
    # None: the service's one registry (a certificate recorded before federation).
    registry: str | None = None
    # The HASHED ones among `attributes`, as the registry holds them (registry/attributes.py).
    hashed_attributes: dict[str, HashedAttribute] = Field(default_factory=dict)
    status: CertificateStatus = CertificateStatus.ISSUING
    issued_by: str
    created_at: datetime
    slices: dict[str, Slice] = Field(default_factory=dict)
    issue_command: str  # the command that issues it: a replay of that command is no duplicate
    withdrawal: str | None = None  # the pending withdraw command, which blocks new reservations
    # Commands whose effect is already in this certificate: makes applying an outcome idempotent.
    applied: tuple[str, ...] = ()
    version: int = 0  # bumped on every write; the DynamoDB book's optimistic lock

    def slice_of(self, slice_id: str, owner: str) -> Slice:
        """The caller's slice, or NotFound: a foreign slice reads exactly like a missing one."""
        found = self.slices.get(slice_id)
        if found is None or found.owner != owner:
            raise NotFound(f"slice {slice_id} not found", field="slice_id", subject=slice_id)
        return found

    def owners(self) -> set[str]:
        return {s.owner for s in self.slices.values()}

    def live_quantity(self) -> int:
        return sum(s.quantity_wh for s in self.slices.values() if s.is_live)

    def available_quantity(self, owner: str) -> int:
        return sum(
            s.quantity_wh
            for s in self.slices.values()
            if s.owner == owner and s.state == SliceState.AVAILABLE
        )


def certificate_id_for(gsrn: str, type_: CertificateType, start: datetime) -> str:
    """One certificate per (metering point, type, period start): the id is derived from them,
    so a second issuance of the same thing lands on the same record and is refused there."""
    key = f"{gsrn}|{type_.value}|{start.astimezone(UTC).isoformat()}"
    return str(uuid.uuid5(_CERTIFICATE_NAMESPACE, key))


def slice_id_for(command_id: str, part: int | str) -> str:
    """The id of a slice a command creates (its `part`): the same on every retry."""
    return str(uuid.uuid5(_SLICE_NAMESPACE, f"{command_id}/{part}"))


# --- validation of client input ---------------------------------------------------------------


def check_quantity(value: int, field: str = "quantity_wh") -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise RuleViolation("a quantity is a whole number of Wh", field=field)
    if not 0 < value <= MAX_QUANTITY_WH:
        raise RuleViolation(f"a quantity is from 1 to {MAX_QUANTITY_WH} Wh", field=field)
    return value


def check_gsrn(value: str) -> str:
    if len(value) != 18 or not value.isascii() or not value.isdigit():
        raise RuleViolation("a GSRN is 18 digits", field="gsrn")
    return value


def check_parts(whole: int, parts: list[int]) -> list[int]:
    if not 2 <= len(parts) <= MAX_PARTS_PER_SLICE:
        raise RuleViolation(
            f"a slice is cut into 2 to {MAX_PARTS_PER_SLICE} parts", field="quantities_wh"
        )
    for i, part in enumerate(parts):
        check_quantity(part, field=f"quantities_wh[{i}]")
    if sum(parts) != whole:
        raise RuleViolation(
            f"the parts sum to {sum(parts)} Wh but the slice holds {whole} Wh",
            field="quantities_wh",
        )
    return parts


# --- commands ---------------------------------------------------------------------------------


class CommandKind(StrEnum):
    ISSUE = "issue"
    SLICE = "slice"
    TRANSFER = "transfer"
    CLAIM = "claim"
    WITHDRAW = "withdraw"
    # Made by the service, never asked for: a claimed slice given back to its owner because
    # the certificate on the claim's other side was withdrawn.
    UNCLAIM = "unclaim"


class CommandStatus(StrEnum):
    ACCEPTED = "ACCEPTED"  # recorded; its next transaction has certainly not been sent
    SENDING = "SENDING"  # its current transaction may be on its way to the registry
    SENT = "SENT"  # the registry took the transaction and has not yet said it committed
    COMMITTED = "COMMITTED"
    REJECTED = "REJECTED"
    IN_DOUBT = "IN_DOUBT"  # may or may not have been applied: never re-sent blindly


TERMINAL_STATUSES = frozenset({CommandStatus.COMMITTED, CommandStatus.REJECTED})

# Every state change a command may make, and nothing else. SENDING -> ACCEPTED is allowed only
# when the transaction certainly did not leave (registry refused the connection) or when the
# step committed and the next transaction of a multi-step command is ready to go.
# SENDING or SENT -> SENDING: the step committed and the worker sends the next one at once,
# the guard for it taken in the same write (conditioned on the step it committed).
# IN_DOUBT -> ACCEPTED is an operator's or the reconciler's finding that the step did not apply.
ALLOWED_TRANSITIONS: Mapping[CommandStatus, frozenset[CommandStatus]] = {
    CommandStatus.ACCEPTED: frozenset(
        {CommandStatus.SENDING, CommandStatus.REJECTED, CommandStatus.COMMITTED}
    ),
    CommandStatus.SENDING: frozenset(
        {
            CommandStatus.ACCEPTED,
            CommandStatus.SENDING,
            CommandStatus.SENT,
            CommandStatus.COMMITTED,
            CommandStatus.REJECTED,
            CommandStatus.IN_DOUBT,
        }
    ),
    CommandStatus.SENT: frozenset(
        {
            CommandStatus.ACCEPTED,
            CommandStatus.SENDING,
            CommandStatus.COMMITTED,
            CommandStatus.REJECTED,
            CommandStatus.IN_DOUBT,
        }
    ),
    CommandStatus.IN_DOUBT: frozenset(
        {CommandStatus.ACCEPTED, CommandStatus.COMMITTED, CommandStatus.REJECTED}
    ),
    CommandStatus.COMMITTED: frozenset(),
    CommandStatus.REJECTED: frozenset(),
}


def check_transition(current: CommandStatus, target: CommandStatus) -> None:
    if target not in ALLOWED_TRANSITIONS[current]:
        raise IllegalTransition(f"a command cannot go from {current} to {target}")


class SliceRef(BaseModel):
    model_config = ConfigDict(frozen=True)

    certificate_id: str
    slice_id: str


class SliceSeal(BaseModel):
    """A slice a command creates, as its transactions name it in the registry, with its sealed
    secret: produced when the transactions are built, moved onto the slice when it commits."""

    model_config = ConfigDict(frozen=True)

    registry_ref: str
    secret: str


class StrandedAllocation(BaseModel):
    """One side of a claim that stopped after its allocation committed: the registry holds the
    slice allocated for good (an allocation cannot be undone, and only the refused claim could
    have moved it on). Kept on the command for operators."""

    model_config = ConfigDict(frozen=True)

    side: CertificateType
    certificate_id: str
    slice_id: str  # the book's slice, now ALLOCATED: the one reserved, or the part cut off it
    allocation_id: str
    transaction_id: str  # the allocation's transaction, committed


class IssueSpec(BaseModel):
    """What an issuer asks to issue, already validated."""

    model_config = ConfigDict(frozen=True)

    type: CertificateType
    gsrn: str
    grid_area: str
    period: Period
    quantity_wh: int
    owner: str
    attributes: dict[str, str] = Field(default_factory=dict)
    # The registry it is issued in (its grid area's, CERTS_GRID_AREA_REGISTRIES), chosen at
    # accept; None: the service's one registry.
    registry: str | None = None


class Command(BaseModel):
    """A request recorded in the book. It is the outbox too: the reconciler re-drives it from
    here when its queue message is lost."""

    model_config = ConfigDict(frozen=True)

    command_id: str
    kind: CommandKind
    status: CommandStatus = CommandStatus.ACCEPTED
    certificate_id: str  # the FIFO group: the certificate whose stream the command changes
    caller: str
    request_hash: str
    created_at: datetime
    updated_at: datetime
    # what the command does (which fields are set depends on kind)
    issue: IssueSpec | None = None
    slices: tuple[SliceRef, ...] = ()  # the slices it spends, in the order they are reserved
    quantities_wh: tuple[int, ...] = ()  # slice: the parts
    quantity_wh: int | None = None  # transfer, claim and unclaim: how much
    receiver: str | None = None  # transfer
    claim_id: str | None = None  # unclaim: the claim whose allocation it gives back
    # progress through the registry
    step: int = 0  # index of the transaction to send next (or being sent)
    transactions: tuple[str, ...] = ()  # built and signed once, before the first send
    # slice id -> its seal (proto transactions only); None until built, like `transactions`
    sealed_slices: dict[str, SliceSeal] | None = None
    # issue: its hashed attributes, by key; None until built, like `transactions`
    sealed_attributes: dict[str, HashedAttribute] | None = None
    lease_until: datetime | None = None
    attempts: int = 0
    error: str | None = None
    unsettled_passes: int = 0  # reconciler passes that failed to settle it (an error, not a wait)
    # A claim refused after an allocation committed: what it left allocated in the registry.
    stranded: tuple[StrandedAllocation, ...] = ()

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES

    def certificate_ids(self) -> list[str]:
        """Every certificate the command touches, its FIFO group first."""
        ids = [self.certificate_id]
        ids += [ref.certificate_id for ref in self.slices if ref.certificate_id not in ids]
        return ids


def command_id_for(caller: str, idempotency_key: str, index: int = 0) -> str:
    """The command a (caller, Idempotency-Key) names: a replay finds the first one by its id."""
    return str(uuid.uuid5(_COMMAND_NAMESPACE, f"{caller}\x00{idempotency_key}\x00{index}"))


def request_hash(body: Any) -> str:
    """A fingerprint of a request body that does not depend on key order or spacing."""
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


# --- the effect of a committed command on a certificate --------------------------------------
#
# Each function takes the certificate as the book holds it and returns it as it must be once
# the command committed. They are idempotent through `applied`, so a redelivered outcome
# changes nothing. The DynamoDB book performs the same change as one conditional write.


def _applying(cert: Certificate, command_id: str, **changes: Any) -> Certificate:
    return cert.model_copy(update={**changes, "applied": (*cert.applied, command_id)})


def _reserved_slice(cert: Certificate, ref: SliceRef, command_id: str) -> Slice:
    found = cert.slices.get(ref.slice_id)
    if found is None or found.reserved_by != command_id:
        raise Conflict(
            f"slice {ref.slice_id} is not reserved by command {command_id}", subject=ref.slice_id
        )
    return found


def apply_issue(cert: Certificate, command: Command) -> Certificate:
    if command.command_id in cert.applied:
        return cert
    first = Slice(
        slice_id=slice_id_for(command.command_id, 0), owner=cert.owner, quantity_wh=cert.quantity_wh
    )
    return _applying(
        cert, command.command_id, status=CertificateStatus.ACTIVE, slices={first.slice_id: first}
    )


def apply_slice(cert: Certificate, command: Command) -> Certificate:
    """Cut the reserved slice into its parts (also the first step of a partial transfer)."""
    if command.command_id in cert.applied:
        return cert
    ref = command.slices[0]
    if slice_id_for(command.command_id, 0) in cert.slices:
        return cert  # already cut: the partial transfer's first step, applied before
    source = _reserved_slice(cert, ref, command.command_id)
    parts = _parts_of(command, source)
    slices = dict(cert.slices)
    slices[source.slice_id] = source.model_copy(
        update={"state": SliceState.SLICED, "reserved_by": None}
    )
    for i, quantity in enumerate(parts):
        new = Slice(
            slice_id=slice_id_for(command.command_id, i), owner=source.owner, quantity_wh=quantity
        )
        slices[new.slice_id] = new
    return cert.model_copy(update={"slices": slices})


def _parts_of(command: Command, source: Slice) -> list[int]:
    if command.kind == CommandKind.SLICE:
        return list(command.quantities_wh)
    # partial transfer: the part to give away first, the rest stays with the owner
    assert command.quantity_wh is not None
    return [command.quantity_wh, source.quantity_wh - command.quantity_wh]


def is_partial_transfer(command: Command, source_quantity: int) -> bool:
    return command.kind == CommandKind.TRANSFER and command.quantity_wh != source_quantity


def apply_transfer(cert: Certificate, command: Command) -> Certificate:
    """Give the whole reserved slice (or, after slicing, its first part) to the receiver."""
    if command.command_id in cert.applied:
        return cert
    assert command.receiver is not None
    ref = command.slices[0]
    source = cert.slices[ref.slice_id]
    if source.state == SliceState.SLICED:  # partial transfer, slicing already applied
        given = cert.slices[slice_id_for(command.command_id, 0)]
    else:
        given = _reserved_slice(cert, ref, command.command_id)
    received = Slice(
        slice_id=slice_id_for(command.command_id, "received"),
        owner=command.receiver,
        quantity_wh=given.quantity_wh,
        registry_ref=given.ref,
    )
    slices = dict(cert.slices)
    slices[given.slice_id] = given.model_copy(
        update={"state": SliceState.TRANSFERRED, "reserved_by": None}
    )
    slices[received.slice_id] = received
    return _applying(cert, command.command_id, slices=slices)


def apply_claim_side(cert: Certificate, command: Command, ref: SliceRef) -> Certificate:
    """Claim `quantity_wh` of the reserved slice; a larger slice is cut first, the rest stays."""
    if command.command_id in cert.applied:
        return cert
    assert command.quantity_wh is not None
    source = _reserved_slice(cert, ref, command.command_id)
    slices = dict(cert.slices)
    if source.quantity_wh == command.quantity_wh:
        slices[source.slice_id] = source.model_copy(
            update={
                "state": SliceState.CLAIMED,
                "reserved_by": None,
                "claimed_by": command.command_id,
            }
        )
    else:
        side = 0 if ref == command.slices[0] else 1
        claimed = Slice(
            slice_id=slice_id_for(command.command_id, 2 * side),
            owner=source.owner,
            quantity_wh=command.quantity_wh,
            state=SliceState.CLAIMED,
            claimed_by=command.command_id,
        )
        rest = Slice(
            slice_id=slice_id_for(command.command_id, 2 * side + 1),
            owner=source.owner,
            quantity_wh=source.quantity_wh - command.quantity_wh,
        )
        slices[source.slice_id] = source.model_copy(
            update={"state": SliceState.SLICED, "reserved_by": None}
        )
        slices[claimed.slice_id] = claimed
        slices[rest.slice_id] = rest
    return _applying(cert, command.command_id, slices=slices)


def apply_claim_cut(cert: Certificate, command: Command, ref: SliceRef) -> Certificate:
    """A claim refused after it cut this side's slice (its first steps): the cut stands, as
    the registry made it, and the owner keeps both parts, named as the transaction named them."""
    assert command.quantity_wh is not None
    side = 0 if ref == command.slices[0] else 1
    part_ids = [slice_id_for(command.command_id, 2 * side + i) for i in range(2)]
    if part_ids[0] in cert.slices:
        return cert
    source = _reserved_slice(cert, ref, command.command_id)
    slices = dict(cert.slices)
    slices[source.slice_id] = source.model_copy(
        update={"state": SliceState.SLICED, "reserved_by": None}
    )
    for slice_id, quantity in zip(
        part_ids, [command.quantity_wh, source.quantity_wh - command.quantity_wh], strict=True
    ):
        slices[slice_id] = Slice(slice_id=slice_id, owner=source.owner, quantity_wh=quantity)
    return cert.model_copy(update={"slices": slices})


def claim_allocation_step(command: Command) -> int:
    """The index of a claim's production allocation among its transactions: after the cuts,
    before the consumption allocation and the two claims (registry/builder.py)."""
    return len(command.transactions) - 4


def claim_stopped_sides(command: Command) -> dict[int, SliceState]:
    """For a claim stopped at its current step (refused, or given up): each side whose
    allocation committed, and the state the registry left its slice in, ALLOCATED for good,
    or CLAIMED when that side's claim committed too. Empty when nothing was allocated."""
    if command.kind != CommandKind.CLAIM or len(command.transactions) < 4:
        return {}
    first = claim_allocation_step(command)
    stopped = {}
    for side in (0, 1):
        if command.step > first + 2 + side:
            stopped[side] = SliceState.CLAIMED
        elif command.step > first + side:
            stopped[side] = SliceState.ALLOCATED
    return stopped


def claimed_slice_id(command: Command, ref: SliceRef, source_quantity_wh: int) -> str:
    """The slice of `ref`'s side a claim allocates: the reserved one, or the part cut off it."""
    if source_quantity_wh == command.quantity_wh:
        return ref.slice_id
    side = 0 if ref == command.slices[0] else 1
    return slice_id_for(command.command_id, 2 * side)


def apply_claim_stopped(
    cert: Certificate, command: Command, ref: SliceRef, state: SliceState
) -> Certificate:
    """A claim stopped after this side's allocation committed: the slice it allocated is in
    `state` (ALLOCATED, or CLAIMED) as the registry has it. A part cut for the claim must be
    cut first (apply_claim_cut). Idempotent."""
    source = cert.slices.get(ref.slice_id)
    if source is None:
        raise Conflict(f"slice {ref.slice_id} is not in the book", subject=ref.slice_id)
    found = cert.slices.get(claimed_slice_id(command, ref, source.quantity_wh))
    if found is None or found.state == state:
        return cert
    if found.reserved_by not in (None, command.command_id) or found.state not in (
        SliceState.AVAILABLE,
        SliceState.RESERVED,
    ):
        raise Conflict(
            f"slice {found.slice_id} is {found.state.value}, not the claim's to mark {state.value}",
            subject=found.slice_id,
        )
    slices = dict(cert.slices)
    claimed_by = command.command_id if state == SliceState.CLAIMED else None
    slices[found.slice_id] = found.model_copy(
        update={"state": state, "reserved_by": None, "claimed_by": claimed_by}
    )
    return cert.model_copy(update={"slices": slices})


def attach_seals(cert: Certificate, command: Command) -> Certificate:
    """Give the slices a committed command created their registry names and sealed secrets
    (real registry crypto only; a command built without them changes nothing), and an
    issued certificate its hashed attributes with their sealed salts. Idempotent."""
    if (
        command.kind == CommandKind.ISSUE
        and command.certificate_id == cert.certificate_id
        and command.sealed_attributes
        and cert.hashed_attributes != command.sealed_attributes
    ):
        cert = cert.model_copy(update={"hashed_attributes": dict(command.sealed_attributes)})
    slices = dict(cert.slices)
    for slice_id, seal in (command.sealed_slices or {}).items():
        found = slices.get(slice_id)
        if found is not None and (found.registry_ref, found.secret) != (
            seal.registry_ref,
            seal.secret,
        ):
            slices[slice_id] = found.model_copy(
                update={"registry_ref": seal.registry_ref, "secret": seal.secret}
            )
    return cert if slices == cert.slices else cert.model_copy(update={"slices": slices})


def apply_withdraw(cert: Certificate, command: Command) -> Certificate:
    if command.command_id in cert.applied:
        return cert
    slices = {
        sid: s.model_copy(update={"state": SliceState.WITHDRAWN, "reserved_by": None})
        if s.state in (SliceState.AVAILABLE, SliceState.RESERVED)
        else s
        for sid, s in cert.slices.items()
    }
    return _applying(
        cert, command.command_id, status=CertificateStatus.WITHDRAWN, slices=slices, withdrawal=None
    )


def unclaim_id_for(claim_id: str) -> str:
    """The one unclaim a claim can have: made again (a redelivery, a crash, the reconciler),
    it lands on the same record, so the slice is given back exactly once."""
    return str(uuid.uuid5(_COMMAND_NAMESPACE, f"unclaim\x00{claim_id}"))


def unclaim_for(
    claim: Command, withdrawn: Certificate, other: Certificate, now: datetime
) -> Command | None:
    """The unclaim a claim owes once `withdrawn`, one of its sides, is withdrawn: it gives the
    slice the claim claimed on `other` back to its owner. None when there is nothing to give
    back: the other certificate is not active (the registry takes no event on it), or its
    slice is no longer claimed by this claim (given back already, or never claimed)."""
    if claim.kind != CommandKind.CLAIM or withdrawn.status != CertificateStatus.WITHDRAWN:
        return None
    if other.status != CertificateStatus.ACTIVE:
        return None
    claimed = next(
        (
            s
            for s in other.slices.values()
            if s.state == SliceState.CLAIMED and s.claimed_by == claim.command_id
        ),
        None,
    )
    if claimed is None:
        return None
    ref = SliceRef(certificate_id=other.certificate_id, slice_id=claimed.slice_id)
    return Command(
        command_id=unclaim_id_for(claim.command_id),
        kind=CommandKind.UNCLAIM,
        certificate_id=other.certificate_id,
        caller=claimed.owner,  # signed by the slice's owner, and listed among its commands
        request_hash=request_hash({"unclaim": claim.command_id, "slice": ref.model_dump()}),
        created_at=now,
        updated_at=now,
        slices=(ref,),
        quantity_wh=claimed.quantity_wh,
        claim_id=claim.command_id,
    )


def apply_unclaim(cert: Certificate, command: Command) -> Certificate:
    """The claimed slice is available to its owner again, as the registry restores it (same
    commitment, same owner). Unless the certificate ended meanwhile: the unclaim took no hold,
    so the certificate's own withdrawal may have committed after it in the registry and been
    applied here first (an unclaim in doubt, settled later); then the slice is given back to
    a withdrawn certificate, and is withdrawn (or expired) like its other free slices."""
    if command.command_id in cert.applied:
        return cert
    ref = command.slices[0]
    restored = _ENDED_SLICE.get(cert.status, SliceState.AVAILABLE)
    found = cert.slices.get(ref.slice_id)
    if found is not None and found.state == restored and found.claimed_by is None:
        return _applying(cert, command.command_id)  # the reconciler aligned it first
    if found is None or found.state != SliceState.CLAIMED:
        raise Conflict(f"slice {ref.slice_id} is not claimed", subject=ref.slice_id)
    slices = dict(cert.slices)
    slices[found.slice_id] = found.model_copy(update={"state": restored, "claimed_by": None})
    return _applying(cert, command.command_id, slices=slices)


# What a free slice of an ended certificate is.
_ENDED_SLICE = {
    CertificateStatus.WITHDRAWN: SliceState.WITHDRAWN,
    CertificateStatus.EXPIRED: SliceState.EXPIRED,
}


def begin_withdrawal(cert: Certificate, command_id: str) -> Certificate:
    """Mark the certificate as being withdrawn, which stops new reservations. Refused while
    any slice is held by a pending command: those run first, or are refused, in order."""
    if cert.withdrawal == command_id:
        return cert
    if cert.status != CertificateStatus.ACTIVE or cert.withdrawal is not None:
        raise Conflict(
            f"certificate {cert.certificate_id} cannot be withdrawn: it is "
            + ("being withdrawn" if cert.withdrawal else cert.status.value),
            subject=cert.certificate_id,
        )
    if any(s.reserved_by for s in cert.slices.values()):
        raise Conflict(
            f"certificate {cert.certificate_id} has pending commands", subject=cert.certificate_id
        )
    return cert.model_copy(update={"withdrawal": command_id})


def release(cert: Certificate, command_id: str) -> Certificate:
    """Free everything a command holds on this certificate (after a rejection)."""
    slices = {
        sid: s.model_copy(update={"state": SliceState.AVAILABLE, "reserved_by": None})
        if s.reserved_by == command_id
        else s
        for sid, s in cert.slices.items()
    }
    withdrawal = None if cert.withdrawal == command_id else cert.withdrawal
    if withdrawal == cert.withdrawal and slices == cert.slices:
        return cert
    return cert.model_copy(update={"slices": slices, "withdrawal": withdrawal})


def reserve(
    cert: Certificate, ref: SliceRef, command_id: str, caller: str, at_least_wh: int = 1
) -> Certificate:
    """Hold the caller's slice for one pending command; refuse if it is held or spent."""
    if cert.status != CertificateStatus.ACTIVE:
        if cert.status == CertificateStatus.ISSUING and cert.owner == caller:
            raise Conflict(
                f"certificate {cert.certificate_id} is not issued yet", subject=cert.certificate_id
            )
        if cert.status in (CertificateStatus.WITHDRAWN, CertificateStatus.EXPIRED) and (
            caller in cert.owners()
        ):
            raise Conflict(
                f"certificate {cert.certificate_id} is {cert.status}", subject=cert.certificate_id
            )
        raise NotFound(
            f"certificate {cert.certificate_id} not found",
            field="certificate_id",
            subject=cert.certificate_id,
        )
    found = cert.slice_of(ref.slice_id, caller)
    if found.reserved_by == command_id:
        return cert  # a replay of our own reservation
    if cert.withdrawal is not None:
        raise Conflict(
            f"certificate {cert.certificate_id} is being withdrawn", subject=cert.certificate_id
        )
    if found.state == SliceState.RESERVED:
        raise Conflict(
            f"slice {ref.slice_id} is reserved by a pending command", subject=ref.slice_id
        )
    if found.state != SliceState.AVAILABLE:
        raise Conflict(f"slice {ref.slice_id} is {found.state.value}", subject=ref.slice_id)
    if found.quantity_wh < at_least_wh:
        raise Conflict(
            f"slice {ref.slice_id} holds {found.quantity_wh} Wh, less than {at_least_wh} Wh",
            subject=ref.slice_id,
        )
    slices = dict(cert.slices)
    slices[found.slice_id] = found.model_copy(
        update={"state": SliceState.RESERVED, "reserved_by": command_id}
    )
    return cert.model_copy(update={"slices": slices})


# Groups of grid areas whose certificates a claim may match, e.g. {"DK": ["DK1", "DK2"]}.
MatchingBoundary = Mapping[str, Collection[str]]


def check_claim_pair(
    production: Certificate,
    consumption: Certificate,
    boundary: MatchingBoundary | None = None,
) -> None:
    """A claim matches production and consumption of one period and trial type, and grid
    areas the matching boundary allows (`check_matching_boundary`; None: not checked, as when
    a claim accepted earlier takes its holds again)."""
    if production.type != CertificateType.PRODUCTION:
        raise RuleViolation(
            "the production side must be a production certificate",
            field="production.certificate_id",
        )
    if consumption.type != CertificateType.CONSUMPTION:
        raise RuleViolation(
            "the consumption side must be a consumption certificate",
            field="consumption.certificate_id",
        )
    if boundary is not None:
        check_matching_boundary(production, consumption, boundary)
    if not (
        production.period.contains(consumption.period)
        or consumption.period.contains(production.period)
    ):
        raise RuleViolation(
            "the periods of production and consumption do not match",
            field="consumption.certificate_id",
        )
    if not same_trial_type(trial_value(production), trial_value(consumption)):
        # The registry refuses the pair ("not of the same trial type") after the production
        # side may have committed: its quantity would be stranded for good.
        raise RuleViolation(
            "production and consumption are not of the same trial type (IsTrial)",
            field="consumption.certificate_id",
        )


def check_matching_boundary(
    production: Certificate,
    consumption: Certificate,
    boundary: MatchingBoundary,
) -> None:
    """A claim matches production and consumption of one grid area, or of two grid areas
    within one group of the matching boundary (e.g. {"DK": ["DK1", "DK2"]}). The registry
    requires neither: its verifier checks the pair's periods, trial type and areas' existence."""
    a, b = production.grid_area, consumption.grid_area
    if a == b or any(a in group and b in group for group in boundary.values()):
        return
    raise RuleViolation(
        f"production in grid area {a} and consumption in {b} may not be matched"
        + ("" if boundary else " (claims match within one grid area)"),
        field="consumption.certificate_id",
    )


def trial_value(cert: Certificate) -> str | None:
    """The registry's IsTrial value: key compared ignoring case, the value as the registry
    holds it (a hashed attribute's hash)."""
    for key, value in cert.attributes.items():
        if key.lower() == "istrial":
            hashed = cert.hashed_attributes.get(key)
            return hashed.registry_value if hashed else value
    return None


def same_trial_type(production: str | None, consumption: str | None) -> bool:
    """The registry's match (registry/sandbox/rules.py): equal values exactly, or one missing and
    the other "false"."""
    return (
        production == consumption
        or (production is None and consumption == "false")
        or (production == "false" and consumption is None)
    )


CLAIM_EXPIRY_MARGIN = timedelta(days=1)


def check_claim_in_time(
    production: Certificate,
    consumption: Certificate,
    now: datetime,
    expiry: timedelta,
    margin: timedelta = CLAIM_EXPIRY_MARGIN,
) -> None:
    """A claim that could land after either certificate expires (`expiry` after its period
    starts, as the reconciler expires it) is refused: the registry would refuse the second
    allocation after the first committed, stranding the production quantity."""
    for side, cert in (("production", production), ("consumption", consumption)):
        if now + margin >= cert.period.start + expiry:
            raise RuleViolation(
                f"the {side} certificate expires before the claim could be registered",
                field=f"{side}.certificate_id",
                subject=cert.certificate_id,
            )


def check_slice_room(cert: Certificate, new_slices: int) -> None:
    if len(cert.slices) + new_slices > MAX_SLICES_PER_CERTIFICATE:
        raise RuleViolation(
            f"a certificate holds at most {MAX_SLICES_PER_CERTIFICATE} slices",
            subject=cert.certificate_id,
        )
    if record_bytes(cert) + new_slices * MAX_SLICE_RECORD_BYTES > MAX_CERTIFICATE_RECORD_BYTES:
        raise RuleViolation(
            f"a certificate's record is limited to {MAX_CERTIFICATE_RECORD_BYTES // 1000} KB "
            "(a DynamoDB item holds at most 400 KB) and these slices would take it over",
            subject=cert.certificate_id,
        )


# A certificate is stored as one record (one DynamoDB item, at most 400 KB), and the slices a
# command makes are written after the registry took it: too late to refuse. So a command is
# refused at accept when the record could outgrow this budget. A new slice's share is bounded
# by its fields at their largest: ids, an owner of 128 characters in 4-byte UTF-8, a
# KMS-sealed secret in its first form (~560 bytes measured, which older slices carry; a new one
# is ~170) and the command id in `applied`.
MAX_CERTIFICATE_RECORD_BYTES = 350_000
MAX_SLICE_RECORD_BYTES = 1_500


def record_bytes(cert: Certificate) -> int:
    """The certificate's size as stored, from above: its JSON (names and values, plus the
    quotes and braces DynamoDB does not count)."""
    return len(cert.model_dump_json(exclude_none=True).encode())


def conservation_holds(cert: Certificate) -> bool:
    """I3: the live slices of an issued certificate sum to its quantity."""
    if cert.status in (CertificateStatus.ISSUING, CertificateStatus.REJECTED):
        return not cert.slices
    return cert.live_quantity() == cert.quantity_wh


def iter_reserved(certs: Iterable[Certificate]) -> Iterable[tuple[Certificate, Slice]]:
    for cert in certs:
        for s in cert.slices.values():
            if s.reserved_by is not None:
                yield cert, s


# --- alignment with the registry (I6) ----------------------------------------------------------


class RegistrySliceView(BaseModel):
    """A slice as the registry has it."""

    model_config = ConfigDict(frozen=True)

    ref: str
    owner: str
    quantity_wh: int
    claimed: bool = False
    allocated: bool = False  # to a claim whose ClaimedEvent is not (yet) on this stream

    @property
    def state(self) -> SliceState:
        """Its state in the book's terms: claimed, allocated (unusable) or available."""
        if self.claimed:
            return SliceState.CLAIMED
        return SliceState.ALLOCATED if self.allocated else SliceState.AVAILABLE


# What the registry tells of a live slice's use: claimed, allocated, or free (available, or
# unusable for a reason of the book's own: reserved, withdrawn, expired).
_REGISTRY_USE = (SliceState.CLAIMED, SliceState.ALLOCATED)


def _use(state: SliceState) -> SliceState:
    return state if state in _REGISTRY_USE else SliceState.AVAILABLE


def align(
    cert: Certificate, registry_slices: Iterable[RegistrySliceView], registry_withdrawn: bool
) -> tuple[Certificate, list[dict[str, Any]]]:
    """The certificate made equal to the registry's view of it (the registry is the truth),
    and the list of repairs that took. Not for a certificate with pending commands: their
    effects are on their way and would read as drift."""
    current = {s.ref: s for s in cert.slices.values() if s.is_live}
    truth = {s.ref: s for s in registry_slices}
    slices = dict(cert.slices)
    repairs: list[dict[str, Any]] = []

    def add(view: RegistrySliceView) -> None:
        # A slice can come back to an owner who had it before (transferred away and back, in
        # the registry the same slice): its id must not be that of the old one, which a
        # command spent and whose record stays.
        name = f"registry/{view.ref}/{view.owner}"
        slice_id = str(uuid.uuid5(_SLICE_NAMESPACE, name))
        for again in itertools.count(1):
            if slice_id not in slices:
                break
            slice_id = str(uuid.uuid5(_SLICE_NAMESPACE, f"{name}/{again}"))
        new = Slice(
            slice_id=slice_id,
            owner=view.owner,
            quantity_wh=view.quantity_wh,
            registry_ref=view.ref,
            state=view.state,
        )
        slices[new.slice_id] = new

    for ref, mine in current.items():
        theirs = truth.get(ref)
        if theirs is None:
            slices[mine.slice_id] = mine.model_copy(update={"state": SliceState.REMOVED})
            repairs.append(
                {
                    "action": "extra_slice",
                    "ref": ref,
                    "slice_id": mine.slice_id,
                    "owner": mine.owner,
                    "quantity_wh": mine.quantity_wh,
                }
            )
        elif (mine.owner, mine.quantity_wh) != (theirs.owner, theirs.quantity_wh):
            gone = SliceState.TRANSFERRED if mine.owner != theirs.owner else SliceState.REMOVED
            slices[mine.slice_id] = mine.model_copy(update={"state": gone})
            add(theirs)
            repairs.append(
                {
                    "action": "wrong_owner" if mine.owner != theirs.owner else "wrong_quantity",
                    "ref": ref,
                    "slice_id": mine.slice_id,
                    "book": [mine.owner, mine.quantity_wh],
                    "registry": [theirs.owner, theirs.quantity_wh],
                }
            )
        elif theirs.state != _use(mine.state):
            claimed_by = mine.claimed_by if theirs.state == SliceState.CLAIMED else None
            slices[mine.slice_id] = mine.model_copy(
                update={"state": theirs.state, "claimed_by": claimed_by}
            )
            repairs.append(
                {
                    "action": "claim_state",
                    "ref": ref,
                    "slice_id": mine.slice_id,
                    "claimed": theirs.claimed,
                    "state": theirs.state.value,
                }
            )
    for ref, theirs in truth.items():
        if ref not in current:
            add(theirs)
            repairs.append(
                {
                    "action": "missing_slice",
                    "ref": ref,
                    "owner": theirs.owner,
                    "quantity_wh": theirs.quantity_wh,
                }
            )
    status = cert.status
    if registry_withdrawn and cert.status != CertificateStatus.WITHDRAWN:
        status = CertificateStatus.WITHDRAWN
        repairs.append({"action": "withdrawn"})
    # Nothing of a withdrawn or expired certificate can be used, a slice the repairs added
    # neither (the registry's owner of a slice of a withdrawn certificate cannot spend it).
    ended = {
        CertificateStatus.WITHDRAWN: SliceState.WITHDRAWN,
        CertificateStatus.EXPIRED: SliceState.EXPIRED,
    }.get(status)
    if ended is not None:
        slices = {
            k: v.model_copy(update={"state": ended}) if v.state == SliceState.AVAILABLE else v
            for k, v in slices.items()
        }
    if not repairs:
        return cert, []
    return cert.model_copy(update={"slices": slices, "status": status}), repairs


def expire(cert: Certificate) -> Certificate:
    """Past its expiry, a certificate's available slices can no longer be used."""
    if cert.status != CertificateStatus.ACTIVE or any(s.reserved_by for s in cert.slices.values()):
        return cert
    slices = {
        k: v.model_copy(update={"state": SliceState.EXPIRED})
        if v.state == SliceState.AVAILABLE
        else v
        for k, v in cert.slices.items()
    }
    return cert.model_copy(update={"status": CertificateStatus.EXPIRED, "slices": slices})


def viewers(cert: Certificate) -> set[str]:
    """Owners whose change feed shows the certificate: those holding or having held slices of
    it, and the owner it was issued to; nobody while it is being issued, or when the registry
    refused to issue it (it never existed: the issuer follows that through the command). So
    an issuance enters its owner's feed once, issued, and a certificate that has entered a
    feed never leaves it."""
    if cert.status in (CertificateStatus.ISSUING, CertificateStatus.REJECTED):
        return set()
    return cert.owners() | {cert.owner}


def moves_in_feed(target: CommandStatus) -> bool:
    """Whether a command's move to `target` is a change its caller's feed gives again: its
    end, doubt or its resolution, and waiting again (ACCEPTED: the registry was down, or the
    reconciler settled a step). Not SENDING and SENT, in which the worker hands transactions
    to the registry, step after step: a claim makes eight of them, each a write of its place
    in the feed (a delete and a put in the index) that a follower has no use for. A command
    read directly (GET /v1/commands/{id}) shows them."""
    return target not in (CommandStatus.SENDING, CommandStatus.SENT)


def view_of(cert: Certificate, owner: str) -> Certificate:
    """The certificate as one owner sees it, as their change feed gives it: their slices only,
    and none of the book's own records (the sealed secrets and registry references that spend
    a slice, the commands applied to the certificate), which no answer shows. Kept apart in
    each feed mark, they would only make it large: with real transactions a slice's sealed
    secret alone is ~600 bytes, and a mark is rewritten, and indexed whole, at every change."""
    return cert.model_copy(
        update={
            "slices": {
                k: s.model_copy(update={"secret": None, "registry_ref": None})
                for k, s in cert.slices.items()
                if s.owner == owner
            },
            "applied": (),
        }
    )


def view_digest(cert: Certificate, owner: str) -> str:
    """What changes when the owner's view of the certificate changes (its status, their
    slices), and nothing else: the change feeds show a certificate again only then."""
    mine = sorted(
        (s.model_dump(mode="json") for s in cert.slices.values() if s.owner == owner),
        key=lambda s: s["slice_id"],
    )
    return request_hash([cert.status.value, mine])[:32]


def viewers_of_change(before: Certificate | None, after: Certificate) -> set[str]:
    """Owners whose view a change from `before` to `after` changes (everyone's, for a new
    certificate)."""
    if before is None:
        return viewers(after)
    return {
        owner
        for owner in viewers(before) | viewers(after)
        if view_digest(before, owner) != view_digest(after, owner)
    }


def slices_made(command: Command) -> list[SliceRef]:
    """The slices a committed command created that its caller (or, for a transfer, its
    receiver) acts on next: a new certificate's first slice, the parts of a slice, the slice a
    transfer gave its receiver. None before it commits: they do not exist yet."""
    if command.status != CommandStatus.COMMITTED:
        return []
    cert = command.certificate_id
    if command.kind == CommandKind.ISSUE:
        return [SliceRef(certificate_id=cert, slice_id=slice_id_for(command.command_id, 0))]
    if command.kind == CommandKind.SLICE:
        return [
            SliceRef(certificate_id=cert, slice_id=slice_id_for(command.command_id, i))
            for i in range(len(command.quantities_wh))
        ]
    if command.kind == CommandKind.TRANSFER:
        received = slice_id_for(command.command_id, "received")
        return [SliceRef(certificate_id=cert, slice_id=received)]
    return []


def as_received(command: Command) -> Command:
    """A transfer as its receiver lists it: the slice they received in place of the slice the
    sender spent (the sender's slice ids are the sender's, I7). Idempotent."""
    if command.kind != CommandKind.TRANSFER:
        return command
    received = SliceRef(
        certificate_id=command.certificate_id,
        slice_id=slice_id_for(command.command_id, "received"),
    )
    return command.model_copy(update={"slices": (received,)})
