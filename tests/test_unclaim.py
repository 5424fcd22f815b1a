"""Unclaim (issue 15): a withdrawn certificate gives the other side of each of its claims back.

The registry accepts an `UnclaimedEvent` of a claim's allocation on the side that is not
withdrawn, signed by the claimed slice's owner, and restores that slice. The service sends it
as a command of its own once the withdrawal commits: exactly once, however often the
withdrawal is applied, whatever dies between the steps, whichever message is lost.
"""

from __future__ import annotations

import itertools

import pytest

from chalicelib import domain
from chalicelib.domain import Actor, CertificateType, CommandKind, CommandStatus, Role, SliceState
from chalicelib.ports import Delivery, Outcome
from chalicelib.usecases.process import apply_outcome
from chalicelib.usecases.reconcile import resend_by_operator
from tests.pipeline import Pipeline
from tests.test_worker_crashes import Counter, Crash, Crashing

pytestmark = pytest.mark.usefixtures("groups_both_ways")

CONSUMPTION_GSRN = "571313000000000002"


def _claimed(p: Pipeline, quantity: int = 1000, consumption_wh: int = 1000):
    """A production and a consumption certificate of alice's, and a committed claim of
    `quantity` between them (a part of the consumption slice when it holds more)."""
    production = p.issued(quantity=1000)
    consumption = p.issued(
        quantity=consumption_wh, gsrn=CONSUMPTION_GSRN, type_=CertificateType.CONSUMPTION
    )
    claim = p.claim("alice", production, consumption, quantity)
    p.run()
    assert p.command(claim.command_id).status == CommandStatus.COMMITTED
    return production[0], consumption[0], claim


def _without_queue(p: Pipeline):
    worker = p.make_worker()
    worker.queue = None
    return worker


def _unclaims(p: Pipeline) -> list[domain.Command]:
    return [c for c in p.book.commands.values() if c.kind == CommandKind.UNCLAIM]


def _claimed_slices(p: Pipeline, certificate_id: str) -> list[domain.Slice]:
    cert = p.book.get_certificate(certificate_id)
    return [s for s in cert.slices.values() if s.state == SliceState.CLAIMED]


@pytest.mark.parametrize("queries", [False, True], ids=["no-queries", "queries"])
@pytest.mark.parametrize("withdrawn_side", ["consumption", "production"])
@pytest.mark.parametrize("cut", [False, True], ids=["whole", "part"])
def test_withdrawing_one_side_of_a_claim_gives_the_other_side_back(
    queries: bool, withdrawn_side: str, cut: bool
) -> None:
    p = Pipeline(queries=queries)
    production, consumption, claim = _claimed(p, 600 if cut else 1000, 1000)
    withdrawn, other = (
        (consumption, production) if withdrawn_side == "consumption" else (production, consumption)
    )
    (given_back,) = _claimed_slices(p, other)
    assert given_back.claimed_by == claim.command_id

    p.withdraw(withdrawn)
    p.run()

    (unclaim,) = _unclaims(p)
    assert unclaim.status == CommandStatus.COMMITTED, unclaim.error
    assert unclaim.caller == "alice"  # signed by, and listed for, the slice's owner
    assert unclaim.claim_id == claim.command_id
    assert unclaim.certificate_id == other
    after = p.book.get_certificate(other).slices[given_back.slice_id]
    assert (after.state, after.owner, after.quantity_wh) == (
        SliceState.AVAILABLE,
        "alice",
        600 if cut else 1000,
    )
    assert after.claimed_by is None
    # the withdrawn side keeps its claim: nothing of a withdrawn certificate moves again
    assert len(_claimed_slices(p, withdrawn)) == 1
    p.settle()
    p.check_settled()
    assert len(_unclaims(p)) == 1


def test_the_slice_given_back_can_be_claimed_again() -> None:
    p = Pipeline(queries=True)
    production, consumption, _ = _claimed(p)
    p.withdraw(consumption)
    p.run()
    (back,) = [
        s
        for s in p.book.get_certificate(production).slices.values()
        if s.state == SliceState.AVAILABLE
    ]
    other = p.issued(quantity=1000, gsrn="571313000000000003", type_=CertificateType.CONSUMPTION)
    again = p.claim("alice", (production, back.slice_id), other, 1000)
    p.run()
    assert p.command(again.command_id).status == CommandStatus.COMMITTED
    p.settle()
    p.check_settled()


def test_the_unclaim_is_recorded_once_however_often_the_withdrawal_is_applied() -> None:
    p = Pipeline(queries=True)
    _, consumption, _ = _claimed(p)
    withdrawal = p.withdraw(consumption)
    p.run()
    (unclaim,) = _unclaims(p)
    # Applied again (a redelivery, the reconciler finishing a dead worker's work): the unclaim
    # committed already, so nothing is owed and nothing new is recorded.
    assert apply_outcome(p.book, p.command(withdrawal.command_id)) == []
    assert _unclaims(p) == [p.command(unclaim.command_id)]
    p.check_never_twice()


