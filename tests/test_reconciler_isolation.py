"""The reconciler settles each command in isolation: one command it cannot settle (an error of
its own, not the registry's word) never stops the pass for the others, and after a few failed
passes it is marked for an operator with the reason (issue 13, item 2)."""

from __future__ import annotations

from typing import Any

from chalicelib.domain import Command, CommandStatus
from chalicelib.usecases.reconcile import Reconciler
from tests.pipeline import Pipeline


class RefusingQueue:
    """The queue, refusing one command's message with an error the reconciler does not know
    (as botocore refuses a message group id over 128 characters, before any call)."""

    def __init__(self, queue: Any, command_id: str) -> None:
        self._queue = queue
        self._command_id = command_id

    def send(self, command: Command, *args: Any, **kwargs: Any) -> None:
        if command.command_id == self._command_id:
            raise ValueError("Invalid length for parameter MessageGroupId")
        self._queue.send(command, *args, **kwargs)


class RefusingRegistry:
    """The registry, whose status query fails for one transaction with an unexpected error."""

    def __init__(self, registry: Any, transaction_id: str) -> None:
        self._registry = registry
        self._transaction_id = transaction_id

    def __getattr__(self, name: str) -> Any:
        return getattr(self._registry, name)

    def status(self, transaction_id: str) -> Any:
        if transaction_id == self._transaction_id:
            raise KeyError(transaction_id)
        return self._registry.status(transaction_id)


class RefusingListing:
    """The book, refusing the open-commands listing (a refused query): a phase that fails."""

    def __init__(self, book: Any) -> None:
        self._book = book

    def __getattr__(self, name: str) -> Any:
        return getattr(self._book, name)

    def open_commands(self, *args: Any, **kwargs: Any) -> list[Command]:
        raise RuntimeError("ValidationException: the query was refused")


def reconciler(p: Pipeline, **ports: Any) -> Reconciler:
    return Reconciler(
        book=ports.get("book", p.book),
        queue=ports.get("queue", p.queue),
        registry=ports.get("registry", p.registry),
        worker=p.worker,
        clock=p.now,
        redrive_after_s=300.0,
        lease_s=120.0,
        operator_after=3,
    )


def lost_messages(p: Pipeline, n: int) -> list[Command]:
    p.queue.available = False
    commands = [p.issue(hour=h) for h in range(n)]
    p.queue.available = True
    return commands


def test_a_command_that_cannot_be_re_driven_does_not_stop_the_others() -> None:
    p = Pipeline()
    poisoned, lost = lost_messages(p, 2)  # the poisoned one is older: listed first
    p.vclock.advance(301)
    report = reconciler(p, queue=RefusingQueue(p.queue, poisoned.command_id)).run()
    assert report.actions["redriven"] == 1
    assert report.actions["command_failed"] == 1
    assert [(u.command_id, u.phase) for u in report.unsettled] == [(poisoned.command_id, "open")]
    assert "MessageGroupId" in report.unsettled[0].reason
    p.run()
    assert p.command(lost.command_id).status == CommandStatus.COMMITTED


def test_a_command_that_fails_pass_after_pass_is_marked_for_an_operator_with_the_reason() -> None:
    p = Pipeline()
    (poisoned,) = lost_messages(p, 1)
    p.vclock.advance(301)
    refusing = RefusingQueue(p.queue, poisoned.command_id)
    for _ in range(2):
        report = reconciler(p, queue=refusing).run()
        assert "marked_for_operator" not in report.actions
        assert p.command(poisoned.command_id).error is None  # not yet: it may be passing
    report = reconciler(p, queue=refusing).run()
    assert report.actions["marked_for_operator"] == 1
    marked = p.command(poisoned.command_id)
    assert marked.status == CommandStatus.ACCEPTED  # never sent: nothing in doubt
    assert marked.reconcile_failures == 3
    assert "3 passes" in marked.error and "MessageGroupId" in marked.error
    assert "operator" in marked.error


def test_a_sent_command_whose_settling_keeps_failing_goes_in_doubt_for_an_operator() -> None:
    p = Pipeline(queries=True, commit_delay_s=10_000)
    command = p.issue()
    p.run()
    sent = p.command(command.command_id)
    assert sent.status == CommandStatus.SENT
    (transaction_id,) = p.registry.received_ids()
    refusing = RefusingRegistry(p.registry, transaction_id)
    for _ in range(3):
        report = reconciler(p, registry=refusing).run()
        assert report.unsettled[0].command_id == command.command_id
    in_doubt = p.command(command.command_id)
    assert in_doubt.status == CommandStatus.IN_DOUBT
    assert "KeyError" in in_doubt.error
    # Never sent again, whatever the reconciler failed at.
    assert p.registry.received_ids() == [transaction_id]


def test_a_phase_that_fails_does_not_stop_the_phases_after_it() -> None:
    p = Pipeline(queries=True)
    cert, _ = p.issued()
    p.vclock.advance(366 * 24 * 3600)  # past expiry
    report = reconciler(p, book=RefusingListing(p.book)).run()
    assert report.actions["phase_failed"] == 1
    assert report.unsettled[0].phase == "open" and report.unsettled[0].command_id is None
    assert report.actions["expired"] == 1
    assert p.book.get_certificate(cert).status == "expired"
