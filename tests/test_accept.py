"""Accepting commands: each recorded once, its holds taken, then queued; a refusal leaves the
book exactly as it was; a queue outage does not lose a command."""

from __future__ import annotations

import copy
from dataclasses import replace
from datetime import timedelta
from typing import Any

import pytest

from chalicelib import domain
from chalicelib.adapters.dynamo import DynamoBook
from chalicelib.adapters.memory import InMemoryBook, InMemoryQueue
from chalicelib.domain import (
    Actor,
    CertificateStatus,
    CertificateType,
    CommandKind,
    CommandStatus,
    Conflict,
    Forbidden,
    NotFound,
    Role,
    RuleViolation,
    SliceRef,
    SliceState,
)
from chalicelib.ports import DependencyDown, DuplicateCommand, HoldingQuery, Transition
from chalicelib.usecases import accept, holds
from tests.builders import (
    API_TIMEOUT,
    ISSUER,
    T0,
    gsrn,
    issue_spec,
    only_slice,
    put_active,
    ref_of,
    table_snapshot,
)
from tests.conftest import settings


@pytest.fixture
def book() -> InMemoryBook:
    return InMemoryBook()


@pytest.fixture
def queue() -> InMemoryQueue:
    return InMemoryQueue()


def request(owner: str = "alice", key: str = "key-1", body: Any = "body", *roles: Role, now=T0):
    return accept.Request(
        actor=Actor(owner=owner, roles=frozenset(roles)),
        idempotency_key=key,
        body_hash=domain.request_hash(body),
        now=now,
        attempt_timeout=API_TIMEOUT,
    )


def as_issuer(key: str = "key-1", body: Any = "body", now=T0):
    return request(ISSUER, key, body, Role.ISSUER, now=now)


# When a retry comes after the first attempt is surely over (its function timed out).
LATER = T0 + API_TIMEOUT + timedelta(seconds=2)


def state_of(book: InMemoryBook) -> dict[str, Any]:
    """Everything the in-memory book holds, to compare before and after."""
    return {name: copy.deepcopy(value) for name, value in vars(book).items() if name != "_lock"}


@pytest.fixture
def production(book):
    return put_active(book, issue_spec(meter=gsrn(1)), key="p")


@pytest.fixture
def consumption(book):
    return put_active(book, issue_spec(meter=gsrn(2), type_=CertificateType.CONSUMPTION), key="c")


# --- issue ------------------------------------------------------------------------------------


def test_an_issue_is_recorded_accepted_with_its_certificate_being_issued_and_queued(book, queue):
    spec = issue_spec()
    issued = accept.issue(book, queue, as_issuer(), spec)
    assert issued.status == CommandStatus.ACCEPTED and issued.kind == CommandKind.ISSUE
    assert book.get_command(issued.command_id) == issued
    cert = book.get_certificate(issued.certificate_id)
    assert cert.status == CertificateStatus.ISSUING and cert.issue_command == issued.command_id
    assert (cert.owner, cert.issued_by, cert.quantity_wh) == ("alice", ISSUER, 1000)
    assert [c.certificate_id for c in book.holdings(HoldingQuery(owner="alice")).items] == [
        issued.certificate_id
    ]
    assert queue.messages == [issued]


def test_only_an_issuer_may_issue_and_a_refusal_records_nothing(book, queue):
    before = state_of(book)
    with pytest.raises(Forbidden):
        accept.issue(book, queue, request("alice", "k", "body", Role.OPERATOR), issue_spec())
    assert state_of(book) == before and queue.messages == []


def test_a_replay_with_the_same_key_and_body_answers_the_first_command(book, queue):
    first = accept.issue(book, queue, as_issuer(), issue_spec())
    again = accept.issue(book, queue, as_issuer(), issue_spec())
    assert again == first
    assert list(book.commands) == [first.command_id]


def test_the_same_key_with_another_body_is_a_conflict_that_leaves_the_first_alone(book, queue):
    first = accept.issue(book, queue, as_issuer(body="one"), issue_spec())
    before = state_of(book)
    with pytest.raises(Conflict) as refused:
        accept.issue(book, queue, as_issuer(body="two"), issue_spec(meter=gsrn(7)))
    assert refused.value.field == "Idempotency-Key"
    assert refused.value.subject == first.command_id
    assert state_of(book) == before


def test_the_same_certificate_under_another_key_is_a_conflict_that_leaves_no_command(book, queue):
    first = accept.issue(book, queue, as_issuer("key-1"), issue_spec())
    before = state_of(book)
    with pytest.raises(Conflict, match="already issued"):
        accept.issue(book, queue, as_issuer("key-2"), issue_spec(quantity_wh=5))
    assert state_of(book) == before
    assert book.get_certificate(first.certificate_id).quantity_wh == 1000
    assert queue.messages == [first]


