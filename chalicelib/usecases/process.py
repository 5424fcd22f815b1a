"""The worker: send each command's transactions to the registry exactly once, apply the outcome.

The command record is the guard. Before a transaction may leave, one conditional write moves
its command ACCEPTED -> SENDING (at that step), storing the transactions on the first step.
Whoever loses that write sends nothing: a redelivered message, a second worker, a retry.

    ACCEPTED --(guard)--> SENDING --send--> COMMITTED receipt -> next step, or apply + COMMITTED
                             |        \\--> FAILED receipt    -> release + REJECTED
                             |         \\-> PENDING receipt   -> SENT; the message comes
                             |                                 back later to ask the status
                             |-- registry refused the call (nothing sent) -> ACCEPTED, retry
                             |-- registry refused the request as such    -> release + REJECTED
                             |   (a refused batch is sent again one by one to tell which)
                             |-- timeout / broken call (maybe applied)    -> IN_DOUBT
                             `-- worker died: lease expires               -> IN_DOUBT
                                 (or COMMITTED, when the book shows it was applied)

The book's effect of a command is applied before the command is marked COMMITTED, and is
idempotent, so a crash between the two is finished by whoever finds the command next.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import logging
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Protocol

from chalicelib import domain, observability
from chalicelib.domain import Certificate, Command, CommandKind, CommandStatus, DomainError
from chalicelib.ports import (
    Book,
    CommandQueue,
    Delivery,
    DependencyDown,
    Outcome,
    PoisonMessage,
    StaleCommand,
    Transition,
)
from chalicelib.registry.builder import allocation_id_for
from chalicelib.registry.envelope import transaction_id_of
from chalicelib.registry.federation import Registries, RegistriesOf
from chalicelib.registry.port import (
    QueriesNotSupported,
    Receipt,
    Registry,
    RegistryAmbiguous,
    RegistryRefused,
    RegistryUnavailable,
    TransactionStatus,
)
from chalicelib.usecases import holds, unclaims

log = logging.getLogger(__name__)


# SQS's longest visibility timeout is 12 hours; a pending step is the reconciler's long before.
MAX_POSTPONE_S = 300.0

# A step whose outcome is awaited: sent, maybe sent, or in doubt until someone finds out.
_AWAITING_OUTCOME = (CommandStatus.SENDING, CommandStatus.SENT, CommandStatus.IN_DOUBT)


class TransactionBuilder(Protocol):
    def build(self, command: Command, certificates: Mapping[str, Certificate]): ...

    def asks_outside(self, command: Command, certificates: Mapping[str, Certificate]) -> bool:
        """Whether building calls out (a chronicler): then it is worth a read of the book
        first, so that a stale snapshot builds nothing."""
        ...


# Runs independent tasks (a batch's FIFO groups) and returns when every one has run.
SideBySide = Callable[[Sequence[Callable[[], None]]], None]


def one_after_another(tasks: Sequence[Callable[[], None]]) -> None:
    for task in tasks:
        task()


@dataclass
class Worker:
    book: Book
    # One registry, or the registries of a federation (each transaction goes to the one its
    # header names: registry/federation.py).
    registry: Registry | Registries
    builder: TransactionBuilder
    clock: Callable[[], datetime]
    lease_s: float = 120.0
    # A PENDING step's message comes back after this, then after twice as long each time,
    # until the queue's receives run out (then the reconciler asks): nothing sleeps in Lambda.
    commit_check_s: float = 2.0
    batch_size: int = 10
    # With registry queries, 1 in N committed commands stays on the reconciler's list for a
    # drift check of its certificates; the others leave it at their terminal write (settled
    # where they happen). 1: every command is checked.
    drift_check_one_in: int = 1
    # Where the commands a committed command leads to go (a withdrawal's unclaims). None:
    # they wait in the book for the reconciler to re-drive them.
    queue: CommandQueue | None = None
    # Runs the FIFO groups of one batch (independent: other certificates) and returns when
    # all have run. One after another by default; the composition passes a thread pool, so
    # that an invocation's waits on DynamoDB and the registry overlap rather than add up
    # (Lambda bills the wall time). Within a group, records always go one after another.
    run_side_by_side: SideBySide = field(default=one_after_another, repr=False)
    # The certificates each command's transactions were built from, kept for applying its
    # outcome without reading them again (only while this worker follows the command).
    _snapshots: dict[str, dict[str, Certificate]] = field(default_factory=dict, repr=False)

    registries = RegistriesOf()  # `registry` as Registries (one, unless federated)

    # --- a batch of deliveries ---------------------------------------------------------------

    def process(self, deliveries: Sequence[Delivery]) -> list[Outcome]:
        """Process deliveries, each FIFO group's in order (the groups side by side, as
        `run_side_by_side` runs them). Once one of a group must come back, the later ones
        of that group come back too, unprocessed. The steps of all ready commands go to the
        registry together, in calls of at most `batch_size`; a command whose step committed
        at once (or whose sent step was found committed) is ready again at its next step,
        which goes out with the others' in the next round, so that one invocation waits on
        the registry once per round rather than once per step of every command."""
        outcomes: list[Outcome | None] = [None] * len(deliveries)
        first_failure: dict[str, int] = {}  # group -> index of its first record to come back

        def blocked(i: int) -> bool:
            return first_failure.get(deliveries[i].group, i) < i

        def settle(i: int, outcome: Outcome) -> None:
            outcomes[i] = outcome
            if outcome != Outcome.DONE:
                first_failure.setdefault(deliveries[i].group, i)

        prepared: list[Command | None] = [None] * len(deliveries)

        def prepare(i: int) -> None:
            if blocked(i):
                settle(i, Outcome.RETRY)
                return
            result = self._isolated(deliveries[i], self._prepare, deliveries[i])
            if isinstance(result, Command):
                prepared[i] = result
            else:
                settle(i, result)

        self._by_group([d.group for d in deliveries], prepare)
        ready = [(i, command) for i, command in enumerate(prepared) if command is not None]
        while ready:
            next_round: list[tuple[int, Command]] = []
            for start in range(0, len(ready), self.batch_size):
                chunk = []
                for i, command in ready[start : start + self.batch_size]:
                    if blocked(i):  # an earlier record of its group comes back: so must this
                        self._back_to_accepted(
                            command, "an earlier command of its group must retry"
                        )
                        settle(i, Outcome.RETRY)
                    else:
                        chunk.append((i, command))
                sent = self._send_ready(
                    [c for _, c in chunk], [deliveries[i].group for i, _ in chunk]
                )
                for (i, _), result in zip(chunk, sent, strict=True):
                    if isinstance(result, Command):
                        next_round.append((i, result))
                    else:
                        settle(i, result)
            ready = next_round
        return [o or Outcome.RETRY for o in outcomes]

    def _send_ready(self, commands: list[Command], groups: list[str]) -> list[Command | Outcome]:
        """Send the current step of commands this worker holds SENDING, in one call per
        registry, and follow each answer: an outcome, or the command ready at its next step.
        `groups`: each command's FIFO group, whose commands are followed in their order."""
        if not commands:
            return []
        by_registry: dict[str, list[int]] = {}
        for i, command in enumerate(commands):
            by_registry.setdefault(self.registries.name_of(_transaction(command)), []).append(i)
        if len(by_registry) > 1:  # one call per registry: one's trouble stays its own
            outcomes: dict[int, Command | Outcome] = {}
            for indexes in by_registry.values():
                sent = self._send_ready(
                    [commands[i] for i in indexes], [groups[i] for i in indexes]
                )
                outcomes.update(zip(indexes, sent, strict=True))
            return [outcomes[i] for i in range(len(commands))]
        (name,) = by_registry
        registry = self.registries.named(name)
        try:
            receipts = registry.send([_transaction(c) for c in commands])
        except RegistryUnavailable as exc:
            for command in commands:
                self._back_to_accepted(command, f"registry unavailable: {exc}")
            return [Outcome.RETRY] * len(commands)
        except RegistryRefused as exc:
            if len(commands) == 1:
                return [self._reject(commands[0], f"the registry refused it: {exc}")]
            # Refused whole, so nothing of it was applied: each alone tells which one it was.
            return [
                outcome
                for c, g in zip(commands, groups, strict=True)
                for outcome in self._send_ready([c], [g])
            ]
        except RegistryAmbiguous as exc:
            for command in commands:
                self._in_doubt(command, f"the registry call failed after sending ({exc})")
            return [Outcome.DONE] * len(commands)
        followed: list[Command | Outcome] = [Outcome.RETRY] * len(commands)

        def follow(i: int) -> None:
            followed[i] = self._isolated(commands[i], self._follow, commands[i], receipts[i])

        self._by_group(groups, follow)
        return followed

    def _by_group(self, groups: Sequence[str], step: Callable[[int], None]) -> None:
        """`step(i)` for each record i: those of one FIFO group one after another, in their
        order; the groups side by side when `run_side_by_side` lets them (their commands hold
        other certificates, as separate workers would)."""
        chains: dict[str, list[int]] = {}
        for i, group in enumerate(groups):
            chains.setdefault(group, []).append(i)

        def chain(indexes: list[int]) -> None:
            for i in indexes:
                step(i)

        self.run_side_by_side([functools.partial(chain, indexes) for indexes in chains.values()])

    def _isolated(self, subject: Delivery | Command, step: Callable, *args) -> Command | Outcome:
        """Run one record's step so that its failure cannot take the batch's others down.
        A failed record comes back; the guards make doing it again safe."""
        try:
            return step(*args)
        except PoisonMessage as exc:
            observability.event("delivery.poison", reason=str(exc), level=logging.ERROR)
            return Outcome.FAILED
        except Exception:  # a fault of ours or of AWS: this record retries, the others go on
            command_id = getattr(subject, "command_id", None)
            log.exception("processing a command failed", extra={"command_id": command_id})
            return Outcome.FAILED

    def give_up(self, delivery: Delivery, reason: str) -> None:
        """The last receive of a message that keeps failing: it goes to the dead-letter queue.
        A command that never left (ACCEPTED) is rejected so its holds are freed and an operator
        sees why; one that may have left is left to the reconciler's lease rules, and so is a
        claim whose allocation committed."""
        command = self.book.get_command(delivery.command_id)
        if command is None or command.status != CommandStatus.ACCEPTED:
            return
        if domain.claim_stopped_sides(command):
            # Rejecting now would strand what the claim allocated: it stays ACCEPTED, and the
            # reconciler re-drives it, so its remaining steps are sent once they can be.
            observability.event(
                "delivery.given_up_midway",
                logging.WARNING,
                command_id=command.command_id,
                step=command.step,
                reason=reason,
            )
            return
        with contextlib.suppress(StaleCommand):  # it moved on meanwhile: nothing to give up
            self._reject(
                command, f"could not be processed, moved to the dead-letter queue: {reason}"
            )

    # --- one command ---------------------------------------------------------------------------

    def _prepare(self, delivery: Delivery) -> Command | Outcome:
        """Take the guard for the command's current step, or say why not.

        A message from the API carries the command as accepted and the certificates as its
        holds left them: on its first receive the guard itself is the first call to the book,
        and its condition (ACCEPTED, at step 0) says whether the snapshot is still the truth.
        A message received again (a worker died or handed it back) most likely carries a
        command that has moved on, whose step would be built for nothing before the guard
        failed: then, as for a re-driven message (only the id), the command is read first."""
        first_receive = delivery.holds_taken and delivery.receives <= 1
        command = delivery.command if first_receive else None
        if command is None:
            command = self.book.get_command(delivery.command_id)
            if command is None:
                raise PoisonMessage(f"no command {delivery.command_id} in the book")
        for _ in range(3):  # the snapshot may be behind the book: act on what the book says
            try:
                return self._take_step(command, delivery)
            except StaleCommand as moved:
                if moved.current is None:
                    raise PoisonMessage(f"no command {delivery.command_id} in the book") from moved
                command = moved.current
        return Outcome.RETRY

    def _take_step(self, command: Command, delivery: Delivery) -> Command | Outcome:
        now = self.clock()
        match command.status:
            case CommandStatus.COMMITTED | CommandStatus.REJECTED | CommandStatus.IN_DOUBT:
                observability.event(
                    "delivery.duplicate", command_id=command.command_id, status=command.status.value
                )
                return Outcome.DONE
            case CommandStatus.SENT:
                self._remember_snapshot(command, delivery)
                return self._poll(command)
            case CommandStatus.SENDING:
                if command.lease_until and command.lease_until > now:
                    return Outcome.RETRY  # another worker holds it; come back after its lease
                return self.settle_expired_lease(command)
        # ACCEPTED: its current step has certainly not been sent
        if not delivery.holds_taken and not command.transactions:
            try:
                if holds.take_while_open(self.book, command) is None:
                    return Outcome.DONE  # another worker ended it meanwhile
            except DomainError as refused:
                return self._reject(command, refused.detail)
        changes: dict[str, object] = {
            "lease_until": now + timedelta(seconds=self.lease_s),
            "attempts": command.attempts + 1,
        }
        if not command.transactions:
            certificates = self._certificates(command, delivery)
            if command is delivery.command and self.builder.asks_outside(command, certificates):
                # The message's snapshot may be long behind (a redelivery): ask the book, so
                # that a chronicler is asked only for a build that can be stored.
                current = self.book.get_command(command.command_id)
                if current is None or (current.status, current.step, current.transactions) != (
                    command.status,
                    command.step,
                    command.transactions,
                ):
                    raise StaleCommand(current)
            try:
                built = self.builder.build(command, certificates)
            except DomainError as refused:  # e.g. a slice without the secrets to spend it
                return self._reject(command, refused.detail)
            except RegistryUnavailable as exc:  # a chronicler: nothing stored, nothing sent
                observability.event(
                    "command.build_postponed",
                    logging.WARNING,
                    command_id=command.command_id,
                    reason=str(exc),
                )
                return Outcome.RETRY
            except RegistryRefused as exc:  # a chronicler refused the claim intent as such
                return self._reject(command, f"the chronicler refused the claim: {exc}")
            changes["transactions"] = built.transactions
            if built.sealed_slices:
                changes["sealed_slices"] = dict(built.sealed_slices)
            if built.sealed_attributes:
                changes["sealed_attributes"] = dict(built.sealed_attributes)
            self._keep_snapshot(command, certificates)
        # Raises StaleCommand when another worker took this step, or the snapshot was behind.
        # The transactions are stored only if none are yet: a retry sends the first ones.
        return self._move(
            command,
            CommandStatus.ACCEPTED,
            CommandStatus.SENDING,
            changes,
            set_once=frozenset({"transactions", "sealed_slices", "sealed_attributes"}),
            # A build is stored for the incarnation the worker read, without reading it again.
            created_at=command.created_at if "transactions" in changes else None,
        )

    def _remember_snapshot(self, command: Command, delivery: Delivery) -> None:
        """The message's certificates, as the command's holds left them, for applying its
        outcome in this invocation, which may not be the one that built it (a handed-back
        message comes back to any). The command has changed none of them before its outcome,
        and the book's write checks the parts it changes are still as they say."""
        if command.kind == CommandKind.ISSUE or command.command_id in self._snapshots:
            return  # apply_outcome knows an issuance's; one built here kept its own
        carried = _carried(command, delivery)
        if carried is not None:
            self._keep_snapshot(command, carried)

    def _keep_snapshot(self, command: Command, certificates: dict[str, Certificate]) -> None:
        # Not a withdrawal's: its message carries none of the slices it withdraws, so the
        # book's write would fail its check (a charged write) and read anyway.
        if command.kind != CommandKind.WITHDRAW:
            self._snapshots[command.command_id] = certificates

    def _certificates(self, command: Command, delivery: Delivery) -> dict[str, Certificate]:
        """The certificates to build from: the message's snapshot when it has them all (the
        slices a command uses are reserved by it, so they cannot have changed), else read."""
        if command.kind == CommandKind.ISSUE:
            return {command.certificate_id: holds.certificate_to_issue(command)}
        carried = _carried(command, delivery)
        if carried is not None:
            return carried
        return {c.certificate_id: c for c in self.book.get_certificates(command.certificate_ids())}

    def _registry_of(self, command: Command) -> Registry:
        """Where the command's current step goes: the registry its transaction names."""
        return self.registries.of_step(command.transactions, command.step)

    def _follow(self, command: Command, receipt: Receipt) -> Command | Outcome:
        """Act on the registry's receipt for the command's current step (a command: ready at
        its next step, see `_step_committed`)."""
        match receipt.status:
            case TransactionStatus.COMMITTED | TransactionStatus.FINALIZED:
                return self._step_committed(command)
            case TransactionStatus.FAILED:
                return self._reject(command, receipt.message or "refused by the registry")
            case TransactionStatus.PENDING:
                # Asked once while still SENDING (the lease covers it): SENT is written only
                # if the registry has not decided yet, which saves a write when it has.
                return self._poll(command)
        return self._in_doubt(command, f"the registry answered {receipt.status.value}")

    def _poll(self, command: Command) -> Command | Outcome:
        """Ask once how a sent step ended. Still PENDING: the command is SENT and its message
        comes back later (LATER), its certificate's group waiting and no one else; a worker
        never sleeps in Lambda waiting for a block."""
        try:
            receipt = self._registry_of(command).status(_transaction_id(command))
        except QueriesNotSupported:
            return self._in_doubt(
                command, "the registry took the transaction but answers no status queries"
            )
        except (RegistryUnavailable, RegistryAmbiguous):
            self._leave_sent(command)  # ask again when the message comes back
            return Outcome.LATER
        if receipt.status == TransactionStatus.UNKNOWN:
            return self._in_doubt(command, "the registry does not know the transaction")
        if receipt.status != TransactionStatus.PENDING:
            return self._follow(command, receipt)
        observability.event("command.pending", command_id=command.command_id, step=command.step)
        self._leave_sent(command)
        return Outcome.LATER

    def check_again_in(self, receives: int, max_receives: int) -> float | None:
        """How long a LATER message stays away: `commit_check_s`, doubling with each receive.
        None once its receives run out (two are kept so it never reaches the dead-letter
        queue): the message is then deleted and the reconciler settles the SENT command."""
        if receives >= max_receives - 2:
            return None
        return min(self.commit_check_s * 2 ** max(receives - 1, 0), MAX_POSTPONE_S)

    def _leave_sent(self, command: Command) -> None:
        """The registry took the transaction and has not said how it ended: SENT, for the
        reconciler to settle from its status."""
        if command.status == CommandStatus.SENDING:
            self._move(command, CommandStatus.SENDING, CommandStatus.SENT, {})

    def _step_committed(self, command: Command) -> Command | Outcome:
        """The current step committed: the command is COMMITTED if it was the last, else it is
        returned ready to send its next step (with the other ready commands' steps). One write
        records the step committed and takes the guard for the next (SENDING at the next step,
        under a new lease; the step guard makes it this worker's), instead of ACCEPTED at the
        next step and then SENDING: a write and its feed position less per step. A crash
        between that write and the send leaves what a crash after any guard leaves: SENDING,
        settled when its lease runs out."""
        if command.step + 1 == len(command.transactions):
            self._settle_step(command)
            return Outcome.DONE
        try:
            sending = self._move(
                command,
                (CommandStatus.SENDING, CommandStatus.SENT),
                CommandStatus.SENDING,
                {
                    "step": command.step + 1,
                    "error": None,
                    "lease_until": self.clock() + timedelta(seconds=self.lease_s),
                },
            )
        except StaleCommand:
            # The reconciler or an operator settled the step meanwhile (ACCEPTED at the next),
            # or another delivery took it on: the message comes back and is met by the
            # command as it is then (a re-drive would come only after minutes).
            return Outcome.RETRY
        return sending

    def _settle_step(self, command: Command) -> Command:
        """ACCEPTED at the next step, or the outcome applied and COMMITTED: the command as the
        book answered the write (no read again)."""
        if command.step + 1 < len(command.transactions):
            return self._move(
                command,
                _AWAITING_OUTCOME,
                CommandStatus.ACCEPTED,
                {"step": command.step + 1, "error": None},
            )
        now = self.clock()  # the receiver's copy carries the time the command commits at
        owed = apply_outcome(self.book, command, self._snapshots.pop(command.command_id, None), now)
        committed = self._move(
            command,
            _AWAITING_OUTCOME,
            CommandStatus.COMMITTED,
            {"lease_until": None, "error": None},
            now=now,
        )
        self._send_owed(owed)
        return committed

    def _send_owed(self, owed: list[Command]) -> None:
        """Queue what a committed command leads to. A send that fails (or a worker without a
        queue) leaves them ACCEPTED in the book, where the reconciler re-drives them."""
        if self.queue is None:
            return
        for command in owed:
            try:
                self.queue.send(command)
            except DependencyDown as exc:
                observability.event(
                    "command.follow_up_not_queued",
                    logging.WARNING,
                    command_id=command.command_id,
                    reason=str(exc),
                )

    def step_committed(self, command: Command) -> Command:
        """The registry (or an operator) says the current step committed: apply it as the
        worker would have. Returns the command after, ACCEPTED again if steps remain."""
        return self._settle_step(command)

    def step_rejected(self, command: Command, reason: str) -> Command:
        self._reject(command, reason)
        return self.book.get_command(command.command_id) or command

    def settle_expired_lease(self, command: Command) -> Outcome:
        """A SENDING command whose worker died. Its transaction may have left: never resend.
        If the book already shows the command applied, only the last write was lost."""
        if is_applied(self.book, command):
            now = self.clock()
            # every certificate (a claim: two)
            owed = apply_outcome(self.book, command, committed_at=now)
            self._move(
                command,
                CommandStatus.SENDING,
                CommandStatus.COMMITTED,
                {"lease_until": None},
                now=now,
            )
            self._send_owed(owed)
        else:
            self._in_doubt(
                command,
                f"the worker sending step {command.step + 1} of "
                f"{len(command.transactions)} stopped before it learned "
                "the outcome",
            )
        return Outcome.DONE

    # --- state changes -------------------------------------------------------------------------

    def _move(
        self,
        command: Command,
        expected: CommandStatus | tuple[CommandStatus, ...],
        target: CommandStatus,
        changes: dict[str, object],
        reason: str | None = None,
        set_once: frozenset[str] = frozenset(),
        now: datetime | None = None,
        created_at: datetime | None = None,
    ) -> Command:
        moved = self.book.transition(
            command.command_id,
            Transition(
                expected=expected,
                target=target,
                now=now or self.clock(),
                step=command.step,
                changes=changes,
                set_once=set_once,
                created_at=created_at,
                # Without registry queries the reconciler cannot compare a settled command's
                # certificates with the registry: the terminal write takes it off its list,
                # unless a late process may still take holds for it (the reconciler lets go).
                reconciled=not holds.free_again_once_ended(command.kind, target)
                and (
                    not self.registries.any_supports_queries(command.transactions)
                    or (
                        target == CommandStatus.COMMITTED
                        and not drift_checked(command.command_id, self.drift_check_one_in)
                    )
                ),
            ),
        )
        observability.transition(
            command.command_id,
            command.certificate_id,
            command.status.value,
            target.value,
            reason,
            step=moved.step,
        )
        return moved

    def _back_to_accepted(self, command: Command, reason: str) -> None:
        self._move(
            command, CommandStatus.SENDING, CommandStatus.ACCEPTED, {"lease_until": None}, reason
        )

    def _in_doubt(self, command: Command, reason: str) -> Outcome:
        self._move(
            command,
            (CommandStatus.SENDING, CommandStatus.SENT),
            CommandStatus.IN_DOUBT,
            {"error": f"{reason}; resolve it with the registry's status, or as an operator"},
            reason,
        )
        return Outcome.DONE

    def _reject(self, command: Command, reason: str) -> Outcome:
        changes: dict[str, object] = {"lease_until": None}
        stranded: tuple[domain.StrandedAllocation, ...] = ()
        if command.step > 0:
            stranded = apply_partial(self.book, command)
            reason = (
                f"step {command.step + 1} of {len(command.transactions)} refused by the "
                f"registry: {reason}; the steps before it are in the book"
            )
        if stranded:
            reason += "".join(f"; {stranded_reason(s)}" for s in stranded)
            changes["stranded"] = stranded
            # Listed for operators before the terminal write: a crash between the two leaves
            # the command open, and so in the stuck list anyway.
            self.book.note_stranded(command)
        changes["error"] = reason
        holds.release(self.book, command)
        expected = (CommandStatus.ACCEPTED, *_AWAITING_OUTCOME)
        self._move(command, expected, CommandStatus.REJECTED, changes, reason)
        if stranded:
            self._count_stranded(command, stranded)
        # A retried request (or a re-driven message) that read the command while it was open
        # may have reserved again between the release and the terminal write.
        holds.release_after_end(self.book, command)
        return Outcome.DONE

    def _count_stranded(
        self, command: Command, stranded: tuple[domain.StrandedAllocation, ...]
    ) -> None:
        for allocation in stranded:
            observability.event(
                "claim.stranded",
                logging.WARNING,
                command_id=command.command_id,
                **allocation.model_dump(mode="json"),
            )
        observability.metrics({"stranded_allocations": len(stranded)})


