"""The shard listings (issue 16), one behaviour in both books: the in-memory book and the
DynamoDB book over moto (the table built from infra/resources.json)."""

from __future__ import annotations

from datetime import timedelta

import pytest

from chalicelib.adapters.dynamo import DynamoBook, expiry_key
from chalicelib.adapters.memory import InMemoryBook, shard_of
from chalicelib.domain import CommandKind
from tests.builders import HOUR_START, T0, command, issue_spec, issuing_certificate
from tests.conftest import settings

OPEN, EXPIRY = 3, 6


@pytest.fixture(params=["memory", "dynamo"])
def book(request):
    if request.param == "memory":
        return InMemoryBook(open_shards=OPEN, expiry_shards=EXPIRY)
    session = request.getfixturevalue("aws")
    return DynamoBook(session.client("dynamodb"), settings().table_name, OPEN, EXPIRY)


def test_open_commands_list_by_shard_and_the_shards_cover_the_whole_list(book) -> None:
    commands = [
        command(CommandKind.TRANSFER, f"cert-{i}", key=f"k-{i}", now=T0 + timedelta(seconds=i))
        for i in range(18)
    ]
    for c in commands:
        book.add_command(c)
    later = T0 + timedelta(days=1)
    everything = [c.command_id for c in book.open_commands(later, 100)]
    by_shard = [[c.command_id for c in book.open_commands(later, 100, shard=k)] for k in range(3)]
    assert (
        sorted(i for ids in by_shard for i in ids)
        == sorted(everything)
        == sorted(c.command_id for c in commands)
    )
    for k, ids in enumerate(by_shard):
        assert ids and all(shard_of(i, OPEN) == k for i in ids)


def test_expiring_certificates_list_by_shard_and_the_shards_cover_the_day(book) -> None:
    certs = [
        issuing_certificate(
            issue_spec(meter=f"5713130000000009{i:02d}", start=HOUR_START), key=f"i{i}"
        )
        for i in range(24)
    ]
    for cert in certs:
        book.add_certificate(cert)
    day = HOUR_START.date()
    everything = book.expiring_certificates(day, 100)
    by_shard = [book.expiring_certificates(day, 100, shard=k) for k in range(OPEN)]
    assert (
        sorted(i for ids in by_shard for i in ids)
        == sorted(everything)
        == sorted(c.certificate_id for c in certs)
    )
    assert sum(1 for ids in by_shard if ids) > 1
    limited = book.expiring_certificates(day, 1, shard=0)
    assert len(limited) <= len(range(0, EXPIRY, OPEN))  # one per expiry shard of shard 0


def test_the_expiry_key_spreads_one_day_over_its_shards() -> None:
    certs = [
        issuing_certificate(issue_spec(meter=f"5713130000000008{i:02d}"), key=f"j{i}")
        for i in range(60)
    ]
    keys = {expiry_key(c, EXPIRY) for c in certs}
    assert keys == {f"{HOUR_START.date().isoformat()}#{e}" for e in range(EXPIRY)}
