"""In-memory adapters: the book and the queue as plain Python, for fast tests.

They implement the same ports as the DynamoDB and SQS adapters and pass the same contract
suite (tests/contract). A lock stands in for DynamoDB's per-item atomicity.
"""

from __future__ import annotations

import base64
import json
import threading
import zlib
from collections.abc import Callable, Sequence
from datetime import UTC, date, datetime, timedelta
from typing import Any

from chalicelib import domain
from chalicelib.adapters import changes, positions
from chalicelib.domain import (
    Certificate,
    CertificateStatus,
    Command,
    CommandKind,
    Conflict,
    SliceRef,
)
from chalicelib.ports import (
    CertificateMoved,
    CommandQuery,
    DependencyDown,
    DuplicateCommand,
    HoldingQuery,
    Outgoing,
    Page,
    StaleCommand,
    Transition,
)


def _encode_cursor(position: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(position).encode()).decode()


def _decode_cursor(cursor: str | None) -> list[str] | None:
    """The position a cursor of ours names: [sort value, id]. Anything else is refused here,
    because comparing it with a position would fail later as a 500."""
    if cursor is None:
        return None
    try:
        position = json.loads(base64.urlsafe_b64decode(cursor.encode()))
        if not (
            isinstance(position, list)
            and len(position) == 2
            and all(isinstance(part, str) for part in position)
        ):
            raise ValueError("not a position")
        return position
    except ValueError as exc:
        raise domain.RuleViolation(
            "the cursor is not one this service gave out", field="cursor"
        ) from exc


def apply_transition(current: Command | None, change: Transition) -> Command:
    """The command after `change`, or StaleCommand: shared by both books' in-process checks."""
    expected = (
        (change.expected,)
        if isinstance(change.expected, domain.CommandStatus)
        else tuple(change.expected)
    )
    # Every expected status is checked, whatever the current one, as the DynamoDB book does
    # before it writes: a forbidden change is a programming error, never a stale command.
    for status in expected:
        domain.check_transition(status, change.target)
    if (
        current is None
        or current.status not in expected
        or (change.step is not None and current.step != change.step)
        or (change.created_at is not None and current.created_at != change.created_at)
    ):
        raise StaleCommand(current)
    changes = {
        k: v
        for k, v in change.changes.items()
        if k not in change.set_once or not getattr(current, k)
    }
    return current.model_copy(update={**changes, "status": change.target, "updated_at": change.now})


def shard_of(identifier: str, shards: int) -> int:
    """The shard the DynamoDB book puts an id in (crc32, as in adapters.dynamo)."""
    return zlib.crc32(identifier.encode()) % shards


