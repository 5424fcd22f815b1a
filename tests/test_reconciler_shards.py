"""The reconciler scaled out (issue 16): one pass per shard, each under its own lease, the
commands the worker settled taken off the list at once, expiry swept by shard. Every test
ends with the invariants, and the shards together must do what the whole pass did."""

from __future__ import annotations

from datetime import timedelta

import pytest

from chalicelib import domain
from chalicelib.adapters.memory import InMemoryBook, shard_of
from chalicelib.domain import CommandStatus
from chalicelib.usecases import shards
from chalicelib.usecases.process import drift_checked
from tests.pipeline import Pipeline

BOTH_MODES = pytest.mark.parametrize("queries", [False, True], ids=["no-queries", "queries"])
SHARDS = 4


def sharded(queries: bool, **faults) -> Pipeline:
    p = Pipeline(queries=queries, **faults)
    p.book = InMemoryBook(open_shards=SHARDS, expiry_shards=2 * SHARDS)
    p.worker = p.make_worker()
    return p


def every_shard(p: Pipeline, **overrides):
    return [shards.run_shard(p.make_reconciler(**overrides), k).actions for k in range(SHARDS)]


@BOTH_MODES
def test_each_shard_settles_only_its_own_commands_and_together_all(queries) -> None:
    p = sharded(queries)
    commands = [p.issue(gsrn=f"5713130000000000{i:02d}") for i in range(24)]
    p.queue.pending.clear()  # every message lost: only the reconciler finds them again
    p.vclock.advance(400)
    by_shard = {k: [c for c in commands if shard_of(c.command_id, SHARDS) == k] for k in range(4)}
    assert all(by_shard.values()), "the ids spread over every shard"
    first = shards.run_shard(p.make_reconciler(), 0)
    assert first.actions["redriven"] == len(by_shard[0])
    assert {m.delivery.command_id for m in p.queue.pending} == {c.command_id for c in by_shard[0]}
    for k in range(1, SHARDS):
        shards.run_shard(p.make_reconciler(), k)
    assert {m.delivery.command_id for m in p.queue.pending} == {c.command_id for c in commands}
    p.settle()
    assert {p.command(c.command_id).status for c in commands} == {CommandStatus.COMMITTED}
    p.check_invariants()


@BOTH_MODES
def test_a_shard_is_not_worked_twice_at_once_but_other_shards_are(queries) -> None:
    p = sharded(queries)
    held = shards.for_shard(p.make_reconciler(), 1)
    assert p.book.acquire_lease(held.lease, "someone-else", p.now(), p.now() + timedelta(60))
    actions = every_shard(p)
    assert [a["skipped_lease_held"] for a in actions] == [0, 1, 0, 0]
    assert p.book.acquire_lease("reconciler", "the-whole-pass", p.now(), p.now())


def test_a_shard_that_does_not_exist_is_refused() -> None:
    p = sharded(False)
    with pytest.raises(ValueError, match="no shard 4"):
        shards.run_shard(p.make_reconciler(), SHARDS)


def test_the_schedule_fans_out_one_message_per_shard() -> None:
    sent: list[int] = []
    assert shards.fan_out(SHARDS, sent.append) == SHARDS
    assert sent == list(range(SHARDS))


@BOTH_MODES
def test_expiry_is_swept_by_shard_and_the_shards_together_expire_all(queries) -> None:
    p = sharded(queries)
    certs = [p.issued(gsrn=f"5713130000000001{i:02d}")[0] for i in range(20)]
    p.vclock.advance(366 * 86400)
    expired = [a["expired"] for a in every_shard(p)]
    assert sum(expired) == len(certs)
    assert sum(1 for n in expired if n) > 1, "more than one shard had certificates to expire"
    assert {p.book.get_certificate(c).status for c in certs} == {domain.CertificateStatus.EXPIRED}
    p.check_invariants()


@BOTH_MODES
def test_a_sharded_expiry_sweep_takes_at_most_its_limit_per_expiry_shard_and_then_the_rest(
    queries,
) -> None:
    p = sharded(queries)
    certs = [p.issued(gsrn=f"5713130000000002{i:02d}")[0] for i in range(30)]
    p.vclock.advance(366 * 86400)
    first = sum(a["expired"] for a in every_shard(p, max_commands=1))
    assert first <= 2 * SHARDS  # one per expiry shard
    for _ in range(30):
        every_shard(p, max_commands=1)
    assert {p.book.get_certificate(c).status for c in certs} == {domain.CertificateStatus.EXPIRED}


