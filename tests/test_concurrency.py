"""Many callers at once through the accept use cases: the book's conditional writes let exactly
one of them win (I4, no double spend) and leave one command record, over DynamoDB (moto) as
over the in-memory book.

moto's mock is process-wide, so the threads share it; each has its own DynamoBook on its own
boto3 client, as concurrent Lambda invocations would. conftest makes moto atomic per request,
as DynamoDB is (devstack/motoserver.make_atomic).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from chalicelib import domain
from chalicelib.adapters.dynamo import DynamoBook
from chalicelib.adapters.memory import InMemoryBook, InMemoryQueue
from chalicelib.adapters.sqs import SqsCommandQueue
from chalicelib.domain import Actor, Command, CommandKind, Conflict, Role, SliceState
from chalicelib.ports import Book, CommandQueue
from chalicelib.usecases import accept
from tests.builders import (
    API_TIMEOUT,
    ISSUER,
    T0,
    issue_spec,
    only_slice,
    put_active,
    queue_depth,
    ref_of,
)
from tests.conftest import settings

CALLERS = 20


class Rig:
    """One book and queue per caller, all on the same storage."""

    def __init__(self, kind: str, aws: Any = None) -> None:
        self.kind = kind
        if kind == "memory":
            book, queue = InMemoryBook(), InMemoryQueue()
            self.books: list[Book] = [book] * CALLERS
            self.queues: list[CommandQueue] = [queue] * CALLERS
            self.shared_book, self._queue = book, queue
            return
        table = settings().table_name
        sqs = aws.client("sqs")
        self._sqs = sqs
        self._url = sqs.get_queue_url(QueueName=settings().queue_name)["QueueUrl"]
        # boto3 sessions are not thread-safe, clients are: build them here, use them there
        self.books = [DynamoBook(aws.client("dynamodb"), table) for _ in range(CALLERS)]
        self.queues = [SqsCommandQueue(sqs, self._url)] * CALLERS  # one client serves all
        self.shared_book = DynamoBook(aws.client("dynamodb"), table)
        self._dynamodb = aws.client("dynamodb")

    def queued(self) -> int:
        if self.kind == "memory":
            return len(self._queue.messages)
        return queue_depth(self._sqs, self._url)

    def command_ids(self) -> set[str]:
        if self.kind == "memory":
            return set(self.shared_book.commands)
        found, args = set(), {"TableName": settings().table_name}
        while True:
            page = self._dynamodb.scan(**args)
            found |= {i["pk"]["S"][4:] for i in page["Items"] if i["pk"]["S"].startswith("CMD#")}
            if "LastEvaluatedKey" not in page:
                return found
            args["ExclusiveStartKey"] = page["LastEvaluatedKey"]

    def race(self, attempt: Callable[[Book, CommandQueue, int], Command]) -> list[Any]:
        """Every caller attempts at the same moment; each outcome is a Command or the error."""
        start = threading.Barrier(CALLERS)

        def one(i: int) -> Any:
            start.wait()
            try:
                return attempt(self.books[i], self.queues[i], i)
            except Conflict as refused:
                return refused

        with ThreadPoolExecutor(CALLERS) as pool:
            return list(pool.map(one, range(CALLERS)))


@pytest.fixture(params=["memory", "dynamo"])
def rig(request) -> Rig:
    if request.param == "memory":
        return Rig("memory")
    return Rig("dynamo", request.getfixturevalue("aws"))


def as_caller(owner: str, key: str, body: Any = "body", *roles: Role) -> accept.Request:
    return accept.Request(
        actor=Actor(owner=owner, roles=frozenset(roles)),
        idempotency_key=key,
        body_hash=domain.request_hash(body),
        now=T0,
        attempt_timeout=API_TIMEOUT,
    )


def test_twenty_concurrent_transfers_of_one_slice_accept_exactly_one(rig):
    cert = put_active(rig.shared_book)
    ref = ref_of(cert)
    outcomes = rig.race(
        lambda book, queue, i: accept.transfer(
            book, queue, as_caller("alice", f"key-{i}", i), ref, f"receiver-{i}", 1000
        )
    )
    winners = [o for o in outcomes if isinstance(o, Command)]
    assert len(winners) == 1, outcomes
    refused = [o for o in outcomes if isinstance(o, Conflict)]
    assert len(refused) == CALLERS - 1
    assert all("reserved" in r.detail for r in refused)
    (winner,) = winners
    held = only_slice(rig.shared_book.get_certificate(cert.certificate_id))
    assert (held.state, held.reserved_by) == (SliceState.RESERVED, winner.command_id)
    assert rig.command_ids() == {winner.command_id}
    assert rig.shared_book.get_command(winner.command_id) == winner
    assert rig.queued() == 1


def test_twenty_concurrent_issues_of_one_certificate_accept_exactly_one(rig):
    outcomes = rig.race(
        lambda book, queue, i: accept.issue(
            book, queue, as_caller(ISSUER, f"key-{i}", i, Role.ISSUER), issue_spec()
        )
    )
    winners = [o for o in outcomes if isinstance(o, Command)]
    assert len(winners) == 1, outcomes
    assert sum(isinstance(o, Conflict) for o in outcomes) == CALLERS - 1
    (winner,) = winners
    cert = rig.shared_book.get_certificate(winner.certificate_id)
    assert cert.issue_command == winner.command_id
    assert rig.command_ids() == {winner.command_id}


def test_twenty_concurrent_replays_of_one_request_answer_one_command(rig):
    cert = put_active(rig.shared_book)
    outcomes = rig.race(
        lambda book, queue, _: accept.transfer(
            book, queue, as_caller("alice", "the-key"), ref_of(cert), "bob", 400
        )
    )
    # A send that finds the first still at work before its holds are all taken is told so
    # (409, nothing touched); every other answer names the one command.
    answered = [o for o in outcomes if isinstance(o, Command)]
    told_to_wait = [o for o in outcomes if not isinstance(o, Command)]
    assert answered and len(answered) + len(told_to_wait) == len(outcomes)
    assert all(
        isinstance(o, Conflict) and "still being processed" in o.detail for o in told_to_wait
    ), told_to_wait
    assert {o.command_id for o in answered} == rig.command_ids()
    assert len(rig.command_ids()) == 1
    (command,) = {o.command_id: o for o in answered}.values()
    assert command.kind == CommandKind.TRANSFER and command.quantity_wh == 400
    held = only_slice(rig.shared_book.get_certificate(cert.certificate_id))
    assert held.reserved_by == command.command_id
