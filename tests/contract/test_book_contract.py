"""One behaviour, two books: every test here runs against the in-memory book and against the
DynamoDB book over moto (the table built from infra/resources.json), so the fake used by the
fast tests cannot drift from the real adapter."""

from __future__ import annotations

import base64
import json
from datetime import timedelta, timezone

import pytest

from chalicelib import domain
from chalicelib.adapters.dynamo import DynamoBook
from chalicelib.adapters.memory import InMemoryBook
from chalicelib.domain import (
    CertificateStatus,
    CertificateType,
    CommandKind,
    CommandStatus,
    Conflict,
    NotFound,
    SliceRef,
    SliceState,
)
from chalicelib.ports import (
    CertificateMoved,
    CommandQuery,
    DuplicateCommand,
    HoldingQuery,
    StaleCommand,
    Transition,
)
from chalicelib.registry import attributes
from chalicelib.registry.secrets import LocalSecretBox, SecretUnreadable
from chalicelib.usecases import holds, process
from tests.builders import (
    HOUR_START,
    T0,
    command,
    gsrn,
    issue_command,
    issue_spec,
    issuing_certificate,
    only_slice,
    put_active,
    ref_of,
    transfer_command,
)
from tests.conftest import settings

ACCEPTED, SENDING, SENT = CommandStatus.ACCEPTED, CommandStatus.SENDING, CommandStatus.SENT
COMMITTED, REJECTED, IN_DOUBT = (
    CommandStatus.COMMITTED,
    CommandStatus.REJECTED,
    CommandStatus.IN_DOUBT,
)


@pytest.fixture(params=["memory", "dynamo"])
def book(request):
    if request.param == "memory":
        return InMemoryBook()
    session = request.getfixturevalue("aws")
    return DynamoBook(session.client("dynamodb"), settings().table_name)


def at(minutes: int):
    return T0 + timedelta(minutes=minutes)


def a_command(key: str = "key-1", *, caller: str = "alice", minutes: int = 0, **fields):
    fields.setdefault("kind", CommandKind.TRANSFER)
    kind = fields.pop("kind")
    return command(kind, "cert-1", caller=caller, key=key, now=at(minutes), **fields)


# --- commands ---------------------------------------------------------------------------------


def test_a_recorded_command_reads_back_equal(book):
    cmd = a_command(
        slices=(SliceRef(certificate_id="cert-1", slice_id="s-1"),),
        receiver="bob",
        quantity_wh=2**32 - 1,
    )
    book.add_command(cmd)
    assert book.get_command(cmd.command_id) == cmd


def test_an_issue_command_reads_back_with_its_specification(book):
    cmd = issue_command(issue_spec(start=HOUR_START, minutes=15))
    book.add_command(cmd)
    assert book.get_command(cmd.command_id) == cmd


def test_an_unknown_command_reads_as_none(book):
    assert book.get_command("no-such-command") is None


def test_recording_a_command_id_twice_raises_duplicate_with_the_stored_command(book):
    first = a_command(body_hash="first-body")
    book.add_command(first)
    second = first.model_copy(update={"request_hash": "other-body", "created_at": at(5)})
    with pytest.raises(DuplicateCommand) as duplicate:
        book.add_command(second)
    assert duplicate.value.existing == first
    assert book.get_command(first.command_id) == first


def test_a_transition_from_the_expected_status_moves_the_command_and_stamps_it(book):
    cmd = a_command()
    book.add_command(cmd)
    moved = book.transition(
        cmd.command_id,
        Transition(
            expected=ACCEPTED,
            target=SENDING,
            now=at(1),
            step=0,
            changes={"lease_until": at(3), "attempts": 1, "transactions": ("dHgx", "dHgy")},
        ),
    )
    assert (moved.status, moved.updated_at, moved.lease_until, moved.attempts) == (
        SENDING,
        at(1),
        at(3),
        1,
    )
    assert moved.transactions == ("dHgx", "dHgy")
    assert book.get_command(cmd.command_id) == moved


def test_a_transition_can_clear_a_field_and_move_to_the_next_step(book):
    cmd = a_command()
    book.add_command(cmd)
    book.transition(
        cmd.command_id, Transition(ACCEPTED, SENDING, at(1), changes={"lease_until": at(3)})
    )
    moved = book.transition(
        cmd.command_id,
        Transition(SENDING, ACCEPTED, at(2), step=0, changes={"lease_until": None, "step": 1}),
    )
    assert moved.lease_until is None and moved.step == 1
    assert book.get_command(cmd.command_id) == moved


def test_a_transition_accepts_any_of_several_expected_statuses(book):
    cmd = a_command()
    book.add_command(cmd)
    book.transition(cmd.command_id, Transition(ACCEPTED, SENDING, at(1)))
    book.transition(cmd.command_id, Transition(SENDING, SENT, at(2)))
    moved = book.transition(
        cmd.command_id,
        Transition((SENDING, SENT), IN_DOUBT, at(3), changes={"error": "no answer"}),
    )
    assert (moved.status, moved.error) == (IN_DOUBT, "no answer")


