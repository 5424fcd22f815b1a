"""The reconciler: nothing stuck, nothing lost, the book aligned with the registry.

One pass, on a schedule or on demand, under a lease so that two passes never work at once
(and every write it makes is conditional anyway, so even a pass that lost its lease cannot
break anything). Bounded work per pass; what is left is found again by the next one.

- Outbox: an ACCEPTED command untouched for a while lost its queue message: queue it again.
  The worker's guard makes a duplicate harmless; the worker takes its holds if the API died
  before taking them.
- Leases: a SENDING command whose worker's lease expired is IN_DOUBT (or COMMITTED, if the
  book shows its effect): never re-sent.
- In doubt: where the registry answers queries, SENT and IN_DOUBT commands are settled from
  the registry's word, exactly as the worker would have; otherwise they stay IN_DOUBT with the
  reason, for an operator (POST /v1/ops/commands/{id}/resolve).
- Settled commands: their certificates lose any hold the command still had, and, where the
  registry can return streams, are compared with the registry and repaired (registry wins),
  each repair written to the audit trail.
- Expiry: certificates older than the configured number of days become unusable.
"""

from __future__ import annotations

import base64
import contextlib
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from chalicelib import domain, observability
from chalicelib.domain import Command, CommandStatus, Conflict, Role
from chalicelib.ports import Book, CommandQueue, DependencyDown, StaleCommand, Transition
from chalicelib.registry.codec import PLAIN, TransactionCodec
from chalicelib.registry.envelope import transaction_id_of
from chalicelib.registry.port import (
    QueriesNotSupported,
    Registry,
    RegistryAmbiguous,
    RegistryUnavailable,
    TransactionStatus,
)
from chalicelib.usecases import holds
from chalicelib.usecases.process import Worker

LEASE = "reconciler"
EXPIRY_LOOKBACK_DAYS = 7  # days before the cutoff swept every pass, in case a pass was missed


@dataclass
class Report:
    started_at: datetime
    finished_at: datetime | None = None
    actions: Counter = field(default_factory=Counter)
    complete: bool = True

    def count(self, action: str, n: int = 1) -> None:
        self.actions[action] += n


