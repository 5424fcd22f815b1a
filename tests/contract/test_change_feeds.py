"""The change feeds, one behaviour on both books (in memory, and DynamoDB over moto).

A client follows a feed from a point with the cursor it is given: it must see the latest
state of everything that changed for it, never the same state twice, and nothing of others.
Both books are stamped by a clock the test moves, so the DynamoDB book's safety lag (it holds
back its newest positions) is visible and deterministic here.
"""

from __future__ import annotations

from datetime import timedelta

import pytest

from chalicelib import domain
from chalicelib.adapters.dynamo import DynamoBook
from chalicelib.adapters.memory import InMemoryBook
from chalicelib.domain import CommandKind, CommandStatus, SliceRef
from chalicelib.ports import Transition
from chalicelib.usecases import holds
from tests.builders import (
    T0,
    gsrn,
    issue_command,
    issue_spec,
    put_active,
    ref_of,
    transfer_command,
)
from tests.conftest import Clock, settings

LAG_S = 5.0


@pytest.fixture(params=["memory", "dynamo"])
def clock_and_book(request):
    clock = Clock(T0)
    if request.param == "memory":
        return clock, InMemoryBook(clock=clock)
    session = request.getfixturevalue("aws")
    return clock, DynamoBook(
        session.client("dynamodb"), settings().table_name, clock=clock, feed_lag_s=LAG_S
    )


def settle(clock: Clock) -> None:
    """Let the feeds' safety lag pass (the memory book has none, and does not mind)."""
    clock.advance(LAG_S + 1)


def follow(book, owner: str, cursor: str | None, since=T0 - timedelta(days=1), limit: int = 2):
    """Read the feed to its current end, a few items per page; the items and the cursor."""
    items = []
    for _ in range(100):
        page = book.certificate_changes(owner, since, cursor, limit)
        assert page.next_cursor is not None
        items += page.items
        if page.next_cursor == cursor:
            return items, cursor
        cursor = page.next_cursor
    raise AssertionError("the feed did not come to an end")


def test_a_new_certificate_is_in_its_owners_feed_and_no_one_elses(clock_and_book):
    clock, book = clock_and_book
    cert = put_active(book, issue_spec(owner="alice"))
    settle(clock)
    mine, _ = follow(book, "alice", None)
    assert [(c.certificate_id, c.version) for c in mine] == [(cert.certificate_id, cert.version)]
    assert follow(book, "mallory", None)[0] == []


def test_an_issuance_enters_its_owners_feed_once_issued_and_a_refused_one_never(clock_and_book):
    """While the registry has not issued it, a certificate is the issuer's command, not yet
    the owner's: it enters the feed once, issued (and costs no feed write before)."""
    clock, book = clock_and_book
    issuing = [issue_command(issue_spec(meter=gsrn(n)), key=f"i-{n}") for n in (1, 2)]
    for command in issuing:
        book.add_certificate(holds.certificate_to_issue(command))
    settle(clock)
    assert follow(book, "alice", None)[0] == []
    issued = book.update_certificate(
        issuing[0].certificate_id, lambda c: domain.apply_issue(c, issuing[0])
    )
    book.update_certificate(
        issuing[1].certificate_id,
        lambda c: c.model_copy(update={"status": domain.CertificateStatus.REJECTED}),
    )
    settle(clock)
    seen, _ = follow(book, "alice", None)
    assert [(c.certificate_id, c.version, c.status) for c in seen] == [
        (issued.certificate_id, issued.version, domain.CertificateStatus.ACTIVE)
    ]
    # the owner's view: not the book's own records of it (test_feed_marks.py: why)
    assert issued.applied and seen[0].applied == ()


def test_the_feed_holds_nothing_before_since_and_everything_after(clock_and_book):
    clock, book = clock_and_book
    early = put_active(book, issue_spec(meter=gsrn(1)), key="i-1")
    clock.advance(60)
    since = clock()
    late = put_active(book, issue_spec(meter=gsrn(2)), key="i-2")
    settle(clock)
    items, _ = follow(book, "alice", None, since=since)
    assert [c.certificate_id for c in items] == [late.certificate_id]
    everything, _ = follow(book, "alice", None)
    assert [c.certificate_id for c in everything] == [early.certificate_id, late.certificate_id]


def test_the_dynamodb_book_holds_back_changes_younger_than_its_lag(clock_and_book):
    clock, book = clock_and_book
    put_active(book, issue_spec())
    page = book.certificate_changes("alice", T0 - timedelta(days=1), None, 10)
    if isinstance(book, DynamoBook):
        assert page.items == []  # too young to be final
    settle(clock)
    page = book.certificate_changes("alice", None, page.next_cursor, 10)
    assert len(page.items) == (1 if isinstance(book, DynamoBook) else 0)