class InMemoryBook:
    def __init__(
        self,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        open_shards: int = 8,
        expiry_shards: int = 8,
    ) -> None:
        self.shards = open_shards
        self._expiry_shards = expiry_shards
        # What the DynamoDB book's sparse indexes hold, so that listing them costs what they
        # hold, not the whole book: command ids in the open-commands index, certificate ids
        # by the day their period starts (filtered on their status when read).
        self._listed: dict[str, None] = {}
        self._by_day: dict[date, dict[str, None]] = {}
        self._lock = threading.RLock()
        # The change feeds: (owner, feed, item) -> the position of the item's last change.
        # Positions are given under the lock and never go back, so a reader sees them in the
        # order they were written and needs no safety lag (unlike the DynamoDB book).
        self._changes = _ChangeLog(clock)
        self.commands: dict[str, Command] = {}
        self.certificates: dict[str, Certificate] = {}
        self._holdings: dict[str, set[str]] = {}
        self._receipts: dict[str, Command] = {}  # the receivers' copies of committed transfers
        self._reconciled: set[str] = set()
        self._kept: set[str] = set()  # taken on by a retry or a re-drive: never forgotten
        self._stranded: dict[str, None] = {}  # commands that left allocations stranded
        self._leases: dict[str, tuple[str, datetime]] = {}
        self._audits: dict[str, list[dict[str, Any]]] = {}

    # commands

    def add_command(self, command: Command) -> None:
        with self._lock:
            if command.command_id in self.commands:
                raise DuplicateCommand(self.commands[command.command_id])
            self.commands[command.command_id] = command
            self._command_changed(command)
            self._listed[command.command_id] = None

    def get_command(self, command_id: str) -> Command | None:
        return self.commands.get(command_id)

    def transition(self, command_id: str, change: Transition) -> Command:
        with self._lock:
            updated = apply_transition(self.commands.get(command_id), change)
            self.commands[command_id] = updated
            if domain.moves_in_feed(change.target):
                self._command_changed(updated)
            if change.reconciled and updated.is_terminal:
                self._reconciled.add(command_id)
                self._listed.pop(command_id, None)
            return updated

    def forget_command(self, command: Command) -> bool:
        with self._lock:
            stored = self.commands.get(command.command_id)
            if (
                stored is None
                or stored.status != domain.CommandStatus.ACCEPTED
                or stored.attempts != 0
                or command.command_id in self._kept
            ):
                return False
            del self.commands[command.command_id]
            self._changes.positions.pop(
                (stored.caller, stored.kind.value, ("CMD", stored.command_id)), None
            )
            self._listed.pop(command.command_id, None)
            return True

    def keep_command(self, command_id: str) -> domain.CommandStatus | None:
        with self._lock:
            stored = self.commands.get(command_id)
            if stored is None:
                return None
            self._kept.add(command_id)
            return stored.status

    def commands_of(
        self, caller: str, kind: CommandKind, limit: int, cursor: str | None
    ) -> Page[Command]:
        after = _decode_cursor(cursor)
        if kind not in (CommandKind.TRANSFER, CommandKind.CLAIM):
            return Page(items=[])  # as the DynamoDB book: only these kinds are listed
        with self._lock:
            mine = sorted(
                [c for c in self.commands.values() if c.kind == kind and c.caller == caller]
                + [
                    domain.as_received(c)
                    for c in self._receipts.values()
                    if c.kind == kind and c.receiver == caller
                ],
                key=lambda c: (c.created_at.isoformat(), c.command_id),
                reverse=True,
            )
        if after is not None:
            mine = [c for c in mine if [c.created_at.isoformat(), c.command_id] < after]
        page = mine[:limit]
        more = len(mine) > limit
        nxt = (
            _encode_cursor([page[-1].created_at.isoformat(), page[-1].command_id])
            if (more and page)
            else None
        )
        return Page(items=page, next_cursor=nxt)

    def own_commands(self, query: CommandQuery) -> Page[Command]:
        low, high = positions.bounds(query)
        with self._lock:
            mine = sorted(
                (
                    (positions.of(c), c)
                    for c in self.commands.values()
                    if c.caller == query.caller
                    and low <= positions.of(c) < high
                    and positions.matches(query, c)
                ),
                key=lambda pair: pair[0],
                reverse=True,
            )
        page = mine[: query.limit]
        more = len(mine) > query.limit
        return Page(
            items=[c for _, c in page],
            next_cursor=positions.encode(page[-1][0]) if more else None,
        )

    def _in_shard(self, shard: int | None) -> list[Command]:
        return [
            self.commands[i]
            for i in self._listed
            if shard is None or shard_of(i, self.shards) == shard
        ]

    def open_commands(
        self, created_before: datetime, limit: int, shard: int | None = None
    ) -> list[Command]:
        with self._lock:
            found = sorted(
                (
                    c
                    for c in self._in_shard(shard)
                    if not c.is_terminal and c.created_at < created_before
                ),
                key=lambda c: c.created_at,
            )
        return found[:limit]

    def settled_commands(self, limit: int, shard: int | None = None) -> list[Command]:
        with self._lock:
            found = sorted(
                (
                    c
                    for c in self._in_shard(shard)
                    if c.is_terminal and c.command_id not in self._reconciled
                ),
                key=lambda c: c.created_at,
            )
        return found[:limit]

    def note_unsettled(self, command_id: str, for_operator: str | None = None) -> None:
        with self._lock:
            current = self.commands.get(command_id)
            if current is None or current.is_terminal:
                return
            changes: dict[str, Any] = {"unsettled_passes": current.unsettled_passes + 1}
            if for_operator is not None:
                changes["error"] = for_operator
            self.commands[command_id] = current.model_copy(update=changes)

    def mark_reconciled(self, command_id: str) -> None:
        with self._lock:
            self._reconciled.add(command_id)
            command = self.commands.get(command_id)
            if command is not None and command.is_terminal:
                self._listed.pop(command_id, None)

    def note_stranded(self, command: Command) -> None:
        with self._lock:
            self._stranded[command.command_id] = None

    def stranded_commands(self, limit: int) -> list[Command]:
        with self._lock:
            found = sorted(
                (self.commands[i] for i in self._stranded if i in self.commands),
                key=lambda c: (c.created_at, c.command_id),
            )
        return found[:limit]

    def acquire_lease(self, name: str, holder: str, now: datetime, until: datetime) -> bool:
        with self._lock:
            current = self._leases.get(name)
            if current is not None and current[0] != holder and current[1] > now:
                return False
            self._leases[name] = (holder, until)
            return True

    def release_lease(self, name: str, holder: str) -> None:
        with self._lock:
            if self._leases.get(name, ("",))[0] == holder:
                del self._leases[name]

    def add_audit(self, certificate_id: str, at: datetime, entry: dict[str, Any]) -> None:
        with self._lock:
            self._audits.setdefault(certificate_id, []).append({"at": at.isoformat(), **entry})

    def audits(self, certificate_id: str) -> list[dict[str, Any]]:
        return list(self._audits.get(certificate_id, []))

    # certificates

    def add_certificate(self, certificate: Certificate) -> None:
        with self._lock:
            existing = self.certificates.get(certificate.certificate_id)
            if existing is not None and existing.issue_command == certificate.issue_command:
                return  # a replay of the same issuance
            if existing is not None and existing.status != CertificateStatus.REJECTED:
                raise Conflict(
                    f"certificate {certificate.certificate_id} for this metering point, type "
                    "and period is already issued",
                    subject=certificate.certificate_id,
                )
            version = existing.version + 1 if existing else 1
            stored = certificate.model_copy(update={"version": version})
            self.certificates[certificate.certificate_id] = stored
            self._certificate_changed(existing, stored)
            day = certificate.period.start.date()
            self._by_day.setdefault(day, {})[certificate.certificate_id] = None

    def get_certificate(self, certificate_id: str) -> Certificate | None:
        return self.certificates.get(certificate_id)

    def get_certificates(self, certificate_ids: Sequence[str]) -> list[Certificate]:
        unique = dict.fromkeys(certificate_ids)  # once each, as a BatchGetItem answers
        return [self.certificates[i] for i in unique if i in self.certificates]

    def reserve(self, ref: SliceRef, command_id: str, caller: str, at_least_wh: int) -> Certificate:
        with self._lock:
            cert = self.certificates.get(ref.certificate_id)
            if cert is None:
                raise domain.NotFound(
                    f"certificate {ref.certificate_id} not found",
                    field="certificate_id",
                    subject=ref.certificate_id,
                )
            reserved = domain.reserve(cert, ref, command_id, caller, at_least_wh)
            if reserved is not cert:
                reserved = reserved.model_copy(update={"version": cert.version + 1})
                self.certificates[ref.certificate_id] = reserved
                self._certificate_changed(cert, reserved)
            return reserved

    def update_certificate(
        self,
        certificate_id: str,
        change: Callable[[Certificate], Certificate],
        snapshot: Certificate | None = None,
    ) -> Certificate:
        # One lock makes every change atomic here: the snapshot is not needed to save a read.
        with self._lock:
            cert = self.certificates.get(certificate_id)
            if cert is None:
                raise domain.NotFound(
                    f"certificate {certificate_id} not found", subject=certificate_id
                )
            changed = change(cert)
            if changed != cert:
                changed = changed.model_copy(update={"version": cert.version + 1})
                self.certificates[certificate_id] = changed
                self._certificate_changed(cert, changed)
            return changed

    def update_certificate_at(
        self, certificate_id: str, version: int, change: Callable[[Certificate], Certificate]
    ) -> Certificate:
        with self._lock:
            cert = self.certificates.get(certificate_id)
            if cert is None:
                raise domain.NotFound(
                    f"certificate {certificate_id} not found", subject=certificate_id
                )
            if cert.version != version:
                raise CertificateMoved(f"certificate {certificate_id} moved past {version}")
            changed = change(cert)
            if changed != cert:
                changed = changed.model_copy(update={"version": cert.version + 1})
                self.certificates[certificate_id] = changed
                self._certificate_changed(cert, changed)  # a repair is a change owners follow
            return changed

    def expiring_certificates(self, day: date, limit: int, shard: int | None = None) -> list[str]:
        with self._lock:
            listed = self._by_day.get(day, {})
            found: list[str] = []
            for certificate_id in list(listed):
                cert = self.certificates[certificate_id]
                if cert.status not in (CertificateStatus.ISSUING, CertificateStatus.ACTIVE):
                    del listed[certificate_id]  # it left the sparse index
                    continue
                expiry_shard = shard_of(certificate_id, self._expiry_shards)
                if shard is None or expiry_shard % self.shards == shard:
                    found.append(certificate_id)
            # Up to `limit` per expiry shard, as the DynamoDB book's one query per shard.
            per_shard: dict[int, int] = {}
            kept = []
            for certificate_id in found:
                e = shard_of(certificate_id, self._expiry_shards)
                per_shard[e] = per_shard.get(e, 0) + 1
                if per_shard[e] <= limit:
                    kept.append(certificate_id)
            return kept

    def note_receipt(self, command: Command) -> None:
        with self._lock:
            # Kept as noted, like the DynamoDB book's RECEIVED item: the command itself moves on.
            self._receipts[command.command_id] = command
            assert command.receiver is not None
            self._changed(command.receiver, command.kind.value, ("RECEIVED", command.command_id))

    def add_holding(self, owner: str, certificate: Certificate) -> None:
        with self._lock:
            self._holdings.setdefault(owner, set()).add(certificate.certificate_id)

    def holdings(self, query: HoldingQuery) -> Page[Certificate]:
        after = _decode_cursor(query.cursor)
        with self._lock:
            # Issued to the owner, or received: as the DynamoDB book's owner index has them.
            ids = set(self._holdings.get(query.owner, ())) | {
                c.certificate_id for c in self.certificates.values() if c.owner == query.owner
            }
            certs = [self.certificates[i] for i in ids]
        certs = [
            c
            for c in certs
            if (query.type is None or c.type == query.type)
            and (query.grid_area is None or c.grid_area == query.grid_area)
            and (query.start is None or c.period.start >= query.start)
            and (query.end is None or c.period.start < query.end)
        ]
        certs.sort(key=lambda c: (c.period.start.isoformat(), c.certificate_id), reverse=True)
        if after is not None:
            certs = [c for c in certs if [c.period.start.isoformat(), c.certificate_id] < after]
        page = certs[: query.limit]
        nxt = None
        if len(certs) > query.limit and page:
            nxt = _encode_cursor([page[-1].period.start.isoformat(), page[-1].certificate_id])
        return Page(items=page, next_cursor=nxt)

    # change feeds (under the lock)

    def _changed(self, owner: str, feed: str, item: tuple[str, str]) -> None:
        self._changes.record((owner, feed, item))

    def _certificate_changed(self, before: Certificate | None, after: Certificate) -> None:
        for owner in domain.viewers_of_change(before, after):
            self._changed(owner, "certificates", ("CERT", after.certificate_id))

    def _command_changed(self, command: Command) -> None:
        if command.kind in (CommandKind.TRANSFER, CommandKind.CLAIM):
            self._changed(command.caller, command.kind.value, ("CMD", command.command_id))

    def _feed(
        self,
        owner: str,
        feed: str,
        since: datetime | None,
        cursor: str | None,
        limit: int,
        read: Callable[[tuple[str, str]], Any],
    ) -> Page[Any]:
        after = changes.start_after(since, cursor)
        with self._lock:  # items are read under the lock too: in the state of their position
            found = sorted(
                (position, item)
                for (who, name, item), position in self._changes.positions.items()
                if who == owner and name == feed and position > after
            )[:limit]
            items = [read(item) for _, item in found]
        return Page(
            items=[i for i in items if i is not None],  # a forgotten command leaves the feed
            next_cursor=changes.encode(found[-1][0] if found else after),
        )

    def certificate_changes(
        self, owner: str, since: datetime | None, cursor: str | None, limit: int
    ) -> Page[Certificate]:
        def view(item: tuple[str, str]) -> Certificate | None:
            found = self.certificates.get(item[1])
            return domain.view_of(found, owner) if found else None

        return self._feed(owner, "certificates", since, cursor, limit, view)

    def command_changes(
        self, owner: str, kind: CommandKind, since: datetime | None, cursor: str | None, limit: int
    ) -> Page[Command]:
        def read(item: tuple[str, str]) -> Command | None:
            what, command_id = item
            if what == "RECEIVED":
                noted = self._receipts.get(command_id)
                return domain.as_received(noted) if noted else None
            return self.commands.get(command_id)

        return self._feed(owner, kind.value, since, cursor, limit, read)


