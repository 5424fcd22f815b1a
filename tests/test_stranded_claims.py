"""A claim stopped after an allocation committed, at every step where that can happen, and by
every way a step ends refused (the registry's verdict, an operator's finding), over the plain
pipeline: the book shows what the registry holds (allocated for good, or claimed), the command
names what it stranded, and a claim given up midway is re-driven instead of stranded."""

from __future__ import annotations

import base64
from collections.abc import Callable, Sequence
from datetime import timedelta

import pytest

from chalicelib import domain
from chalicelib.domain import (
    Actor,
    CertificateType,
    CommandStatus,
    Role,
    SliceRef,
    SliceState,
)
from chalicelib.ports import Delivery
from chalicelib.registry.envelope import transaction_id_of
from chalicelib.registry.port import Receipt, RegistryAmbiguous, RegistryUnavailable
from chalicelib.usecases.reconcile import resolve_by_operator
from tests.pipeline import Pipeline

pytestmark = pytest.mark.usefixtures("groups_both_ways")

ALLOCATED, CLAIMED, AVAILABLE = SliceState.ALLOCATED, SliceState.CLAIMED, SliceState.AVAILABLE


class Interposed:
    """The worker's registry, with `before(batch)` run before each send: it may change the
    registry, or raise as the call would."""

    def __init__(self, registry, before: Callable[[Sequence[bytes]], None]) -> None:
        self._registry = registry
        self._before = before

    def send(self, transactions: Sequence[bytes]) -> list[Receipt]:
        self._before(transactions)
        return self._registry.send(transactions)

    def __getattr__(self, name: str):
        return getattr(self._registry, name)


def _pair(p: Pipeline):
    production, pslice = p.issued(quantity=300)
    consumption, cslice = p.issued(
        quantity=300, gsrn="571313000000000002", type_=CertificateType.CONSUMPTION
    )
    return (production, pslice), (consumption, cslice)


def _at_step(p: Pipeline, command_id: str, step: int, act: Callable[[], None]):
    """Run `act` once, just before the command's transaction `step` is sent."""
    done = []

    def before(batch: Sequence[bytes]) -> None:
        command = p.command(command_id)
        if done or not command.transactions or command.step != step:
            return
        done.append(True)
        act()

    p.worker.registry = Interposed(p.registry, before)
    return done


@pytest.mark.parametrize(
    ("refused_step", "withdrawn_side", "production_state", "consumption_state", "stranded"),
    [
        # allocate production, [allocate consumption], claim production, claim consumption
        (1, 1, ALLOCATED, AVAILABLE, ["production"]),
        (2, 0, ALLOCATED, ALLOCATED, ["production", "consumption"]),
        (3, 1, CLAIMED, ALLOCATED, ["consumption"]),
    ],
    ids=["consumption-allocation", "production-claim", "consumption-claim"],
)
@pytest.mark.parametrize("queries", [False, True], ids=["no-queries", "queries"])
def test_a_claim_refused_after_an_allocation_shows_what_the_registry_holds(
    queries, refused_step, withdrawn_side, production_state, consumption_state, stranded
) -> None:
    p = Pipeline(queries=queries)
    production, consumption = _pair(p)
    claim = p.claim("alice", production, consumption, 300)
    sides = (production, consumption)
    done = _at_step(
        p, claim.command_id, refused_step, lambda: p.registry.withdraw(sides[withdrawn_side][0])
    )
    p.run()
    assert done == [True]

    rejected = p.command(claim.command_id)
    assert rejected.status == CommandStatus.REJECTED
    assert [s.side.value for s in rejected.stranded] == stranded
    txs = [transaction_id_of(base64.b64decode(t)) for t in rejected.transactions]
    for allocation in rejected.stranded:
        side = 0 if allocation.side == CertificateType.PRODUCTION else 1
        assert allocation.transaction_id == txs[side]  # the allocations are steps 0 and 1
        assert allocation.slice_id == sides[side][1]
        assert allocation.transaction_id in rejected.error
    assert [ref.slice_id for ref in rejected.slices] == [production[1], consumption[1]]
    states = [p.book.get_certificate(cert).slices[slice_id].state for cert, slice_id in sides]
    assert states == [production_state, consumption_state]
    assert [s.command_id for s in p.book.stranded_commands(10)] == [claim.command_id]
    p.check_invariants()
    if queries:  # the reconciler aligns the withdrawal; the slices already are as registered
        p.reconcile()
        p.check_all_aligned()
        for cert, _ in sides:
            assert not [a for a in p.book.audits(cert) if a["action"] == "claim_state"]