def test_a_transition_from_another_status_raises_stale_with_the_current_command(book):
    cmd = a_command()
    book.add_command(cmd)
    with pytest.raises(StaleCommand) as stale:
        book.transition(cmd.command_id, Transition(SENDING, SENT, at(1)))
    assert stale.value.current == cmd
    assert book.get_command(cmd.command_id) == cmd


def test_a_transition_at_another_step_raises_stale_with_the_current_command(book):
    cmd = a_command()
    book.add_command(cmd)
    with pytest.raises(StaleCommand) as stale:
        book.transition(cmd.command_id, Transition(ACCEPTED, SENDING, at(1), step=1))
    assert stale.value.current == cmd
    assert book.get_command(cmd.command_id) == cmd


def test_a_transition_for_another_incarnation_is_stale_and_the_new_one_builds_its_own(book):
    """The command was forgotten and accepted again under its id since the worker read it: a
    guard taken for the incarnation it read holds for that one only, and the build it carried
    is not the new one's."""
    first = a_command(minutes=0)
    book.add_command(first)
    book.forget_command(first)
    again = a_command(minutes=5)
    book.add_command(again)

    def guard(transactions: tuple[str, ...], minutes: int, created_at) -> Transition:
        return Transition(
            ACCEPTED,
            SENDING,
            at(minutes),
            step=0,
            changes={"transactions": transactions, "attempts": 1},
            set_once=frozenset({"transactions"}),
            created_at=created_at,
        )

    with pytest.raises(StaleCommand) as stale:
        book.transition(again.command_id, guard(("b2xk",), 6, first.created_at))
    assert stale.value.current == again
    assert book.get_command(again.command_id) == again
    mine = book.transition(again.command_id, guard(("bmV3",), 7, again.created_at))
    assert mine.transactions == ("bmV3",)


def test_two_workers_racing_for_the_guard_the_second_finds_it_taken(book):
    cmd = a_command()
    book.add_command(cmd)
    guard = Transition(ACCEPTED, SENDING, at(1), step=0, changes={"attempts": 1})
    won = book.transition(cmd.command_id, guard)
    with pytest.raises(StaleCommand) as lost:
        book.transition(cmd.command_id, guard)
    assert lost.value.current == won


def test_a_transition_of_an_unknown_command_raises_stale_with_none(book):
    with pytest.raises(StaleCommand) as stale:
        book.transition("no-such-command", Transition(ACCEPTED, SENDING, at(1)))
    assert stale.value.current is None


@pytest.mark.parametrize(
    ("expected", "target"),
    [(COMMITTED, SENDING), (ACCEPTED, SENT), ((ACCEPTED, COMMITTED), SENDING)],
)
def test_a_transition_the_state_machine_forbids_is_refused_and_changes_nothing(
    book, expected, target
):
    cmd = a_command()
    book.add_command(cmd)
    with pytest.raises(domain.IllegalTransition):
        book.transition(cmd.command_id, Transition(expected, target, at(1)))
    assert book.get_command(cmd.command_id) == cmd


@pytest.mark.parametrize("terminal", [COMMITTED, REJECTED])
def test_a_terminal_transition_takes_the_command_out_of_the_open_commands(book, terminal):
    stays, ends = a_command("k-stays"), a_command("k-ends", minutes=1)
    book.add_command(stays)
    book.add_command(ends)
    assert [c.command_id for c in book.open_commands(at(60), 10)] == [
        stays.command_id,
        ends.command_id,
    ]
    book.transition(ends.command_id, Transition(ACCEPTED, terminal, at(2)))
    assert [c.command_id for c in book.open_commands(at(60), 10)] == [stays.command_id]
    with pytest.raises(domain.IllegalTransition):  # a terminal state has no exit
        book.transition(ends.command_id, Transition(terminal, ACCEPTED, at(3)))


def test_a_claim_noted_as_stranded_is_listed_for_good_and_reads_with_its_allocations(book):
    stranded = domain.StrandedAllocation(
        side=CertificateType.PRODUCTION,
        certificate_id="cert-1",
        slice_id="s-1",
        allocation_id="a-1",
        transaction_id="tx-1",
    )
    later, first = a_command("k-later", minutes=5), a_command("k-first", minutes=1)
    for cmd in (later, first, a_command("k-other", minutes=2)):
        book.add_command(cmd)
    assert book.stranded_commands(10) == []
    for cmd in (later, first):
        book.note_stranded(cmd)
        book.note_stranded(cmd)  # idempotent
        book.transition(
            cmd.command_id,
            Transition(
                ACCEPTED,
                REJECTED,
                at(9),
                changes={"error": "stranded", "stranded": (stranded,)},
                reconciled=True,
            ),
        )
        book.mark_reconciled(cmd.command_id)
    listed = book.stranded_commands(10)
    assert [c.command_id for c in listed] == [first.command_id, later.command_id]
    assert listed[0].status == REJECTED and listed[0].stranded == (stranded,)
    assert [c.command_id for c in book.stranded_commands(1)] == [first.command_id]
    # Off the reconciler's lists: only the stranded list keeps them.
    assert all(c.status == ACCEPTED for c in book.open_commands(at(60), 10))
    assert book.settled_commands(10) == []