def test_a_queue_outage_still_accepts_the_command_and_keeps_it_in_the_book(book, queue):
    queue.available = False
    issued = accept.issue(book, queue, as_issuer(), issue_spec())
    assert issued.status == CommandStatus.ACCEPTED
    assert book.get_command(issued.command_id) == issued
    assert book.get_certificate(issued.certificate_id).status == CertificateStatus.ISSUING
    assert queue.messages == []
    queue.available = True
    # A retry while the first attempt may still run answers with the command and leaves the
    # queueing to that attempt (or to the reconciler, which re-drives it)...
    assert accept.issue(book, queue, as_issuer(), issue_spec()) == issued
    assert queue.messages == []
    # ...one after that attempt is surely over finishes the queueing.
    assert accept.issue(book, queue, as_issuer(now=LATER), issue_spec()) == issued
    assert queue.messages == [issued]


def test_a_replay_finishes_an_accept_that_stopped_before_taking_its_holds(book, queue):
    spec = issue_spec()
    certificate_id = domain.certificate_id_for(spec.gsrn, spec.type, spec.period.start)
    crashed = accept._new_command(as_issuer(), CommandKind.ISSUE, certificate_id, issue=spec)
    book.add_command(crashed)  # the API died right after step 1
    answer = accept.issue(book, queue, as_issuer(now=LATER), issue_spec())
    assert answer == crashed
    assert book.get_certificate(crashed.certificate_id).issue_command == crashed.command_id
    assert queue.messages == [crashed]


def test_a_replay_whose_holds_are_refused_now_rejects_the_command_with_the_reason(
    book, queue, production
):
    ref = ref_of(production)
    crashed = accept._new_command(
        request(),
        CommandKind.TRANSFER,
        ref.certificate_id,
        slices=(ref,),
        receiver="bob",
        quantity_wh=1000,
    )
    book.add_command(crashed)  # the API died before its reservation...
    book.reserve(ref, "another-command", "alice", 1)  # ...and another command took the slice
    answer = accept.transfer(book, queue, request(now=LATER), ref, "bob", 1000)
    assert answer.status == CommandStatus.REJECTED
    assert "reserved" in answer.error
    assert book.get_command(crashed.command_id) == answer
    assert only_slice(book.get_certificate(ref.certificate_id)).reserved_by == "another-command"
    assert queue.messages == []


def test_a_replay_of_a_command_a_worker_has_taken_answers_it_as_it_is(book, queue):
    first = accept.issue(book, queue, as_issuer(), issue_spec())
    taken = book.transition(
        first.command_id,
        Transition(CommandStatus.ACCEPTED, CommandStatus.SENDING, T0, changes={"attempts": 1}),
    )
    assert accept.issue(book, queue, as_issuer(), issue_spec()) == taken
    assert queue.messages == [first]


def test_a_batch_records_each_valid_item_and_reports_each_refused_one(book, queue):
    specs = [
        issue_spec(meter=gsrn(1)),
        RuleViolation("a GSRN is 18 digits", field="gsrn"),
        issue_spec(meter=gsrn(2)),
        issue_spec(meter=gsrn(1)),  # the same certificate as item 0
    ]
    results = accept.issue_batch(book, queue, as_issuer(), specs)
    assert [r.index for r in results] == [0, 1, 2, 3]
    assert [r.command is not None for r in results] == [True, False, True, False]
    assert isinstance(results[1].error, RuleViolation)
    assert isinstance(results[3].error, Conflict)
    assert len(book.commands) == 2 and len(queue.messages) == 2
    again = accept.issue_batch(book, queue, as_issuer(), specs)
    assert [r.command for r in again] == [r.command for r in results]
    assert len(book.commands) == 2


def test_a_batch_is_queued_in_one_send_many_after_every_item_is_recorded(book, queue):
    """Not one send per item: one call for the batch's messages, made once each is in the
    book. Down, or refusing some, the commands stay ACCEPTED (the outbox) and the answer
    stands."""
    calls: list[int] = []

    class Batching:
        def send(self, *args, **kwargs):
            pytest.fail("one send per item")

        def send_many(self, messages):
            assert len(book.commands) == 3  # every item recorded first
            calls.append(len(messages))
            return queue.send_many(messages)

    specs = [issue_spec(meter=gsrn(n)) for n in (1, 2, 3)]
    results = accept.issue_batch(book, Batching(), as_issuer(), specs)
    assert calls == [3] and len(queue.messages) == 3
    assert all(r.command.status == CommandStatus.ACCEPTED for r in results)

    queue.available = False
    later = [issue_spec(meter=gsrn(n)) for n in (4, 5)]
    results = accept.issue_batch(book, queue, as_issuer(key="batch-2"), later)
    assert [r.command is not None for r in results] == [True, True]
    assert all(book.get_command(r.command.command_id) is not None for r in results)
    assert len(queue.messages) == 3  # nothing queued: the reconciler re-drives them


