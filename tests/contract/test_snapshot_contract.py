"""An outcome applied from the queue message's snapshot leaves exactly the certificate that the
same outcome applied from the full certificate leaves: every command kind, both books.

The message carries the certificates trimmed to the slices the command names (adapters/sqs.py);
the worker applies the committed outcome from that snapshot, and the DynamoDB book writes only
what the change changes. The snapshot here is the one the SQS adapter's own codec gives the
worker, and the certificate holds other slices in every state (issue 13, item 1: a withdrawal
from a snapshot without slices left every slice `available`). Meanwhile, another command may
reserve another slice of the certificate (the API runs beside the worker).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chalicelib import domain
from chalicelib.adapters.dynamo import DynamoBook
from chalicelib.adapters.memory import InMemoryBook
from chalicelib.adapters.sqs import delivery_of, message_body
from chalicelib.domain import Certificate, CertificateType, Command, Slice, SliceRef, SliceState
from chalicelib.ports import Book
from chalicelib.usecases import holds
from chalicelib.usecases.process import apply_outcome
from tests.builders import (
    claim_command,
    gsrn,
    issue_command,
    issue_spec,
    put_active,
    slice_command,
    transfer_command,
    unclaim_command,
    withdraw_command,
)

KINDS = (
    "issue",
    "slice",
    "transfer-whole",
    "transfer-part",
    "claim-equal",
    "claim-cut",
    "withdraw",
    "unclaim",
)
USED_WH = 1000  # the slice the command uses
OTHER_STATES = (
    SliceState.AVAILABLE,
    SliceState.SLICED,
    SliceState.TRANSFERRED,
    SliceState.CLAIMED,
    SliceState.WITHDRAWN,
)


@pytest.fixture(params=["memory", "dynamo"])
def new_book(request) -> Callable[[], Book]:
    """A factory of empty books of one kind: one table each, on one moto."""
    if request.param == "memory":
        return InMemoryBook
    session = request.getfixturevalue("aws")
    client = session.client("dynamodb")
    from devstack.resources import table_definition

    tables = itertools.count()

    def make() -> Book:
        name = f"snapshot-contract-{next(tables)}"
        client.create_table(TableName=name, **table_definition())
        return DynamoBook(client, name)

    return make


def _with_other_slices(cert: Certificate, others: list[tuple[SliceState, str]]) -> Certificate:
    """The certificate with more slices than the command names, as earlier commands left it."""
    slices = dict(cert.slices)
    for i, (state, owner) in enumerate(others):
        slice_id = f"other-{i}"
        slices[slice_id] = Slice(slice_id=slice_id, owner=owner, quantity_wh=10, state=state)
    return cert.model_copy(update={"slices": slices})


def _active(book: Book, others: list[tuple[SliceState, str]], **spec: Any) -> Certificate:
    cert = put_active(book, issue_spec(quantity_wh=USED_WH, **spec), key=f"issue-{spec}")
    return book.update_certificate(cert.certificate_id, lambda c: _with_other_slices(c, others))


def _claimed(cert: Certificate, ref: SliceRef, claim_id: str) -> Certificate:
    slices = dict(cert.slices)
    slices[ref.slice_id] = slices[ref.slice_id].model_copy(
        update={"state": SliceState.CLAIMED, "claimed_by": claim_id}
    )
    return cert.model_copy(update={"slices": slices})


def _first(cert: Certificate) -> SliceRef:
    (first,) = [s for s in cert.slices.values() if not s.slice_id.startswith("other-")]
    return SliceRef(certificate_id=cert.certificate_id, slice_id=first.slice_id)


def _accepted(book: Book, kind: str, others: list[tuple[SliceState, str]]) -> Command:
    """The command of `kind`, its holds taken, as the API leaves it."""
    if kind == "issue":
        command = issue_command(issue_spec(quantity_wh=USED_WH))
        holds.take(book, command)
        return command
    production = _active(book, others)
    ref = _first(production)
    match kind:
        case "slice":
            command = slice_command(ref, [600, 400])
        case "transfer-whole" | "transfer-part":
            command = transfer_command(ref, USED_WH if kind == "transfer-whole" else 250)
        case "claim-equal" | "claim-cut":
            consumption = _active(book, others, meter=gsrn(2), type_=CertificateType.CONSUMPTION)
            quantity = USED_WH if kind == "claim-equal" else 300
            command = claim_command(ref, _first(consumption), quantity)
        case "unclaim":  # the slice a claim claimed, given back (the other side was withdrawn)
            book.update_certificate(ref.certificate_id, lambda c: _claimed(c, ref, "claim-1"))
            command = unclaim_command(ref, "claim-1", USED_WH)
        case _:
            command = withdraw_command(production.certificate_id)
    holds.take(book, command)
    return command


def _snapshots(book: Book, command: Command) -> dict[str, Certificate] | None:
    """What the worker gets from the message: the certificates as the holds left them,
    trimmed and carried through the SQS adapter's codec."""
    if command.kind == domain.CommandKind.ISSUE:
        return {command.certificate_id: holds.certificate_to_issue(command)}
    certificates = {c.certificate_id: c for c in book.get_certificates(command.certificate_ids())}
    record = {"messageId": "m-1", "body": message_body(command, True, certificates)}
    delivery = delivery_of(record)
    assert delivery.certificates is not None
    return delivery.certificates