def test_open_commands_are_oldest_first_created_strictly_before_the_cutoff_and_limited(book):
    made = [a_command(f"k-{m}", minutes=m) for m in (30, 10, 20, 0, 40)]
    for cmd in made:
        book.add_command(cmd)
    by_minute = {m: c.command_id for m, c in zip((30, 10, 20, 0, 40), made, strict=True)}
    assert [c.command_id for c in book.open_commands(at(100), 10)] == [
        by_minute[m] for m in (0, 10, 20, 30, 40)
    ]
    assert [c.command_id for c in book.open_commands(at(30), 10)] == [
        by_minute[m] for m in (0, 10, 20)
    ]
    assert [c.command_id for c in book.open_commands(at(100), 2)] == [
        by_minute[0],
        by_minute[10],
    ]
    assert book.open_commands(at(0), 10) == []


def test_open_commands_include_every_status_that_is_not_terminal(book):
    for key, path in {
        "k-sending": [SENDING],
        "k-sent": [SENDING, SENT],
        "k-doubt": [SENDING, IN_DOUBT],
        "k-done": [SENDING, COMMITTED],
    }.items():
        cmd = a_command(key)
        book.add_command(cmd)
        current = ACCEPTED
        for target in path:
            book.transition(cmd.command_id, Transition(current, target, at(1)))
            current = target
    book.add_command(a_command("k-accepted"))
    assert sorted(c.status for c in book.open_commands(at(60), 10)) == sorted(
        [SENDING, SENT, IN_DOUBT, ACCEPTED]
    )


def test_forgetting_an_untouched_accepted_command_removes_it(book):
    cmd = a_command()
    book.add_command(cmd)
    assert book.forget_command(cmd) is True
    assert book.get_command(cmd.command_id) is None
    assert book.open_commands(at(60), 10) == []
    assert book.forget_command(cmd) is False  # forgetting again is harmless, and says so


def test_a_kept_command_is_never_forgotten_and_a_forgotten_one_cannot_be_kept(book):
    cmd = a_command()
    assert book.keep_command(cmd.command_id) is None  # nothing to keep
    book.add_command(cmd)
    assert book.keep_command(cmd.command_id) == ACCEPTED
    assert book.forget_command(cmd) is False
    assert book.get_command(cmd.command_id) == cmd
    other = a_command("k-other")
    book.add_command(other)
    assert book.forget_command(other) is True
    assert book.keep_command(other.command_id) is None
    assert book.get_command(other.command_id) is None


def test_a_command_a_worker_has_taken_is_not_forgotten(book):
    cmd = a_command()
    book.add_command(cmd)
    taken = book.transition(
        cmd.command_id, Transition(ACCEPTED, SENDING, at(1), changes={"attempts": 1})
    )
    assert book.forget_command(cmd) is False
    assert book.get_command(cmd.command_id) == taken
    back = book.transition(cmd.command_id, Transition(SENDING, ACCEPTED, at(2)))
    assert book.forget_command(cmd) is False  # ACCEPTED again, but it has been tried: it stays
    assert book.get_command(cmd.command_id) == back


def test_commands_of_lists_the_callers_commands_of_one_kind_newest_first(book):
    mine = [a_command(f"k-{m}", minutes=m) for m in (5, 1, 3)]
    for cmd in mine:
        book.add_command(cmd)
    book.add_command(a_command("k-claim", minutes=2, kind=CommandKind.CLAIM))
    book.add_command(a_command("k-bob", caller="bob", minutes=4))
    page = book.commands_of("alice", CommandKind.TRANSFER, 10, None)
    assert [c.created_at for c in page.items] == [at(5), at(3), at(1)]
    assert page.next_cursor is None
    claims = book.commands_of("alice", CommandKind.CLAIM, 10, None).items
    assert [c.kind for c in claims] == [CommandKind.CLAIM]
    assert book.commands_of("carol", CommandKind.TRANSFER, 10, None).items == []


def test_commands_of_pages_through_every_command_once_with_its_cursor(book):
    made = [a_command(f"k-{m}", minutes=m) for m in range(7)]
    for cmd in made:
        book.add_command(cmd)
    seen, cursor = [], None
    for _ in range(10):
        page = book.commands_of("alice", CommandKind.TRANSFER, 3, cursor)
        assert len(page.items) <= 3
        seen += [c.command_id for c in page.items]
        cursor = page.next_cursor
        if cursor is None:
            break
    assert seen == [c.command_id for c in reversed(made)]