def test_a_batch_the_book_fails_midway_still_queues_what_it_recorded(book, queue, monkeypatch):
    """The book down at the third item: the request fails (503), and the two recorded go out
    at once rather than wait for the reconciler's re-drive."""
    real = book.add_command

    def add_command(command):
        if len(book.commands) == 2:
            raise DependencyDown("the book did not answer")
        return real(command)

    monkeypatch.setattr(book, "add_command", add_command)
    specs = [issue_spec(meter=gsrn(n)) for n in (1, 2, 3)]
    with pytest.raises(DependencyDown):
        accept.issue_batch(book, queue, as_issuer(), specs)
    assert [m.command_id for m in queue.messages] == list(book.commands)


def test_a_batch_needs_the_issuer_role(book, queue):
    with pytest.raises(Forbidden):
        accept.issue_batch(book, queue, request(), [issue_spec()])
    assert book.commands == {}


# --- slice ------------------------------------------------------------------------------------


def test_slicing_reserves_the_slice_for_the_command_and_queues_it(book, queue, production):
    ref = ref_of(production)
    cut = accept.slice_certificate(book, queue, request(), ref, [400, 600])
    assert cut.quantities_wh == (400, 600) and cut.slices == (ref,)
    held = only_slice(book.get_certificate(ref.certificate_id))
    assert (held.state, held.reserved_by) == (SliceState.RESERVED, cut.command_id)
    assert queue.messages == [cut]


@pytest.mark.parametrize(
    "parts",
    [[400, 500], [400, 700], [1000], [0, 1000], [-1, 1001], [2**32, 1000 - 2**32], [1] * 101],
    ids=["short", "over", "one-part", "zero", "negative", "over-32-bits", "101-parts"],
)
def test_parts_that_cannot_cut_the_slice_are_refused_and_the_book_is_unchanged(
    book, queue, production, parts
):
    before = state_of(book)
    with pytest.raises(RuleViolation):
        accept.slice_certificate(book, queue, request(), ref_of(production), parts)
    assert state_of(book) == before
    assert queue.messages == []


def test_someone_elses_slice_cannot_be_sliced_and_reads_as_not_found(book, queue, production):
    before = state_of(book)
    with pytest.raises(NotFound):
        accept.slice_certificate(book, queue, request("mallory"), ref_of(production), [1, 999])
    assert state_of(book) == before


# --- transfer ---------------------------------------------------------------------------------


def test_a_transfer_reserves_the_slice_for_the_receiver(book, queue, production):
    sent = accept.transfer(book, queue, request(), ref_of(production), "bob", 300)
    assert (sent.receiver, sent.quantity_wh) == ("bob", 300)
    assert only_slice(book.get_certificate(production.certificate_id)).reserved_by == (
        sent.command_id
    )


def test_a_reserved_slice_cannot_be_transferred_twice(book, queue, production):
    first = accept.transfer(book, queue, request(key="k1"), ref_of(production), "bob", 1000)
    before = state_of(book)
    with pytest.raises(Conflict, match="reserved"):
        accept.transfer(book, queue, request(key="k2"), ref_of(production), "carol", 1000)
    assert state_of(book) == before
    assert queue.messages == [first]


def test_a_slice_cannot_be_transferred_to_its_own_owner(book, queue, production):
    before = state_of(book)
    with pytest.raises(RuleViolation) as refused:
        accept.transfer(book, queue, request(), ref_of(production), "alice", 1000)
    assert refused.value.field == "receiver"
    assert state_of(book) == before


def test_a_transfer_of_more_than_the_slice_holds_is_a_conflict_and_changes_nothing(
    book, queue, production
):
    before = state_of(book)
    with pytest.raises(Conflict, match="less than"):
        accept.transfer(book, queue, request(), ref_of(production), "bob", 1001)
    assert state_of(book) == before


@pytest.mark.parametrize(
    "ref",
    [
        SliceRef(certificate_id="no-such-certificate", slice_id="s"),
        None,  # the certificate exists, the slice does not
    ],
    ids=["certificate", "slice"],
)
def test_a_transfer_of_an_unknown_slice_is_not_found_and_changes_nothing(
    book, queue, production, ref
):
    ref = ref or SliceRef(certificate_id=production.certificate_id, slice_id="no-such-slice")
    before = state_of(book)
    with pytest.raises(NotFound):
        accept.transfer(book, queue, request(), ref, "bob", 1)
    assert state_of(book) == before


def test_a_certificate_still_being_issued_cannot_be_transferred(book, queue):
    issued = accept.issue(book, queue, as_issuer(), issue_spec())
    ref = SliceRef(certificate_id=issued.certificate_id, slice_id="s")
    with pytest.raises(Conflict, match="not issued yet"):
        accept.transfer(book, queue, request(key="t"), ref, "bob", 1)
    with pytest.raises(NotFound):
        accept.transfer(book, queue, request("mallory", key="t"), ref, "bob", 1)


