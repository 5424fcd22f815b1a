"""Accepting commands: record each exactly once, take its holds, then queue it.

The order of the writes is the design:

1. Record the command. Its id is derived from (caller, Idempotency-Key), so the conditional
   put of the command IS the idempotency guard: a replay lands on the same record.
2. Take its holds (conditional writes on the certificates). If refused, release and forget the
   command: a refused request leaves the book as it was.
3. Queue it on its certificate's FIFO group. If that fails, the command stays ACCEPTED in the
   book, which is the outbox: the reconciler re-drives it. The client still gets 202.

A crash between 1 and 2 leaves an ACCEPTED command without holds; the worker takes them before
it sends anything (see holds.take), so nothing is lost and nothing is spent twice.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from chalicelib import domain
from chalicelib.domain import (
    Actor,
    Certificate,
    Command,
    CommandKind,
    CommandStatus,
    Conflict,
    DomainError,
    IssueSpec,
    Role,
    SliceRef,
)
from chalicelib.ports import (
    Book,
    CommandQueue,
    DependencyDown,
    DuplicateCommand,
    Outgoing,
    StaleCommand,
    Transition,
)
from chalicelib.usecases import holds

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Request:
    """What every write carries besides its body."""

    actor: Actor
    idempotency_key: str
    body_hash: str
    now: datetime
    # How long an API invocation may run (its Lambda timeout): until a command is this old,
    # the request that recorded it may still be at work on it (see `_replay`).
    attempt_timeout: timedelta


def _new_command(
    request: Request,
    kind: CommandKind,
    certificate_id: str,
    *,
    index: int = 0,
    body_hash: str | None = None,
    **fields,
) -> Command:
    return Command(
        command_id=domain.command_id_for(request.actor.owner, request.idempotency_key, index),
        kind=kind,
        certificate_id=certificate_id,
        caller=request.actor.owner,
        request_hash=body_hash or request.body_hash,
        created_at=request.now,
        updated_at=request.now,
        **fields,
    )


def record(
    book: Book,
    queue: CommandQueue,
    command: Command,
    attempt_timeout: timedelta,
    boundary: domain.MatchingBoundary | None = None,
    read: Mapping[str, Certificate] | None = None,
) -> Command:
    """Steps 1-3 above. Returns the command to answer with (the first one, on a replay).
    `attempt_timeout`: the request's (`Request.attempt_timeout`); `boundary`: a claim's
    matching boundary, and `read`: its certificates as just read (holds.take)."""
    try:
        book.add_command(command)
    except DuplicateCommand as dup:
        return _replay(book, queue, command, dup.existing, attempt_timeout)
    try:
        certificates = holds.take(book, command, boundary, read)
    except DomainError:
        # Only this attempt takes holds for the command while it may run (`_replay`), so what
        # the let-go above released was its own.
        if book.forget_command(command):
            raise  # nothing can be taken for it now: a retry keeps a command before it takes
        # Not forgotten: a retry found all its holds in place before the let-go and kept the
        # command, answering that it is accepted. Finish it as a replay would: it is refused
        # with the reason if its holds still cannot be taken.
        current = book.get_command(command.command_id)
        if current is None:
            raise
        return _finish(book, queue, command, current)
    enqueue(queue, command, certificates)
    return command


# Between the clocks of two API invocations, with room to spare.
_CLOCK_SKEW = timedelta(seconds=1)


def _replay(
    book: Book, queue: CommandQueue, command: Command, first: Command, attempt_timeout: timedelta
) -> Command:
    if first.request_hash != command.request_hash:
        raise Conflict(
            "this Idempotency-Key was used with another request body",
            field="Idempotency-Key",
            subject=first.command_id,
        )
    if first.status != CommandStatus.ACCEPTED or first.attempts:
        return first  # the worker has it: the first answer stands
    if command.created_at < first.created_at + attempt_timeout + _CLOCK_SKEW:
        # The request that recorded it may still be at work: taking or letting go of holds
        # beside it would mix the two (holds are by command, so its refusal would let go of
        # what this one took). Answer only if it has taken them all; else it is not done.
        return _answer_while_the_first_may_run(book, first, command.created_at, attempt_timeout)
    # The first attempt is surely over, and may have stopped before taking its holds or
    # queueing: finish it.
    return _finish(book, queue, command, first)


def _answer_while_the_first_may_run(
    book: Book, first: Command, now: datetime, attempt_timeout: timedelta
) -> Command:
    if not holds.in_place(book, first):
        current = _stored(book, first)
        if current.status != CommandStatus.ACCEPTED or current.attempts:
            return current  # a worker took it meanwhile (and may have let go of its holds)
        wait = max(
            1, math.ceil((first.created_at + attempt_timeout + _CLOCK_SKEW - now).total_seconds())
        )
        raise domain.StillRunning(
            "a request with this Idempotency-Key is still being processed: send it again"
            f" in {wait} seconds",
            retry_after_s=wait,
            field="Idempotency-Key",
            subject=first.command_id,
        )
    # Kept, so that the first attempt, should it yet be refused (a check after its
    # reservations), cannot forget the command this answer names: it refuses it instead.
    status = book.keep_command(first.command_id)
    if status is None:
        raise _refused_meanwhile(first)
    return first if status == CommandStatus.ACCEPTED else _stored(book, first)


def _finish(book: Book, queue: CommandQueue, command: Command, first: Command) -> Command:
    """Take the holds of a command read earlier and queue it, or refuse it with the reason.
    The command was read before, and a worker may have ended it since: holds are taken only
    for a command still open (I5)."""
    try:
        certificates = holds.take_while_open(book, first)
    except DomainError as refused:
        # Refused first, let go after: another process finishing the same command (a second
        # retry, a re-driven message) may hold it all and have queued it, and a let-go before
        # the terminal write would leave a worker free to send it without its holds.
        try:
            rejected = book.transition(
                first.command_id,
                Transition(
                    expected=CommandStatus.ACCEPTED,
                    target=CommandStatus.REJECTED,
                    now=command.updated_at,
                    changes={"error": refused.detail},
                ),
            )
        except StaleCommand:  # a worker moved it meanwhile: its holds are its own
            return _stored(book, first)
        holds.release(book, rejected)
        return rejected
    if certificates is None:  # it ended meanwhile: answer with what is stored
        return _stored(book, first)
    enqueue(queue, first, certificates)
    return first


def _stored(book: Book, first: Command) -> Command:
    """The command as stored, for a replay that found it moved on; gone: the first attempt was
    refused and forgot it while this one ran, and nothing is recorded."""
    current = book.get_command(first.command_id)
    if current is None:
        raise _refused_meanwhile(first)
    return current


def _refused_meanwhile(first: Command) -> Conflict:
    return Conflict(
        "the first request with this Idempotency-Key was refused while this one ran, "
        "and nothing was recorded: send it again",
        field="Idempotency-Key",
        subject=first.command_id,
    )


def enqueue(
    queue: CommandQueue, command: Command, certificates: dict[str, Certificate] | None = None
) -> None:
    try:
        queue.send(command, certificates=certificates)
    except DependencyDown:
        _left_to_redrive(command)


def _left_to_redrive(command: Command) -> None:
    # The book is the outbox: the reconciler re-drives ACCEPTED commands that lost their
    # message, so the client's 202 stands.
    log.warning(
        "queueing failed; the reconciler will re-drive", extra={"command_id": command.command_id}
    )


# --- one function per write of the API ------------------------------------------------------


def issue(
    book: Book,
    queue: CommandQueue,
    request: Request,
    spec: IssueSpec,
    registry_of: RegistryOf | None = None,
) -> Command:
    """`registry_of`: the registry a grid area's certificates are issued in (settings)."""
    request.actor.require(Role.ISSUER)
    request.actor.require_grid_area(spec.grid_area)
    spec = in_registry(spec, registry_of)
    certificate_id = domain.certificate_id_for(spec.gsrn, spec.type, spec.period.start)
    command = _new_command(request, CommandKind.ISSUE, certificate_id, issue=spec)
    return record(book, queue, command, request.attempt_timeout)


