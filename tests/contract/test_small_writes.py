"""The DynamoDB book's small writes: a command's build (its transactions and sealed secrets)
is put once in an item of its own, so that every later write of the command item, and its
copy in the `by_change` index, is charged on the command's few hundred bytes, not on its
proofs. Against the table as infra/ defines it, on moto."""

from __future__ import annotations

import base64

import pytest

from chalicelib import domain
from chalicelib.adapters.dynamo import DynamoBook
from chalicelib.domain import CommandStatus
from chalicelib.ports import StaleCommand, Transition
from tests.builders import T0, put_active
from tests.conftest import settings
from tests.contract.test_book_contract import a_command, at

ACCEPTED, SENDING, SENT = CommandStatus.ACCEPTED, CommandStatus.SENDING, CommandStatus.SENT
ONCE = frozenset({"transactions", "sealed_slices", "sealed_attributes"})
# About what a part transfer's proto build weighs: three transactions with range proofs.
PROOFS = tuple(base64.b64encode(bytes([n]) * 6_000).decode() for n in range(3))


@pytest.fixture
def book(aws) -> DynamoBook:
    return DynamoBook(aws.client("dynamodb"), settings().table_name)


def _items(book: DynamoBook, command_id: str) -> dict[str, dict]:
    answer = book._db.query(
        TableName=book._table,
        KeyConditionExpression="pk = :pk",
        ExpressionAttributeValues={":pk": {"S": f"CMD#{command_id}"}},
    )
    return {i["sk"]["S"].split("#")[0]: i for i in answer["Items"]}


def _size(item: dict) -> int:
    return sum(len(k) + len(str(v)) for k, v in item.items())


def _built(
    book: DynamoBook, command_id: str, transactions=PROOFS, minutes: int = 1, created_at=None
):
    return book.transition(
        command_id,
        Transition(
            ACCEPTED,
            SENDING,
            at(minutes),
            step=0,
            changes={"transactions": transactions, "attempts": 1},
            set_once=ONCE,
            created_at=created_at,
        ),
    )


def _calls(book: DynamoBook) -> list[str]:
    """The names of the DynamoDB operations the book makes from now on."""
    made: list[str] = []
    book._db.meta.events.register(
        "before-call.dynamodb", lambda model, **_: made.append(model.name)
    )
    return made


def test_a_build_for_a_known_incarnation_is_stored_without_reading_the_command(book) -> None:
    """The worker knows the command's created_at: the build is put and the guard taken, two
    writes and no read; a build of unknown incarnation reads the command first."""
    cmd = a_command()
    book.add_command(cmd)
    made = _calls(book)
    moved = _built(book, cmd.command_id, created_at=cmd.created_at)
    assert made == ["PutItem", "UpdateItem"]
    assert moved.transactions == PROOFS
    assert DynamoBook(book._db, book._table).get_command(cmd.command_id) == moved

    other = a_command("key-2")
    book.add_command(other)
    made.clear()
    _built(book, other.command_id)
    assert made == ["GetItem", "PutItem", "UpdateItem"]


def test_a_known_incarnation_whose_build_is_stored_sends_the_stored_one(book) -> None:
    """Another worker put its build and lost the guard: this worker's put finds it, and the
    guard it takes answers with that build, read back, not its own."""
    cmd = a_command()
    book.add_command(cmd)
    book.transition(cmd.command_id, Transition(ACCEPTED, SENDING, at(1), step=0))
    with pytest.raises(StaleCommand):
        _built(book, cmd.command_id, minutes=2, created_at=cmd.created_at)
    book.transition(cmd.command_id, Transition(SENDING, ACCEPTED, at(3)))
    fresh = DynamoBook(book._db, book._table)  # another container: the build not remembered
    moved = _built(fresh, cmd.command_id, ("bmV3",), minutes=4, created_at=cmd.created_at)
    assert moved.transactions == PROOFS


def test_the_build_is_stored_apart_and_the_command_item_stays_small(book) -> None:
    cmd = a_command()
    book.add_command(cmd)
    moved = _built(book, cmd.command_id)
    assert moved.transactions == PROOFS
    book.transition(cmd.command_id, Transition(SENDING, SENT, at(2)))

    items = _items(book, cmd.command_id)
    assert set(items) == {"CMD", "BUILT"}
    assert "transactions" not in items["CMD"] and items["CMD"]["built"] == {"BOOL": True}
    assert _size(items["CMD"]) < 1_024 < 18_000 < _size(items["BUILT"])
    fresh = DynamoBook(book._db, book._table)  # another container: nothing remembered
    assert fresh.get_command(cmd.command_id) == book.get_command(cmd.command_id)
    assert fresh.get_command(cmd.command_id).transactions == PROOFS


def test_the_first_build_stays_whoever_builds_again(book) -> None:
    cmd = a_command()
    book.add_command(cmd)
    _built(book, cmd.command_id)
    book.transition(cmd.command_id, Transition(SENDING, ACCEPTED, at(2)))
    again = _built(book, cmd.command_id, transactions=("b3RoZXI=",), minutes=3)
    assert again.transactions == PROOFS
    assert DynamoBook(book._db, book._table).get_command(cmd.command_id).transactions == PROOFS