def test_an_unclaim_whose_message_never_left_is_redriven_by_the_reconciler() -> None:
    """A worker without a queue (or one whose send failed) leaves the unclaim in the book."""
    p = Pipeline(queries=True)
    _, consumption, _ = _claimed(p)
    p.withdraw(consumption)
    p.run(worker=_without_queue(p))
    (unclaim,) = _unclaims(p)
    assert unclaim.status == CommandStatus.ACCEPTED and not p.queue.pending
    assert p.reconcile()["accepted_recent"] == 1  # not yet: it may still be on its way
    p.vclock.advance(301)
    assert p.reconcile()["redriven"] == 1
    p.run()
    assert p.command(unclaim.command_id).status == CommandStatus.COMMITTED
    p.check_settled()


def _deliver_until_quiet(p: Pipeline, worker) -> str | None:
    """Deliver with `worker` until the queue is empty (the unclaim it queues too), or until it
    dies: then the message in flight comes back, past its visibility and the lease."""
    while batch := p.queue.receive():
        try:
            outcomes = worker.process([m.delivery for m in batch])
        except Crash as died:
            p.queue.give_back(batch)  # never deleted: SQS delivers it again
            p.vclock.advance(300)
            return str(died)
        back = [m for m, o in zip(batch, outcomes, strict=True) if o != Outcome.DONE]
        p.queue.give_back(back)
        p.vclock.advance(30 if back else 0)
    return None


@pytest.mark.parametrize("queries", [False, True], ids=["no-queries", "queries"])
def test_a_crash_anywhere_in_the_withdrawal_still_unclaims_once(queries: bool) -> None:
    """The worker dies before or after each call it makes for the withdrawal and the unclaim
    (recording it, queueing it, sending it): once everything settles, exactly one unclaim
    committed, nothing was sent twice, and the book equals the registry."""
    died_at = set()
    for at, when in itertools.product(range(1, 200), ("before", "after")):
        p = Pipeline(queries=queries)
        production, consumption, _ = _claimed(p)
        withdrawal = p.withdraw(consumption)
        counter = Counter(at, when)
        crashing = p.make_worker(
            book=Crashing(p.book, counter), registry=Crashing(p.registry, counter)
        )
        crashing.queue = Crashing(p.queue, counter)
        died = _deliver_until_quiet(p, crashing)
        if counter.calls < at:
            break  # past the last call
        if died is None:
            continue  # that call raised (a lost race): nothing to die after
        died_at.add(died)
        p.settle()
        p.check_settled()
        if p.command(withdrawal.command_id).status == CommandStatus.REJECTED:
            # it died before sending, and the operator found the registry without it
            assert not _unclaims(p) and _claimed_slices(p, production), (at, when)
            continue
        (unclaim,) = _unclaims(p)
        if unclaim.status == CommandStatus.REJECTED:
            # The unclaim died between its guard and its send: in doubt (the registry does not
            # know the transaction, which may also mean its status expired), and the test's
            # operator abandoned it (`not_sent` sends it: see the last test). The slice stays
            # claimed, as the registry has it.
            assert "resolved by operator" in unclaim.error, (at, when)
            assert _claimed_slices(p, production), (at, when)
            continue
        assert unclaim.status == CommandStatus.COMMITTED, (at, when, unclaim)
        assert not _claimed_slices(p, production), (at, when)
    # the crashes reached the unclaim's recording, its queueing and its own transaction
    assert {"before add_command", "after add_command", "after send"} <= died_at, died_at
    assert sum("transition" in d for d in died_at) >= 2


def test_both_sides_withdrawn_leave_the_book_equal_to_the_registry() -> None:
    """The second withdrawal may land before the first one's unclaim: the registry then refuses
    the unclaim (a withdrawn certificate takes no later event) and nothing changes."""
    p = Pipeline(queries=True)
    production, consumption, _ = _claimed(p)
    p.withdraw(consumption)
    p.withdraw(production)
    p.settle()
    p.check_settled()
    for unclaim in _unclaims(p):
        assert unclaim.status in (CommandStatus.COMMITTED, CommandStatus.REJECTED)
    p.check_never_twice()


def test_no_unclaim_for_a_claim_whose_other_side_is_not_active() -> None:
    p = Pipeline(queries=True)
    production, consumption, claim = _claimed(p)
    p.withdraw(production)
    p.run()
    p.withdraw(consumption)
    p.run()
    # the first withdrawal's unclaim gave the consumption slice back; the second finds the
    # production certificate withdrawn: nothing to give back there
    assert [u.certificate_id for u in _unclaims(p)] == [consumption]
    withdrawn = p.book.get_certificate(consumption)
    other = p.book.get_certificate(production)
    assert domain.unclaim_for(p.command(claim.command_id), withdrawn, other, p.now()) is None
    p.settle()
    p.check_settled()