RegistryOf = Callable[[str], str | None]


def in_registry(spec: IssueSpec, registry_of: RegistryOf | None) -> IssueSpec:
    """The spec with the registry its grid area's certificates are issued in; without
    `registry_of`, the service's one registry (None)."""
    if registry_of is None:
        return spec
    registry = registry_of(spec.grid_area)
    if registry is None:
        raise domain.RuleViolation(
            f"no registry issues certificates of grid area {spec.grid_area}", field="grid_area"
        )
    return spec.model_copy(update={"registry": registry})


@dataclass(frozen=True)
class BatchItem:
    index: int
    command: Command | None = None
    error: DomainError | None = None


def issue_batch(
    book: Book,
    queue: CommandQueue,
    request: Request,
    specs: Sequence[IssueSpec | DomainError],
    registry_of: RegistryOf | None = None,
) -> list[BatchItem]:
    """One command per certificate; an item refused (or invalid) does not stop the others.
    Their messages go to the queue together once every item is recorded (ten to a call): a
    crash before leaves them ACCEPTED in the book, the outbox the reconciler re-drives."""
    request.actor.require(Role.ISSUER)
    _refuse_a_reused_key(book, request, specs)
    outbox = _Outbox()
    results = []
    try:
        for index, spec in enumerate(specs):
            if isinstance(spec, DomainError):
                results.append(BatchItem(index=index, error=spec))
                continue
            try:
                request.actor.require_grid_area(spec.grid_area)
                spec = in_registry(spec, registry_of)
            except DomainError as refused:
                results.append(BatchItem(index=index, error=refused))
                continue
            certificate_id = domain.certificate_id_for(spec.gsrn, spec.type, spec.period.start)
            command = _new_command(
                request,
                CommandKind.ISSUE,
                certificate_id,
                index=index,
                body_hash=domain.request_hash([request.body_hash, index]),
                issue=spec,
            )
            try:
                recorded = record(book, outbox, command, request.attempt_timeout)
                results.append(BatchItem(index=index, command=recorded))
            except DomainError as refused:
                results.append(BatchItem(index=index, error=refused))
    finally:  # what was recorded is queued, even if the book failed at a later item
        _send_all(queue, outbox.messages)
    return results


