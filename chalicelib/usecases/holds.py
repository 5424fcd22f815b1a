"""What a command holds in the book while it is pending, and how it lets go.

Accepting a command takes its holds (the certificate being issued, the reserved slices, the
withdrawal mark); a rejection releases them. The API takes them when it accepts; the worker
takes them again, idempotently, when a command reaches it without proof that the API finished
(a re-driven command whose accept crashed half-way). One place, so both agree.
"""

from __future__ import annotations

from collections.abc import Mapping

from chalicelib import domain
from chalicelib.domain import (
    Certificate,
    CertificateStatus,
    Command,
    CommandKind,
    CommandStatus,
    DomainError,
    SliceRef,
)
from chalicelib.ports import Book


def certificate_to_issue(command: Command) -> Certificate:
    spec = command.issue
    assert spec is not None
    return Certificate(
        certificate_id=command.certificate_id,
        type=spec.type,
        gsrn=spec.gsrn,
        grid_area=spec.grid_area,
        period=spec.period,
        quantity_wh=spec.quantity_wh,
        owner=spec.owner,
        attributes=spec.attributes,
        registry=spec.registry,
        issued_by=command.caller,
        issue_command=command.command_id,
        created_at=command.created_at,
    )


def take(
    book: Book,
    command: Command,
    boundary: domain.MatchingBoundary | None = None,
    read: Mapping[str, Certificate] | None = None,
) -> dict[str, Certificate]:
    """Take every hold the command needs, or release what was taken and raise the reason.
    Returns the command's certificates as its holds left them (what the worker builds from).
    `boundary`: the grid areas a claim may match, checked when it is accepted (None: taken
    again later, when that was decided). `read`: the command's certificates as the caller
    has just read them, for the rehearsal (else they are read)."""
    try:
        return _take(book, command, boundary, read)
    except DomainError:
        release(book, command)
        raise


def take_while_open(book: Book, command: Command) -> dict[str, Certificate] | None:
    """`take` for a command read a while ago, which another process may have ended or
    forgotten since (a retried request, a re-driven message); None if it has.

    The command is kept first (`Book.keep_command`, a write that also reads its status): from
    then on the attempt that was refused cannot forget it, so nothing is ever taken for a
    command that is gone. Once its holds are taken it is read again, and if it has ended they
    are let go again. The process that ends a command releases its holds again after its
    terminal write (`release_after_end`), so whichever of the two comes second lets go; a
    crash between the take and that read leaves a refused command holding, which the
    reconciler lets go of (it keeps such commands on its list for a lease): no hold outlives
    its command (I5).

    Refused, it raises the reason and lets go of nothing: another process finishing the same
    command may hold it all by now (holds are by command), so the caller ends the command
    first and then releases (`release`)."""
    status = book.keep_command(command.command_id)
    if status is None or status in domain.TERMINAL_STATUSES:
        return None
    certificates = _take(book, command, None)
    current = book.get_command(command.command_id)
    if current is None or current.is_terminal:
        release(book, command)
        return None
    return certificates


def in_place(book: Book, command: Command) -> bool:
    """Whether the command holds everything `take` would give it (read, not taken)."""
    match command.kind:
        case CommandKind.UNCLAIM:
            return True  # it holds nothing
        case CommandKind.ISSUE:
            cert = book.get_certificate(command.certificate_id)
            return (
                cert is not None
                and cert.issue_command == command.command_id
                and cert.status == CertificateStatus.ISSUING
            )
        case CommandKind.WITHDRAW:
            cert = book.get_certificate(command.certificate_id)
            return cert is not None and cert.withdrawal == command.command_id
        case _:
            found = {c.certificate_id: c for c in book.get_certificates(command.certificate_ids())}
            for ref in command.slices:
                cert = found.get(ref.certificate_id)
                held = cert.slices.get(ref.slice_id) if cert is not None else None
                if held is None or held.reserved_by != command.command_id:
                    return False
            return True


def free_again_once_ended(kind: CommandKind, status: CommandStatus) -> bool:
    """Whether a command that ended so may still be given holds by a process that read it while
    it was open (`take_while_open`) and dies before it reads it again. A refused command's
    slices are free again, and so is a certificate whose withdrawal was refused: such a process
    reserves or marks them for it, and nothing of its own lets go. A committed command's slices
    are spent and its certificate withdrawn (a late take fails); an issuance taken again finds
    its abandoned certificate and leaves it so; an unclaim holds nothing. The reconciler keeps
    such a command on its list until no such process can still be alive."""
    return status == CommandStatus.REJECTED and kind not in (
        CommandKind.ISSUE,
        CommandKind.UNCLAIM,
    )