def test_a_receiver_sees_a_transfer_only_once_it_is_noted_as_received(book):
    sent = transfer_command(SliceRef(certificate_id="cert-1", slice_id="s-1"), 10)
    book.add_command(sent)
    assert book.commands_of("bob", CommandKind.TRANSFER, 10, None).items == []
    done = book.transition(sent.command_id, Transition(ACCEPTED, COMMITTED, at(1)))
    book.note_receipt(done)
    assert [
        c.command_id for c in book.commands_of("bob", CommandKind.TRANSFER, 10, None).items
    ] == [sent.command_id]
    assert [
        c.command_id for c in book.commands_of("alice", CommandKind.TRANSFER, 10, None).items
    ] == [sent.command_id]


def test_a_receiver_lists_the_transfer_with_its_sender_the_slice_it_got_and_its_time(book):
    """The receiver's copy is the transfer as they see it: its sender (caller), the slice
    they received (never the sender's own slice id), and the time noted with the receipt,
    which the worker makes the command's COMMITTED time. (The feed: test_change_feeds.)"""
    sent = transfer_command(SliceRef(certificate_id="cert-1", slice_id="s-1"), 10)
    book.add_command(sent)
    sending = book.transition(sent.command_id, Transition(ACCEPTED, SENDING, at(1)))
    book.note_receipt(sending.model_copy(update={"status": COMMITTED, "updated_at": at(2)}))
    book.transition(sent.command_id, Transition(SENDING, COMMITTED, at(2)))
    received = SliceRef(
        certificate_id="cert-1", slice_id=domain.slice_id_for(sent.command_id, "received")
    )
    items = book.commands_of("bob", CommandKind.TRANSFER, 10, None).items
    assert [(c.command_id, c.caller, c.receiver, c.status, c.updated_at) for c in items] == [
        (sent.command_id, "alice", "bob", COMMITTED, at(2))
    ]
    assert items[0].slices == (received,)
    assert items[0].quantity_wh == 10
    # the sender's own list is unchanged: the slice they spent
    mine = book.commands_of("alice", CommandKind.TRANSFER, 10, None).items
    assert [(c.slices, c.updated_at) for c in mine] == [(sent.slices, at(2))]


# --- the caller's own commands (GET /v1/commands) ---------------------------------------------


def _own(book, caller="alice", *, limit=100, **filters):
    """Every page of the caller's own commands, in order, following the cursor."""
    seen, cursor = [], None
    for _ in range(200):
        page = book.own_commands(CommandQuery(caller=caller, limit=limit, cursor=cursor, **filters))
        assert len(page.items) <= limit
        seen += page.items
        cursor = page.next_cursor
        if cursor is None:
            return seen
    raise AssertionError("the pages did not come to an end")


def _every_kind(book):
    """alice makes one command of each kind, a minute apart; bob one; alice receives one."""
    kinds = list(CommandKind)
    made = [a_command(f"k-{k.value}", minutes=i, kind=k) for i, k in enumerate(kinds)]
    for cmd in made:
        book.add_command(cmd)
    book.add_command(a_command("k-bob", caller="bob", minutes=2))
    to_alice = a_command("k-to-alice", caller="bob", minutes=3, receiver="alice")
    book.add_command(to_alice)
    done = book.transition(to_alice.command_id, Transition(ACCEPTED, COMMITTED, at(3)))
    book.note_receipt(done)
    return made


def test_a_caller_lists_its_own_commands_of_every_kind_newest_first(book):
    made = _every_kind(book)
    listed = _own(book)
    assert [c.command_id for c in listed] == [c.command_id for c in reversed(made)]
    assert {c.kind for c in listed} == set(CommandKind)
    assert all(c.caller == "alice" for c in listed)  # not bob's, nor the one alice received
    assert [c.kind for c in _own(book, "bob")] == [CommandKind.TRANSFER, CommandKind.TRANSFER]


def test_own_commands_filter_by_kind_status_and_creation_time(book):
    made = _every_kind(book)
    book.transition(made[0].command_id, Transition(ACCEPTED, REJECTED, at(9)))
    book.transition(made[4].command_id, Transition(ACCEPTED, COMMITTED, at(9)))
    assert [c.kind for c in _own(book, kinds=frozenset({CommandKind.ISSUE}))] == [CommandKind.ISSUE]
    done = _own(book, statuses=frozenset({REJECTED, COMMITTED}))
    assert [c.command_id for c in done] == [made[4].command_id, made[0].command_id]
    # created at or after 1 minute, before 3: the second and third
    window = _own(book, created_after=at(1), created_before=at(3))
    assert [c.command_id for c in window] == [made[2].command_id, made[1].command_id]
    assert _own(book, created_after=at(30)) == []


