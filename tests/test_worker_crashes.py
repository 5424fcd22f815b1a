"""I1-I5 for the worker under a crash at every side effect.

For each command kind, the worker is stopped before, and after, each of its calls to the book
and to the registry in turn. The message then comes back (as SQS does once the visibility
timeout passes) to a healthy worker. Whatever the crash point: no transaction reached the
registry twice, the command ended COMMITTED, REJECTED or visibly IN_DOUBT, quantities are
conserved, no reservation outlives its command, and a committed command's certificates are
exactly as the registry has them.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import pytest

from chalicelib.domain import CertificateType, Command, CommandStatus, SliceState
from chalicelib.ports import Outcome
from tests.pipeline import Pipeline

pytestmark = pytest.mark.usefixtures("groups_both_ways")


class Crash(BaseException):
    """The process dies: not an Exception, so no handler of ours can catch it."""


class Counter:
    def __init__(self, at: int, when: str) -> None:
        self.calls = 0
        self.at = at
        self.when = when
        self.fired = False


class Crashing:
    """Wraps an adapter; dies before or after the n-th call made through any wrapper that
    shares the counter."""

    def __init__(self, target: Any, counter: Counter) -> None:
        self._target = target
        self._counter = counter

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._target, name)
        if not callable(attribute):
            return attribute

        def call(*args: Any, **kwargs: Any) -> Any:
            counter = self._counter
            counter.calls += 1
            hit = counter.calls == counter.at
            if hit and counter.when == "before":
                counter.fired = True
                raise Crash(f"before {name}")
            result = attribute(*args, **kwargs)
            if hit:
                counter.fired = True
                raise Crash(f"after {name}")
            return result

        return call


def _issue(p: Pipeline) -> Command:
    return p.issue()


def _slice(p: Pipeline) -> Command:
    cert, s0 = p.issued()
    return p.slice("alice", cert, s0, [400, 600])


def _transfer_whole(p: Pipeline) -> Command:
    cert, s0 = p.issued()
    return p.transfer("alice", cert, s0, "bob", 1000)


def _transfer_part(p: Pipeline) -> Command:
    cert, s0 = p.issued()
    return p.transfer("alice", cert, s0, "bob", 100)


def _claim(p: Pipeline) -> Command:
    production = p.issued(quantity=1000)
    consumption = p.issued(
        quantity=800, gsrn="571313000000000002", type_=CertificateType.CONSUMPTION
    )
    return p.claim("alice", production, consumption, 500)


def _withdraw(p: Pipeline) -> Command:
    cert, _ = p.issued()
    return p.withdraw(cert)


SCENARIOS: dict[str, Callable[[Pipeline], Command]] = {
    "issue": _issue,
    "slice": _slice,
    "transfer": _transfer_whole,
    "partial-transfer": _transfer_part,
    "claim": _claim,
    "withdraw": _withdraw,
}


def _crash_then_recover(scenario: str, queries: bool, at: int, when: str) -> bool:
    """One run; returns whether the crash fired (False: `at` is past the last call)."""
    p = Pipeline(queries=queries)
    command = SCENARIOS[scenario](p)
    counter = Counter(at, when)
    crashing = p.make_worker(book=Crashing(p.book, counter), registry=Crashing(p.registry, counter))
    batch = p.queue.receive()
    try:
        outcomes = crashing.process([m.delivery for m in batch])
    except Crash:
        p.queue.give_back(batch)  # never deleted: SQS delivers it again
        p.vclock.advance(300)  # past the visibility timeout and the lease
    else:
        assert not counter.fired
        # What must come back (a step awaiting the registry) does.
        p.queue.give_back([m for m, o in zip(batch, outcomes, strict=True) if o != Outcome.DONE])
    p.run()
    final = p.command(command.command_id)
    assert final.status in (
        CommandStatus.COMMITTED,
        CommandStatus.REJECTED,
        CommandStatus.IN_DOUBT,
    ), final
    if final.status == CommandStatus.IN_DOUBT:
        assert final.error  # names what an operator must do
    p.check_never_twice()
    p.check_conservation()
    if final.status != CommandStatus.IN_DOUBT:
        p.check_no_stale_lock()
    if final.status == CommandStatus.COMMITTED:
        for certificate_id in final.certificate_ids():
            assert p.aligned(certificate_id), certificate_id
    if final.status == CommandStatus.REJECTED:
        for certificate_id in final.certificate_ids():
            cert = p.book.get_certificate(certificate_id)
            assert all(s.reserved_by is None for s in cert.slices.values())
    return counter.fired


@pytest.mark.parametrize("queries", [False, True], ids=["no-queries", "queries"])
@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_a_crash_at_any_point_of_the_worker_sends_nothing_twice_and_loses_nothing(
    scenario: str, queries: bool
) -> None:
    crashes = 0
    for at, when in itertools.product(range(1, 200), ("before", "after")):
        if not _crash_then_recover(scenario, queries, at, when):
            break
        crashes += 1
    assert crashes >= 6  # the run did reach book writes and a registry call


def test_a_claim_that_dies_mid_way_is_in_doubt_at_that_step_and_resends_nothing() -> None:
    p = Pipeline()
    command = _claim(p)  # both sides are cut first: six transactions
    sends = []

    class Recording:
        def __init__(self, registry: Any) -> None:
            self.registry = registry
            self.supports_queries = registry.supports_queries

        def send(self, txs: Any) -> Any:
            sends.append(len(txs))
            if len(sends) == 3:
                raise Crash("after two steps")
            return self.registry.send(txs)

    crashing = p.make_worker(registry=Recording(p.registry))
    batch = p.queue.receive()
    with pytest.raises(Crash):
        crashing.process([m.delivery for m in batch])
    stopped = p.command(command.command_id)
    assert stopped.status == CommandStatus.SENDING and stopped.step == 2
    p.queue.give_back(batch)
    p.vclock.advance(300)
    p.run()
    # The third step may or may not have left when the worker died: it is in doubt, and the
    # two issues and the first two steps were each sent exactly once.
    in_doubt = p.command(command.command_id)
    assert in_doubt.status == CommandStatus.IN_DOUBT and "step 3 of 6" in in_doubt.error
    p.check_never_twice()
    assert len([e for e in p.registry.log() if e.origin == "client"]) == 2 + 2
    slices = p.book.get_certificate(command.slices[0].certificate_id).slices
    assert slices[command.slices[0].slice_id].state == SliceState.RESERVED