def _take(
    book: Book,
    command: Command,
    boundary: domain.MatchingBoundary | None,
    read: Mapping[str, Certificate] | None = None,
) -> dict[str, Certificate]:
    match command.kind:
        case CommandKind.ISSUE:
            cert = certificate_to_issue(command)
            book.add_certificate(cert)
            book.add_holding(cert.owner, cert)
            return {cert.certificate_id: cert}
        case CommandKind.UNCLAIM:
            # Nothing to hold: its slice is claimed, which no other command can use, and the
            # registry refuses it if the certificate is withdrawn first.
            return {c.certificate_id: c for c in book.get_certificates(command.certificate_ids())}
        case CommandKind.WITHDRAW:
            cert = book.update_certificate(
                command.certificate_id,
                lambda cert: domain.begin_withdrawal(cert, command.command_id),
            )
            return {cert.certificate_id: cert}
        case _:  # slice, transfer, claim: reserve the slices the command spends
            # Rehearse on the certificates as read first: a command that cannot hold its
            # slices is refused before anything is written, so that a refusal leaves the book
            # as it was (no reservation taken and released, no version bumped). Only a race
            # lost after this read still reserves, then releases.
            found = read
            if found is None:
                found = {
                    c.certificate_id: c for c in book.get_certificates(command.certificate_ids())
                }
            _check(
                command, [_reserved_copy(found, ref, command) for ref in command.slices], boundary
            )
            reserved = [
                book.reserve(ref, command.command_id, command.caller, _least_wh(command))
                for ref in command.slices
            ]
            _check(command, reserved, boundary)
            return {cert.certificate_id: cert for cert in reserved}


def _least_wh(command: Command) -> int:
    """What each slice the command spends must hold at least."""
    if command.kind == CommandKind.SLICE:
        return 1
    assert command.quantity_wh is not None
    return command.quantity_wh


def _reserved_copy(found: dict[str, Certificate], ref: SliceRef, command: Command) -> Certificate:
    cert = found.get(ref.certificate_id)
    if cert is None:
        raise domain.NotFound(
            f"certificate {ref.certificate_id} not found",
            field="certificate_id",
            subject=ref.certificate_id,
        )
    return domain.reserve(cert, ref, command.command_id, command.caller, _least_wh(command))


def _check(
    command: Command,
    reserved: list[Certificate],
    boundary: domain.MatchingBoundary | None = None,
) -> None:
    """The rules the certificates of a command must meet once its slices are reserved."""
    match command.kind:
        case CommandKind.SLICE:
            source = reserved[0].slices[command.slices[0].slice_id]
            domain.check_parts(source.quantity_wh, list(command.quantities_wh))
            domain.check_slice_room(reserved[0], len(command.quantities_wh))
        case CommandKind.TRANSFER:
            domain.check_slice_room(reserved[0], 3)
        case CommandKind.CLAIM:
            production, consumption = reserved
            domain.check_claim_pair(production, consumption, boundary)
            domain.check_slice_room(production, 2)
            domain.check_slice_room(consumption, 2)


def release(book: Book, command: Command) -> None:
    """Let go of everything the command holds. Safe to repeat, and to call on a command that
    holds nothing (its holds were never taken, or already released)."""
    if command.kind == CommandKind.ISSUE:
        _abandon_issue(book, command)
        return
    if command.kind == CommandKind.UNCLAIM:
        return  # it holds nothing
    for certificate_id in command.certificate_ids():
        if book.get_certificate(certificate_id) is not None:
            book.update_certificate(
                certificate_id, lambda cert: domain.release(cert, command.command_id)
            )


def release_after_end(book: Book, command: Command) -> None:
    """After a command's terminal write: release once more what a process that read the
    command while it was open may have taken between the first release and that write (see
    `take_while_open`). Only a withdrawal mark or reservations: an issuance taken again for
    an ended command is abandoned by that process itself."""
    if command.kind != CommandKind.ISSUE:
        release(book, command)


def _abandon_issue(book: Book, command: Command) -> None:
    """An issuance that will not happen frees the identity (metering point, type, start) so a
    new command may issue it."""

    def abandon(cert: Certificate) -> Certificate:
        if cert.issue_command != command.command_id or cert.status != CertificateStatus.ISSUING:
            return cert
        return cert.model_copy(update={"status": CertificateStatus.REJECTED})

    if book.get_certificate(command.certificate_id) is not None:
        book.update_certificate(command.certificate_id, abandon)