def test_drift_sampling_is_a_stable_function_of_the_command() -> None:
    ids = [f"cmd-{i}" for i in range(2000)]
    assert all(drift_checked(i, 1) for i in ids)
    sampled = [i for i in ids if drift_checked(i, 10)]
    assert 100 < len(sampled) < 300
    assert sampled == [i for i in ids if drift_checked(i, 10)]


def test_with_queries_committed_commands_leave_the_list_at_their_terminal_write_but_a_sample() -> (
    None
):
    p = sharded(True)
    p.worker.drift_check_one_in = 4
    commands = [p.issue(gsrn=f"5713130000000003{i:02d}") for i in range(40)]
    p.run()
    assert {p.command(c.command_id).status for c in commands} == {CommandStatus.COMMITTED}
    left = {c.command_id for c in p.book.settled_commands(1000)}
    assert left == {c.command_id for c in commands if drift_checked(c.command_id, 4)}
    assert 0 < len(left) < len(commands)
    actions = every_shard(p)
    assert sum(a["aligned"] for a in actions) == len(left)
    assert p.book.settled_commands(1000) == []
    p.check_invariants()


def test_with_queries_a_rejected_command_always_stays_for_the_reconciler() -> None:
    p = sharded(True, lost_rate=1.0)  # every send lost: the commands end IN_DOUBT
    p.worker.drift_check_one_in = 1_000_000
    commands = [p.issue(gsrn=f"5713130000000004{i:02d}") for i in range(10)]
    p.run()
    for c in commands:  # an operator finds them refused: the worker's rejection path
        p.worker.step_rejected(p.command(c.command_id), "refused")
    assert {p.command(c.command_id).status for c in commands} == {CommandStatus.REJECTED}
    assert len(p.book.settled_commands(1000)) == len(commands)


def test_a_worker_crash_before_the_terminal_write_leaves_the_command_listed() -> None:
    """The sample decides only at the terminal write: a command whose worker died before it
    stays listed, open, and the reconciler settles it."""
    p = sharded(True)
    p.worker.drift_check_one_in = 1_000_000
    command = p.issue()
    p.book.transition = _crash_on(p.book.transition, CommandStatus.COMMITTED)
    batch = p.queue.receive()
    p.worker.process([m.delivery for m in batch])  # the worker's isolation logs the crash
    del p.book.transition
    assert p.command(command.command_id).status != CommandStatus.COMMITTED
    assert [c.command_id for c in p.book.open_commands(p.now() + timedelta(1), 10)] == [
        command.command_id
    ]
    p.settle()
    assert p.command(command.command_id).status == CommandStatus.COMMITTED
    p.check_invariants()


def _crash_on(transition, target):
    def crashing(command_id, change):
        if change.target == target:
            raise RuntimeError("the worker died")
        return transition(command_id, change)

    return crashing


# --- the schedule's fan-out in Lambda --------------------------------------------------------


def test_the_schedule_fans_out_and_each_shard_event_runs_that_shard_only() -> None:
    from chalicelib import entrypoints
    from chalicelib.adapters.fanout import shard_event

    p = sharded(False)
    commands = [p.issue(gsrn=f"5713130000000005{i:02d}") for i in range(12)]
    p.queue.pending.clear()
    p.vclock.advance(400)
    sent: list[int] = []
    scheduled = {"version": "0", "account": "1", "region": "eu-west-1", "detail": {}}
    assert entrypoints.handle_schedule(scheduled, p.make_reconciler(), sent.append) == {
        "fanned_out": SHARDS
    }
    assert sent == list(range(SHARDS)) and not p.queue.pending  # the schedule itself did nothing
    for shard in sent:
        answer = entrypoints.handle_schedule(shard_event(shard), p.make_reconciler(), None)
        assert answer["shard"] == shard
        assert answer["actions"]["redriven"] == sum(
            1 for c in commands if shard_of(c.command_id, SHARDS) == shard
        )
    assert len(p.queue.pending) == len(commands)
    # Without a fan-out (tests, the embedded stack) the schedule runs one pass over all.
    assert "actions" in entrypoints.handle_schedule(scheduled, p.make_reconciler(), None)


def test_the_lambda_fan_out_invokes_the_function_asynchronously_with_the_shard() -> None:
    import json

    from chalicelib.adapters.fanout import LambdaFanOut, shard_of_event

    calls: list[dict] = []

    class FakeLambda:
        def invoke(self, **kwargs):
            calls.append(kwargs)

    LambdaFanOut(FakeLambda(), "certificates-domain-prod-reconciler").send(7)
    [call] = calls
    assert call["InvocationType"] == "Event"
    assert call["FunctionName"] == "certificates-domain-prod-reconciler"
    assert shard_of_event(json.loads(call["Payload"])) == 7