# --- claim ------------------------------------------------------------------------------------


def test_a_claim_reserves_both_sides_and_travels_with_the_production_certificate(
    book, queue, production, consumption
):
    claim = accept.claim(book, queue, request(), ref_of(production), ref_of(consumption), 1000)
    assert claim.certificate_id == production.certificate_id
    for cert in (production, consumption):
        assert only_slice(book.get_certificate(cert.certificate_id)).reserved_by == (
            claim.command_id
        )


def test_a_claim_reads_its_pair_once_and_checks_its_expiry_on_that_read(
    book, queue, production, consumption, monkeypatch
):
    """The expiry margin is checked before the claim is recorded, on the read the holds'
    rehearsal then uses (no read of the command first, unless it is late): one read of the
    two certificates per claim."""
    reads: list[str] = []
    for name in ("get_certificates", "get_certificate", "get_command"):
        real = getattr(book, name)

        def counted(*args, _real=real, _name=name):
            reads.append(_name)
            return _real(*args)

        monkeypatch.setattr(book, name, counted)
    expiry = timedelta(days=365)
    late = request(key="late", now=production.period.start + expiry)
    before = state_of(book)
    with pytest.raises(RuleViolation, match="expires before the claim"):
        accept.claim(book, queue, late, ref_of(production), ref_of(consumption), 1, expiry=expiry)
    assert state_of(book) == before
    reads.clear()
    claim = accept.claim(
        book, queue, request(), ref_of(production), ref_of(consumption), 1000, expiry=expiry
    )
    assert claim.status == CommandStatus.ACCEPTED and reads == ["get_certificates"]
    # Its replay, however late, is answered as the first was: no new claim.
    replay = request(now=production.period.start + expiry)
    again = accept.claim(
        book, queue, replay, ref_of(production), ref_of(consumption), 1000, expiry=expiry
    )
    assert again.command_id == claim.command_id


def test_a_claim_of_certificates_in_different_grid_areas_is_refused_and_holds_nothing(
    book, queue, production
):
    elsewhere = put_active(
        book,
        issue_spec(meter=gsrn(3), type_=CertificateType.CONSUMPTION, grid_area="DK2"),
        key="dk2",
    )
    before = state_of(book)
    with pytest.raises(RuleViolation, match="may not be matched"):
        accept.claim(book, queue, request(), ref_of(production), ref_of(elsewhere), 1000)
    assert state_of(book) == before
    assert queue.messages == []
    # nor when a matching boundary groups other areas
    with pytest.raises(RuleViolation, match="may not be matched"):
        accept.claim(
            book,
            queue,
            request(),
            ref_of(production),
            ref_of(elsewhere),
            1000,
            boundary={"SE": ["SE3", "SE4"], "DK": ["DK1"]},
        )
    assert state_of(book) == before


def test_a_claim_across_grid_areas_of_one_matching_boundary_is_accepted(book, queue, production):
    elsewhere = put_active(
        book,
        issue_spec(meter=gsrn(3), type_=CertificateType.CONSUMPTION, grid_area="DK2"),
        key="dk2",
    )
    claim = accept.claim(
        book,
        queue,
        request(),
        ref_of(production),
        ref_of(elsewhere),
        1000,
        boundary={"DK": ["DK1", "DK2"]},
    )
    assert claim.status == CommandStatus.ACCEPTED
    assert queue.messages == [claim]


def test_a_claim_whose_consumption_slice_is_unknown_leaves_the_production_slice_untouched(
    book, queue, production, consumption
):
    unknown = SliceRef(certificate_id=consumption.certificate_id, slice_id="no-such-slice")
    before = state_of(book)
    with pytest.raises(NotFound):
        accept.claim(book, queue, request(), ref_of(production), unknown, 1000)
    assert state_of(book) == before


def test_a_claim_whose_consumption_slice_is_held_leaves_the_production_slice_untouched(
    book, queue, production, consumption
):
    book.reserve(ref_of(consumption), "another-command", "alice", 1)
    before = state_of(book)
    with pytest.raises(Conflict, match="reserved"):
        accept.claim(book, queue, request(), ref_of(production), ref_of(consumption), 1000)
    assert state_of(book) == before


def test_a_claim_within_one_certificate_is_refused(book, queue, production):
    with pytest.raises(RuleViolation):
        accept.claim(book, queue, request(), ref_of(production), ref_of(production), 1000)
    assert book.get_certificate(production.certificate_id) == production


# --- withdraw ---------------------------------------------------------------------------------