@pytest.mark.parametrize("limit", [1, 2, 3])
def test_own_commands_page_through_every_match_once_whatever_the_filter(book, limit):
    made = [
        a_command(f"k-{i}", minutes=i, kind=[CommandKind.ISSUE, CommandKind.SLICE][i % 2])
        for i in range(9)
    ]
    for cmd in made:
        book.add_command(cmd)
    for cmd in made[::3]:
        book.transition(cmd.command_id, Transition(ACCEPTED, COMMITTED, at(20)))
    assert [c.command_id for c in _own(book, limit=limit)] == [c.command_id for c in reversed(made)]
    committed = _own(book, limit=limit, statuses=frozenset({COMMITTED}))
    assert [c.command_id for c in committed] == [c.command_id for c in reversed(made[::3])]


def test_an_own_commands_cursor_of_another_list_is_refused(book):
    for cmd in (a_command("k-1"), a_command("k-2", minutes=1)):
        book.add_command(cmd)
    listed = book.commands_of("alice", CommandKind.TRANSFER, 1, None).next_cursor
    for cursor in (listed, "%%%", forged_cursor(["own", 5]), forged_cursor({"x": 1})):
        with pytest.raises(domain.RuleViolation):
            book.own_commands(CommandQuery(caller="alice", cursor=cursor))


def forged_cursor(value) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).decode()


@pytest.mark.parametrize(
    "cursor",
    [
        "%%%not-base64",
        base64.urlsafe_b64encode(b"not json").decode(),
        forged_cursor(5),
        forged_cursor({"x": 1}),
        forged_cursor({"pk": "x", "sk": "y"}),
        forged_cursor(["a"]),
        forged_cursor([1, 2]),
    ],
    ids=["not-base64", "not-json", "number", "odd-dict", "plain-strings", "short-list", "ints"],
)
def test_a_cursor_the_book_did_not_give_out_is_refused_as_a_rule_violation(book, cursor):
    for cmd in (a_command("k-1"), a_command("k-2", minutes=1)):
        book.add_command(cmd)
    put_active(book)
    with pytest.raises(domain.RuleViolation) as refused:
        book.commands_of("alice", CommandKind.TRANSFER, 1, cursor)
    assert refused.value.field == "cursor"
    with pytest.raises(domain.RuleViolation):
        book.holdings(HoldingQuery(owner="alice", limit=1, cursor=cursor))


# --- certificates -----------------------------------------------------------------------------


def test_a_certificate_being_issued_reads_back_equal_at_version_one(book):
    cert = issuing_certificate()
    book.add_certificate(cert)
    assert book.get_certificate(cert.certificate_id) == cert.model_copy(update={"version": 1})


def test_an_unknown_certificate_reads_as_none(book):
    assert book.get_certificate("no-such-certificate") is None
    assert book.get_certificates(["no-such-certificate"]) == []


def test_a_certificate_is_issued_once_per_metering_point_type_and_start(book):
    first = issuing_certificate(key="issue-1")
    book.add_certificate(first)
    with pytest.raises(Conflict) as refused:
        book.add_certificate(issuing_certificate(key="issue-2"))
    assert refused.value.subject == first.certificate_id
    assert book.get_certificate(first.certificate_id).issue_command == first.issue_command


def test_a_replay_of_the_same_issuance_changes_nothing(book):
    cert = issuing_certificate()
    book.add_certificate(cert)
    stored = book.get_certificate(cert.certificate_id)
    book.add_certificate(cert)
    assert book.get_certificate(cert.certificate_id) == stored


def test_an_active_certificate_is_not_reissued_by_a_replay_of_its_issuance(book):
    active = put_active(book)
    book.add_certificate(issuing_certificate())
    assert book.get_certificate(active.certificate_id) == active


def reject(book, cert):
    return book.update_certificate(
        cert.certificate_id, lambda c: c.model_copy(update={"status": CertificateStatus.REJECTED})
    )


def test_after_a_rejected_issuance_the_same_identity_can_be_issued_again(book):
    rejected = reject(book, _added(book, issuing_certificate(key="issue-1")))
    again = issuing_certificate(key="issue-2")
    book.add_certificate(again)
    stored = book.get_certificate(again.certificate_id)
    assert stored.issue_command == again.issue_command
    assert stored.status == CertificateStatus.ISSUING
    # the version goes on, so a writer still holding the rejected one cannot overwrite it
    assert stored.version > rejected.version


def test_a_replay_of_a_rejected_issuance_does_not_revive_it(book):
    rejected = reject(book, _added(book, issuing_certificate(key="issue-1")))
    book.add_certificate(issuing_certificate(key="issue-1"))
    assert book.get_certificate(rejected.certificate_id) == rejected


def _added(book, cert):
    book.add_certificate(cert)
    return book.get_certificate(cert.certificate_id)


def test_get_certificates_returns_the_known_ones_in_the_order_asked_once_each(book):
    a = put_active(book, issue_spec(meter=gsrn(1)), key="a")
    b = put_active(book, issue_spec(meter=gsrn(2)), key="b")
    found = book.get_certificates([b.certificate_id, "unknown", a.certificate_id, b.certificate_id])
    assert found == [b, a]


