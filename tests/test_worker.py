"""The worker against the registry simulator, in virtual time: every command kind, every
registry fault, redeliveries, concurrent workers, and a crash at every side effect."""

from __future__ import annotations

import json
import threading
from collections import Counter
from typing import Any

import pytest

from chalicelib import observability
from chalicelib.adapters.sqs import delivery_of
from chalicelib.domain import CertificateType, Command, CommandKind, CommandStatus, SliceState
from chalicelib.entrypoints import handle_queue_event
from chalicelib.ports import Delivery, DependencyDown, Outcome
from tests.pipeline import Pipeline

pytestmark = pytest.mark.usefixtures("groups_both_ways")


BOTH_MODES = pytest.mark.parametrize("queries", [False, True], ids=["no-queries", "queries"])


def _pair(p: Pipeline, quantity: int = 1000) -> tuple[tuple[str, str], tuple[str, str]]:
    production = p.issued(owner="alice", quantity=quantity)
    consumption = p.issued(
        owner="alice",
        quantity=quantity,
        gsrn="571313000000000002",
        type_=CertificateType.CONSUMPTION,
    )
    return production, consumption


# --- every command kind ---------------------------------------------------------------------


@BOTH_MODES
def test_an_issued_certificate_gets_one_slice_of_its_whole_quantity(queries: bool) -> None:
    p = Pipeline(queries=queries)
    command = p.issue(quantity=1234)
    p.run()
    assert p.command(command.command_id).status == CommandStatus.COMMITTED
    cert = p.book.get_certificate(command.certificate_id)
    assert [(s.owner, s.quantity_wh, s.state) for s in cert.slices.values()] == [
        ("alice", 1234, SliceState.AVAILABLE)
    ]
    assert p.registry.snapshot(cert.certificate_id) is not None
    p.check_invariants()


@BOTH_MODES
def test_slice_transfer_claim_and_withdraw_commit_and_show_in_the_book(queries: bool) -> None:
    p = Pipeline(queries=queries)
    (cert, s0), consumption = _pair(p)
    sliced = p.slice("alice", cert, s0, [700, 300])
    p.run()
    assert p.command(sliced.command_id).status == CommandStatus.COMMITTED
    parts = {
        s.quantity_wh: s.slice_id
        for s in p.book.get_certificate(cert).slices.values()
        if s.state == SliceState.AVAILABLE
    }
    assert set(parts) == {700, 300}

    moved = p.transfer("alice", cert, parts[700], "bob", 700)  # whole slice: one transaction
    claimed = p.claim("alice", (cert, parts[300]), consumption, 300)  # consumption is cut first
    p.run()
    for command in (moved, claimed):
        assert p.command(command.command_id).status == CommandStatus.COMMITTED
    states = sorted(
        (s.owner, s.quantity_wh, s.state.value)
        for s in p.book.get_certificate(cert).slices.values()
        if s.state != SliceState.SLICED
    )
    assert states == [
        ("alice", 300, "claimed"),
        ("alice", 700, "transferred"),
        ("bob", 700, "available"),
    ]
    rest = sorted(
        (s.quantity_wh, s.state.value)
        for s in p.book.get_certificate(consumption[0]).slices.values()
        if s.state != SliceState.SLICED
    )
    assert rest == [(300, "claimed"), (700, "available")]

    withdrawn = p.withdraw(consumption[0])
    p.run()
    assert p.command(withdrawn.command_id).status == CommandStatus.COMMITTED
    assert p.book.get_certificate(consumption[0]).status == "withdrawn"
    p.check_invariants()


@BOTH_MODES
def test_a_partial_transfer_is_a_slice_then_a_transfer_sent_once_each(queries: bool) -> None:
    p = Pipeline(queries=queries)
    cert, s0 = p.issued(quantity=1000)
    before = len(p.registry.log())
    command = p.transfer("alice", cert, s0, "bob", 250)
    p.run()
    done = p.command(command.command_id)
    assert done.status == CommandStatus.COMMITTED and done.step == 1
    assert len(p.registry.log()) - before == 2
    owners = sorted(
        (s.owner, s.quantity_wh)
        for s in p.book.get_certificate(cert).slices.values()
        if s.state == SliceState.AVAILABLE
    )
    assert owners == [("alice", 750), ("bob", 250)]
    # bob's list: the transfer as he got it, at the time it committed (not its last send's)
    (received,) = p.book.commands_of("bob", CommandKind.TRANSFER, 10, None).items
    assert (received.caller, received.status, received.updated_at) == (
        "alice",
        CommandStatus.COMMITTED,
        done.updated_at,
    )
    assert [r.slice_id for r in received.slices] == [
        s.slice_id for s in p.book.get_certificate(cert).slices.values() if s.owner == "bob"
    ]
    p.check_invariants()