def test_an_issuer_withdraws_a_certificate_which_then_takes_no_new_reservations(
    book, queue, production
):
    withdraw = accept.withdraw(book, queue, as_issuer(), production.certificate_id)
    assert withdraw.kind == CommandKind.WITHDRAW
    assert book.get_certificate(production.certificate_id).withdrawal == withdraw.command_id
    with pytest.raises(Conflict, match="withdrawn"):
        accept.transfer(book, queue, request(key="t"), ref_of(production), "bob", 1)


def test_only_an_issuer_withdraws(book, queue, production):
    before = state_of(book)
    with pytest.raises(Forbidden):
        accept.withdraw(book, queue, request(), production.certificate_id)
    assert state_of(book) == before


def test_an_unknown_certificate_cannot_be_withdrawn(book, queue):
    with pytest.raises(NotFound):
        accept.withdraw(book, queue, as_issuer(), "no-such-certificate")
    assert book.commands == {}


def test_a_certificate_with_a_pending_command_cannot_be_withdrawn(book, queue, production):
    accept.transfer(book, queue, request(), ref_of(production), "bob", 1)
    before = state_of(book)
    with pytest.raises(Conflict, match="pending"):
        accept.withdraw(book, queue, as_issuer("w"), production.certificate_id)
    assert state_of(book) == before


# --- the same over DynamoDB -------------------------------------------------------------------


def test_refusals_leave_the_dynamodb_table_exactly_as_it_was(aws):
    client = aws.client("dynamodb")
    table = settings().table_name
    book, queue = DynamoBook(client, table), InMemoryQueue()
    production = put_active(book, issue_spec(meter=gsrn(1)), key="p")
    elsewhere = put_active(
        book,
        issue_spec(meter=gsrn(3), type_=CertificateType.CONSUMPTION, grid_area="DK2"),
        key="dk2",
    )
    before = table_snapshot(client, table)
    refusals = [
        lambda: accept.slice_certificate(book, queue, request(), ref_of(production), [1, 2]),
        lambda: accept.claim(book, queue, request(), ref_of(production), ref_of(elsewhere), 1000),
        lambda: accept.transfer(book, queue, request("mallory"), ref_of(production), "b", 1),
        lambda: accept.issue(book, queue, as_issuer(), issue_spec(meter=gsrn(1))),
    ]
    for refuse in refusals:
        with pytest.raises(domain.DomainError):
            refuse()
        assert table_snapshot(client, table) == before
    assert queue.messages == []


def test_a_batch_key_reused_with_another_batch_is_refused_whole_and_records_nothing() -> None:
    from datetime import UTC, datetime, timedelta

    from chalicelib.adapters.memory import InMemoryBook, InMemoryQueue
    from chalicelib.domain import Actor, CertificateType, Conflict, IssueSpec, Period, Role
    from chalicelib.usecases import accept as use

    book, queue = InMemoryBook(), InMemoryQueue()
    issuer = Actor(owner="issuer", roles=frozenset({Role.ISSUER}))
    start = datetime(2026, 6, 1, 10, tzinfo=UTC)

    def spec(gsrn: str) -> IssueSpec:
        return IssueSpec(
            type=CertificateType.PRODUCTION,
            gsrn=gsrn,
            grid_area="DK1",
            period=Period.of(start, start + timedelta(hours=1)),
            quantity_wh=5,
            owner="alice",
        )

    def batch(body: str, specs: list[IssueSpec]) -> list:
        asked = use.Request(issuer, "batch-key", body, start, API_TIMEOUT)
        return use.issue_batch(book, queue, asked, specs)

    first = batch("body-1", [spec("571313000000000001")])
    assert first[0].command is not None
    recorded = dict(book.commands)
    with pytest.raises(Conflict):
        batch("body-2", [spec("571313000000000002"), spec("571313000000000003")])
    assert book.commands == recorded
    again = batch("body-1", [spec("571313000000000001")])
    assert again[0].command.command_id == first[0].command.command_id


# --- a retried request and a command that ended meanwhile (issue 13, item 9) ----------------


class _Meanwhile:
    """The book as one invocation sees it: other work runs just before its first call that
    `when` picks (a pause at that point of the invocation)."""

    def __init__(self, book: Any, when: Any, other: Any) -> None:
        self._book, self._when, self._other, self.ran = book, when, other, False

    def __getattr__(self, name: str) -> Any:
        target = getattr(self._book, name)

        def call(*args: Any, **kwargs: Any) -> Any:
            if not self.ran and self._when(name, args):
                self.ran = True
                self._other()
            return target(*args, **kwargs)

        return call


