"""The DynamoDB book's feed marks: one write per viewer and change, and still right when a mark
is not as the write expected (a write cut short before its marks). On moto, with the table of
infra/; what a follower of the feed sees is the contract suite's (test_change_feeds.py)."""

from __future__ import annotations

import pytest

from bench.capacity import value_size
from chalicelib import domain
from chalicelib.adapters.dynamo import DynamoBook
from chalicelib.ports import Transition
from tests.builders import T0, issue_spec, put_active, ref_of, transfer_command
from tests.conftest import Clock, settings


@pytest.fixture
def clock() -> Clock:
    return Clock(T0)


@pytest.fixture
def book(aws, clock) -> DynamoBook:
    return DynamoBook(aws.client("dynamodb"), settings().table_name, clock=clock, feed_lag_s=0)


def _calls(book: DynamoBook, monkeypatch) -> list[tuple[str, str]]:
    """The book's calls on feed marks from now on, as (operation, owner)."""
    seen: list[tuple[str, str]] = []
    call = book._call

    def recording(operation: str, **kwargs):
        key = kwargs.get("Key") or kwargs.get("Item") or {}
        if key.get("pk", {}).get("S", "").startswith("FEED#"):
            seen.append((operation, key["pk"]["S"].removeprefix("FEED#")))
        return call(operation, **kwargs)

    monkeypatch.setattr(book, "_call", recording)
    return seen


def size_of(item: dict) -> int:
    """Bytes as DynamoDB charges an item (bench/capacity.py)."""
    return sum(len(name.encode()) + value_size(value) for name, value in item.items())


def _mark(book: DynamoBook, owner: str, certificate_id: str) -> dict:
    return book._db.get_item(
        TableName=book._table,
        Key={"pk": {"S": f"FEED#{owner}"}, "sk": {"S": f"CERT#{certificate_id}"}},
    )["Item"]


def test_a_change_of_the_owners_view_moves_their_mark_with_one_put(
    book, clock, monkeypatch
) -> None:
    cert = put_active(book, issue_spec(owner="alice"))
    before = _mark(book, "alice", cert.certificate_id)
    clock.advance(1)
    calls = _calls(book, monkeypatch)
    reserved = book.reserve(ref_of(cert), "cmd-1", "alice", cert.live_quantity())
    assert calls == [("put_item", "alice")]
    after = _mark(book, "alice", cert.certificate_id)
    assert int(after["feed_version"]["N"]) == reserved.version
    assert after["feed_sk"]["S"] > before["feed_sk"]["S"]  # at the end of the feed


def test_a_transfer_moves_both_owners_marks_with_one_put_each(book, monkeypatch) -> None:
    cert = put_active(book, issue_spec(owner="alice"))
    transfer = transfer_command(ref_of(cert), cert.live_quantity())
    book.reserve(ref_of(cert), transfer.command_id, "alice", cert.live_quantity())
    calls = _calls(book, monkeypatch)
    book.update_certificate(cert.certificate_id, lambda c: domain.apply_transfer(c, transfer))
    assert calls == [("put_item", "alice"), ("put_item", "bob")]


def test_a_write_that_leaves_a_view_as_it_was_updates_the_mark_where_it_is(
    book, clock, monkeypatch
) -> None:
    cert = put_active(book, issue_spec(owner="alice"))
    before = _mark(book, "alice", cert.certificate_id)
    clock.advance(1)
    calls = _calls(book, monkeypatch)
    # A field no owner sees: the version moves on, alice's view does not.
    changed = book.update_certificate(
        cert.certificate_id, lambda c: c.model_copy(update={"applied": (*c.applied, "x")})
    )
    assert calls == [("update_item", "alice")]
    after = _mark(book, "alice", cert.certificate_id)
    assert int(after["feed_version"]["N"]) == changed.version
    assert after["feed_sk"]["S"] == before["feed_sk"]["S"]  # where it was