@dataclass
class Reconciler:
    book: Book
    queue: CommandQueue
    registry: Registry
    worker: Worker
    clock: Callable[[], datetime]
    redrive_after_s: float = 300.0
    expiry_days: int = 365
    max_commands: int = 500
    lease_s: float = 300.0
    holder: str = field(default_factory=lambda: str(uuid.uuid4()))
    codec: TransactionCodec = PLAIN  # reads stored transactions: the builder's encoding
    lease: str = LEASE  # a shard's pass has a lease of its own (usecases.shards)
    expiry_limit: int | None = None  # certificates per expiry listing (None: max_commands)

    def run(self) -> Report:
        now = self.clock()
        report = Report(started_at=now)
        if not self.book.acquire_lease(
            self.lease, self.holder, now, now + timedelta(seconds=self.lease_s)
        ):
            report.count("skipped_lease_held")
            report.finished_at = self.clock()
            return report
        try:
            self._open_commands(now, report)
            self._settled_commands(report)
            self._expire(now, report)
        finally:
            self.book.release_lease(self.lease, self.holder)
        report.finished_at = self.clock()
        observability.event(
            "reconciler.pass", actions=dict(report.actions), complete=report.complete
        )
        observability.metrics({k: v for k, v in report.actions.items()})
        return report

    # --- commands that are not terminal --------------------------------------------------------

    def _open_commands(self, now: datetime, report: Report) -> None:
        # Up to and including now: a command created this very moment is listed too.
        commands = self.book.open_commands(
            created_before=now + timedelta(seconds=1), limit=self.max_commands
        )
        if len(commands) >= self.max_commands:
            report.complete = False
        for command in commands:
            try:
                report.count(self._settle_open(command, now))
            except StaleCommand:  # a worker (or an operator) moved it since it was listed
                report.count("moved_meanwhile")

    def _settle_open(self, command: Command, now: datetime) -> str:
        match command.status:
            case CommandStatus.ACCEPTED:
                if command.updated_at > now - timedelta(seconds=self.redrive_after_s):
                    return "accepted_recent"
                try:
                    self.queue.send(command, holds_taken=False)
                except DependencyDown:
                    return "redrive_failed"
                return "redriven"
            case CommandStatus.SENDING:
                if command.lease_until and command.lease_until > now:
                    return "sending"
                self.worker.settle_expired_lease(command)
                current = self.book.get_command(command.command_id)
                if current is None or current.status != CommandStatus.IN_DOUBT:
                    return "lease_expired_committed"
                self._resolve(current)
                return "lease_expired_in_doubt"
            case CommandStatus.SENT | CommandStatus.IN_DOUBT:
                return self._resolve(command)
        return "unexpected"

    def _resolve(self, command: Command) -> str:
        """Settle a step whose outcome is not known from the registry's word on it."""
        if not self.registry.supports_queries:
            return self._still_in_doubt(
                command,
                "the registry answers no queries: an "
                "operator must check the registry and resolve it",
            )
        data = base64.b64decode(command.transactions[command.step])
        transaction_id = transaction_id_of(data)
        try:
            status = self.registry.status(transaction_id).status
            # The stream is the truth: a duplicate send can make an applied transaction's
            # status read FAILED, and an old one's read UNKNOWN.
            applied = transaction_id in {
                transaction_id_of(tx) for tx in self.registry.stream(self.codec.stream_id(data))
            }
        except (RegistryUnavailable, RegistryAmbiguous, QueriesNotSupported):
            return "registry_unreachable"
        try:
            if applied or status in (TransactionStatus.COMMITTED, TransactionStatus.FINALIZED):
                after = self.worker.step_committed(command)
                if after.status == CommandStatus.ACCEPTED:  # steps remain: on with the next
                    with contextlib.suppress(DependencyDown):
                        self.queue.send(after)
                return "resolved_committed"
            if status == TransactionStatus.FAILED:
                self.worker.step_rejected(command, "refused by the registry")
                return "resolved_rejected"
        except StaleCommand:
            return "moved_meanwhile"
        if status == TransactionStatus.PENDING:
            return "pending"
        return self._still_in_doubt(
            command,
            "the registry no longer knows the transaction "
            "(its status expired): an operator must resolve it",
        )

    def _still_in_doubt(self, command: Command, reason: str) -> str:
        if command.status == CommandStatus.SENT:  # IN_DOUBT ones already say why
            with contextlib.suppress(StaleCommand):
                self.book.transition(
                    command.command_id,
                    Transition(
                        expected=CommandStatus.SENT,
                        target=CommandStatus.IN_DOUBT,
                        now=self.clock(),
                        step=command.step,
                        changes={"error": reason},
                    ),
                )
        return "in_doubt_for_operator"

    # --- commands that are done: stale holds and drift -----------------------------------------

    def _settled_commands(self, report: Report) -> None:
        commands = self.book.settled_commands(limit=self.max_commands)
        if len(commands) >= self.max_commands:
            report.complete = False
        checked: set[str] = set()
        for command in commands:
            compared = True
            for certificate_id in command.certificate_ids():
                cert = self.book.get_certificate(certificate_id)
                if cert is None:
                    continue
                if any(s.reserved_by == command.command_id for s in cert.slices.values()) or (
                    cert.withdrawal == command.command_id
                ):
                    holds.release(self.book, command)
                    report.count("stale_reservation_released")
                if certificate_id not in checked:
                    checked.add(certificate_id)
                    outcome = self._align(certificate_id)
                    report.count(outcome)
                    compared = compared and outcome != "registry_unreachable"
            if compared:  # else the next pass compares its certificates again
                self.book.mark_reconciled(command.command_id)

    def _align(self, certificate_id: str) -> str:
        if not self.registry.supports_queries:
            return "drift_not_checkable"
        try:
            truth = self.codec.fold(certificate_id, self.registry.stream(certificate_id))
        except (RegistryUnavailable, RegistryAmbiguous, QueriesNotSupported):
            return "registry_unreachable"
        if truth is None:
            return "drift_unknown_to_registry"
        views = [
            domain.RegistrySliceView(
                ref=s.ref, owner=s.owner, quantity_wh=s.quantity_wh, claimed=s.claimed
            )
            for s in truth.slices.values()
        ]
        found: list[dict] = []

        def repair(cert: domain.Certificate) -> domain.Certificate:
            found.clear()
            if (
                cert.status in (domain.CertificateStatus.ISSUING, domain.CertificateStatus.REJECTED)
                or any(s.reserved_by for s in cert.slices.values())
                or cert.withdrawal
            ):
                return cert  # work in flight: its effect is on its way, not drift
            aligned, repairs = domain.align(cert, views, truth.withdrawn)
            found.extend(repairs)
            return aligned

        try:
            cert = self.book.update_certificate(certificate_id, repair)
        except Conflict:
            return "drift_check_conflict"
        # Every time, not only after a repair: a pass that died between its repair and these
        # writes finds nothing left to repair the next time, and would leave an owner without
        # the certificate in their list.
        for owner in sorted(cert.owners()):
            self.book.add_holding(owner, cert)
        if not found:
            return "aligned"
        now = self.clock()
        for entry in found:
            self.book.add_audit(certificate_id, now, entry)
            observability.event("drift.repaired", certificate_id=certificate_id, **entry)
        return "drift_repaired"

    # --- expiry ------------------------------------------------------------------------------

    def _expire(self, now: datetime, report: Report) -> None:
        cutoff = now - timedelta(days=self.expiry_days)
        for back in range(EXPIRY_LOOKBACK_DAYS, -1, -1):
            day = (cutoff - timedelta(days=back)).date()
            limit = self.expiry_limit or self.max_commands
            for certificate_id in self.book.expiring_certificates(day, limit):
                # The cutoff is checked on the certificate the write reads: no read before it.
                def expire(cert: domain.Certificate) -> domain.Certificate:
                    return domain.expire(cert) if cert.period.start < cutoff else cert

                try:
                    after = self.book.update_certificate(certificate_id, expire)
                except domain.NotFound:
                    continue
                if after.period.start >= cutoff:
                    continue
                report.count(
                    "expired"
                    if after.status == domain.CertificateStatus.EXPIRED
                    else "expiry_deferred"
                )