def _alice_transfers_a_slice_the_registry_will_refuse():
    from tests.pipeline import Pipeline

    p = Pipeline()
    cert, slice_id = p.issued()
    asked = p.request(Actor(owner="alice"), key="transfer-1", body="transfer")
    first = accept.transfer(
        p.book, p.queue, asked, SliceRef(certificate_id=cert, slice_id=slice_id), "bob", 1000
    )
    p.registry.withdraw(cert)  # behind the book's back: the registry will refuse the transfer
    # Her client's retry, once the first attempt is surely over (a retry before that only
    # answers: `test_a_retry_while_the_first_attempt_may_run_*`).
    retry = replace(asked, now=asked.now + API_TIMEOUT + timedelta(seconds=2))
    return p, first, retry, SliceRef(certificate_id=cert, slice_id=slice_id)


def _holds(book: Any, command_id: str) -> list[str]:
    return [
        s.slice_id
        for cert in book.certificates.values()
        for s in cert.slices.values()
        if s.reserved_by == command_id
    ]


def test_a_retry_paused_before_its_reservation_takes_nothing_for_a_command_that_ended():
    """Seed 18022 (no queries): alice's retry (same Idempotency-Key) read her command ACCEPTED,
    paused before its reservation; the worker meanwhile had the transfer refused and released
    the slice; the retry then reserved it again for the REJECTED command, for ever (I5)."""
    p, first, retry, ref = _alice_transfers_a_slice_the_registry_will_refuse()
    book = _Meanwhile(p.book, lambda name, args: name == "reserve", p.run)
    answer = accept.transfer(book, p.queue, retry, ref, "bob", 1000)
    assert book.ran
    assert p.command(first.command_id).status == CommandStatus.REJECTED
    assert answer.status == CommandStatus.REJECTED
    assert _holds(p.book, first.command_id) == []
    p.run()
    assert _holds(p.book, first.command_id) == []


def test_a_retry_between_a_rejections_release_and_its_terminal_write_leaves_no_hold():
    """The other order: the retry read the command ACCEPTED and paused; the worker released
    the slice; the retry went on and reserved it (the command still SENDING: a hold of an open
    command); then the worker wrote REJECTED."""
    p, first, retry, ref = _alice_transfers_a_slice_the_registry_will_refuse()

    class ReadBeforeTheWorker:
        def __getattr__(self, name: str) -> Any:
            return getattr(p.book, name)

        def add_command(self, command: Any) -> None:
            raise DuplicateCommand(first)  # as the retry found it, before the worker took it

    def retried() -> None:
        accept.transfer(ReadBeforeTheWorker(), p.queue, retry, ref, "bob", 1000)
        assert _holds(p.book, first.command_id) == [ref.slice_id]  # taken again meanwhile

    def rejecting(name: str, args: tuple) -> bool:
        return name == "transition" and args[1].target == CommandStatus.REJECTED

    p.run(worker=p.make_worker(book=_Meanwhile(p.book, rejecting, retried)))
    assert p.command(first.command_id).status == CommandStatus.REJECTED
    assert _holds(p.book, first.command_id) == []


def _alice_retries_a_transfer_her_first_attempt_is_refused():
    """Alice's transfer to carol is refused at its holds (the slice is reserved by her
    transfer to bob) and goes to forget its command; meanwhile the transfer to bob may be
    refused and let go, and her client, which gave up waiting, sends the same request again.
    `send(book, late=True)`: a retry that comes once the first attempt is surely over by its
    own clock, which is how one that finds it still running would act if clocks disagreed
    by more than the timeout: the book's guards still hold."""
    from tests.pipeline import Pipeline

    p = Pipeline()
    cert, slice_id = p.issued()
    ref = SliceRef(certificate_id=cert, slice_id=slice_id)
    blocker = p.transfer("alice", cert, slice_id, "bob", 1000)
    request = p.request(Actor(owner="alice"), key="transfer-2", body="transfer to carol")

    def the_blocker_ends() -> None:
        p.book.transition(
            blocker.command_id,
            Transition(
                expected=CommandStatus.ACCEPTED,
                target=CommandStatus.REJECTED,
                now=p.now(),
                changes={"error": "refused by the registry"},
            ),
        )
        holds.release_after_end(p.book, p.command(blocker.command_id))

    def send(book: Any, late: bool = False) -> Any:
        asked = replace(request, now=request.now + API_TIMEOUT + timedelta(seconds=2))
        return accept.transfer(book, p.queue, asked if late else request, ref, "carol", 1000)

    return p, the_blocker_ends, send