def test_an_active_certificate_round_trips_with_its_slices_and_attributes(book):
    cert = put_active(book, issue_spec(quantity_wh=2**32 - 1))
    assert cert.status == CertificateStatus.ACTIVE
    assert book.get_certificate(cert.certificate_id) == cert
    assert only_slice(cert).quantity_wh == 2**32 - 1
    assert cert.attributes == {"technology": "T010000"}


# --- reservations -----------------------------------------------------------------------------


def test_reserving_an_available_slice_holds_it_for_the_command(book):
    cert = put_active(book)
    held = book.reserve(ref_of(cert), "cmd-1", "alice", 1000)
    assert only_slice(held).state == SliceState.RESERVED
    assert only_slice(held).reserved_by == "cmd-1"
    assert held.version == cert.version + 1
    assert book.get_certificate(cert.certificate_id) == held


def test_a_replayed_reservation_by_the_same_command_succeeds_and_changes_nothing(book):
    cert = put_active(book)
    held = book.reserve(ref_of(cert), "cmd-1", "alice", 1)
    assert book.reserve(ref_of(cert), "cmd-1", "alice", 1) == held
    assert book.get_certificate(cert.certificate_id) == held


def test_a_slice_reserved_by_another_command_is_a_conflict(book):
    cert = put_active(book)
    held = book.reserve(ref_of(cert), "cmd-1", "alice", 1)
    with pytest.raises(Conflict, match="reserved"):
        book.reserve(ref_of(cert), "cmd-2", "alice", 1)
    assert book.get_certificate(cert.certificate_id) == held


def test_someone_elses_slice_reads_as_not_found(book):
    cert = put_active(book)
    with pytest.raises(NotFound):
        book.reserve(ref_of(cert), "cmd-1", "mallory", 1)
    assert book.get_certificate(cert.certificate_id) == cert


def test_a_slice_too_small_for_the_command_is_a_conflict(book):
    cert = put_active(book)
    with pytest.raises(Conflict, match="less than"):
        book.reserve(ref_of(cert), "cmd-1", "alice", 1001)
    assert book.get_certificate(cert.certificate_id) == cert


def test_a_missing_certificate_or_slice_reads_as_not_found(book):
    cert = put_active(book)
    with pytest.raises(NotFound) as missing_certificate:
        book.reserve(SliceRef(certificate_id="nope", slice_id="s"), "cmd-1", "alice", 1)
    assert missing_certificate.value.field == "certificate_id"
    with pytest.raises(NotFound) as missing_slice:
        book.reserve(
            SliceRef(certificate_id=cert.certificate_id, slice_id="nope"), "cmd-1", "alice", 1
        )
    assert missing_slice.value.field == "slice_id"
    assert book.get_certificate(cert.certificate_id) == cert


def test_no_slice_is_reserved_while_a_withdrawal_is_pending(book):
    cert = put_active(book)
    marked = book.update_certificate(
        cert.certificate_id, lambda c: domain.begin_withdrawal(c, "withdraw-1")
    )
    with pytest.raises(Conflict, match="withdrawn"):
        book.reserve(ref_of(cert), "cmd-1", "alice", 1)
    assert book.get_certificate(cert.certificate_id) == marked


def test_a_certificate_still_being_issued_cannot_be_reserved(book):
    cert = issuing_certificate()
    book.add_certificate(cert)
    ref = SliceRef(certificate_id=cert.certificate_id, slice_id="any")
    with pytest.raises(Conflict, match="not issued yet"):
        book.reserve(ref, "cmd-1", "alice", 1)
    with pytest.raises(NotFound):
        book.reserve(ref, "cmd-1", "mallory", 1)


def test_a_spent_slice_cannot_be_reserved_again(book):
    cert = put_active(book)
    give = transfer_command(ref_of(cert), 1000)
    book.reserve(ref_of(cert), give.command_id, "alice", 1000)
    book.update_certificate(cert.certificate_id, lambda c: domain.apply_transfer(c, give))
    with pytest.raises(Conflict, match="transferred"):
        book.reserve(ref_of(cert), "cmd-2", "alice", 1)


def test_a_released_slice_can_be_reserved_by_another_command(book):
    cert = put_active(book)
    book.reserve(ref_of(cert), "cmd-1", "alice", 1)
    book.update_certificate(cert.certificate_id, lambda c: domain.release(c, "cmd-1"))
    held = book.reserve(ref_of(cert), "cmd-2", "alice", 1)
    assert only_slice(held).reserved_by == "cmd-2"


# --- updates ----------------------------------------------------------------------------------


def test_an_update_stores_the_change_and_bumps_the_version(book):
    cert = put_active(book)
    changed = book.update_certificate(
        cert.certificate_id, lambda c: c.model_copy(update={"attributes": {"fuel": "F01"}})
    )
    assert changed.attributes == {"fuel": "F01"} and changed.version == cert.version + 1
    assert book.get_certificate(cert.certificate_id) == changed


