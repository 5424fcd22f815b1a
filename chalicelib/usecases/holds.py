"""What a command holds in the book while it is pending, and how it lets go.

Accepting a command takes its holds (the certificate being issued, the reserved slices, the
withdrawal mark); a rejection releases them. The API takes them when it accepts; the worker
takes them again, idempotently, when a command reaches it without proof that the API finished
(a re-driven command whose accept crashed half-way). One place, so both agree.
"""

from __future__ import annotations

from chalicelib import domain
from chalicelib.domain import (
    Certificate,
    CertificateStatus,
    Command,
    CommandKind,
    DomainError,
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
        issued_by=command.caller,
        issue_command=command.command_id,
        created_at=command.created_at,
    )


def take(book: Book, command: Command) -> None:
    """Take every hold the command needs, or release what was taken and raise the reason."""
    try:
        _take(book, command)
    except DomainError:
        release(book, command)
        raise


def _take(book: Book, command: Command) -> None:
    match command.kind:
        case CommandKind.ISSUE:
            cert = certificate_to_issue(command)
            book.add_certificate(cert)
            book.add_holding(cert.owner, cert)
        case CommandKind.SLICE:
            cert = book.reserve(command.slices[0], command.command_id, command.caller, 1)
            source = cert.slices[command.slices[0].slice_id]
            domain.check_parts(source.quantity_wh, list(command.quantities_wh))
            domain.check_slice_room(cert, len(command.quantities_wh))
        case CommandKind.TRANSFER:
            assert command.quantity_wh is not None and command.receiver is not None
            cert = book.reserve(
                command.slices[0], command.command_id, command.caller, command.quantity_wh
            )
            domain.check_slice_room(cert, 3)
        case CommandKind.CLAIM:
            assert command.quantity_wh is not None
            production = book.reserve(
                command.slices[0], command.command_id, command.caller, command.quantity_wh
            )
            consumption = book.reserve(
                command.slices[1], command.command_id, command.caller, command.quantity_wh
            )
            domain.check_claim_pair(production, consumption)
            domain.check_slice_room(production, 2)
            domain.check_slice_room(consumption, 2)
        case CommandKind.WITHDRAW:
            book.update_certificate(
                command.certificate_id,
                lambda cert: domain.begin_withdrawal(cert, command.command_id),
            )


def release(book: Book, command: Command) -> None:
    """Let go of everything the command holds. Safe to repeat, and to call on a command that
    holds nothing (its holds were never taken, or already released)."""
    if command.kind == CommandKind.ISSUE:
        _abandon_issue(book, command)
        return
    for certificate_id in command.certificate_ids():
        if book.get_certificate(certificate_id) is not None:
            book.update_certificate(
                certificate_id, lambda cert: domain.release(cert, command.command_id)
            )


def _abandon_issue(book: Book, command: Command) -> None:
    """An issuance that will not happen frees the identity (metering point, type, start) so a
    new command may issue it."""

    def abandon(cert: Certificate) -> Certificate:
        if cert.issue_command != command.command_id or cert.status != CertificateStatus.ISSUING:
            return cert
        return cert.model_copy(update={"status": CertificateStatus.REJECTED})

    if book.get_certificate(command.certificate_id) is not None:
        book.update_certificate(command.certificate_id, abandon)
