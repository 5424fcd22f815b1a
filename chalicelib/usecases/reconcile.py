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
  each repair written to the audit trail. A refused command whose slices are free again stays
  on the list (in both registry modes) until no process that read it open can still be alive
  to take them for it.
- Expiry: certificates older than the configured number of days become unusable.

Each command is settled in isolation, and each of those phases runs whatever the others did:
an error settling one command is logged with its id and reason, counted ("unsettled"), listed
in the report, and after a few such passes written on the command for an operator; the pass
goes on. Otherwise the oldest command the pass cannot settle would end every later pass.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from chalicelib import domain, observability
from chalicelib.domain import TERMINAL_STATUSES, Command, CommandStatus, Conflict, Role
from chalicelib.ports import (
    Book,
    CertificateMoved,
    CommandQueue,
    DependencyDown,
    StaleCommand,
    Transition,
)
from chalicelib.registry.codec import PLAIN, TransactionCodec
from chalicelib.registry.envelope import transaction_id_of
from chalicelib.registry.federation import Registries, RegistriesOf
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
    unsettled: dict[str, str] = field(default_factory=dict)  # command id -> why not settled
    failed_phases: dict[str, str] = field(default_factory=dict)  # phase -> why it stopped

    def count(self, action: str, n: int = 1) -> None:
        self.actions[action] += n