def test_an_update_that_changes_nothing_writes_nothing(book):
    cert = put_active(book)
    assert book.update_certificate(cert.certificate_id, lambda c: c) == cert
    assert book.get_certificate(cert.certificate_id).version == cert.version


def test_an_update_of_an_unknown_certificate_is_not_found(book):
    with pytest.raises(NotFound):
        book.update_certificate("no-such-certificate", lambda c: c)


def test_an_update_whose_change_refuses_writes_nothing(book):
    cert = put_active(book)

    def refuse(_):
        raise Conflict("no")

    with pytest.raises(Conflict):
        book.update_certificate(cert.certificate_id, refuse)
    assert book.get_certificate(cert.certificate_id) == cert


# --- holdings ---------------------------------------------------------------------------------


def holdings_of(book, **query) -> list[tuple[str, str]]:
    page = book.holdings(HoldingQuery(owner=query.pop("owner", "alice"), **query))
    return [(c.period.start.strftime("%H:%M"), c.type.value) for c in page.items]


@pytest.fixture
def alices_certificates(book):
    """Production at 10:00, 11:00 and 12:00 in DK1; consumption at 10:30 in DK2; and one of
    bob's at 13:00."""
    for n, hour in enumerate((10, 11, 12)):
        put_active(
            book,
            issue_spec(meter=gsrn(n), start=HOUR_START.replace(hour=hour)),
            key=f"p{n}",
        )
    put_active(
        book,
        issue_spec(
            meter=gsrn(9),
            type_=CertificateType.CONSUMPTION,
            grid_area="DK2",
            start=HOUR_START.replace(minute=30),
            minutes=15,
        ),
        key="c",
    )
    put_active(book, issue_spec(owner="bob", meter=gsrn(20), start=HOUR_START.replace(hour=13)))
    return book


def test_holdings_list_the_owners_certificates_newest_period_first(alices_certificates):
    assert holdings_of(alices_certificates) == [
        ("12:00", "production"),
        ("11:00", "production"),
        ("10:30", "consumption"),
        ("10:00", "production"),
    ]
    assert holdings_of(alices_certificates, owner="bob") == [("13:00", "production")]
    assert holdings_of(alices_certificates, owner="carol") == []


def test_holdings_filter_by_type_and_grid_area(alices_certificates):
    assert holdings_of(alices_certificates, type=CertificateType.CONSUMPTION) == [
        ("10:30", "consumption")
    ]
    assert holdings_of(alices_certificates, grid_area="DK1") == [
        ("12:00", "production"),
        ("11:00", "production"),
        ("10:00", "production"),
    ]
    assert holdings_of(alices_certificates, grid_area="DK1", type=CertificateType.CONSUMPTION) == []


def test_holdings_filter_by_periods_starting_from_start_and_before_end(alices_certificates):
    assert holdings_of(
        alices_certificates,
        start=HOUR_START.replace(minute=30),
        end=HOUR_START.replace(hour=12),
    ) == [("11:00", "production"), ("10:30", "consumption")]


def test_holdings_filters_given_in_another_time_zone_mean_the_same_moments(alices_certificates):
    plus_two = timezone(timedelta(hours=2))
    assert holdings_of(
        alices_certificates,
        start=HOUR_START.replace(minute=30).astimezone(plus_two),
        end=HOUR_START.replace(hour=12).astimezone(plus_two),
    ) == [("11:00", "production"), ("10:30", "consumption")]


def test_holdings_page_through_every_certificate_once_with_the_cursor(alices_certificates):
    for limit in (1, 2, 3):
        seen, cursor = [], None
        for _ in range(10):
            page = alices_certificates.holdings(
                HoldingQuery(owner="alice", limit=limit, cursor=cursor)
            )
            assert len(page.items) <= limit
            seen += [c.period.start.strftime("%H:%M") for c in page.items]
            cursor = page.next_cursor
            if cursor is None:
                break
        assert seen == ["12:00", "11:00", "10:30", "10:00"], limit


def test_filtered_holdings_page_with_the_cursor_too(alices_certificates):
    seen, cursor = [], None
    for _ in range(10):
        page = alices_certificates.holdings(
            HoldingQuery(owner="alice", grid_area="DK1", limit=2, cursor=cursor)
        )
        seen += [c.period.start.strftime("%H:%M") for c in page.items]
        cursor = page.next_cursor
        if cursor is None:
            break
    assert seen == ["12:00", "11:00", "10:00"]


def test_noting_a_holding_twice_lists_the_certificate_once(book):
    cert = put_active(book)
    book.add_holding("alice", cert)
    book.add_holding("bob", cert)
    assert holdings_of(book) == [("10:00", "production")]
    assert holdings_of(book, owner="bob") == [("10:00", "production")]