@BOTH_MODES
def test_the_write_that_records_a_step_committed_takes_the_guard_of_the_next(
    queries: bool,
) -> None:
    """One write between two steps of a claim: SENDING (or SENT) at the step that committed ->
    SENDING at the next, conditioned on the step. Not ACCEPTED and then SENDING again."""
    p = Pipeline(queries=queries)
    production, consumption = _pair(p)
    moves: list[tuple[str, str, int]] = []
    transition = p.book.transition

    def recording(command_id, change):
        moved = transition(command_id, change)
        moves.append((change.target.value, moved.status.value, moved.step))
        return moved

    p.book.transition = recording
    claim = p.claim("alice", production, consumption, 400)
    p.run()
    done = p.command(claim.command_id)
    assert done.status == CommandStatus.COMMITTED
    steps = len(done.transactions)
    assert steps >= 3
    sending = [step for target, _, step in moves if target == "SENDING"]
    assert sending == list(range(steps))  # each step's guard taken once, in step order
    assert [m for m in moves if m[0] == "ACCEPTED"] == []
    assert len(moves) == steps + (steps if queries else 0) + 1  # + SENT per step; COMMITTED
    p.check_invariants()


def test_a_step_the_reconciler_settled_first_is_met_again_not_dropped() -> None:
    """The reconciler settles a claim's committed step (ACCEPTED at the next) just before the
    worker's own write taking the next step's guard: that write fails, the message comes
    back, and the worker takes the next step from there. Nothing is sent twice."""
    p = Pipeline(queries=False)
    production, consumption = _pair(p)
    transition, raced = p.book.transition, []

    def reconciler_first(command_id, change):
        if change.target == CommandStatus.SENDING and "step" in change.changes and not raced:
            raced.append(change.step)
            p.make_worker().step_committed(p.command(command_id))
        return transition(command_id, change)

    p.book.transition = reconciler_first
    claim = p.claim("alice", production, consumption, 400)
    batch = p.queue.receive()
    assert p.worker.process([m.delivery for m in batch]) == [Outcome.RETRY]
    assert raced == [0]
    held = p.command(claim.command_id)
    assert (held.status, held.step) == (CommandStatus.ACCEPTED, 1)
    p.queue.give_back(batch)
    p.run()
    assert p.command(claim.command_id).status == CommandStatus.COMMITTED
    p.check_never_twice()
    p.check_invariants()


# --- registry outcomes ----------------------------------------------------------------------


@BOTH_MODES
def test_a_registry_rejection_releases_the_reservation_with_the_reason(queries: bool) -> None:
    p = Pipeline(queries=queries)
    cert, s0 = p.issued()
    # Behind the book's back, the slice changes hands in the registry: our transfer loses.
    p.registry.set_owner(cert, s0, "mallory")
    command = p.transfer("alice", cert, s0, "bob", 1000)
    p.run()
    rejected = p.command(command.command_id)
    assert rejected.status == CommandStatus.REJECTED
    assert rejected.error
    slice_ = p.book.get_certificate(cert).slices[s0]
    assert slice_.state == SliceState.AVAILABLE and slice_.reserved_by is None
    p.check_invariants()


@BOTH_MODES
def test_commands_wait_out_an_outage_and_are_sent_once_after_it(queries: bool) -> None:
    p = Pipeline(queries=queries)
    p.registry.set_available(False)
    commands = [p.issue(gsrn=f"5713130000000{i:05d}") for i in range(5)]
    for _ in range(3):
        batch = p.queue.receive()
        assert set(p.worker.process([m.delivery for m in batch])) == {Outcome.RETRY}
        p.queue.give_back(batch)
    assert {p.command(c.command_id).status for c in commands} == {CommandStatus.ACCEPTED}
    assert p.registry.log() == []
    p.registry.set_available(True)
    p.run()
    assert {p.command(c.command_id).status for c in commands} == {CommandStatus.COMMITTED}
    assert len(p.registry.log()) == 5
    p.check_invariants()