def stranded_reason(allocation: domain.StrandedAllocation) -> str:
    return (
        f"stranded: the {allocation.side.value} allocation {allocation.allocation_id} of slice "
        f"{allocation.slice_id} (certificate {allocation.certificate_id}) committed in "
        f"transaction {allocation.transaction_id} and cannot be undone: the registry holds "
        "the slice allocated for good, and it cannot be used"
    )


def drift_checked(command_id: str, one_in: int) -> bool:
    """Whether this committed command is one of the sample left for a drift check: the same
    answer on every worker and every redelivery (a hash of the id, not a coin)."""
    return one_in <= 1 or zlib.crc32(command_id.encode()) % one_in == 0


def _transaction(command: Command) -> bytes:
    return base64.b64decode(command.transactions[command.step])


def _transaction_id(command: Command) -> str:
    return transaction_id_of(_transaction(command))


def _carried(command: Command, delivery: Delivery) -> dict[str, Certificate] | None:
    """The command's certificates as its message carries them (as its holds left them), or
    None when the message does not carry them all."""
    wanted = command.certificate_ids()
    known = delivery.certificates
    if known and all(c in known for c in wanted):
        return {c: known[c] for c in wanted}
    return None


# --- the command's effect on the book (also used by the reconciler and operators) ------------