def test_a_claim_refused_at_its_production_allocation_strands_nothing() -> None:
    p = Pipeline()
    production, consumption = _pair(p)
    claim = p.claim("alice", production, consumption, 300)
    _at_step(p, claim.command_id, 0, lambda: p.registry.withdraw(production[0]))
    p.run()
    rejected = p.command(claim.command_id)
    assert rejected.status == CommandStatus.REJECTED
    assert rejected.stranded == () and "stranded" not in (rejected.error or "")
    assert p.book.get_certificate(production[0]).slices[production[1]].state == AVAILABLE
    assert p.book.stranded_commands(10) == []


def test_an_operator_finding_that_the_consumption_allocation_never_applied_strands_the_other() -> (
    None
):
    p = Pipeline()
    production, consumption = _pair(p)
    claim = p.claim("alice", production, consumption, 300)

    def lost() -> None:
        raise RegistryAmbiguous("timed out")

    _at_step(p, claim.command_id, 1, lost)
    p.run()
    assert p.command(claim.command_id).status == CommandStatus.IN_DOUBT
    operator = Actor(owner="ops", roles=frozenset({Role.OPERATOR}))
    after = resolve_by_operator(
        p.book, p.queue, p.make_worker(), operator, claim.command_id, False, "not in the registry"
    )
    assert after.status == CommandStatus.REJECTED
    assert [s.side for s in after.stranded] == [CertificateType.PRODUCTION]
    assert p.book.get_certificate(production[0]).slices[production[1]].state == ALLOCATED
    assert p.book.get_certificate(consumption[0]).slices[consumption[1]].state == AVAILABLE
    p.check_invariants()


def test_a_claim_given_up_after_its_allocation_is_re_driven_not_stranded() -> None:
    p = Pipeline()
    production, consumption = _pair(p)
    claim = p.claim("alice", production, consumption, 300)
    down = [True]

    def unavailable() -> None:
        if down:
            raise RegistryUnavailable("refused before apply")

    def before(batch: Sequence[bytes]) -> None:
        command = p.command(claim.command_id)
        if command.transactions and command.step == 1:
            unavailable()

    p.worker.registry = Interposed(p.registry, before)
    (message,) = p.queue.receive()  # comes back RETRY; the pipeline's queue drops it here
    p.worker.process([message.delivery])
    waiting = p.command(claim.command_id)
    assert (waiting.status, waiting.step) == (CommandStatus.ACCEPTED, 1)
    # The message failed on every receive: the last one gives up on it.
    p.worker.give_up(Delivery(claim.command_id, claim.certificate_id), "failed every time")
    assert p.command(claim.command_id).status == CommandStatus.ACCEPTED
    assert p.book.stranded_commands(10) == []
    down.clear()
    p.vclock.advance(timedelta(minutes=10).total_seconds())
    assert p.reconcile()["redriven"] == 1
    p.run()
    assert p.command(claim.command_id).status == CommandStatus.COMMITTED
    assert p.book.get_certificate(production[0]).slices[production[1]].state == CLAIMED
    p.check_invariants()


def test_an_allocated_slice_cannot_be_reserved() -> None:
    p = Pipeline()
    production, consumption = _pair(p)
    claim = p.claim("alice", production, consumption, 300)
    _at_step(p, claim.command_id, 1, lambda: p.registry.withdraw(consumption[0]))
    p.run()
    with pytest.raises(domain.Conflict, match="is allocated"):
        p.book.reserve(
            SliceRef(certificate_id=production[0], slice_id=production[1]), "c-2", "alice", 1
        )