def test_holdings_show_the_certificate_as_it_is_now(book):
    cert = put_active(book)
    held = book.reserve(ref_of(cert), "cmd-1", "alice", 1)
    (listed,) = book.holdings(HoldingQuery(owner="alice")).items
    assert listed == held


# --- changes conditional on a certificate's version (the reconciler's alignment) ----------------


def test_a_change_at_the_version_read_is_written_and_moves_the_version_on(book):
    cert = put_active(book)
    withdrawn = book.update_certificate_at(
        cert.certificate_id, cert.version, lambda c: c.model_copy(update={"withdrawal": "cmd-9"})
    )
    assert withdrawn.version == cert.version + 1
    assert book.get_certificate(cert.certificate_id) == withdrawn


def test_a_change_at_a_version_the_certificate_moved_past_writes_nothing(book):
    cert = put_active(book)
    moved = book.update_certificate(
        cert.certificate_id, lambda c: domain.reserve(c, ref_of(c), "cmd-1", "alice", 1)
    )
    with pytest.raises(CertificateMoved):
        book.update_certificate_at(
            cert.certificate_id, cert.version, lambda c: domain.release(c, "cmd-1")
        )
    assert book.get_certificate(cert.certificate_id) == moved


def test_a_change_at_a_version_of_a_certificate_not_in_the_book_is_not_found(book):
    with pytest.raises(NotFound):
        book.update_certificate_at("cert-none", 1, lambda c: c)


# --- commands the reconciler could not settle --------------------------------------------------


def test_an_unsettled_pass_is_counted_and_a_reason_marks_the_command_for_an_operator(book):
    cmd = a_command()
    book.add_command(cmd)
    book.note_unsettled(cmd.command_id)
    assert book.get_command(cmd.command_id).unsettled_passes == 1
    book.note_unsettled(cmd.command_id, for_operator="the registry refused the query")
    marked = book.get_command(cmd.command_id)
    assert (marked.unsettled_passes, marked.error) == (2, "the registry refused the query")
    assert (marked.status, marked.updated_at) == (cmd.status, cmd.updated_at)
    assert [c.command_id for c in book.open_commands(at(60), 10)] == [cmd.command_id]


def test_an_unsettled_pass_leaves_a_terminal_or_unknown_command_alone(book):
    cmd = a_command()
    book.add_command(cmd)
    done = book.transition(
        cmd.command_id, Transition(expected=ACCEPTED, target=REJECTED, now=at(1))
    )
    book.note_unsettled(cmd.command_id, for_operator="late")
    book.note_unsettled("cmd-none", for_operator="late")
    assert book.get_command(cmd.command_id) == done
    assert book.get_command("cmd-none") is None


def test_an_issues_sealed_attribute_salts_are_kept_once_and_move_onto_the_certificate(book):
    # The salts of hashed attributes are made once, when the issue is built, sealed, and must
    # survive the book: without its salt an owner can no longer show what the hash is of.
    box = LocalSecretBox(bytes(range(32)))
    spec = issue_spec().model_copy(update={"attributes": {"address": "Some road 1"}})
    issue = issue_command(spec)
    cert_id = issue.certificate_id
    book.add_certificate(holds.certificate_to_issue(issue))
    book.add_command(issue)

    def sealed(salt: bytes) -> dict[str, domain.HashedAttribute]:
        return {
            "address": domain.HashedAttribute(
                registry_value=attributes.hashed_value("address", "Some road 1", cert_id, salt),
                salt=attributes.seal_salt(box, cert_id, "address", salt),
            )
        }

    first, second = sealed(b"\x01" * 16), sealed(b"\x02" * 16)
    once = frozenset({"transactions", "sealed_attributes"})
    book.transition(
        issue.command_id,
        Transition(ACCEPTED, SENDING, at(1), changes={"sealed_attributes": first}, set_once=once),
    )
    book.transition(issue.command_id, Transition(SENDING, ACCEPTED, at(2)))
    # A second build (a redelivery) does not replace the salts the first one sealed.
    moved = book.transition(
        issue.command_id,
        Transition(ACCEPTED, SENDING, at(3), changes={"sealed_attributes": second}, set_once=once),
    )
    assert moved.sealed_attributes == first
    stored = book.get_command(issue.command_id)
    assert stored is not None and stored.sealed_attributes == first

    process.apply_outcome(book, stored)
    cert = book.get_certificate(cert_id)
    assert cert is not None and cert.status == CertificateStatus.ACTIVE
    assert cert.hashed_attributes == first
    hashed = cert.hashed_attributes["address"]
    assert attributes.open_salt(box, cert_id, "address", hashed.salt) == b"\x01" * 16
    with pytest.raises(SecretUnreadable):  # bound to its certificate and key
        attributes.open_salt(box, cert_id, "technology", hashed.salt)
    process.apply_outcome(book, stored)  # idempotent
    assert book.get_certificate(cert_id) == cert