def test_a_mark_that_missed_a_write_still_ends_at_the_newest_state(
    book, clock, monkeypatch
) -> None:
    """A reservation whose marks were cut short, then its release: alice's mark still shows
    the view from before both, which is the view after them. The release expects her view to
    change and puts first; refused (same view), it updates the mark where it is."""
    cert = put_active(book, issue_spec(owner="alice"))
    before = _mark(book, "alice", cert.certificate_id)
    monkeypatch.setattr(book, "_mark_changed", lambda *a, **k: None)  # the crash
    book.reserve(ref_of(cert), "cmd-1", "alice", cert.live_quantity())
    monkeypatch.undo()
    clock.advance(1)
    calls = _calls(book, monkeypatch)
    released = book.update_certificate(cert.certificate_id, lambda c: domain.release(c, "cmd-1"))
    assert calls == [("put_item", "alice"), ("update_item", "alice")]
    after = _mark(book, "alice", cert.certificate_id)
    assert int(after["feed_version"]["N"]) == released.version
    assert after["feed_sk"]["S"] == before["feed_sk"]["S"]  # never shown as changed: it is not
    assert after["view_digest"]["S"] == domain.view_digest(released, "alice")


def test_an_older_write_marked_late_leaves_the_newer_mark(book, monkeypatch) -> None:
    cert = put_active(book, issue_spec(owner="alice"))
    reserved = book.reserve(ref_of(cert), "cmd-1", "alice", cert.live_quantity())
    newest = _mark(book, "alice", cert.certificate_id)
    calls = _calls(book, monkeypatch)
    book._mark_changed(cert, moved={"alice"})  # the issue's marks, replayed late
    book._mark_changed(cert)
    assert calls == [("put_item", "alice"), ("update_item", "alice")]  # each refused once
    assert _mark(book, "alice", cert.certificate_id) == newest
    assert int(newest["feed_version"]["N"]) == reserved.version


def test_a_mark_holds_the_owners_view_without_the_books_secrets(book, clock) -> None:
    """A slice's sealed secret (~600 bytes with real transactions), its registry reference
    and the commands applied are the book's, shown by no answer: a mark without them stays
    within one write unit, and so does its copy in the feed index."""
    cert = put_active(book, issue_spec(owner="alice"))
    [slice_id] = cert.slices
    sealed = "k1." + "s" * 600
    stored = book.update_certificate(
        cert.certificate_id,
        lambda c: c.model_copy(
            update={
                "slices": {
                    slice_id: c.slices[slice_id].model_copy(
                        update={"secret": sealed, "registry_ref": "ab" * 32}
                    )
                }
            }
        ),
    )
    assert stored.slices[slice_id].secret == sealed and stored.applied
    mark = _mark(book, "alice", cert.certificate_id)
    assert sealed not in mark["certificate"]["S"] and "ab" * 32 not in mark["certificate"]["S"]
    assert size_of(mark) < 1024
    [given] = book.certificate_changes("alice", T0, None, 10).items
    assert (given.version, given.applied) == (stored.version, ())
    assert given.slices[slice_id].secret is None
    assert given.slices[slice_id].quantity_wh == stored.slices[slice_id].quantity_wh


def test_a_mark_names_the_certificate_and_slice_ids_and_the_owner_once_and_reads_whole(
    book,
) -> None:
    """The mark's key says the owner and the certificate, its version the view's version, and
    each slice's key its id: the view in it says them no more (an owner of the length of an
    OIDC subject took a one-slice mark over 1 KB). A mark written whole before reads the same."""
    owner = "5b0e6c1a-3f27-4d8e-9a41-7c2d90e1b3f4"
    cert = put_active(book, issue_spec(owner=owner))
    [slice_id] = cert.slices
    mark = _mark(book, owner, cert.certificate_id)
    held = mark["certificate"]["S"]
    # Once each: the slice's id as its key, the owner as the one it was issued to.
    assert (held.count(cert.certificate_id), held.count(slice_id), held.count(owner)) == (0, 1, 1)
    assert size_of(mark) < 900
    [given] = book.certificate_changes(owner, T0, None, 10).items
    assert given == domain.view_of(cert, owner)
    book._db.update_item(
        TableName=book._table,
        Key={"pk": mark["pk"], "sk": mark["sk"]},
        UpdateExpression="SET certificate = :c",
        ExpressionAttributeValues={
            ":c": {"S": domain.view_of(cert, owner).model_dump_json(exclude_none=True)}
        },
    )
    assert book.certificate_changes(owner, T0, None, 10).items == [given]


