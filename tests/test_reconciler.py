"""The reconciler in both registry modes: lost messages, dead workers, in-doubt commands,
drift, expiry, concurrency with itself, and operators. Every scenario ends settled with I2,
I3, I5 and I6 holding."""

from __future__ import annotations

import base64
import threading
from datetime import timedelta

import pytest

from chalicelib import domain
from chalicelib.domain import Actor, CommandStatus, Role, SliceState
from chalicelib.ports import Transition
from chalicelib.usecases import holds
from chalicelib.usecases.reconcile import resend_by_operator, resolve_by_operator
from tests.pipeline import Pipeline
from tests.test_worker_crashes import Counter, Crash, Crashing

BOTH_MODES = pytest.mark.parametrize("queries", [False, True], ids=["no-queries", "queries"])
OPERATOR = Actor(owner="ops", roles=frozenset({Role.OPERATOR}))


@BOTH_MODES
def test_a_command_whose_queue_message_was_lost_is_re_driven_and_commits(queries) -> None:
    p = Pipeline(queries=queries)
    p.queue.available = False
    command = p.issue()
    p.queue.available = True
    assert not p.queue.pending
    p.vclock.advance(1)
    assert p.reconcile()["accepted_recent"] == 1  # too young to be called lost
    p.vclock.advance(300)
    assert p.reconcile()["redriven"] == 1
    p.run()
    assert p.command(command.command_id).status == CommandStatus.COMMITTED
    p.settle()
    p.check_settled()


@BOTH_MODES
def test_a_command_whose_accept_died_before_its_holds_is_re_driven_and_takes_them(queries) -> None:
    p = Pipeline(queries=queries)
    cert, s0 = p.issued()
    command = p.transfer("alice", cert, s0, "bob", 1000)
    # As if the accept had died between recording the command and reserving the slice.
    p.book.update_certificate(cert, lambda c: domain.release(c, command.command_id))
    p.queue.pending.clear()
    p.vclock.advance(301)
    p.reconcile()
    p.run()
    assert p.command(command.command_id).status == CommandStatus.COMMITTED
    p.settle()
    p.check_settled()


@BOTH_MODES
@pytest.mark.parametrize("when", ["before", "after"])
def test_a_worker_that_dies_mid_send_leaves_in_doubt_work_that_gets_resolved(queries, when) -> None:
    p = Pipeline(queries=queries)
    command = p.issue()
    counter = Counter(at=1, when=when)  # the first registry call: the send
    dying = p.make_worker(registry=Crashing(p.registry, counter))
    batch = p.queue.receive()
    with pytest.raises(Crash):
        dying.process([m.delivery for m in batch])
    assert p.command(command.command_id).status == CommandStatus.SENDING
    p.vclock.advance(121)  # the lease expires; the message is lost as well
    actions = p.reconcile()
    settled = p.command(command.command_id)
    if queries and when == "after":
        # The registry has it: resolved from the registry's word, exactly as the worker would.
        assert settled.status == CommandStatus.COMMITTED, actions
        assert p.book.get_certificate(command.certificate_id).status == "active"
    else:
        # No queries, or the registry never saw it: an operator must decide. Never re-sent.
        assert settled.status == CommandStatus.IN_DOUBT
        assert "operator" in settled.error or "resolve" in settled.error
        resolve_by_operator(
            p.book,
            p.queue,
            p.worker,
            OPERATOR,
            command.command_id,
            when == "after",
            "checked the registry",
        )
        assert p.command(command.command_id).status == (
            CommandStatus.COMMITTED if when == "after" else CommandStatus.REJECTED
        )
    assert len(p.registry.received_ids()) == (1 if when == "after" else 0)
    p.settle()
    p.check_settled()


def test_a_sent_command_is_committed_by_the_reconciler_once_the_registry_commits() -> None:
    p = Pipeline(queries=True, commit_delay_s=600)
    command = p.issue()
    p.run()
    assert p.command(command.command_id).status == CommandStatus.SENT
    assert p.reconcile()["pending"] == 1
    p.vclock.advance(600)
    assert p.reconcile()["resolved_committed"] == 1
    assert p.command(command.command_id).status == CommandStatus.COMMITTED
    p.settle()
    p.check_settled()