@dataclass
class Reconciler:
    book: Book
    queue: CommandQueue
    # One registry, or a federation's (each command and certificate compared with its own).
    registry: Registry | Registries
    worker: Worker
    clock: Callable[[], datetime]
    redrive_after_s: float = 300.0
    expiry_days: int = 365
    max_commands: int = 500
    lease_s: float = 300.0
    holder: str = field(default_factory=lambda: str(uuid.uuid4()))
    codec: TransactionCodec = PLAIN  # reads stored transactions: the builder's encoding
    # Passes that fail to settle a command before it is marked for an operator.
    unsettled_passes_for_operator: int = 3
    # How long the registry may hold a step PENDING before it is IN_DOUBT, for an operator:
    # the real verifier leaves some malformed transactions PENDING for ever.
    pending_in_doubt_after_s: float = 900.0
    lease: str = LEASE  # a shard's pass has a lease of its own (usecases.shards)
    expiry_limit: int | None = None  # certificates per expiry listing (None: max_commands)

    registries = RegistriesOf("codec")  # `registry` as Registries (one, unless federated)

    def run(self) -> Report:
        now = self.clock()
        report = Report(started_at=now)
        if not self.book.acquire_lease(
            self.lease, self.holder, now, now + timedelta(seconds=self.lease_s)
        ):
            report.count("skipped_lease_held")
            report.finished_at = self.clock()
            return report
        phases: list[tuple[str, Callable[[], None]]] = [
            ("open_commands", lambda: self._open_commands(now, report)),
            ("settled_commands", lambda: self._settled_commands(report)),
            ("expiry", lambda: self._expire(now, report)),
        ]
        try:
            for phase, work in phases:
                try:
                    work()
                except Exception as exc:  # isolation boundary: one phase failing skips no other
                    report.complete = False
                    report.failed_phases[phase] = _reason(exc)
                    report.count("phase_failed")
                    observability.event(
                        "reconciler.phase_failed",
                        logging.ERROR,
                        phase=phase,
                        reason=_reason(exc),
                    )
        finally:
            self.book.release_lease(self.lease, self.holder)
        report.finished_at = self.clock()
        observability.event(
            "reconciler.pass",
            actions=dict(report.actions),
            complete=report.complete,
            unsettled=report.unsettled,
            failed_phases=report.failed_phases,
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
        # The state of the pipeline for the operations dashboard (infra/): a gauge per pass.
        observability.metrics(
            {
                **{f"open_{s.value}": 0 for s in CommandStatus if s not in TERMINAL_STATUSES},
                **Counter(f"open_{c.status.value}" for c in commands),
                "oldest_open_command_s": max(
                    ((now - c.created_at).total_seconds() for c in commands), default=0
                ),
            },
            units={"oldest_open_command_s": "Seconds"},
        )
        for command in commands:
            try:
                report.count(self._settle_open(command, now))
            except StaleCommand:  # a worker (or an operator) moved it since it was listed
                report.count("moved_meanwhile")
            except Exception as exc:  # isolation boundary: one command never ends the pass
                self._unsettled(command, exc, report)

    def _unsettled(self, command: Command, exc: Exception, report: Report) -> None:
        reason = _reason(exc)
        passes = command.unsettled_passes + 1
        report.unsettled[command.command_id] = reason
        report.count("unsettled")
        for_operator = None
        if passes >= self.unsettled_passes_for_operator:
            for_operator = f"the reconciler could not settle it in {passes} passes: {reason}"
            report.count("unsettled_for_operator")
        observability.event(
            "reconciler.unsettled",
            logging.WARNING,
            command_id=command.command_id,
            status=command.status.value,
            passes=passes,
            reason=reason,
        )
        try:
            self.book.note_unsettled(command.command_id, for_operator)
        except Exception as again:  # the same boundary: the next pass counts it instead
            observability.event(
                "reconciler.unsettled_not_noted",
                logging.ERROR,
                command_id=command.command_id,
                reason=_reason(again),
            )

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
        registry = self.registries.of_step(command.transactions, command.step)
        if not registry.supports_queries:
            return self._still_in_doubt(
                command,
                "the registry answers no queries: an "
                "operator must check the registry and resolve it",
            )
        word = registry_word(registry, self.codec, command)
        if word is None:
            return "registry_unreachable"
        status = word.status
        try:
            # The stream is the truth: a duplicate send can make an applied transaction's
            # status read FAILED, and an old one's read UNKNOWN.
            if word.applied or status in (TransactionStatus.COMMITTED, TransactionStatus.FINALIZED):
                commit_step(self.worker, self.queue, command)
                return "resolved_committed"
            if status == TransactionStatus.FAILED:
                self.worker.step_rejected(command, "refused by the registry")
                return "resolved_rejected"
        except StaleCommand:
            return "moved_meanwhile"
        if status == TransactionStatus.PENDING:
            if command.updated_at > self.clock() - timedelta(seconds=self.pending_in_doubt_after_s):
                return "pending"
            return self._still_in_doubt(
                command,
                f"the registry has held the transaction PENDING for more than "
                f"{self.pending_in_doubt_after_s:.0f} s: an operator must look at it",
            )
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
            try:
                self._settled_command(command, checked, report)
            except Exception as exc:  # isolation boundary: the next pass looks at it again
                report.unsettled[command.command_id] = _reason(exc)
                report.count("unsettled")
                observability.event(
                    "reconciler.unsettled",
                    logging.WARNING,
                    command_id=command.command_id,
                    status=command.status.value,
                    reason=_reason(exc),
                )

    def _settled_command(self, command: Command, checked: set[str], report: Report) -> None:
        # A process that read the command while it was open (a retried request, a re-driven
        # message) may still take its holds and die before it lets go: until no such process
        # can be alive (one invocation, shorter than a worker's lease), it stays on the list.
        late_holds_possible = holds.free_again_once_ended(
            command.kind, command.status
        ) and self.clock() - command.updated_at < timedelta(seconds=self.worker.lease_s)
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
                compared = compared and outcome not in ("registry_unreachable", "drift_moved")
        if late_holds_possible:
            report.count("settled_awaiting_late_holds")
        elif compared:  # else the next pass compares its certificates again
            self.book.mark_reconciled(command.command_id)

    def _align(self, certificate_id: str) -> str:
        if not any(registry.supports_queries for _, registry in self.registries):
            return "drift_not_checkable"
        # The book first, then the registry: the repair is written only if the certificate is
        # still at the version read here. Read after the stream, a commit landing in between
        # would be "repaired" back to the stale stream (and audited as drift).
        seen = self.book.get_certificate(certificate_id)
        if seen is None:
            return "aligned"
        registry = self.registries.named(seen.registry)  # each compared with its own
        if not registry.supports_queries:
            return "drift_not_checkable"
        try:
            truth = self.codec.fold(certificate_id, registry.stream(certificate_id))
        except (RegistryUnavailable, RegistryAmbiguous, QueriesNotSupported):
            return "registry_unreachable"
        if truth is None:
            return "drift_unknown_to_registry"
        views = [
            domain.RegistrySliceView(
                ref=s.ref,
                owner=s.owner,
                quantity_wh=s.quantity_wh,
                claimed=s.claimed,
                allocated=s.allocated,
            )
            for s in truth.slices.values()
        ]
        found: list[dict] = []
        unissued = (domain.CertificateStatus.ISSUING, domain.CertificateStatus.REJECTED)
        issuing = self.book.get_command(seen.issue_command) if seen.status in unissued else None
        # An issuance still on its way is in flight, not drift. One that ended (refused, or
        # resolved as not applied) while the registry has the certificate is drift like any
        # other: the registry issued it, so the book does too.
        issue_in_flight = issuing is not None and not issuing.is_terminal

        def repair(cert: domain.Certificate) -> domain.Certificate:
            found.clear()
            if (
                (cert.status in unissued and issue_in_flight)
                or any(s.reserved_by for s in cert.slices.values())
                or cert.withdrawal
            ):
                return cert  # work in flight: its effect is on its way, not drift
            if cert.status in unissued:
                found.append({"action": "issued_in_registry", "book": cert.status.value})
                cert = cert.model_copy(update={"status": domain.CertificateStatus.ACTIVE})
            aligned, repairs = domain.align(cert, views, truth.withdrawn)
            if self._unclaim_in_flight(cert, repairs):
                return cert  # its effect is on its way too (an unclaim holds nothing)
            found.extend(repairs)
            return aligned

        try:
            cert = self.book.update_certificate_at(certificate_id, seen.version, repair)
        except CertificateMoved:  # written since it was read: the next look compares it again
            return "drift_moved"
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

    def _unclaim_in_flight(self, cert: domain.Certificate, repairs: list[dict]) -> bool:
        """Whether a slice the book has claimed, and the registry no longer so (or not as the
        book has it at all: another owner or quantity too, soak seed 740762), is being given
        back by an unclaim still on its way. Repaired now, the slice would no longer be
        claimed in the book, and the unclaim could never be applied or settled. Read only on
        such drift, so an aligned certificate costs nothing more."""
        for entry in repairs:
            if entry["action"] == "claim_state" and entry["claimed"]:
                continue  # claimed in the registry too: no unclaim's doing
            mine = cert.slices.get(entry.get("slice_id", ""))
            if mine is None or mine.state != domain.SliceState.CLAIMED:
                continue
            claim_id = mine.claimed_by
            unclaim = self.book.get_command(domain.unclaim_id_for(claim_id)) if claim_id else None
            if unclaim is not None and not unclaim.is_terminal:
                return True
        return False

    # --- expiry ------------------------------------------------------------------------------

    def _expire(self, now: datetime, report: Report) -> None:
        cutoff = now - timedelta(days=self.expiry_days)
        for back in range(EXPIRY_LOOKBACK_DAYS, -1, -1):
            day = (cutoff - timedelta(days=back)).date()
            limit = self.expiry_limit or self.max_commands
            for certificate_id in self.book.expiring_certificates(day, limit):
                try:
                    action = self._expire_one(certificate_id, cutoff)
                except Exception as exc:  # isolation boundary: the next pass tries it again
                    report.count("expiry_failed")
                    observability.event(
                        "reconciler.expiry_failed",
                        logging.WARNING,
                        certificate_id=certificate_id,
                        reason=_reason(exc),
                    )
                    continue
                if action:
                    report.count(action)

    def _expire_one(self, certificate_id: str, cutoff: datetime) -> str | None:
        # The cutoff is checked on the certificate the write reads: no read before it.
        def expire(cert: domain.Certificate) -> domain.Certificate:
            return domain.expire(cert) if cert.period.start < cutoff else cert

        try:
            after = self.book.update_certificate(certificate_id, expire)
        except domain.NotFound:
            return None
        if after.period.start >= cutoff:
            return None
        return "expired" if after.status == domain.CertificateStatus.EXPIRED else "expiry_deferred"


def _reason(exc: Exception) -> str:
    return f"{type(exc).__name__}: {exc}"


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


@dataclass(frozen=True)
class RegistryWord:
    """What the registry says of a step's transaction, when it can say anything."""

    transaction_id: str
    status: TransactionStatus
    applied: bool  # in the certificate's stream: the truth, whatever the status says

    def __str__(self) -> str:
        return (
            f"the registry reports transaction {self.transaction_id} "
            f"{self.status.value}, and it is {'' if self.applied else 'not '}in the stream"
        )


def registry_word(
    registry: Registry | Registries | None, codec: TransactionCodec, command: Command
) -> RegistryWord | None:
    """The registry's word on the command's current step (asked of the registry its
    transaction names, in a federation); None where it cannot answer."""
    if registry is None or not command.transactions:
        return None
    if isinstance(registry, Registries):
        registry = registry.of_step(command.transactions, command.step)
    if not registry.supports_queries:
        return None
    data = base64.b64decode(command.transactions[command.step])
    transaction_id = transaction_id_of(data)
    try:
        status = registry.status(transaction_id).status
        stream = registry.stream(codec.stream_id(data))
    except (RegistryUnavailable, RegistryAmbiguous, QueriesNotSupported):
        return None
    applied = transaction_id in {transaction_id_of(tx) for tx in stream}
    return RegistryWord(transaction_id, status, applied)


def _check_finding(word: RegistryWord | None, finding: str, command_id: str) -> None:
    """Refuse an operator's finding the registry contradicts: acting on it would send a
    transaction twice (I1) or leave the book against the registry."""
    if word is None:
        return  # the registry cannot answer: the operator's word stands
    contradicted = {
        # Known to the registry at all: it arrived, so sending it again is a second send.
        "not_sent": word.applied or word.status != TransactionStatus.UNKNOWN,
        "rejected": word.applied,
        "committed": not word.applied and word.status != TransactionStatus.PENDING,
    }[finding]
    if contradicted:
        raise Conflict(
            f"command {command_id} cannot be resolved as {finding}: {word}", subject=command_id
        )


def commit_step(worker: Worker, queue: CommandQueue, command: Command) -> Command:
    """A step known to be applied, recorded as the worker would; the next step, if any, goes
    to the worker (a lost send is the reconciler's to re-drive)."""
    after = worker.step_committed(command)
    if after.status == CommandStatus.ACCEPTED:
        with contextlib.suppress(DependencyDown):
            queue.send(after)
    return after


def resolve_by_operator(
    book: Book,
    queue: CommandQueue,
    worker: Worker,
    actor: domain.Actor,
    command_id: str,
    committed: bool,
    reason: str,
    registry: Registry | Registries | None = None,
    codec: TransactionCodec = PLAIN,
) -> Command:
    """An operator's finding on an IN_DOUBT step, applied exactly as the worker would have,
    unless the registry, asked again, contradicts it."""
    command = _in_doubt_for(book, actor, command_id)
    _check_finding(
        registry_word(registry, codec, command),
        "committed" if committed else "rejected",
        command_id,
    )
    observability.event(
        "operator.resolve",
        command_id=command_id,
        operator=actor.owner,
        committed=committed,
        reason=reason,
    )
    try:
        if committed:
            return commit_step(worker, queue, command)
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
    registry: Registry | Registries | None = None,
    codec: TransactionCodec = PLAIN,
) -> Command:
    """An operator's finding that an IN_DOUBT step never reached the registry (its transaction
    id is not there): the step goes back to ACCEPTED and its stored bytes are sent. This is
    the one way a step in doubt is sent again, and it rests on the operator's look at the
    registry: a wrong finding would send a transaction twice (I1). Where the registry answers
    queries, it is asked first, and a transaction it knows is never sent again."""
    command = _in_doubt_for(book, actor, command_id)
    _check_finding(registry_word(registry, codec, command), "not_sent", command_id)
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