def test_a_change_moves_the_certificate_to_the_end_and_each_state_comes_once(clock_and_book):
    clock, book = clock_and_book
    first = put_active(book, issue_spec(meter=gsrn(1)), key="i-1")
    second = put_active(book, issue_spec(meter=gsrn(2)), key="i-2")
    settle(clock)
    seen, cursor = follow(book, "alice", None)
    assert [c.certificate_id for c in seen] == [first.certificate_id, second.certificate_id]
    # alice gives her slice of the first certificate to bob
    cmd = transfer_command(ref_of(first), first.quantity_wh, receiver="bob")
    book.reserve(ref_of(first), cmd.command_id, "alice", first.quantity_wh)
    after = book.update_certificate(
        first.certificate_id, lambda c: domain.apply_transfer(c, cmd), snapshot=None
    )
    settle(clock)
    more, cursor = follow(book, "alice", cursor)
    assert [(c.certificate_id, c.version) for c in more] == [(first.certificate_id, after.version)]
    bobs, _ = follow(book, "bob", None)
    assert [c.certificate_id for c in bobs] == [first.certificate_id]
    # nothing changed since: the feed is quiet, and the cursor stays where it is
    assert follow(book, "alice", cursor) == ([], cursor)


def test_a_change_to_someone_elses_slice_does_not_reach_my_feed(clock_and_book):
    clock, book = clock_and_book
    cert = put_active(book, issue_spec(owner="alice"))
    split = transfer_command(ref_of(cert), 400, receiver="bob")
    book.reserve(ref_of(cert), split.command_id, "alice", 400)
    cert = book.update_certificate(cert.certificate_id, lambda c: domain.apply_slice(c, split))
    cert = book.update_certificate(cert.certificate_id, lambda c: domain.apply_transfer(c, split))
    settle(clock)
    _, alice_at = follow(book, "alice", None)
    bobs, bob_at = follow(book, "bob", None)
    assert [c.certificate_id for c in bobs] == [cert.certificate_id]
    # bob passes his slice to carol: alice's view of the certificate is as it was
    (bobs_slice,) = [s for s in cert.slices.values() if s.owner == "bob"]
    ref = SliceRef(certificate_id=cert.certificate_id, slice_id=bobs_slice.slice_id)
    onward = transfer_command(ref, bobs_slice.quantity_wh, caller="bob", receiver="carol")
    book.reserve(ref, onward.command_id, "bob", bobs_slice.quantity_wh)
    book.update_certificate(cert.certificate_id, lambda c: domain.apply_transfer(c, onward))
    settle(clock)
    assert follow(book, "alice", alice_at)[0] == []
    assert [c.certificate_id for c in follow(book, "bob", bob_at)[0]] == [cert.certificate_id]
    assert [c.certificate_id for c in follow(book, "carol", None)[0]] == [cert.certificate_id]


def test_an_alignment_repair_reaches_the_feeds_of_those_it_changes(clock_and_book):
    """The reconciler repairs a certificate to the registry's word with a write conditional on
    the version it read (update_certificate_at): that is a change like any other to the
    owners whose view it changes. Missed once: their feeds kept the state from before."""
    clock, book = clock_and_book
    cert = put_active(book, issue_spec(owner="alice"))
    settle(clock)
    _, alice_at = follow(book, "alice", None)
    (slice_,) = cert.slices.values()

    def to_bob(c):  # the registry says bob holds the slice (it moved behind the book's back)
        moved = slice_.model_copy(update={"owner": "bob"})
        return c.model_copy(update={"slices": {slice_.slice_id: moved}})

    repaired = book.update_certificate_at(cert.certificate_id, cert.version, to_bob)
    settle(clock)
    alices, _ = follow(book, "alice", alice_at)
    assert [(c.certificate_id, c.version) for c in alices] == [
        (cert.certificate_id, repaired.version)
    ]
    assert [s.owner for s in alices[0].slices.values()] == []  # none of hers any more
    bobs, _ = follow(book, "bob", None)
    assert [(c.certificate_id, c.version) for c in bobs] == [
        (cert.certificate_id, repaired.version)
    ]


def test_a_replayed_write_does_not_give_the_same_state_again(clock_and_book):
    clock, book = clock_and_book
    cert = put_active(book, issue_spec())
    settle(clock)
    _, cursor = follow(book, "alice", None)
    # the worker applies the same outcome again after a crash: nothing changes
    book.update_certificate(cert.certificate_id, lambda c: c)
    book.update_certificate(cert.certificate_id, lambda c: c, snapshot=cert)
    settle(clock)
    assert follow(book, "alice", cursor)[0] == []