def test_an_applied_transaction_whose_status_a_duplicate_corrupted_is_still_committed() -> None:
    p = Pipeline(queries=True, ambiguous_rate=1.0)
    command = p.issue()
    p.run()
    assert p.command(command.command_id).status == CommandStatus.IN_DOUBT
    # Someone else sent the same bytes again: the registry now reports the first as FAILED.
    in_doubt = p.command(command.command_id)
    p.registry.inject(base64.b64decode(in_doubt.transactions[0]))
    p.vclock.advance(5)
    p.registry.configure(ambiguous_rate=0.0)
    assert p.registry.status(p.registry.received_ids()[0]).status == "FAILED"
    p.reconcile()
    assert p.command(command.command_id).status == CommandStatus.COMMITTED


def test_a_failed_step_found_in_doubt_is_rejected_and_its_holds_released() -> None:
    p = Pipeline(queries=True)
    cert, s0 = p.issued()
    p.registry.set_owner(cert, s0, "mallory")  # our transfer will lose
    p.registry.configure(ambiguous_rate=1.0)
    command = p.transfer("alice", cert, s0, "bob", 1000)
    p.run()
    assert p.command(command.command_id).status == CommandStatus.IN_DOUBT
    p.registry.configure(ambiguous_rate=0.0)
    p.vclock.advance(5)
    assert p.reconcile()["resolved_rejected"] == 1
    assert p.command(command.command_id).status == CommandStatus.REJECTED
    p.settle()
    p.check_settled()
    assert p.book.get_certificate(cert).slices[s0].state == SliceState.TRANSFERRED


def test_an_expired_status_leaves_the_command_for_an_operator() -> None:
    p = Pipeline(queries=True, lost_rate=1.0)
    command = p.issue()
    p.run()
    p.registry.configure(lost_rate=0.0)
    p.vclock.advance(4000)
    assert p.reconcile()["in_doubt_for_operator"] == 1
    assert p.command(command.command_id).status == CommandStatus.IN_DOUBT


# --- drift --------------------------------------------------------------------------------


DRIFTS = {
    "wrong_owner": lambda p, cert, s0: p.registry.set_owner(cert, s0, "mallory"),
    "missing_slice": lambda p, cert, s0: p.registry.split_slice(
        cert, s0, [("r1", "alice", 600), ("r2", "carol", 400)]
    ),
    "withdrawn": lambda p, cert, s0: p.registry.withdraw(cert),
}


@pytest.mark.parametrize("drift", list(DRIFTS))
def test_drift_injected_behind_the_books_back_is_repaired_with_the_registry_as_truth(drift) -> None:
    p = Pipeline(queries=True)
    cert, s0 = p.issued()
    p.reconcile()
    DRIFTS[drift](p, cert, s0)
    assert not p.aligned(cert)
    # A command touches the certificate (here: one that the drift makes fail), so the next
    # pass compares it with the registry.
    command = p.transfer("alice", cert, s0, "bob", 1000)
    p.run()
    assert p.command(command.command_id).status == CommandStatus.REJECTED
    actions = p.reconcile()
    assert actions["drift_repaired"] == 1, actions
    assert p.aligned(cert)
    audit = p.book.audits(cert)
    assert audit and all("action" in entry for entry in audit)
    p.settle()
    p.check_settled()


@BOTH_MODES
def test_settled_commands_wait_for_a_drift_check_only_where_the_registry_can_answer(
    queries,
) -> None:
    p = Pipeline(queries=queries)
    p.issued()
    # Without queries there is nothing to compare with: the terminal write took the command
    # off the reconciler's list, and a pass costs it nothing.
    assert len(p.book.settled_commands(10)) == (1 if queries else 0)
    actions = p.reconcile()
    assert actions["aligned"] == (1 if queries else 0)
    assert p.book.settled_commands(10) == []


