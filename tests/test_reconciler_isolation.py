"""The reconciler never stops: a command it cannot settle, or a phase that fails, costs that
command or that phase and nothing else; alignment never overwrites a certificate that moved
while it asked the registry; a step the registry holds PENDING for too long goes to an
operator."""

from __future__ import annotations

import base64
from datetime import timedelta
from typing import Any

from chalicelib import domain
from chalicelib.api import models as m
from chalicelib.domain import CommandStatus
from chalicelib.registry.envelope import transaction_id_of
from chalicelib.registry.sandbox.simulator import RegistrySimulator
from tests.pipeline import Pipeline


class RefusingRegistry:
    """The registry, except that it refuses every query about one transaction with an error
    the reconciler does not expect (a gRPC INVALID_ARGUMENT, say)."""

    def __init__(self, registry: RegistrySimulator, refused: str) -> None:
        self._registry = registry
        self._refused = refused

    def __getattr__(self, name: str) -> Any:
        return getattr(self._registry, name)

    def status(self, transaction_id: str) -> Any:
        if transaction_id == self._refused:
            raise ValueError("the registry refused the query: INVALID_ARGUMENT")
        return self._registry.status(transaction_id)


def in_doubt_issue(p: Pipeline) -> domain.Command:
    p.registry.configure(ambiguous_rate=1.0)
    command = p.issue(gsrn="571313000000000009")
    p.run()
    p.registry.configure(ambiguous_rate=0.0)
    in_doubt = p.command(command.command_id)
    assert in_doubt.status == CommandStatus.IN_DOUBT
    return in_doubt


def tx_id(command: domain.Command) -> str:
    return transaction_id_of(base64.b64decode(command.transactions[command.step]))


def test_one_command_the_reconciler_cannot_settle_does_not_stop_its_pass() -> None:
    p = Pipeline(queries=True)
    stuck = in_doubt_issue(p)  # the oldest open command: listed first, every pass
    p.queue.available = False
    lost = p.issue()  # its queue message never went out
    p.queue.available = True
    p.vclock.advance(301)
    reconciler = p.make_reconciler()
    reconciler.registry = RefusingRegistry(p.registry, tx_id(stuck))

    report = reconciler.run()

    assert report.actions["redriven"] == 1, report.actions
    assert report.actions["unsettled"] == 1
    assert "INVALID_ARGUMENT" in report.unsettled[stuck.command_id]
    p.run()
    assert p.command(lost.command_id).status == CommandStatus.COMMITTED
    assert p.command(stuck.command_id).unsettled_passes == 1


def test_a_command_that_fails_a_few_passes_is_marked_for_an_operator_with_the_reason() -> None:
    p = Pipeline(queries=True)
    stuck = in_doubt_issue(p)
    reconciler = p.make_reconciler(unsettled_passes_for_operator=3)
    reconciler.registry = RefusingRegistry(p.registry, tx_id(stuck))
    reasons = []
    for _ in range(3):
        reasons.append(p.command(stuck.command_id).error)
        assert reconciler.run().actions["unsettled"] == 1
    marked = p.command(stuck.command_id)
    assert marked.status == CommandStatus.IN_DOUBT
    assert marked.unsettled_passes == 3
    assert "could not settle it in 3 passes" in marked.error
    assert "INVALID_ARGUMENT" in marked.error
    assert all("could not settle" not in (r or "") for r in reasons)
    # What an operator sees in GET /v1/ops/commands.
    assert "INVALID_ARGUMENT" in m.CommandView.of(marked).error


class FailingSettledList:
    """The book, except that listing settled commands fails."""

    def __init__(self, book: Any) -> None:
        self._book = book

    def __getattr__(self, name: str) -> Any:
        return getattr(self._book, name)

    def settled_commands(self, limit: int) -> list[domain.Command]:
        raise RuntimeError("ValidationException: the index is being rebuilt")