def test_a_thirty_minute_outage_with_a_thousand_commands_queued_loses_and_repeats_none() -> None:
    p = Pipeline(outages=((0.0, 1800.0),))
    commands = [p.issue(gsrn=f"57131300000{i:07d}") for i in range(1000)]
    p.run(rounds=5000, visibility_s=30)
    assert p.vclock() >= 1800
    assert {p.command(c.command_id).status for c in commands} == {CommandStatus.COMMITTED}
    assert len(p.registry.received_ids()) == 1000
    p.check_invariants()


@BOTH_MODES
def test_an_ambiguous_send_leaves_the_command_in_doubt_and_never_resends_it(queries: bool) -> None:
    p = Pipeline(queries=queries, ambiguous_rate=1.0)
    command = p.issue()
    p.run()
    in_doubt = p.command(command.command_id)
    assert in_doubt.status == CommandStatus.IN_DOUBT
    assert "resolve" in in_doubt.error
    # Redeliveries of the same message change nothing.
    for _ in range(3):
        p.queue.send(in_doubt)
        p.run()
    assert len(p.registry.log()) == 1
    assert p.command(command.command_id).status == CommandStatus.IN_DOUBT


def test_a_pending_step_comes_back_later_instead_of_the_worker_sleeping() -> None:
    p = Pipeline(queries=True, commit_delay_s=60)
    command = p.issue()
    (message,) = p.queue.receive()
    before = p.vclock()
    assert p.worker.process([message.delivery]) == [Outcome.LATER]
    assert p.vclock() == before  # no time passed in the invocation: nothing slept
    assert p.command(command.command_id).status == CommandStatus.SENT
    p.queue.give_back([message])
    p.run()  # back after 2, 4, 8, 16, 32 s: committed at 60
    assert p.command(command.command_id).status == CommandStatus.COMMITTED
    assert len(p.registry.log()) == 1
    assert 60 <= p.vclock() - before <= 62


def test_a_step_pending_past_the_last_receive_is_left_sent_for_the_reconciler() -> None:
    p = Pipeline(queries=True, commit_delay_s=3600)
    command = p.issue()
    p.run()  # the message is deleted two receives before the dead-letter queue
    assert p.command(command.command_id).status == CommandStatus.SENT
    assert not p.queue.pending
    p.vclock.advance(3600)
    p.reconcile()
    assert p.command(command.command_id).status == CommandStatus.COMMITTED
    assert len(p.registry.log()) == 1


def test_a_pending_message_and_the_rest_of_its_group_are_postponed_by_the_worker_delay() -> None:
    p = Pipeline(queries=True, commit_delay_s=600)
    command = p.issue()
    p.queue.receive()  # the harness's copy; the event below is what Lambda would hand over
    body = {"command_id": command.command_id, "certificate_id": command.certificate_id}
    group = command.certificate_id
    event = {  # the command's message, and a redelivered copy behind it in its group
        "Records": [
            {**_record("m1", body, group, receives=3), "receiptHandle": "h1"},
            {**_record("m2", body, group, receives=1), "receiptHandle": "h2"},
        ]
    }
    calls: list[list[tuple[str, float]]] = []
    answer = handle_queue_event(event, p.worker, 10, lambda later: calls.append(later) or 0)
    assert [f["itemIdentifier"] for f in answer["batchItemFailures"]] == ["m1", "m2"]
    # One call for the batch; 2 s doubled twice: the third receive.
    assert calls == [[("h1", 8.0), ("h2", 8.0)]]
    assert p.command(command.command_id).status == CommandStatus.SENT
    assert len(p.registry.log()) == 1

    last = {**_record("m1", body, group, receives=8), "receiptHandle": "h9"}
    assert handle_queue_event({"Records": [last]}, p.worker, 10, calls.append) == {
        "batchItemFailures": []
    }  # receives spent: deleted, not dead-lettered; the reconciler has it
    assert len(calls) == 1  # and not postponed