def _meanwhile(book: Book, command: Command) -> None:
    """Another command reserves an available slice of alice's the command does not use."""
    for cert in book.get_certificates(command.certificate_ids()):
        if cert.withdrawal is not None:
            return  # a withdrawal pending: no reservation
        for s in cert.slices.values():
            if s.slice_id.startswith("other-") and s.state == SliceState.AVAILABLE:
                ref = SliceRef(certificate_id=cert.certificate_id, slice_id=s.slice_id)
                if s.owner == "alice":
                    book.reserve(ref, "another-command", "alice", 1)
                    return


def _after(book: Book, command: Command) -> dict[str, Certificate | None]:
    return {c: book.get_certificate(c) for c in command.certificate_ids()}


others_strategy = st.lists(
    st.tuples(st.sampled_from(OTHER_STATES), st.sampled_from(["alice", "bob"])), max_size=4
)


@pytest.mark.parametrize("kind", KINDS)
@settings(
    max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(others=others_strategy, concurrent=st.booleans())
def test_an_outcome_from_the_trimmed_snapshot_equals_the_outcome_from_the_full_certificate(
    new_book, kind: str, others: list[tuple[SliceState, str]], concurrent: bool
) -> None:
    from_full, from_snapshot = new_book(), new_book()
    command = _accepted(from_full, kind, others)
    assert _accepted(from_snapshot, kind, others) == command
    snapshots = _snapshots(from_snapshot, command)
    if concurrent:
        _meanwhile(from_full, command)
        _meanwhile(from_snapshot, command)
    apply_outcome(from_full, command)
    apply_outcome(from_snapshot, command, snapshots)
    assert _after(from_snapshot, command) == _after(from_full, command)
    # Applied again (a redelivered outcome, from the same snapshot): nothing changes.
    apply_outcome(from_snapshot, command, snapshots)
    assert _after(from_snapshot, command) == _after(from_full, command)


def test_a_withdrawal_from_a_snapshot_without_slices_withdraws_every_live_slice(new_book):
    """Issue 13, item 1, on each book: the message of a withdrawal names no slice."""
    book = new_book()
    command = _accepted(book, "withdraw", [(SliceState.AVAILABLE, "bob")])
    snapshots = _snapshots(book, command)
    assert snapshots is not None and not snapshots[command.certificate_id].slices
    apply_outcome(book, command, snapshots)
    (cert,) = _after(book, command).values()
    assert cert is not None and cert.status == domain.CertificateStatus.WITHDRAWN
    assert not [s for s in cert.slices.values() if s.state == SliceState.AVAILABLE]


@pytest.mark.parametrize("sealed", [False, True], ids=["plain", "hashed-attributes"])
def test_an_issuance_is_written_without_reading_the_certificate_in_any_worker(
    new_book, sealed: bool
) -> None:
    """A certificate being issued is written by its issuance alone, so its outcome is applied
    from the command itself: also by a worker that did not build it (the handed-back message
    lands anywhere), by the reconciler and by an operator. The result is the one a read gives;
    on the DynamoDB book it takes one write and no read of the certificate."""
    from_full, without = new_book(), new_book()
    command = _accepted(from_full, "issue", [])
    assert _accepted(without, "issue", []) == command
    if sealed:
        salt = domain.HashedAttribute(registry_value="aGFzaA==", salt="c2FsdA==")
        command = command.model_copy(update={"sealed_attributes": {"address": salt}})
    # The outcome as a read of the certificate gives it (what apply_outcome did before).
    from_full.update_certificate(
        command.certificate_id,
        lambda c: domain.attach_seals(domain.apply_issue(c, command), command),
    )
    reads: list[str] = []
    watching = isinstance(without, DynamoBook)
    if watching:  # the books share one client: only this call is watched
        without._db.meta.events.register(
            "before-call.dynamodb",
            lambda model, **_: (
                reads.append(model.name) if watching and model.name.endswith("GetItem") else None
            ),
        )
    apply_outcome(without, command, None)
    watching = False
    assert reads == []
    assert _after(without, command) == _after(from_full, command)
    if sealed:
        (cert,) = _after(without, command).values()
        assert cert is not None and cert.hashed_attributes == command.sealed_attributes