class _ChangeLog:
    """Positions of the last change of each (owner, feed, item). Each position is later than
    every one before it (the clock's time, pushed past the last position's if need be), so a
    reader who has seen a position has seen everything before it. Two logs are equal when
    their positions are: the clock is not part of what the book holds."""

    def __init__(self, clock: Callable[[], datetime]) -> None:
        self._clock = clock
        self._last = datetime.min.replace(tzinfo=UTC)
        self.positions: dict[tuple[str, str, tuple[str, str]], str] = {}

    def record(self, key: tuple[str, str, tuple[str, str]]) -> None:
        self._last = max(self._clock(), self._last + timedelta(microseconds=1))
        self.positions[key] = f"{changes.stamp(self._last)}#{key[2][1]}"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _ChangeLog) and self.positions == other.positions


class InMemoryQueue:
    """The messages sent, in order, with a switch to make sending fail."""

    def __init__(self) -> None:
        self.messages: list[Command] = []
        self.available = True

    def send(
        self,
        command: Command,
        holds_taken: bool = True,
        certificates: dict[str, Certificate] | None = None,
    ) -> None:
        if not self.available:
            raise DependencyDown("the command queue is unavailable")
        self.messages.append(command)

    def send_many(self, messages: Sequence[Outgoing]) -> list[Command]:
        for command, certificates in messages:
            self.send(command, certificates=certificates)
        return []