def test_records_the_queue_would_not_postpone_come_back_anyway_and_are_reported(
    monkeypatch,
) -> None:
    p = Pipeline(queries=True, commit_delay_s=600)
    command = p.issue()
    p.queue.receive()
    body = {"command_id": command.command_id, "certificate_id": command.certificate_id}
    record = {**_record("m1", body, command.certificate_id, receives=1), "receiptHandle": "h1"}

    def down(later):
        raise DependencyDown("the command queue is unavailable")

    events: list[str] = []
    monkeypatch.setattr(observability, "event", lambda name, *a, **kw: events.append(name))
    for postpone in (lambda later: len(later), down):  # refused by SQS; SQS not answering
        events.clear()
        answer = handle_queue_event({"Records": [record]}, p.worker, 10, postpone)
        assert [f["itemIdentifier"] for f in answer["batchItemFailures"]] == ["m1"]
        assert "delivery.postpone_failed" in events
    assert len(p.registry.log()) == 1


def test_check_again_in_doubles_up_to_its_cap_and_stops_short_of_the_dead_letter_queue() -> None:
    worker = Pipeline().make_worker()
    delays = [worker.check_again_in(n, 10) for n in range(1, 11)]
    assert delays == [2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, None, None, None]
    worker.commit_check_s = 100.0
    assert worker.check_again_in(4, 10) == 300.0


# --- redelivery and concurrency -------------------------------------------------------------


@BOTH_MODES
def test_the_same_message_delivered_twice_sends_once(queries: bool) -> None:
    p = Pipeline(queries=queries)
    command = p.issue()
    p.queue.send(command)
    p.run()
    assert len(p.registry.log()) == 1
    assert p.command(command.command_id).status == CommandStatus.COMMITTED


def test_two_workers_given_the_same_message_at_once_send_it_once() -> None:
    p = Pipeline(latency_s=0.0)
    cert, s0 = p.issued()
    command = p.transfer("alice", cert, s0, "bob", 1000)
    delivery = Delivery(command.command_id, command.certificate_id)
    start = threading.Barrier(8)
    outcomes: list[Outcome] = []

    def work() -> None:
        worker = p.make_worker()
        start.wait()
        outcomes.extend(worker.process([delivery]))

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    transfers = [e for e in p.registry.log() if e.payload_type.endswith("TransferredEvent")]
    assert len(transfers) == 1
    p.run()
    assert p.command(command.command_id).status == CommandStatus.COMMITTED
    p.check_invariants()


def test_a_message_whose_command_another_worker_is_sending_comes_back_with_its_group() -> None:
    p = Pipeline()
    cert, s0 = p.issued()
    first = p.slice("alice", cert, s0, [500, 500])
    batch = p.queue.receive()
    taken = p.worker._prepare(batch[0].delivery)  # a worker holds the lease, mid-send
    assert taken.status == CommandStatus.SENDING
    other = Delivery("not-yet-read", cert)
    outcomes = p.worker.process([batch[0].delivery, other])
    assert outcomes == [Outcome.RETRY, Outcome.RETRY]
    assert p.command(first.command_id).status == CommandStatus.SENDING


def test_a_lost_lease_with_the_outcome_already_in_the_book_finishes_as_committed() -> None:
    p = Pipeline()
    command = p.issue()
    batch = p.queue.receive()
    p.worker.process([m.delivery for m in batch])
    # Simulate the crash after applying but before the COMMITTED write.
    p.book.commands[command.command_id] = p.command(command.command_id).model_copy(
        update={"status": CommandStatus.SENDING, "lease_until": p.now()}
    )
    p.vclock.advance(1)
    p.queue.send(command)
    p.run()
    assert p.command(command.command_id).status == CommandStatus.COMMITTED


# --- poison messages and partial batch responses --------------------------------------------


def _record(message_id: str, body: Any, group: str, receives: int = 1) -> dict[str, Any]:
    return {
        "messageId": message_id,
        "body": body if isinstance(body, str) else json.dumps(body),
        "attributes": {"MessageGroupId": group, "ApproximateReceiveCount": str(receives)},
    }


def test_unreadable_and_unknown_messages_come_back_and_so_do_later_ones_of_their_group() -> None:
    p = Pipeline()
    good = p.issue()
    event = {
        "Records": [
            _record("m1", "{not json", "g1"),
            _record("m2", {"command_id": "x", "certificate_id": "g1"}, "g1"),
            _record("m3", {"command_id": "nope", "certificate_id": "g2"}, "g2"),
            _record(
                "m4",
                {"command_id": good.command_id, "certificate_id": good.certificate_id},
                good.certificate_id,
            ),
        ]
    }
    answer = handle_queue_event(event, p.worker, max_receives=10)
    assert [f["itemIdentifier"] for f in answer["batchItemFailures"]] == ["m1", "m2", "m3"]
    assert p.command(good.command_id).status == CommandStatus.COMMITTED