def test_commands_feed_shows_each_state_of_the_callers_transfers_and_the_receipt(clock_and_book):
    clock, book = clock_and_book
    cmd = transfer_command(SliceRef(certificate_id="cert-1", slice_id="s-1"), 10)
    book.add_command(cmd)
    book.add_command(
        transfer_command(SliceRef(certificate_id="cert-2", slice_id="s-1"), 10, caller="carol")
    )
    settle(clock)
    page = book.command_changes("alice", CommandKind.TRANSFER, T0 - timedelta(days=1), None, 10)
    assert [(c.command_id, c.status) for c in page.items] == [
        (cmd.command_id, CommandStatus.ACCEPTED)
    ]
    assert book.command_changes("alice", CommandKind.CLAIM, None, None, 10).items == []
    done = book.transition(
        cmd.command_id, Transition(CommandStatus.ACCEPTED, CommandStatus.COMMITTED, clock())
    )
    book.note_receipt(done)
    settle(clock)
    later = book.command_changes("alice", CommandKind.TRANSFER, None, page.next_cursor, 10)
    assert [(c.command_id, c.status) for c in later.items] == [
        (cmd.command_id, CommandStatus.COMMITTED)
    ]
    again = book.command_changes("alice", CommandKind.TRANSFER, None, later.next_cursor, 10)
    assert again.items == []
    received = book.command_changes("bob", CommandKind.TRANSFER, None, None, 10).items
    assert [(c.command_id, c.status) for c in received] == [
        (cmd.command_id, CommandStatus.COMMITTED)
    ]


def test_a_command_comes_again_when_a_step_commits_and_when_it_ends_not_while_sending(
    clock_and_book,
):
    """SENDING and SENT are the outbox handing a transaction to the registry: no change a
    follower is given again (and no move in the feed index to pay for)."""
    clock, book = clock_and_book
    cmd = transfer_command(SliceRef(certificate_id="cert-1", slice_id="s-1"), 10)
    book.add_command(cmd)
    settle(clock)
    page = book.command_changes("alice", CommandKind.TRANSFER, T0 - timedelta(days=1), None, 10)
    assert [c.status for c in page.items] == [CommandStatus.ACCEPTED]
    cursor = page.next_cursor
    book.transition(
        cmd.command_id, Transition(CommandStatus.ACCEPTED, CommandStatus.SENDING, clock())
    )
    book.transition(cmd.command_id, Transition(CommandStatus.SENDING, CommandStatus.SENT, clock()))
    settle(clock)
    quiet = book.command_changes("alice", CommandKind.TRANSFER, None, cursor, 10)
    assert quiet.items == [] and quiet.next_cursor == cursor
    book.transition(
        cmd.command_id, Transition(CommandStatus.SENT, CommandStatus.COMMITTED, clock())
    )
    settle(clock)
    ended = book.command_changes("alice", CommandKind.TRANSFER, None, cursor, 10)
    assert [c.status for c in ended.items] == [CommandStatus.COMMITTED]


def test_the_receivers_feed_gives_the_sender_the_slice_received_and_the_commit_time(
    clock_and_book,
):
    clock, book = clock_and_book
    cmd = transfer_command(SliceRef(certificate_id="cert-1", slice_id="s-1"), 10)
    book.add_command(cmd)
    sending = book.transition(
        cmd.command_id, Transition(CommandStatus.ACCEPTED, CommandStatus.SENDING, clock())
    )
    clock.advance(1)
    committed_at = clock()
    book.note_receipt(
        sending.model_copy(update={"status": CommandStatus.COMMITTED, "updated_at": committed_at})
    )
    book.transition(
        cmd.command_id, Transition(CommandStatus.SENDING, CommandStatus.COMMITTED, committed_at)
    )
    settle(clock)
    received = book.command_changes("bob", CommandKind.TRANSFER, None, None, 10).items
    assert [(c.caller, c.status, c.updated_at) for c in received] == [
        ("alice", CommandStatus.COMMITTED, committed_at)
    ]
    assert received[0].slices == (
        SliceRef(certificate_id="cert-1", slice_id=domain.slice_id_for(cmd.command_id, "received")),
    )


@pytest.mark.parametrize(
    "cursor",
    ["%%%", "eyJ4IjogMX0=", "WyIyMDI2LTA2LTAxIiwgImlkIl0="],  # not base64; {"x": 1}; a list cursor
)
def test_a_cursor_that_is_not_a_feed_position_is_refused(clock_and_book, cursor):
    _, book = clock_and_book
    with pytest.raises(domain.RuleViolation):
        book.certificate_changes("alice", None, cursor, 10)
    with pytest.raises(domain.RuleViolation):
        book.command_changes("alice", CommandKind.CLAIM, None, cursor, 10)