# --- operators ---------------------------------------------------------------------------------


def _in_doubt_for(book: Book, actor: domain.Actor, command_id: str) -> Command:
    """The IN_DOUBT command an operator means to act on, or the reason they cannot."""
    actor.require(Role.OPERATOR)
    command = book.get_command(command_id)
    if command is None:
        raise domain.NotFound(f"command {command_id} not found", subject=command_id)
    if command.status != CommandStatus.IN_DOUBT:
        raise Conflict(
            f"command {command_id} is {command.status.value}, not IN_DOUBT", subject=command_id
        )
    return command


def resolve_by_operator(
    book: Book,
    queue: CommandQueue,
    worker: Worker,
    actor: domain.Actor,
    command_id: str,
    committed: bool,
    reason: str,
) -> Command:
    """An operator's finding on an IN_DOUBT step, applied exactly as the worker would have."""
    command = _in_doubt_for(book, actor, command_id)
    observability.event(
        "operator.resolve",
        command_id=command_id,
        operator=actor.owner,
        committed=committed,
        reason=reason,
    )
    try:
        if committed:
            after = worker.step_committed(command)
            if after.status == CommandStatus.ACCEPTED:  # the next step goes to the worker
                with contextlib.suppress(DependencyDown):
                    queue.send(after)
            return after
        return worker.step_rejected(command, f"resolved by operator {actor.owner}: {reason}")
    except StaleCommand as exc:
        raise Conflict(
            f"command {command_id} changed meanwhile; look again", subject=command_id
        ) from exc


def resend_by_operator(
    book: Book,
    queue: CommandQueue,
    actor: domain.Actor,
    command_id: str,
    reason: str,
    now: datetime,
) -> Command:
    """An operator's finding that an IN_DOUBT step never reached the registry (its transaction
    id is not there): the step goes back to ACCEPTED and its stored bytes are sent. This is
    the one way a step in doubt is sent again, and it rests on the operator's look at the
    registry: a wrong finding would send a transaction twice (I1)."""
    command = _in_doubt_for(book, actor, command_id)
    observability.event(
        "operator.resend",
        command_id=command_id,
        operator=actor.owner,
        step=command.step,
        reason=reason,
    )
    try:
        after = book.transition(
            command_id,
            Transition(
                expected=CommandStatus.IN_DOUBT,
                target=CommandStatus.ACCEPTED,
                now=now,
                step=command.step,
                changes={"error": None, "lease_until": None},
            ),
        )
    except StaleCommand as exc:
        raise Conflict(
            f"command {command_id} changed meanwhile; look again", subject=command_id
        ) from exc
    with contextlib.suppress(DependencyDown):  # else the reconciler re-drives it
        queue.send(after)
    return after