def test_a_command_that_fails_on_every_receive_is_rejected_on_the_last_one() -> None:
    p = Pipeline()
    command = p.issue()

    class BrokenBuilder:
        def build(self, *_: Any) -> Any:
            raise RuntimeError("cannot build")

    worker = p.make_worker()
    worker.builder = BrokenBuilder()
    body = {"command_id": command.command_id, "certificate_id": command.certificate_id}
    early = handle_queue_event({"Records": [_record("m", body, "g", receives=3)]}, worker, 10)
    assert early["batchItemFailures"] and p.command(command.command_id).status == "ACCEPTED"
    last = handle_queue_event({"Records": [_record("m", body, "g", receives=10)]}, worker, 10)
    assert last["batchItemFailures"]
    given_up = p.command(command.command_id)
    assert given_up.status == CommandStatus.REJECTED and "dead-letter" in given_up.error
    p.check_invariants()


def test_handled_records_are_not_reported_as_failures() -> None:
    p = Pipeline()
    commands = [p.issue(gsrn=f"5713130000000000{i:02d}") for i in range(3)]
    event = {
        "Records": [
            _record(
                f"m{i}",
                {"command_id": c.command_id, "certificate_id": c.certificate_id},
                c.certificate_id,
            )
            for i, c in enumerate(commands)
        ]
    }
    assert handle_queue_event(event, p.worker, 10) == {"batchItemFailures": []}


def test_a_re_driven_command_whose_accept_died_before_its_holds_takes_them_first() -> None:
    p = Pipeline()
    cert, s0 = p.issued()
    command = p.transfer("alice", cert, s0, "bob", 1000)
    p.run()
    assert p.command(command.command_id).status == CommandStatus.COMMITTED
    # A second command whose accept crashed after recording it, before reserving: re-driven.
    late = p.transfer(
        "bob",
        cert,
        next(s.slice_id for s in p.book.get_certificate(cert).slices.values() if s.owner == "bob"),
        "carol",
        1000,
    )
    p.book.update_certificate(
        cert,
        lambda c: c.model_copy(
            update={
                "slices": {
                    k: v.model_copy(update={"state": SliceState.AVAILABLE, "reserved_by": None})
                    if v.reserved_by == late.command_id
                    else v
                    for k, v in c.slices.items()
                }
            }
        ),
    )
    p.queue.pending.clear()
    p.queue.send(late, holds_taken=False)
    p.run()
    assert p.command(late.command_id).status == CommandStatus.COMMITTED
    p.check_invariants()


# --- a message received again ----------------------------------------------------------------


class _CountingBuilder:
    """The worker's builder, counting the builds per command."""

    def __init__(self, target: Any) -> None:
        self._target = target
        self.builds: Counter[str] = Counter()

    def build(self, command: Command, certificates: Any) -> Any:
        self.builds[command.command_id] += 1
        return self._target.build(command, certificates)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._target, name)


@pytest.mark.parametrize("kind", ["issue", "slice", "transfer", "part", "claim", "withdraw"])
def test_a_command_is_built_once_however_often_its_message_comes_back(kind: str) -> None:
    """A message comes back while its command waits for the registry (every step that is
    PENDING at first), still carrying the command as accepted. Taken at its word, the
    command was built again on every receive, only for the guard to find it moved on: the
    bulletproofs of a claim, five times over. Past the first receive the book is read."""
    p = Pipeline(queries=True)  # each step PENDING at first: the message comes back
    worker = p.make_worker()
    builder = worker.builder = _CountingBuilder(worker.builder)
    cert = p.issued()
    consumption = p.issued(gsrn="571313000000000002", type_=CertificateType.CONSUMPTION)
    command = {
        "issue": lambda: p.issue(hour=1),
        "slice": lambda: p.slice("alice", *cert, [400, 600]),
        "transfer": lambda: p.transfer("alice", *cert, "bob", 1000),
        "part": lambda: p.transfer("alice", *cert, "bob", 400),
        "claim": lambda: p.claim("alice", cert, consumption, 400),
        "withdraw": lambda: p.withdraw(cert[0]),
    }[kind]()
    receives = []
    real_receive = p.queue.receive

    def receive(limit: int = 10) -> list:
        batch = real_receive(limit)
        receives.extend(m.receives for m in batch)
        return batch

    p.queue.receive = receive  # type: ignore[method-assign]
    p.run(worker=worker)

    done = p.command(command.command_id)
    assert done.status == CommandStatus.COMMITTED, done.error
    assert max(receives) > 1  # it did come back
    assert builder.builds == Counter({command.command_id: 1})
    p.check_invariants()