@pytest.mark.parametrize("the_blocker_ends_meanwhile", [False, True])
def test_a_retry_while_the_first_attempt_may_run_and_holds_nothing_is_told_to_wait(
    the_blocker_ends_meanwhile: bool,
):
    """The retry comes while the refused attempt goes to forget the command (its let-go
    done). Before, it took the slice for the command (the blocker had ended) or refused it
    (it had not): either way two processes at work on one command, and the first one's
    let-go, by command, could take back what the retry took after it had answered 202 (soak
    seed 349752). Now the retry touches nothing and says the first is still at work; the first
    is refused and forgets; the client's next send goes through."""
    p, the_blocker_ends, send = _alice_retries_a_transfer_her_first_attempt_is_refused()
    told: list[Exception] = []

    def the_retry_comes() -> None:
        if the_blocker_ends_meanwhile:
            the_blocker_ends()
        before = state_of(p.book)
        with pytest.raises(Conflict, match="still being processed") as refused:
            send(p.book)
        assert state_of(p.book) == before
        told.append(refused.value)

    first_attempt = _Meanwhile(p.book, lambda name, _: name == "forget_command", the_retry_comes)
    with pytest.raises(Conflict, match="reserved"):
        send(first_attempt)
    assert first_attempt.ran and told
    command_id = told[0].subject
    assert p.book.get_command(command_id) is None and _holds(p.book, command_id) == []
    if the_blocker_ends_meanwhile:
        _sent_again_it_commits(p, send)
    p.check_invariants()


def _sent_again_it_commits(p: Any, send: Any) -> None:
    again = send(p.book)  # the client sends it again
    assert again.status == CommandStatus.ACCEPTED and _holds(p.book, again.command_id)
    p.run()
    assert p.command(again.command_id).status == CommandStatus.COMMITTED


def test_a_retry_after_the_first_attempt_took_all_its_holds_answers_with_the_command():
    """The first attempt holds the slice and has not queued yet: the retry answers 202 with
    the command (kept, so it can never be forgotten under that answer) and leaves the queueing
    to the first."""
    from tests.pipeline import Pipeline

    p = Pipeline()
    cert, slice_id = p.issued()
    ref = SliceRef(certificate_id=cert, slice_id=slice_id)
    request = p.request(Actor(owner="alice"), key="transfer-3", body="transfer to bob")
    retried = []

    class Queue:
        def __getattr__(self, name: str) -> Any:
            return getattr(p.queue, name)

        def send(self, *args: Any, **kwargs: Any) -> None:
            sent = p.queue.sent
            retried.append(accept.transfer(p.book, p.queue, request, ref, "bob", 1000))
            assert p.queue.sent == sent  # the retry queued nothing
            p.queue.send(*args, **kwargs)

    answer = accept.transfer(p.book, Queue(), request, ref, "bob", 1000)
    assert retried[0] == answer and answer.status == CommandStatus.ACCEPTED
    assert p.book.forget_command(answer) is False  # kept
    p.run()
    assert p.command(answer.command_id).status == CommandStatus.COMMITTED
    p.check_invariants()


def _no_room_left_for(p: Any, cert_id: str, new_slices: int) -> None:
    """Other slices of the certificate grow it (someone else's, spent) until a command that
    makes `new_slices` more has no room for them."""
    from chalicelib.domain import MAX_SLICES_PER_CERTIFICATE, Slice, SliceState

    def grown(cert: Any) -> Any:
        slices = dict(cert.slices)
        for i in range(MAX_SLICES_PER_CERTIFICATE - new_slices + 1 - len(slices)):
            slices[f"spent-{i}"] = Slice(
                slice_id=f"spent-{i}", owner="dave", quantity_wh=1, state=SliceState.TRANSFERRED
            )
        return cert.model_copy(update={"slices": slices})

    p.book.update_certificate(cert_id, grown)


@pytest.mark.parametrize("forgotten_before_the_retry_keeps_it", [False, True])
def test_a_first_attempt_refused_after_its_reservation_ends_what_a_retry_answered_for(
    forgotten_before_the_retry_keeps_it: bool,
):
    """The first attempt reserves the slice and is then refused by the check that follows (the
    certificate grew meanwhile: no room for a transfer's slices). A retry that came in between
    found every hold in place and answered with the command, having kept it: the first cannot
    forget it under that answer and refuses it instead (REJECTED with the reason, nothing
    held, nothing queued). Had the first forgotten it before the retry kept it, the retry
    finds it gone and says so (409, send it again)."""
    from tests.pipeline import Pipeline

    p = Pipeline()
    cert, slice_id = p.issued()
    ref = SliceRef(certificate_id=cert, slice_id=slice_id)
    request = p.request(Actor(owner="alice"), key="transfer-4", body="transfer to bob")
    retried: list[Any] = []

    def send(book: Any) -> Any:
        return accept.transfer(book, p.queue, request, ref, "bob", 1000)

    def the_retry() -> None:
        if not forgotten_before_the_retry_keeps_it:
            retried.append(send(p.book))
            return

        def the_first_lets_go_and_forgets() -> None:
            command = p.book.get_command(request_id)
            holds.release(p.book, command)
            assert p.book.forget_command(command)

        retry = _Meanwhile(
            p.book, lambda name, _: name == "keep_command", the_first_lets_go_and_forgets
        )
        with pytest.raises(Conflict, match="refused while this one ran") as told:
            send(retry)
        retried.append(told.value)

    class FirstAttempt:
        def __getattr__(self, name: str) -> Any:
            return getattr(p.book, name)

        def reserve(self, *args: Any) -> Any:
            _no_room_left_for(p, cert, new_slices=3)  # after its rehearsal, before its write
            return p.book.reserve(*args)

        def update_certificate(self, *args: Any) -> Any:  # its let-go: the retry comes first
            if not retried:
                the_retry()
            return p.book.update_certificate(*args)

    request_id = domain.command_id_for("alice", "transfer-4", 0)
    sent = p.queue.sent
    if forgotten_before_the_retry_keeps_it:
        with pytest.raises(RuleViolation, match="at most"):
            send(FirstAttempt())
        assert p.book.get_command(request_id) is None
    else:
        answer = send(FirstAttempt())
        assert retried[0].command_id == answer.command_id == request_id
        assert retried[0].status == CommandStatus.ACCEPTED
        assert answer.status == CommandStatus.REJECTED and "at most" in answer.error
        assert p.command(request_id).status == CommandStatus.REJECTED
    assert _holds(p.book, request_id) == [] and p.queue.sent == sent