def apply_outcome(
    book: Book,
    command: Command,
    snapshots: Mapping[str, Certificate] | None = None,
    committed_at: datetime | None = None,
) -> list[Command]:
    """Write a committed command's effect into the book, the new slices' registry names and
    sealed secrets with it: one change per certificate. Idempotent. With `snapshots` (the
    certificates as the worker built from them) the book writes only what changes, without
    reading first. `committed_at`, the time the caller then marks the command COMMITTED at,
    is the receiver's copy's `updated_at` (a transfer), so both lists show one time.
    Returns the commands it leads to, recorded in the book and still to be queued: a
    withdrawal's unclaims."""
    snapshots = dict(snapshots or {})
    if command.kind == CommandKind.ISSUE:
        # Nothing but its issuance writes a certificate being issued: it is as accepted, and
        # the write needs no read, even in a worker that did not build it (a handed-back
        # message lands anywhere). If it is not, the book reads it and decides again.
        snapshots.setdefault(command.certificate_id, holds.certificate_to_issue(command))

    def sealed(cert: Certificate) -> Certificate:
        return domain.attach_seals(cert, command) if _has_seals(command) else cert

    def change(certificate_id: str, effect: Callable[[Certificate], Certificate]) -> Certificate:
        return book.update_certificate(
            certificate_id, lambda c: sealed(effect(c)), snapshots.get(certificate_id)
        )

    match command.kind:
        case CommandKind.ISSUE:
            change(command.certificate_id, lambda c: domain.apply_issue(c, command))
        case CommandKind.SLICE:
            change(command.certificate_id, lambda c: domain.apply_slice(c, command))
        case CommandKind.TRANSFER:
            assert command.receiver is not None

            def transferred(cert: Certificate) -> Certificate:
                source = cert.slices[command.slices[0].slice_id]
                if domain.is_partial_transfer(command, source.quantity_wh):
                    cert = domain.apply_slice(cert, command)
                return domain.apply_transfer(cert, command)

            cert = change(command.certificate_id, transferred)
            book.add_holding(command.receiver, cert)
            # The receiver's copy is written once, as it will stay: committed.
            book.note_receipt(
                command.model_copy(
                    update={
                        "status": CommandStatus.COMMITTED,
                        "updated_at": committed_at or command.updated_at,
                    }
                )
            )
        case CommandKind.CLAIM:
            for ref in command.slices:
                change(
                    ref.certificate_id, lambda c, ref=ref: domain.apply_claim_side(c, command, ref)
                )
        case CommandKind.WITHDRAW:
            change(command.certificate_id, lambda c: domain.apply_withdraw(c, command))
            return unclaims.record_unclaims(book, command, committed_at or command.updated_at)
        case CommandKind.UNCLAIM:
            change(command.certificate_id, lambda c: domain.apply_unclaim(c, command))
    return []