def test_an_unclaim_in_doubt_that_never_left_is_sent_by_an_operators_not_sent() -> None:
    """Without queries, an unclaim whose worker died before it sent is IN_DOUBT; the operator
    who finds it missing in the registry resends it (`not_sent`), and the slice comes back."""
    p = Pipeline(queries=False)
    production, consumption, _ = _claimed(p)
    p.withdraw(consumption)
    p.run(worker=_without_queue(p))
    (unclaim,) = _unclaims(p)
    counter = Counter(1, "before")  # past the guard (SENDING), dies before the registry call
    crashing = p.make_worker(registry=Crashing(p.registry, counter))
    with pytest.raises(Crash):
        crashing.process([Delivery(unclaim.command_id, unclaim.certificate_id, False)])
    p.vclock.advance(300)
    p.reconcile()
    assert p.command(unclaim.command_id).status == CommandStatus.IN_DOUBT
    resend_by_operator(
        p.book,
        p.queue,
        Actor(owner="ops", roles=frozenset({Role.OPERATOR})),
        unclaim.command_id,
        "not in the registry's log",
        p.now(),
    )
    p.run()
    assert p.command(unclaim.command_id).status == CommandStatus.COMMITTED
    assert not _claimed_slices(p, production)
    p.check_never_twice()


def test_an_unclaim_settled_after_its_certificate_was_withdrawn_leaves_the_slice_withdrawn() -> (
    None
):
    """Soak seed 300291: the unclaim reached the registry but its worker died (in doubt); the
    issuer then withdrew the production certificate, which committed after it; the operator
    settled the unclaim as committed. The slice came back to a withdrawn certificate, so it
    is withdrawn, not available (as the registry holds it: restored, then withdrawn)."""
    p = Pipeline(queries=False)
    production, consumption, _ = _claimed(p)
    p.withdraw(consumption)
    p.run(worker=_without_queue(p))
    (unclaim,) = _unclaims(p)
    counter = Counter(1, "after")  # the unclaim's send reached the registry, then death
    crashing = p.make_worker(registry=Crashing(p.registry, counter))
    with pytest.raises(Crash):
        crashing.process([Delivery(unclaim.command_id, unclaim.certificate_id, False)])
    p.withdraw(production)
    p.run()
    assert p.book.get_certificate(production).status == domain.CertificateStatus.WITHDRAWN
    p.vclock.advance(300)
    p.settle()  # the operator finds the unclaim in the registry's log: committed
    assert p.command(unclaim.command_id).status == CommandStatus.COMMITTED
    (given_back,) = [
        s for s in p.book.get_certificate(production).slices.values() if s.claimed_by is None
    ]
    assert given_back.state == SliceState.WITHDRAWN
    p.check_settled()


@pytest.mark.parametrize("settled", [False, True], ids=["in-flight", "ended"])
@pytest.mark.parametrize("owner_drift", [False, True], ids=["given-back", "and-another-owner"])
def test_an_unclaim_on_its_way_is_not_drift(settled: bool, owner_drift: bool) -> None:
    """Soak seed 416336: the unclaim reached the registry, its worker died before writing
    the outcome; the reconciler, comparing the certificate meanwhile, found the slice claimed
    in the book and free in the registry, "repaired" it and audited drift that never was. An
    unclaim still on its way is work in flight; once it has ended (here: refused by hand, so
    the book never gives the slice back), the same difference is drift, and is repaired.
    Soak seed 740762: the registry had also given the slice to another owner (drift of its
    own); repaired then as a slice of another owner, it was no longer claimed in the book, and
    the unclaim could never be settled. It waits for the unclaim the same way."""
    p = Pipeline(queries=True)
    production, consumption, _ = _claimed(p)
    p.withdraw(consumption)
    p.run(worker=_without_queue(p))
    (unclaim,) = _unclaims(p)
    crashing = p.make_worker(registry=Crashing(p.registry, Counter(1, "after")))
    with pytest.raises(Crash):
        crashing.process([Delivery(unclaim.command_id, unclaim.certificate_id, False)])
    p.vclock.advance(2)  # the registry has committed it, the book does not know
    if owner_drift:
        (claimed,) = _claimed_slices(p, production)
        p.registry.set_owner(production, claimed.ref, "carol")
        p.vclock.advance(2)
    if settled:
        ended = p.command(unclaim.command_id).model_copy(
            update={"status": CommandStatus.REJECTED, "error": "refused by hand"}
        )
        p.book.commands[unclaim.command_id] = ended
    before = p.book.get_certificate(production)

    drift = p.make_reconciler()._align(production)

    repaired = ["wrong_owner"] if owner_drift else ["claim_state"]
    if settled:
        assert drift == "drift_repaired"
        assert [a["action"] for a in p.book.audits(production)] == repaired
        assert not _claimed_slices(p, production)
    else:
        assert drift == "aligned"
        assert p.book.audits(production) == []
        assert p.book.get_certificate(production) == before
        p.vclock.advance(300)
        p.settle()
        assert p.command(unclaim.command_id).status == CommandStatus.COMMITTED
        assert not _claimed_slices(p, production)
        # The other owner is drift, repaired once the unclaim is in the book.
        assert [a["action"] for a in p.book.audits(production)] == (repaired * owner_drift)
        p.check_settled()
