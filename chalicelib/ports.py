"""The ports the use cases depend on: only the calls they make.

The in-memory adapters (tests) and the AWS adapters (everywhere else) implement these, and one
contract suite runs against both so that the fake cannot drift from the real thing.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from enum import StrEnum
from typing import Any, Generic, Protocol, TypeVar

from chalicelib.domain import (
    Certificate,
    CertificateType,
    Command,
    CommandKind,
    CommandStatus,
    SliceRef,
)

T = TypeVar("T")


class StaleCommand(Exception):
    """A conditional change of a command found it in another state than expected."""

    def __init__(self, current: Command | None):
        super().__init__("command not found" if current is None else f"command is {current.status}")
        self.current = current


class DuplicateCommand(Exception):
    """A command with this id is already in the book (the idempotency guard fired)."""

    def __init__(self, existing: Command):
        super().__init__(f"command {existing.command_id} exists")
        self.existing = existing


class CertificateMoved(Exception):
    """A change conditional on a certificate's version found it at another version."""


class DependencyDown(Exception):
    """AWS (or another dependency) is unreachable or throttling: the client may retry."""


@dataclass(frozen=True)
class Page(Generic[T]):
    items: list[T]
    next_cursor: str | None = None


@dataclass(frozen=True)
class HoldingQuery:
    owner: str
    type: CertificateType | None = None
    grid_area: str | None = None
    start: datetime | None = None  # periods starting at or after
    end: datetime | None = None  # periods starting before
    limit: int = 50
    cursor: str | None = None


@dataclass(frozen=True)
class CommandQuery:
    """The caller's own commands (those it made; not the transfers it received)."""

    caller: str
    kinds: frozenset[CommandKind] | None = None  # None: every kind
    statuses: frozenset[CommandStatus] | None = None  # None: every status
    created_after: datetime | None = None  # created at or after
    created_before: datetime | None = None  # created before
    limit: int = 50
    cursor: str | None = None


@dataclass(frozen=True)
class Transition:
    """A conditional change of one command: from `expected` (at `step`) to `target`."""

    expected: CommandStatus | Sequence[CommandStatus]
    target: CommandStatus
    now: datetime
    step: int | None = None  # the step the command must be at, when it matters
    changes: dict[str, Any] = field(default_factory=dict)  # other fields of Command to set
    # Fields of `changes` written only if the command has none yet: the transactions, built
    # once and never replaced by a rebuild.
    set_once: frozenset[str] = frozenset()
    # A terminal change that also takes the command off the reconciler's list at once: for a
    # registry that answers no queries, the reconciler has nothing to compare it with.
    reconciled: bool = False
    # The command's incarnation (its created_at) as the caller read it; when set, the change
    # holds only for that one, not for a command forgotten and accepted again under its id.
    # A build stored with it needs no read of the command first (the DynamoDB book).
    created_at: datetime | None = None