class _SnapshotSpy:
    """The book, noting for each certificate write of an outcome whether the worker gave the
    certificate as it knew it (a write without a read on the DynamoDB book) or none."""

    def __init__(self, book: Any) -> None:
        self._book = book
        self.given: list[bool] = []

    def update_certificate(self, certificate_id: str, change: Any, snapshot: Any = None) -> Any:
        self.given.append(snapshot is not None)
        return self._book.update_certificate(certificate_id, change, snapshot)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._book, name)


@pytest.mark.parametrize("kind", ["slice", "transfer", "part", "claim"])
def test_an_outcome_is_applied_from_the_message_in_whichever_worker_learns_it(kind: str) -> None:
    """On Lambda a handed-back message comes back to a new invocation (another worker, maybe
    another container), which never saw the build: the certificates the message carries,
    as the command's holds left them, are still what its outcome is applied to."""
    p = Pipeline(queries=True)  # each step PENDING at first: the message comes back
    cert = p.issued()
    consumption = p.issued(gsrn="571313000000000002", type_=CertificateType.CONSUMPTION)
    command = {
        "slice": lambda: p.slice("alice", *cert, [400, 600]),
        "transfer": lambda: p.transfer("alice", *cert, "bob", 1000),
        "part": lambda: p.transfer("alice", *cert, "bob", 400),
        "claim": lambda: p.claim("alice", cert, consumption, 400),
    }[kind]()
    spy = _SnapshotSpy(p.book)
    invocations = 0
    while batch := p.queue.receive():
        invocations += 1
        outcomes = p.make_worker(book=spy).process([m.delivery for m in batch])
        back = [m for m, o in zip(batch, outcomes, strict=True) if o != Outcome.DONE]
        p.queue.give_back(back)
        p.vclock.advance(2)
    done = p.command(command.command_id)
    assert done.status == CommandStatus.COMMITTED, done.error
    assert invocations > 1  # the outcome came to a worker that did not build
    assert spy.given and all(spy.given)
    p.check_invariants()


@pytest.mark.parametrize(
    ("attributes", "receives"),
    [({"ApproximateReceiveCount": "3"}, 3), ({}, 1), ({"ApproximateReceiveCount": "x"}, 1)],
)
def test_a_delivery_knows_how_often_its_message_was_received(
    attributes: dict, receives: int
) -> None:
    record = {"messageId": "m", "body": json.dumps({"command_id": "c", "certificate_id": "g"})}
    assert delivery_of({**record, "attributes": attributes}).receives == receives


# --- the steps of many commands, one registry call a round ---------------------------------


class _CountingRegistry:
    """The pipeline's registry, counting the transactions of each send call."""

    def __init__(self, registry: Any) -> None:
        self._registry = registry
        self.sends: list[int] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._registry, name)

    def send(self, transactions: list[bytes]) -> Any:
        self.sends.append(len(transactions))
        return self._registry.send(transactions)


@BOTH_MODES
def test_the_next_steps_of_a_batch_go_to_the_registry_together(queries: bool) -> None:
    """Four part transfers (two steps each: cut, then transfer) received together. Each step
    that commits leaves its command ready at the next, which goes out with the others' next
    steps in one call; before, each next step was a call of its own, and the invocation
    waited on the registry once per step of every command."""
    p = Pipeline(queries=queries)
    certificates = [p.issued(hour=h) for h in range(4)]
    transfers = [p.transfer("alice", *c, "bob", 100) for c in certificates]
    registry = _CountingRegistry(p.registry)
    p.run(worker=p.make_worker(registry=registry))
    assert all(p.command(t.command_id).status == CommandStatus.COMMITTED for t in transfers)
    assert registry.sends == [4, 4]  # was [4, 1, 1, 1, 1]
    p.check_invariants()