def test_a_late_retry_takes_the_command_on_and_the_refused_attempt_finishes_it():
    """A retry whose clock says the first attempt is over, while it is in fact refused and
    going to forget the command (clocks that disagree by more than the timeout): the retry
    keeps the command and takes the slice, whose blocker ended; the first cannot forget it,
    takes what its let-go took back again, and both answers name the one command, which
    commits (before keep_command: deleted under an accepted answer, I2, its hold kept for
    good, I5)."""
    p, the_blocker_ends, send = _alice_retries_a_transfer_her_first_attempt_is_refused()
    retried = []

    def the_blocker_ends_and_the_retry_comes() -> None:
        the_blocker_ends()
        retried.append(send(p.book, late=True))

    first_attempt = _Meanwhile(
        p.book, lambda name, _: name == "forget_command", the_blocker_ends_and_the_retry_comes
    )
    answer = send(first_attempt)
    assert first_attempt.ran and retried[0].status == CommandStatus.ACCEPTED
    assert answer.command_id == retried[0].command_id  # both answers name the one command
    assert _holds(p.book, answer.command_id)
    p.run()
    assert p.command(answer.command_id).status == CommandStatus.COMMITTED
    p.check_invariants()


def _the_first_attempt_forgets_while_the_late_retry_runs(p: Any, send: Any, meanwhile: Any) -> Any:
    """The first send is refused; when it goes to forget its command, `meanwhile` runs, then
    a late retry (`send(late=True)`), which the forget comes just before (before it keeps the
    command). Both are refused: the first for the reservation, the retry because the command
    is gone. Returns the forgotten command."""
    forgotten: list[tuple[Any, bool]] = []

    class FirstAttempt:
        def __getattr__(self, name: str) -> Any:
            return getattr(p.book, name)

        def forget_command(self, command: Any) -> bool:
            meanwhile()

            def the_first_attempt_forgets() -> None:
                forgotten.append((command, p.book.forget_command(command)))

            retry = _Meanwhile(
                p.book, lambda name, _: name == "keep_command", the_first_attempt_forgets
            )
            with pytest.raises(Conflict, match="refused while this one ran"):
                send(retry, late=True)
            assert retry.ran
            return forgotten[0][1]

    with pytest.raises(Conflict, match="reserved"):
        send(FirstAttempt())
    ((command, removed),) = forgotten
    assert removed and p.book.get_command(command.command_id) is None
    assert _holds(p.book, command.command_id) == []
    return command


def test_a_late_retry_whose_command_was_forgotten_before_it_kept_it_takes_nothing():
    """The retry found the command, then the refused attempt forgot it, then the retry went to
    keep it. Nothing is taken, nothing is recorded, and the retry is told to send the request
    again, which then goes through (before keep_command: it took the slice for the forgotten
    command and answered 202)."""
    p, the_blocker_ends, send = _alice_retries_a_transfer_her_first_attempt_is_refused()
    _the_first_attempt_forgets_while_the_late_retry_runs(p, send, the_blocker_ends)
    _sent_again_it_commits(p, send)
    p.check_invariants()


def test_a_late_retry_refused_after_its_command_was_forgotten_says_so():
    """The same with the slice still reserved by the blocker: the retry, keeping the command
    before it takes, finds it gone: 409, send it again (before: its rejection found nothing
    to write and it answered 202 for a command that was not there, I2)."""
    p, _the_blocker_ends, send = _alice_retries_a_transfer_her_first_attempt_is_refused()
    _the_first_attempt_forgets_while_the_late_retry_runs(p, send, lambda: None)