def attach_seals(book: Book, command: Command) -> None:
    """The new slices' registry names and sealed secrets, from the command onto the slices."""
    if _has_seals(command):
        for certificate_id in command.certificate_ids():
            book.update_certificate(certificate_id, lambda c: domain.attach_seals(c, command))


def _has_seals(command: Command) -> bool:
    return bool(command.sealed_slices or command.sealed_attributes)


def apply_partial(book: Book, command: Command) -> tuple[domain.StrandedAllocation, ...]:
    """A multi-step command refused after its first steps committed: keep what the registry
    did. For a partial transfer that is the cut (the owner keeps both parts); for a claim, the
    cuts it made before allocating (a registry that answers no queries cannot tell the
    reconciler about them), and each side's slice as its allocation and claim left it: an
    allocation that committed cannot be undone, so that slice is ALLOCATED for good (or
    CLAIMED, where that side's claim committed). Returns the allocations it left stranded."""
    if command.kind == CommandKind.TRANSFER and command.step >= 1:
        book.update_certificate(command.certificate_id, lambda c: domain.apply_slice(c, command))
    stranded: list[domain.StrandedAllocation] = []
    if command.kind == CommandKind.CLAIM:
        # The builder cuts each side whose slice holds more than the claim, in side order,
        # before anything else: the first `step` of those cuts committed.
        cut = _claim_cuts(book, command)[: command.step]
        stopped = domain.claim_stopped_sides(command)
        for side, ref in enumerate(command.slices):
            state = stopped.get(side)
            if ref not in cut and state is None:
                continue

            def change(c: Certificate, ref=ref, state=state) -> Certificate:
                if ref in cut:  # one write with the state: the part is never free meanwhile
                    c = domain.apply_claim_cut(c, command, ref)
                return domain.apply_claim_stopped(c, command, ref, state) if state else c

            cert = book.update_certificate(ref.certificate_id, change)
            if state == domain.SliceState.ALLOCATED:
                stranded.append(_stranded(command, side, ref, cert))
    attach_seals(book, command)
    return tuple(stranded)


def _stranded(
    command: Command, side: int, ref: domain.SliceRef, cert: Certificate
) -> domain.StrandedAllocation:
    step = domain.claim_allocation_step(command) + side
    return domain.StrandedAllocation(
        side=domain.CertificateType.PRODUCTION if side == 0 else domain.CertificateType.CONSUMPTION,
        certificate_id=ref.certificate_id,
        slice_id=domain.claimed_slice_id(command, ref, cert.slices[ref.slice_id].quantity_wh),
        allocation_id=allocation_id_for(command),
        transaction_id=transaction_id_of(base64.b64decode(command.transactions[step])),
    )


def _claim_cuts(book: Book, command: Command) -> list[domain.SliceRef]:
    cuts = []
    for ref in command.slices:
        cert = book.get_certificate(ref.certificate_id)
        source = cert.slices.get(ref.slice_id) if cert is not None else None
        if source is not None and source.quantity_wh != command.quantity_wh:
            cuts.append(ref)
    return cuts


def is_applied(book: Book, command: Command) -> bool:
    cert = book.get_certificate(command.certificate_id)
    if cert is None:
        return False
    if command.kind == CommandKind.SLICE:
        return domain.slice_id_for(command.command_id, 0) in cert.slices
    return command.command_id in cert.applied