# --- the reconciler with itself, expiry, operators -------------------------------------------


@BOTH_MODES
def test_two_reconcilers_at_once_do_the_work_once(queries) -> None:
    p = Pipeline(queries=queries)
    p.queue.available = False
    commands = [p.issue(gsrn=f"5713130000000000{i:02d}") for i in range(20)]
    p.queue.available = True
    p.vclock.advance(301)
    start = threading.Barrier(2)
    reports = []

    def reconcile() -> None:
        reconciler = p.make_reconciler()
        start.wait()
        reports.append(reconciler.run().actions)

    threads = [threading.Thread(target=reconcile) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    redriven = sum(r["redriven"] for r in reports)
    skipped = sum(r["skipped_lease_held"] for r in reports)
    assert (redriven, skipped) in ((20, 1), (40, 0))  # (40, 0): one ran after the other
    p.run()
    assert {p.command(c.command_id).status for c in commands} == {CommandStatus.COMMITTED}
    assert len(p.registry.received_ids()) == 20


@BOTH_MODES
def test_a_reconciler_does_not_run_while_another_holds_an_unexpired_lease(queries) -> None:
    p = Pipeline(queries=queries)
    assert p.book.acquire_lease(
        "reconciler", "someone-else", p.now(), p.now() + timedelta(seconds=60)
    )
    assert p.reconcile()["skipped_lease_held"] == 1
    p.vclock.advance(61)
    assert p.reconcile()["skipped_lease_held"] == 0


@BOTH_MODES
def test_certificates_older_than_the_expiry_become_unusable(queries) -> None:
    p = Pipeline(queries=queries)
    cert, s0 = p.issued()
    p.vclock.advance(366 * 86400)
    assert p.reconcile()["expired"] == 1
    assert p.book.get_certificate(cert).status == domain.CertificateStatus.EXPIRED
    with pytest.raises(domain.Conflict):
        p.transfer("alice", cert, s0, "bob", 1000)
    p.check_invariants()


@BOTH_MODES
def test_only_operators_resolve_and_only_in_doubt_commands(queries) -> None:
    p = Pipeline(queries=queries, ambiguous_rate=1.0)
    command = p.issue()
    p.run()
    with pytest.raises(domain.Forbidden):
        resolve_by_operator(
            p.book, p.queue, p.worker, Actor(owner="alice"), command.command_id, True, "trust me"
        )
    committed = resolve_by_operator(
        p.book, p.queue, p.worker, OPERATOR, command.command_id, True, "seen in the registry"
    )
    assert committed.status == CommandStatus.COMMITTED
    with pytest.raises(domain.Conflict):
        resolve_by_operator(p.book, p.queue, p.worker, OPERATOR, command.command_id, False, "x")
    with pytest.raises(domain.NotFound):
        resolve_by_operator(p.book, p.queue, p.worker, OPERATOR, "nope", False, "x")


@BOTH_MODES
def test_an_operator_resolving_a_multi_step_command_sends_the_next_step_to_the_worker(
    queries,
) -> None:
    p = Pipeline(queries=queries, ambiguous_rate=1.0)
    p.registry.configure(ambiguous_rate=0.0)
    cert, s0 = p.issued()
    p.registry.configure(ambiguous_rate=1.0)
    command = p.transfer("alice", cert, s0, "bob", 100)  # slice, then transfer
    p.run()
    assert p.command(command.command_id).status == CommandStatus.IN_DOUBT
    p.registry.configure(ambiguous_rate=0.0)
    after = resolve_by_operator(
        p.book,
        p.queue,
        p.worker,
        OPERATOR,
        command.command_id,
        True,
        "the slice is in the registry",
    )
    assert after.status == CommandStatus.ACCEPTED and after.step == 1
    p.run()
    assert p.command(command.command_id).status == CommandStatus.COMMITTED
    p.settle()
    p.check_settled()


@BOTH_MODES
def test_stale_reservations_of_settled_commands_are_released(queries) -> None:
    p = Pipeline(queries=queries)
    cert, s0 = p.issued()
    command = p.transfer("alice", cert, s0, "bob", 1000)
    p.queue.pending.clear()
    # A bug (or a hand edit) left the slice reserved by a command that was then rejected.
    p.book.transition(
        command.command_id,
        Transition(
            expected=CommandStatus.ACCEPTED,
            target=CommandStatus.REJECTED,
            now=p.now(),
            changes={"error": "rejected by hand"},
        ),
    )
    assert p.book.get_certificate(cert).slices[s0].reserved_by == command.command_id
    assert p.reconcile()["stale_reservation_released"] == 1
    assert p.book.get_certificate(cert).slices[s0].reserved_by is None
    p.check_invariants()


@BOTH_MODES
def test_a_hold_taken_late_for_a_refused_command_is_let_go_by_a_later_pass(queries) -> None:
    """Soak seed 198178 (no queries): a retried request found its transfer ACCEPTED and went
    to take its holds; meanwhile the worker had it refused and let go; the retry reserved the
    slice and died before it read the command again. The terminal write
    (no queries), or the pass that saw the refusal first (queries), had taken the command off
    the reconciler's list: the slice stayed reserved by a REJECTED command for good (I5)."""
    p = Pipeline(queries=queries)
    cert, s0 = p.issued()
    command = p.transfer("alice", cert, s0, "bob", 1000)
    read_open = p.command(command.command_id)

    def the_worker_has_it_refused_meanwhile() -> None:
        p.registry.set_owner(cert, s0, "mallory")  # the registry refuses the transfer
        p.run()
        assert p.command(command.command_id).status == CommandStatus.REJECTED
        assert p.book.get_certificate(cert).slices[s0].reserved_by is None
        p.registry.set_owner(cert, s0, "alice")  # and agrees with the book again
        p.vclock.advance(10)
        assert p.reconcile()["settled_awaiting_late_holds"] == 1  # kept on the list

    class TheRetry:
        """Keeps the command while it is open, pauses, takes the slice, dies before it reads
        the command again."""

        def __getattr__(self, name):
            return getattr(p.book, name)

        def keep_command(self, command_id):
            status = p.book.keep_command(command_id)
            the_worker_has_it_refused_meanwhile()
            return status

        def get_command(self, command_id):
            raise Crash("the retry dies before it reads the command again")

    with pytest.raises(Crash):
        holds.take_while_open(TheRetry(), read_open)
    assert p.book.get_certificate(cert).slices[s0].reserved_by == command.command_id

    p.vclock.advance(30)
    assert p.reconcile()["stale_reservation_released"] == 1
    assert p.book.get_certificate(cert).slices[s0].reserved_by is None
    p.vclock.advance(120)  # no process that read it open is alive now: off the list
    assert "settled_awaiting_late_holds" not in p.reconcile()
    assert command.command_id not in {c.command_id for c in p.book.settled_commands(100)}
    p.check_invariants()


@BOTH_MODES
def test_an_operator_who_finds_a_step_never_reached_the_registry_has_it_sent_once(
    queries,
) -> None:
    p = Pipeline(queries=queries, lost_rate=1.0)  # every call is lost before the registry
    command = p.issue()
    p.run()
    assert p.command(command.command_id).status == CommandStatus.IN_DOUBT
    assert p.registry.log() == []
    p.registry.configure(lost_rate=0.0)
    with pytest.raises(domain.Forbidden):
        resend_by_operator(p.book, p.queue, Actor(owner="alice"), command.command_id, "x", p.now())
    after = resend_by_operator(
        p.book, p.queue, OPERATOR, command.command_id, "its id is not in the registry", p.now()
    )
    assert after.status == CommandStatus.ACCEPTED
    p.run()
    assert p.command(command.command_id).status == CommandStatus.COMMITTED
    assert len(p.registry.received_ids()) == 1
    with pytest.raises(domain.Conflict):
        resend_by_operator(p.book, p.queue, OPERATOR, command.command_id, "again", p.now())
    p.settle()
    p.check_settled()
