"""Certificates, commands and snapshots for the domain, contract, use-case and API tests.

Everything is built the way the service builds it (ids derived by the domain, certificates
issued by an issue command), so a test reads as the story it tells and not as its set-up.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from chalicelib import domain
from chalicelib.domain import (
    Certificate,
    CertificateType,
    Command,
    CommandKind,
    IssueSpec,
    Period,
    Slice,
    SliceRef,
)
from chalicelib.ports import Book, Transition
from chalicelib.usecases import holds

T0 = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
# The API function's timeout in the deployed stages (accept.Request.attempt_timeout).
API_TIMEOUT = timedelta(seconds=25)
HOUR_START = datetime(2026, 6, 1, 10, 0, tzinfo=UTC)
ISSUER = "issuer-dk"
GSRN = "571234567890123456"


def period(start: datetime = HOUR_START, minutes: int = 60) -> Period:
    return Period.of(start, start + timedelta(minutes=minutes))


def gsrn(n: int) -> str:
    """The n-th metering point of the tests: 18 digits."""
    return f"5712345678{n:08d}"


def issue_spec(
    *,
    owner: str = "alice",
    type_: CertificateType = CertificateType.PRODUCTION,
    grid_area: str = "DK1",
    quantity_wh: int = 1000,
    start: datetime = HOUR_START,
    minutes: int = 60,
    meter: str = GSRN,
) -> IssueSpec:
    return IssueSpec(
        type=type_,
        gsrn=meter,
        grid_area=grid_area,
        period=period(start, minutes),
        quantity_wh=quantity_wh,
        owner=owner,
        attributes={"technology": "T010000"},
    )


def command(
    kind: CommandKind,
    certificate_id: str,
    *,
    caller: str = "alice",
    key: str = "key-1",
    now: datetime = T0,
    body_hash: str = "hash-1",
    **fields: Any,
) -> Command:
    return Command(
        command_id=domain.command_id_for(caller, key),
        kind=kind,
        certificate_id=certificate_id,
        caller=caller,
        request_hash=body_hash,
        created_at=now,
        updated_at=now,
        **fields,
    )


def issue_command(spec: IssueSpec | None = None, *, key: str = "issue-1", **fields) -> Command:
    spec = spec or issue_spec()
    certificate_id = domain.certificate_id_for(spec.gsrn, spec.type, spec.period.start)
    return command(CommandKind.ISSUE, certificate_id, caller=ISSUER, key=key, issue=spec, **fields)


def issuing_certificate(spec: IssueSpec | None = None, *, key: str = "issue-1") -> Certificate:
    """A certificate as the API records it: accepted, not yet committed by the registry."""
    return holds.certificate_to_issue(issue_command(spec, key=key))


def active_certificate(spec: IssueSpec | None = None, *, key: str = "issue-1") -> Certificate:
    """A certificate the registry has issued: ACTIVE, with one slice holding all of it."""
    issue = issue_command(spec, key=key)
    return domain.apply_issue(holds.certificate_to_issue(issue), issue)


def only_slice(cert: Certificate) -> Slice:
    (found,) = cert.slices.values()
    return found


def ref_of(cert: Certificate, slice_: Slice | None = None) -> SliceRef:
    return SliceRef(
        certificate_id=cert.certificate_id, slice_id=(slice_ or only_slice(cert)).slice_id
    )


def slice_command(ref: SliceRef, parts: list[int], *, caller="alice", key="slice-1") -> Command:
    return command(
        CommandKind.SLICE,
        ref.certificate_id,
        caller=caller,
        key=key,
        slices=(ref,),
        quantities_wh=tuple(parts),
    )


def transfer_command(
    ref: SliceRef, quantity_wh: int, *, receiver="bob", caller="alice", key="transfer-1"
) -> Command:
    return command(
        CommandKind.TRANSFER,
        ref.certificate_id,
        caller=caller,
        key=key,
        slices=(ref,),
        receiver=receiver,
        quantity_wh=quantity_wh,
    )


def claim_command(
    production: SliceRef, consumption: SliceRef, quantity_wh: int, *, caller="alice", key="claim-1"
) -> Command:
    return command(
        CommandKind.CLAIM,
        production.certificate_id,
        caller=caller,
        key=key,
        slices=(production, consumption),
        quantity_wh=quantity_wh,
    )


def withdraw_command(certificate_id: str, *, key: str = "withdraw-1") -> Command:
    return command(CommandKind.WITHDRAW, certificate_id, caller=ISSUER, key=key)


def unclaim_command(ref: SliceRef, claim_id: str, quantity_wh: int, *, owner="alice") -> Command:
    """What the service records for a claim whose other side was withdrawn."""
    return command(
        CommandKind.UNCLAIM,
        ref.certificate_id,
        caller=owner,
        key=f"unclaim-{claim_id}",
        slices=(ref,),
        quantity_wh=quantity_wh,
        claim_id=claim_id,
    )


# --- books ------------------------------------------------------------------------------------


def put_active(book: Book, spec: IssueSpec | None = None, *, key: str = "issue-1") -> Certificate:
    """Record an issuance in the book and commit it there, as the worker will once the registry
    has issued it. Returns the certificate as stored."""
    issue = issue_command(spec, key=key)
    cert = holds.certificate_to_issue(issue)
    book.add_certificate(cert)
    book.add_holding(cert.owner, cert)
    return book.update_certificate(cert.certificate_id, lambda c: domain.apply_issue(c, issue))


def commit_issue(book: Book, command_id: str, now: datetime = T0) -> Certificate:
    """The worker's part of an issuance the API accepted: the certificate becomes ACTIVE with
    its first slice, and the command COMMITTED."""
    issue = book.get_command(command_id)
    assert issue is not None and issue.kind == CommandKind.ISSUE
    cert = book.update_certificate(issue.certificate_id, lambda c: domain.apply_issue(c, issue))
    book.transition(
        command_id,
        Transition(
            expected=domain.CommandStatus.ACCEPTED,
            target=domain.CommandStatus.COMMITTED,
            now=now,
        ),
    )
    return cert


# --- moto snapshots ---------------------------------------------------------------------------


def table_snapshot(dynamodb: Any, table_name: str) -> list[dict[str, Any]]:
    """Every item of the table, in key order: equal snapshots mean an unchanged book."""
    items: list[dict[str, Any]] = []
    args: dict[str, Any] = {"TableName": table_name, "ConsistentRead": True}
    while True:
        answer = dynamodb.scan(**args)
        items += answer["Items"]
        if "LastEvaluatedKey" not in answer:
            break
        args["ExclusiveStartKey"] = answer["LastEvaluatedKey"]
    return sorted(items, key=lambda item: (item["pk"]["S"], item["sk"]["S"]))


def queue_counts(sqs: Any, queue_url: str) -> tuple[int, int]:
    """Messages waiting, and messages received but not yet deleted (in flight)."""
    answer = sqs.get_queue_attributes(
        QueueUrl=queue_url,
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )["Attributes"]
    return (
        int(answer["ApproximateNumberOfMessages"]),
        int(answer["ApproximateNumberOfMessagesNotVisible"]),
    )


def queue_depth(sqs: Any, queue_url: str) -> int:
    return sum(queue_counts(sqs, queue_url))