def test_a_listed_commands_sending_and_sent_cost_the_change_feeds_index_nothing(aws, clock):
    """The feed's index holds keys only: a write that keeps a command's place in its caller's
    feed (SENDING, SENT: a claim makes eight) writes no index entry. With whole items
    projected (`by_change`, before), each was written into the index again."""
    import boto3

    from bench.capacity import Meter

    session = boto3.Session(region_name="eu-west-1")
    meter = Meter(boto3.Session(region_name="eu-west-1"))
    meter.attach(session, "test")
    book = DynamoBook(session.client("dynamodb"), settings().table_name, clock=clock)
    cert = put_active(book, issue_spec(owner="alice"))
    command = transfer_command(ref_of(cert), cert.live_quantity())
    book.add_command(command)
    with meter.measuring("in place"):
        for expected, target in [
            (domain.CommandStatus.ACCEPTED, domain.CommandStatus.SENDING),
            (domain.CommandStatus.SENDING, domain.CommandStatus.SENT),
        ]:
            book.transition(command.command_id, Transition(expected, target, T0))
    clock.advance(1)
    with meter.measuring("ended"):
        book.transition(
            command.command_id,
            Transition(domain.CommandStatus.SENT, domain.CommandStatus.COMMITTED, T0),
        )
    in_place, ended = meter.tally("in place", "test"), meter.tally("ended", "test")
    assert in_place.table_writes == 2 and dict(in_place.wcu_index) == {}
    assert ended.wcu_index["changes"] == 2  # the command moves in its feed: a delete and a put


def test_a_feed_read_while_its_index_is_still_being_built_is_a_dependency_down(aws, clock):
    """After the upgrade's first deploy (docs/DEPLOY.md), until DynamoDB has filled `changes`:
    503 with Retry-After, not a 500."""
    from botocore.exceptions import ClientError

    from chalicelib.ports import DependencyDown

    client = aws.client("dynamodb")

    class Backfilling:
        def __getattr__(self, name):
            return getattr(client, name)

        def query(self, **kwargs):
            if kwargs.get("IndexName") == "changes":
                raise ClientError(
                    {
                        "Error": {
                            "Code": "ValidationException",
                            "Message": "Cannot read from backfilling global secondary index: "
                            "changes",
                        }
                    },
                    "Query",
                )
            return client.query(**kwargs)

    book = DynamoBook(Backfilling(), settings().table_name, clock=clock, feed_lag_s=0)
    with pytest.raises(DependencyDown, match="still being built"):
        book.certificate_changes("alice", None, None, 10)


def test_a_mark_that_moves_between_the_index_and_its_read_is_given_once(aws, clock):
    """The feed's index gives the keys, the items are read after: a mark that moved on between
    the two (a reservation changed the owner's view) is given at its new place only. Read at
    the old place too, the follower was given the same state twice (seen once in CI's burst
    test under load, `tests/test_change_feed_burst.py`)."""
    client = aws.client("dynamodb")
    writer = DynamoBook(client, settings().table_name, clock=clock, feed_lag_s=0)
    cert = put_active(writer, issue_spec(owner="alice"))
    clock.advance(1)
    moved: list[int] = []

    class TheMarkMovesBeforeTheRead:
        def __getattr__(self, name):
            return getattr(client, name)

        def batch_get_item(self, **kwargs):
            if not moved:
                clock.advance(1)
                moved.append(writer.reserve(ref_of(cert), "cmd-1", "alice", 1).version)
            return client.batch_get_item(**kwargs)

    reader = DynamoBook(
        TheMarkMovesBeforeTheRead(), settings().table_name, clock=clock, feed_lag_s=0
    )
    first = reader.certificate_changes("alice", None, None, 10)
    clock.advance(1)
    second = reader.certificate_changes("alice", None, first.next_cursor, 10)
    given = [(c.certificate_id, c.version) for c in first.items + second.items]
    assert moved and given == [(cert.certificate_id, moved[0])]