def test_a_build_whose_guard_lost_is_the_one_the_next_guard_uses(book) -> None:
    """A worker stored its build, then lost the guard (or died): the build stays, unsent, and
    the next worker's guard sends it rather than its own, as when the build was an attribute
    written `if_not_exists`."""
    cmd = a_command()
    book.add_command(cmd)
    book.transition(cmd.command_id, Transition(ACCEPTED, SENDING, at(1), step=0))
    with pytest.raises(StaleCommand):
        _built(book, cmd.command_id, minutes=2)  # stored, then the guard failed
    book.transition(cmd.command_id, Transition(SENDING, ACCEPTED, at(3)))
    assert book.get_command(cmd.command_id).transactions == ()  # nothing says built yet
    assert _built(book, cmd.command_id, ("bmV3",), minutes=4).transactions == PROOFS


def test_a_command_accepted_again_under_its_id_never_inherits_an_old_build(book) -> None:
    """The API forgets a command whose message could not be queued; a worker may still have
    stored a build for it (the send was ambiguous and the message got through). The client's
    retry records the command again, created anew: its build is its own."""
    first = a_command(minutes=0)
    book.add_command(first)
    book._store_build(first.command_id, {"transactions": list(PROOFS)})
    book.forget_command(first)
    assert _items(book, first.command_id).keys() == {"BUILT"}  # left behind

    again = a_command(minutes=5)
    assert again.command_id == first.command_id
    book.add_command(again)
    assert book.get_command(again.command_id).transactions == ()
    mine = ("bWluZQ==",)
    assert _built(book, again.command_id, mine, minutes=6).transactions == mine
    assert DynamoBook(book._db, book._table).get_command(again.command_id).transactions == mine


def test_lists_and_feeds_carry_the_build(book) -> None:
    cmd = a_command()
    book.add_command(cmd)
    _built(book, cmd.command_id)
    fresh = DynamoBook(book._db, book._table, feed_lag_s=0)
    (listed,) = fresh.commands_of(cmd.caller, cmd.kind, 10, None).items
    (opened,) = DynamoBook(book._db, book._table).open_commands(at(60), 10)
    (fed,) = (
        DynamoBook(book._db, book._table, feed_lag_s=0)
        .command_changes(cmd.caller, cmd.kind, None, None, 10)
        .items
    )
    assert listed.transactions == opened.transactions == fed.transactions == PROOFS


def test_a_certificate_item_keeps_each_slice_id_once_and_reads_the_older_form(book) -> None:
    """Every write of a certificate is charged per started KB of the whole item: a slice's id
    is its key in the item's map and nowhere else in it."""
    cert = put_active(book)
    key = {"pk": {"S": f"CERT#{cert.certificate_id}"}, "sk": {"S": "CERT"}}
    item = book._db.get_item(TableName=book._table, Key=key)["Item"]
    assert "hashed_attributes" not in item  # empty: absent, which reads the same
    stored = item["slices"]["M"]
    ((slice_id, value),) = stored.items()
    assert slice_id in cert.slices and "slice_id" not in value["M"]
    # An item written before, with the id in the slice too, reads the same.
    value["M"]["slice_id"] = {"S": slice_id}
    book._db.update_item(
        TableName=book._table,
        Key=key,
        UpdateExpression="SET slices = :s",
        ExpressionAttributeValues={":s": {"M": stored}},
    )
    assert book.get_certificate(cert.certificate_id) == cert


def test_an_upgrades_first_deploy_writes_what_the_previous_code_reads(aws) -> None:
    """With write_previous_forms (docs/DEPLOY.md, "Upgrading"), a certificate's item and its
    feed mark are what the code before the smaller forms parsed: the item's values whole
    (each slice with its id), the mark's view a whole certificate's JSON."""
    from chalicelib.adapters.dynamo import _from_item
    from chalicelib.domain import Certificate

    book = DynamoBook(
        aws.client("dynamodb"), settings().table_name, feed_lag_s=0, previous_forms=True
    )
    cert = put_active(book)
    key = {"pk": {"S": f"CERT#{cert.certificate_id}"}, "sk": {"S": "CERT"}}
    item = book._db.get_item(TableName=book._table, Key=key)["Item"]
    assert Certificate.model_validate(_from_item(item)) == cert  # as the previous code read it
    mark = book._db.get_item(
        TableName=book._table,
        Key={"pk": {"S": f"FEED#{cert.owner}"}, "sk": {"S": f"CERT#{cert.certificate_id}"}},
    )["Item"]
    previous = Certificate.model_validate_json(mark["certificate"]["S"])
    assert previous == domain.view_of(cert, cert.owner)
    # And the book reads both forms: a book of the smaller forms reads these.
    smaller = DynamoBook(aws.client("dynamodb"), settings().table_name, feed_lag_s=0)
    assert smaller.get_certificate(cert.certificate_id) == cert
    assert smaller.certificate_changes(cert.owner, T0, None, 10).items == [previous]