class Book(Protocol):
    # commands
    def add_command(self, command: Command) -> None:
        """Record a new command; DuplicateCommand (with the stored one) if its id exists."""
        ...

    def get_command(self, command_id: str) -> Command | None: ...

    def transition(self, command_id: str, change: Transition) -> Command:
        """Apply `change` if the command is as expected, else StaleCommand(current)."""
        ...

    def forget_command(self, command: Command) -> bool:
        """Remove a command that was refused before anything else happened to it (ACCEPTED,
        never tried, never kept). False if it was not there so: a worker or a retry took it
        on, or it is gone."""
        ...

    def keep_command(self, command_id: str) -> CommandStatus | None:
        """A process about to take the holds of a command it read a while ago (a retried
        request, a re-driven message) says so first: from then on it is never forgotten. Its
        status as stored, or None if it is gone (forgotten meanwhile: take nothing)."""
        ...

    def commands_of(
        self, caller: str, kind: CommandKind, limit: int, cursor: str | None
    ) -> Page[Command]:
        """The caller's commands of a listed kind (transfers, claims; received transfers
        too), newest first. Other kinds are not listed per caller."""
        ...

    def own_commands(self, query: CommandQuery) -> Page[Command]:
        """The commands the caller made that match the query, newest first. A page may hold
        fewer than `limit` (a status filter is applied after the index is read): the list
        ends when `next_cursor` is None. Commands recorded before every kind was indexed per
        caller (issues, slices, withdrawals) are not in the DynamoDB book's list."""
        ...

    def open_commands(
        self, created_before: datetime, limit: int, shard: int | None = None
    ) -> list[Command]:
        """Commands that are not terminal, created before the given time, oldest first (of
        one shard of the open-commands index, or of all)."""
        ...

    def settled_commands(self, limit: int, shard: int | None = None) -> list[Command]:
        """Terminal commands the reconciler has not yet looked at, oldest first."""
        ...

    def mark_reconciled(self, command_id: str) -> None:
        """The reconciler is done with this terminal command: drop it from its work list."""
        ...

    def note_unsettled(self, command_id: str, for_operator: str | None = None) -> None:
        """One more reconciler pass could not settle this open command. With `for_operator`,
        the command is marked for an operator with that reason (its `error`). Its status and
        age are left as they are; a terminal or unknown command is left alone."""
        ...

    def note_stranded(self, command: Command) -> None:
        """List a claim that left an allocation stranded in the registry, for operators, for
        good (an allocation cannot be undone). Idempotent."""
        ...

    def stranded_commands(self, limit: int) -> list[Command]:
        """The commands noted as having stranded allocations, as they are now, oldest
        first."""
        ...

    # the reconciler's own records
    def acquire_lease(self, name: str, holder: str, now: datetime, until: datetime) -> bool:
        """Take the named lease if free or expired; True when `holder` has it."""
        ...

    def release_lease(self, name: str, holder: str) -> None: ...

    def add_audit(self, certificate_id: str, at: datetime, entry: dict[str, Any]) -> None:
        """Record a repair of the book, for people to read later."""
        ...

    def audits(self, certificate_id: str) -> list[dict[str, Any]]: ...

    # certificates
    def add_certificate(self, certificate: Certificate) -> None:
        """Record a certificate being issued; Conflict if that identity is already issued."""
        ...

    def get_certificate(self, certificate_id: str) -> Certificate | None: ...

    def get_certificates(self, certificate_ids: Sequence[str]) -> list[Certificate]: ...

    def reserve(self, ref: SliceRef, command_id: str, caller: str, at_least_wh: int) -> Certificate:
        """Reserve the caller's available slice for one command, atomically; the domain's
        NotFound/Conflict when it cannot be. Returns the certificate as stored after."""
        ...

    def update_certificate(
        self,
        certificate_id: str,
        change: Callable[[Certificate], Certificate],
        snapshot: Certificate | None = None,
    ) -> Certificate:
        """Read-modify-write under an optimistic lock (retried on a concurrent write). With a
        `snapshot` of the certificate, the book may write only what `change` changes in it, in
        one conditional write on those parts, and read only if they moved meanwhile."""
        ...

    def update_certificate_at(
        self, certificate_id: str, version: int, change: Callable[[Certificate], Certificate]
    ) -> Certificate:
        """Apply `change` only if the certificate is still at `version`, in one conditional
        write, never retried: CertificateMoved when it moved, NotFound when it is not there."""
        ...

    def holdings(self, query: HoldingQuery) -> Page[Certificate]:
        """The certificates in which the owner holds or held slices, newest period first."""
        ...

    def add_holding(self, owner: str, certificate: Certificate) -> None: ...

    def expiring_certificates(self, day: date, limit: int, shard: int | None = None) -> list[str]:
        """Ids of certificates that are not yet expired (nor withdrawn) and start on `day`:
        up to `limit` from each expiry shard that reconciler shard `shard` sweeps (or all)."""
        ...

    def note_receipt(self, command: Command) -> None:
        """Show a committed transfer in its receiver's list too."""
        ...


class ChangeFeeds(Protocol):
    """What changed for an owner since a point, oldest change first, for clients that keep a
    copy (GET /v1/certificates?updated_since=, and of transfers and claims). Each item comes in
    the state it has now, at the position of its last change; a client that follows
    `next_cursor` (never None) sees every item's latest state, and never the same state twice,
    while the book keeps changing."""

    def certificate_changes(
        self, owner: str, since: datetime | None, cursor: str | None, limit: int
    ) -> Page[Certificate]: ...

    def command_changes(
        self, owner: str, kind: CommandKind, since: datetime | None, cursor: str | None, limit: int
    ) -> Page[Command]: ...


# A command to queue, and its certificates as its holds left them.
Outgoing = tuple[Command, dict[str, Certificate] | None]


class CommandQueue(Protocol):
    def send(
        self,
        command: Command,
        holds_taken: bool = True,
        certificates: dict[str, Certificate] | None = None,
    ) -> None:
        """Queue the command on its certificate's FIFO group. DependencyDown on failure.
        `holds_taken` False tells the worker to take the command's holds first (re-drive).
        `certificates`, as the command's holds left them, let the worker build without
        reading them again."""
        ...

    def send_many(self, messages: Sequence[Outgoing]) -> list[Command]:
        """Queue several (holds taken), in as few calls as the queue allows; returns the
        commands it could not queue (the book keeps them ACCEPTED: the reconciler re-drives
        them). DependencyDown when the queue did not answer at all."""
        ...


# --- the worker's side of the queue -----------------------------------------------------------


class Outcome(StrEnum):
    DONE = "done"  # the message has served its purpose: delete it
    RETRY = "retry"  # it must come back later (and its FIFO group wait): registry down, busy
    FAILED = "failed"  # it must come back, because processing it failed (poison, a fault)
    LATER = "later"  # it must come back soon: its step awaits the registry's verdict


class PoisonMessage(Exception):
    """A message that no retry can make sense of (unparsable, or names no command)."""


@dataclass(frozen=True)
class Delivery:
    """One queue message, as the worker needs it."""

    command_id: str
    group: str
    holds_taken: bool = True  # False when re-driven: the API may have died before its holds
    command: Command | None = None  # the command as accepted, when the API queued it
    certificates: dict[str, Certificate] | None = None  # as its holds left them
    # How often the queue has handed the message out (SQS's ApproximateReceiveCount). Past
    # the first, the command may have moved on since the message was written.
    receives: int = 1


Clock = Callable[[], datetime]