class _Outbox:
    """What `record` queues for a batch's items, kept to be sent together."""

    def __init__(self) -> None:
        self.messages: list[Outgoing] = []

    def send(
        self,
        command: Command,
        holds_taken: bool = True,
        certificates: dict[str, Certificate] | None = None,
    ) -> None:
        self.messages.append((command, certificates))

    def send_many(self, messages: Sequence[Outgoing]) -> list[Command]:
        self.messages += messages
        return []


def _send_all(queue: CommandQueue, messages: list[Outgoing]) -> None:
    if not messages:
        return
    try:
        unsent = queue.send_many(messages)
    except DependencyDown:
        unsent = [command for command, _ in messages]
    for command in unsent:
        _left_to_redrive(command)


def _refuse_a_reused_key(
    book: Book, request: Request, specs: Sequence[IssueSpec | DomainError]
) -> None:
    """The same key with another batch is refused whole (409), like any other request, before
    any item is recorded: the first item that is valid is looked up under the key."""
    first = next((i for i, spec in enumerate(specs) if not isinstance(spec, DomainError)), None)
    if first is None:
        return
    recorded = book.get_command(
        domain.command_id_for(request.actor.owner, request.idempotency_key, first)
    )
    if recorded is not None and recorded.request_hash != domain.request_hash(
        [request.body_hash, first]
    ):
        raise Conflict(
            "this Idempotency-Key was used with another request body",
            field="Idempotency-Key",
            subject=recorded.command_id,
        )


def slice_certificate(
    book: Book, queue: CommandQueue, request: Request, ref: SliceRef, quantities_wh: Sequence[int]
) -> Command:
    return record(
        book,
        queue,
        _new_command(
            request,
            CommandKind.SLICE,
            ref.certificate_id,
            slices=(ref,),
            quantities_wh=tuple(quantities_wh),
        ),
        request.attempt_timeout,
    )


def transfer(
    book: Book,
    queue: CommandQueue,
    request: Request,
    ref: SliceRef,
    receiver: str,
    quantity_wh: int,
) -> Command:
    if receiver == request.actor.owner:
        raise domain.RuleViolation(
            "a slice cannot be transferred to its own owner", field="receiver"
        )
    return record(
        book,
        queue,
        _new_command(
            request,
            CommandKind.TRANSFER,
            ref.certificate_id,
            slices=(ref,),
            receiver=receiver,
            quantity_wh=quantity_wh,
        ),
        request.attempt_timeout,
    )


def claim(
    book: Book,
    queue: CommandQueue,
    request: Request,
    production: SliceRef,
    consumption: SliceRef,
    quantity_wh: int,
    expiry: timedelta | None = None,
    expiry_margin: timedelta = domain.CLAIM_EXPIRY_MARGIN,
    boundary: domain.MatchingBoundary | None = None,
) -> Command:
    """`boundary`: the grid areas a claim may match (settings.matching_boundary); decided when
    the claim is accepted, as the expiry margin is."""
    if production.certificate_id == consumption.certificate_id:
        raise domain.RuleViolation(
            "a claim matches two different certificates", field="consumption.certificate_id"
        )
    # The production certificate's FIFO group carries the claim: the registry wants the
    # production side first. The consumption side is protected by its reservation.
    command = _new_command(
        request,
        CommandKind.CLAIM,
        production.certificate_id,
        slices=(production, consumption),
        quantity_wh=quantity_wh,
    )
    # One read of the pair, for the expiry margin and for the holds' rehearsal after it.
    read = {c.certificate_id: c for c in book.get_certificates(command.certificate_ids())}
    if expiry is not None:
        _check_in_time(book, command, read, expiry, expiry_margin)
    return record(book, queue, command, request.attempt_timeout, boundary or {}, read)


def _check_in_time(
    book: Book,
    command: Command,
    read: Mapping[str, Certificate],
    expiry: timedelta,
    margin: timedelta,
) -> None:
    """Before the claim is recorded, so that every claim recorded was in time when accepted
    (a retry, or the worker, may finish it long after). A replay of a claim accepted earlier
    is no new claim: it is answered as the first was, however late it comes."""
    production, consumption = command.slices
    pair = read.get(production.certificate_id), read.get(consumption.certificate_id)
    if pair[0] is None or pair[1] is None:
        return  # holds.take answers NotFound
    try:
        domain.check_claim_in_time(pair[0], pair[1], command.created_at, expiry, margin)
    except domain.RuleViolation:
        if book.get_command(command.command_id) is None:
            raise


def withdraw(book: Book, queue: CommandQueue, request: Request, certificate_id: str) -> Command:
    request.actor.require(Role.ISSUER)
    cert = book.get_certificate(certificate_id)
    if cert is None:
        raise domain.NotFound(
            f"certificate {certificate_id} not found",
            field="certificate_id",
            subject=certificate_id,
        )
    request.actor.require_grid_area(cert.grid_area)
    command = _new_command(request, CommandKind.WITHDRAW, certificate_id)
    return record(book, queue, command, request.attempt_timeout)