def test_a_phase_that_fails_skips_none_of_the_others() -> None:
    p = Pipeline(queries=True)
    cert, _ = p.issued()
    p.queue.available = False
    lost = p.issue(gsrn="571313000000000002")
    p.queue.available = True
    p.vclock.advance(366 * 24 * 3600)  # the certificate is past its expiry, the command lost
    reconciler = p.make_reconciler()
    reconciler.book = FailingSettledList(p.book)

    report = reconciler.run()

    assert "ValidationException" in report.failed_phases["settled_commands"]
    assert not report.complete
    assert report.actions["redriven"] == 1, report.actions
    assert report.actions["expired"] == 1, report.actions
    assert p.book.get_certificate(cert).status == domain.CertificateStatus.EXPIRED
    assert p.command(lost.command_id).status == CommandStatus.ACCEPTED


class CommitDuringStreamQuery:
    """The registry, whose stream query answers what it had, while the worker meanwhile
    commits a transfer (in the registry and in the book) before the answer arrives."""

    def __init__(self, p: Pipeline) -> None:
        self._p = p
        self.raced = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._p.registry, name)

    def stream(self, certificate_id: str) -> Any:
        answer = self._p.registry.stream(certificate_id)
        if not self.raced:
            self.raced = True
            self._p.run()
        return answer


def test_alignment_leaves_a_certificate_that_moved_during_its_stream_query_for_the_next_look():
    p = Pipeline(queries=True)
    cert, s0 = p.issued()  # its issue command is settled, not yet compared with the registry
    transfer = p.transfer("alice", cert, s0, "bob", 1000)
    reconciler = p.make_reconciler()
    racing = CommitDuringStreamQuery(p)
    reconciler.registry = racing

    actions = reconciler.run().actions

    assert racing.raced
    assert p.command(transfer.command_id).status == CommandStatus.COMMITTED
    assert actions["drift_moved"] == 1, actions
    assert p.book.audits(cert) == []  # no false wrong_owner entry
    owners = {s.owner for s in p.book.get_certificate(cert).slices.values() if s.is_live}
    assert owners == {"bob"}
    # Left for the next look, which finds it aligned.
    assert p.book.settled_commands(10)
    assert p.reconcile()["drift_repaired"] == 0
    assert p.aligned(cert)
    p.settle()
    p.check_settled()


def test_a_step_pending_for_too_long_goes_in_doubt_for_an_operator() -> None:
    p = Pipeline(queries=True, commit_delay_s=10 * 24 * 3600)  # it never leaves PENDING
    command = p.issue()
    p.run()  # the worker looks a few times, then leaves it to the reconciler
    assert p.command(command.command_id).status == CommandStatus.SENT
    reconciler = p.make_reconciler(pending_in_doubt_after_s=900.0)
    _until_sent_for(p, command, 800)
    assert reconciler.run().actions["pending"] == 1
    assert p.command(command.command_id).status == CommandStatus.SENT
    p.vclock.advance(200)
    actions = reconciler.run().actions
    # The metric the in-doubt alarm watches.
    assert actions["in_doubt_for_operator"] == 1, actions
    in_doubt = p.command(command.command_id)
    assert in_doubt.status == CommandStatus.IN_DOUBT
    assert "PENDING" in in_doubt.error


def test_a_step_pending_for_a_while_is_not_yet_in_doubt() -> None:
    p = Pipeline(queries=True, commit_delay_s=1200)
    command = p.issue()
    p.run()
    _until_sent_for(p, command, timedelta(minutes=9).total_seconds())
    assert p.reconcile()["pending"] == 1
    assert p.command(command.command_id).status == CommandStatus.SENT


def _until_sent_for(p: Pipeline, command, seconds: float) -> None:
    """On to `seconds` after the command went SENT (the worker's own looks took some)."""
    sent_at = p.command(command.command_id).updated_at
    p.vclock.advance(seconds - (p.now() - sent_at).total_seconds())
