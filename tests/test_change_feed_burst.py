"""A client follows its change feeds while a burst of concurrent transfers changes the book
under it: it must end with the latest state of everything that changed for it, having seen
no state twice and nothing of anyone else. Over the in-memory book and over DynamoDB (moto,
one boto3 client per thread as concurrent Lambdas would have, on the wall clock, so the
DynamoDB book's safety lag is what keeps the follower from moving past a late write).
"""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta

import pytest

from chalicelib import domain
from chalicelib.adapters.dynamo import DynamoBook
from chalicelib.adapters.memory import InMemoryBook
from chalicelib.domain import CommandKind, CommandStatus, SliceRef, SliceState
from chalicelib.ports import StaleCommand, Transition
from tests.builders import gsrn, issue_spec, put_active, transfer_command
from tests.conftest import settings

OWNERS = ("alice", "bob", "carol")
ROUNDS = 3
LAG_S = 1.0
SINCE = datetime(2000, 1, 1, tzinfo=UTC)


def transfer_once(book, certificate_id: str, giver: str, receiver: str, key: str) -> None:
    """One transfer as the pipeline records it: the command, the reservation, the book's
    change (sliced first when partial), the holding, the outcome and the receipt."""
    cert = book.get_certificate(certificate_id)
    mine = [s for s in cert.slices.values() if s.owner == giver and s.state == SliceState.AVAILABLE]
    if not mine:
        return
    source = max(mine, key=lambda s: s.quantity_wh)
    ref = SliceRef(certificate_id=certificate_id, slice_id=source.slice_id)
    quantity = max(1, source.quantity_wh // 2)
    cmd = transfer_command(ref, quantity, caller=giver, receiver=receiver, key=key)
    book.add_command(cmd)
    now = datetime.now(UTC)
    try:
        book.reserve(ref, cmd.command_id, giver, quantity)
    except (domain.Conflict, domain.NotFound):  # another thread took it first
        book.transition(
            cmd.command_id, Transition(CommandStatus.ACCEPTED, CommandStatus.REJECTED, now)
        )
        return
    if quantity != source.quantity_wh:
        book.update_certificate(certificate_id, lambda c: domain.apply_slice(c, cmd))
    done = book.update_certificate(certificate_id, lambda c: domain.apply_transfer(c, cmd))
    book.add_holding(receiver, done)
    try:
        committed = book.transition(
            cmd.command_id, Transition(CommandStatus.ACCEPTED, CommandStatus.COMMITTED, now)
        )
    except StaleCommand:
        return
    book.note_receipt(committed)


class Follower:
    """What one owner's app keeps: the states it was given, in order, for each feed."""

    def __init__(self, book, owner: str) -> None:
        self.book, self.owner = book, owner
        self.certificates: list[tuple[str, int, dict]] = []
        self.transfers: list[tuple[str, str, str]] = []
        self._cursors: dict[str, str | None] = {"certificates": None, "transfers": None}

    def catch_up(self) -> None:
        while True:
            page = self.book.certificate_changes(
                self.owner, SINCE, self._cursors["certificates"], 3
            )
            self.certificates += [
                (c.certificate_id, c.version, view_of(c, self.owner)) for c in page.items
            ]
            moved = page.next_cursor != self._cursors["certificates"]
            self._cursors["certificates"] = page.next_cursor
            page = self.book.command_changes(
                self.owner, CommandKind.TRANSFER, SINCE, self._cursors["transfers"], 3
            )
            self.transfers += [
                (c.command_id, c.status.value, c.updated_at.isoformat()) for c in page.items
            ]
            moved |= page.next_cursor != self._cursors["transfers"]
            self._cursors["transfers"] = page.next_cursor
            if not moved:
                return


def view_of(cert, owner: str) -> dict:
    return {
        s.slice_id: (s.quantity_wh, s.state.value) for s in cert.slices.values() if s.owner == owner
    }


@pytest.fixture(params=["memory", "dynamo"])
def books(request):
    """A function giving each thread its book: the same one in memory, its own client on
    DynamoDB."""
    if request.param == "memory":
        book = InMemoryBook()
        return lambda: book
    session = request.getfixturevalue("aws")
    lock = threading.Lock()

    def new_book():
        with lock:  # boto3 sessions are not thread-safe; the clients they make are
            client = session.client("dynamodb")
        return DynamoBook(client, settings().table_name, feed_lag_s=LAG_S)

    return new_book


def test_a_follower_sees_every_change_once_during_a_burst_of_transfers(books):
    setup = books()
    certs = [
        put_active(setup, issue_spec(owner=OWNERS[i % 3], meter=gsrn(i)), key=f"i-{i}")
        for i in range(4)
    ]
    followers = [Follower(books(), owner) for owner in OWNERS]
    stop = threading.Event()

    def follow_until_stopped(follower: Follower) -> None:
        while not stop.wait(0.02):  # an app polls; a busy loop would only starve the writers
            follower.catch_up()

    def transfer_round_robin(n: int) -> None:
        book = books()
        giver, receiver = OWNERS[n % 3], OWNERS[(n + 1) % 3]
        for r in range(ROUNDS):
            for cert in certs:  # every thread on every certificate: writes race
                transfer_once(book, cert.certificate_id, giver, receiver, f"t-{n}-{r}-{cert.gsrn}")

    writers = [threading.Thread(target=transfer_round_robin, args=(n,)) for n in range(3)]
    readers = [threading.Thread(target=follow_until_stopped, args=(f,)) for f in followers]
    for t in readers + writers:
        t.start()
    for t in writers:
        t.join()
    stop.set()
    for t in readers:
        t.join()
    time.sleep(LAG_S + 0.5)  # the DynamoDB feed gives the last writes once its lag has passed
    for f in followers:
        f.catch_up()

    final = {c.certificate_id: c for c in setup.get_certificates([c.certificate_id for c in certs])}
    transfers = [c for c in _all_commands(setup, certs) if c.kind == CommandKind.TRANSFER]
    assert sum(1 for c in transfers if c.status == CommandStatus.COMMITTED) >= len(certs)
    for f in followers:
        seen_states = [(cid, version) for cid, version, _ in f.certificates]
        assert len(seen_states) == len(set(seen_states)), f"{f.owner} was given a state twice"
        last: dict[str, tuple[int, dict]] = {}
        for cid, version, view in f.certificates:
            assert cid not in last or last[cid][0] < version, "a state older than one seen"
            last[cid] = (version, view)
        # the latest state of every certificate it sees, and only those
        mine = {cid for cid, c in final.items() if f.owner in domain.viewers(c)}
        assert set(last) == mine
        for cid in mine:
            assert last[cid][1] == view_of(final[cid], f.owner), f"{f.owner} missed a change"
        # its transfers, sent and received, each in its final state, no state twice
        assert len(f.transfers) == len(set(f.transfers))
        latest = {cid: status for cid, status, _ in f.transfers}
        expected = {
            c.command_id: c.status.value
            for c in transfers
            if c.caller == f.owner
            or (c.receiver == f.owner and c.status == CommandStatus.COMMITTED)
        }
        assert latest == expected


def _all_commands(book, certs):
    """Every command of the burst, read back through the callers' lists."""
    found = {}
    for owner in OWNERS:
        cursor = None
        while True:
            page = book.commands_of(owner, CommandKind.TRANSFER, 100, cursor)
            found.update({c.command_id: c for c in page.items})
            cursor = page.next_cursor
            if cursor is None:
                break
    return list(found.values())


def test_the_dynamodb_feed_without_its_lag_holds_back_nothing(aws):
    """The lag is a setting: at zero the newest write is given at once (what the burst test
    relies on the lag to prevent is a write landing below a position already given)."""
    book = DynamoBook(aws.client("dynamodb"), settings().table_name, feed_lag_s=0)
    cert = put_active(book, issue_spec())
    page = book.certificate_changes("alice", datetime.now(UTC) - timedelta(hours=1), None, 10)
    assert [c.certificate_id for c in page.items] == [cert.certificate_id]


def test_a_late_mark_of_an_older_write_does_not_hide_my_change(aws):
    """Two writers on one certificate: the first changes alice's slice but is slow to mark
    the feeds; the second changes only bob's slice and marks first. Alice's feed must still
    give her the change (the second writer carries her view forward), and the first writer's
    late mark must not take it back."""
    clock_now = [datetime(2026, 6, 1, 12, tzinfo=UTC)]

    def clock():
        return clock_now[0]

    book = DynamoBook(aws.client("dynamodb"), settings().table_name, clock=clock, feed_lag_s=5)
    cert = put_active(book, issue_spec(owner="alice"))
    split = transfer_command(
        SliceRef(certificate_id=cert.certificate_id, slice_id=next(iter(cert.slices))),
        400,
        receiver="bob",
    )
    book.reserve(split.slices[0], split.command_id, "alice", 400)
    book.update_certificate(cert.certificate_id, lambda c: domain.apply_slice(c, split))
    shared = book.update_certificate(cert.certificate_id, lambda c: domain.apply_transfer(c, split))
    clock_now[0] += timedelta(seconds=10)
    cursor = book.certificate_changes("alice", SINCE, None, 10).next_cursor
    # writer 1: reserves alice's slice (her view changes), its marks are held back
    (alices,) = [
        s for s in shared.slices.values() if s.owner == "alice" and s.state == SliceState.AVAILABLE
    ]
    marks, book._mark_changed = book._mark_changed, lambda *args, **kwargs: None
    first = book.reserve(
        SliceRef(certificate_id=cert.certificate_id, slice_id=alices.slice_id), "cmd-x", "alice", 1
    )
    book._mark_changed = marks
    # writer 2: reserves bob's slice (alice's view as writer 1 left it), and marks
    (bobs,) = [s for s in shared.slices.values() if s.owner == "bob"]
    book.reserve(
        SliceRef(certificate_id=cert.certificate_id, slice_id=bobs.slice_id), "cmd-y", "bob", 1
    )
    book._mark_changed(first)  # writer 1's marks, late
    clock_now[0] += timedelta(seconds=10)
    given = book.certificate_changes("alice", SINCE, cursor, 10).items
    assert [s.state for c in given for s in c.slices.values() if s.slice_id == alices.slice_id] == [
        SliceState.RESERVED
    ]
