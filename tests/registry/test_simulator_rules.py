"""The simulator's verdicts, rule by rule, in "no queries" mode where a send answers them."""

from __future__ import annotations

import pytest

from chalicelib.registry.envelope import ISSUED, TRANSFERRED, Transaction
from chalicelib.registry.port import TransactionStatus
from chalicelib.registry.sandbox.simulator import RegistrySimulator, SimulatorConfig, VirtualClock
from chalicelib.registry.stream import fold
from tests.registry.builders import (
    HOUR,
    QUARTER,
    allocate,
    claim,
    issue,
    new_id,
    slice_,
    transfer,
    unclaim,
    withdraw,
)

COMMITTED, FAILED = TransactionStatus.COMMITTED, TransactionStatus.FAILED


@pytest.fixture
def registry() -> RegistrySimulator:
    return RegistrySimulator(SimulatorConfig(seed=1), clock=VirtualClock())


def verdict(registry: RegistrySimulator, data: bytes) -> tuple[TransactionStatus, str]:
    [receipt] = registry.send([data])
    return receipt.status, receipt.message


def slices(registry: RegistrySimulator, cert: str) -> dict[str, tuple[str, int, str]]:
    snapshot = registry.snapshot(cert)
    assert snapshot is not None
    return {s["ref"]: (s["owner"], s["quantity"], s["state"]) for s in snapshot["slices"]}


@pytest.fixture
def cert(registry: RegistrySimulator) -> str:
    """A production certificate of 1000 Wh in one slice s0 owned by alice."""
    cert = new_id()
    assert verdict(registry, issue(cert)) == (COMMITTED, "")
    return cert


# --- issue --------------------------------------------------------------------------------


def test_an_issuer_issues_a_certificate_with_one_available_slice(registry, cert):
    snapshot = registry.snapshot(cert)
    assert snapshot["type"] == "PRODUCTION"
    assert snapshot["grid_area"] == "DK1"
    assert snapshot["period"] == HOUR
    assert snapshot["withdrawn"] is False
    assert slices(registry, cert) == {"s0": ("alice", 1000, "available")}


def test_a_certificate_cannot_be_issued_twice(registry, cert):
    assert verdict(registry, issue(cert, owner="mallory")) == (
        FAILED,
        "certificate already exists",
    )
    assert slices(registry, cert) == {"s0": ("alice", 1000, "available")}


def test_only_an_issuer_can_issue(registry):
    cert = new_id()
    assert verdict(registry, issue(cert, signer="alice")) == (
        FAILED,
        "not signed by an issuer of grid area DK1",
    )
    assert registry.snapshot(cert) is None


@pytest.mark.parametrize(
    ("quantity", "expected"),
    [(0, FAILED), (1, COMMITTED), (2**32 - 1, COMMITTED), (2**32, FAILED), (-5, FAILED)],
)
def test_a_quantity_must_fit_in_32_bits_and_be_positive(registry, quantity, expected):
    status, message = verdict(registry, issue(new_id(), quantity=quantity))
    assert status == expected
    assert message == ("quantity out of range" if expected == FAILED else "")


@pytest.mark.parametrize(
    ("end", "expected"),
    [
        ("2025-01-01T10:00:59+00:00", FAILED),
        ("2025-01-01T10:01:00+00:00", COMMITTED),
        ("2025-01-01T11:00:00+00:00", COMMITTED),
        ("2025-01-01T11:00:01+00:00", FAILED),
    ],
)
def test_a_period_lasts_from_one_minute_to_one_hour(registry, end, expected):
    period = {"start": "2025-01-01T10:00:00+00:00", "end": end}
    status, _ = verdict(registry, issue(new_id(), period=period))
    assert status == expected


def test_a_certificate_type_other_than_production_or_consumption_is_refused(registry):
    status, message = verdict(registry, issue(new_id(), kind="INVALID"))
    assert (status, message) == (FAILED, "type must be PRODUCTION or CONSUMPTION")


def test_bytes_that_are_not_a_transaction_fail_as_malformed(registry):
    status, message = verdict(registry, b"not json at all")
    assert status == FAILED
    assert message.startswith("malformed: ")
    assert registry.log()[-1].stream_id is None


def test_a_payload_missing_a_field_fails_as_malformed(registry):
    cert = new_id()
    payload = {"certificate_id": {"registry": "sim", "stream_id": cert}, "type": "PRODUCTION"}
    data = Transaction.build("sim", cert, ISSUED, payload, "issuer").serialize()
    assert verdict(registry, data) == (FAILED, "malformed: missing period.start")


def test_a_payload_about_another_certificate_than_its_stream_is_refused(registry, cert):
    other = new_id()
    data = transfer(cert, "s0", "bob", "alice")
    # Same payload, sent on another stream: rebuild with the header pointing elsewhere.
    payload = Transaction.parse(data).payload
    moved = Transaction.build("sim", other, TRANSFERRED, payload, "alice").serialize()
    assert verdict(registry, moved) == (FAILED, "certificate_id does not match the stream")


# --- slice --------------------------------------------------------------------------------


def test_the_owner_slices_a_slice_into_parts_that_sum_to_it(registry, cert):
    data = slice_(cert, "s0", [("s1", 300, "alice"), ("s2", 700, "bob")], "alice")
    assert verdict(registry, data) == (COMMITTED, "")
    assert slices(registry, cert) == {
        "s1": ("alice", 300, "available"),
        "s2": ("bob", 700, "available"),
    }


def test_slicing_an_unknown_certificate_fails(registry):
    data = slice_(new_id(), "s0", [("s1", 1000, "alice")], "alice")
    assert verdict(registry, data) == (FAILED, "certificate not found")


def test_slicing_a_withdrawn_certificate_fails(registry, cert):
    assert verdict(registry, withdraw(cert))[0] == COMMITTED
    data = slice_(cert, "s0", [("s1", 1000, "alice")], "alice")
    assert verdict(registry, data) == (FAILED, "certificate withdrawn")


def test_slicing_an_unknown_slice_fails(registry, cert):
    data = slice_(cert, "nope", [("s1", 1000, "alice")], "alice")
    assert verdict(registry, data) == (FAILED, "slice not found")


def test_only_the_owner_of_a_slice_can_slice_it(registry, cert):
    data = slice_(cert, "s0", [("s1", 1000, "mallory")], "mallory")
    assert verdict(registry, data) == (FAILED, "not signed by the slice's owner")
    assert slices(registry, cert) == {"s0": ("alice", 1000, "available")}


@pytest.mark.parametrize("parts", [[("s1", 500, "alice")], [("s1", 600), ("s2", 600)]])
def test_parts_that_do_not_sum_to_the_source_are_refused(registry, cert, parts):
    parts = [(p[0], p[1], "alice") for p in parts]
    assert verdict(registry, slice_(cert, "s0", parts, "alice")) == (
        FAILED,
        "new slices do not sum to the source slice",
    )


def test_a_part_cannot_reuse_an_existing_or_spent_slice_id(registry, cert):
    split = slice_(cert, "s0", [("s1", 400, "alice"), ("s2", 600, "alice")], "alice")
    assert verdict(registry, split)[0] == COMMITTED
    for reused in ("s2", "s0"):
        data = slice_(cert, "s1", [(reused, 400, "alice")], "alice")
        assert verdict(registry, data) == (FAILED, "slice already exists")


# --- transfer -----------------------------------------------------------------------------


def test_a_transfer_keeps_the_slice_and_changes_its_owner(registry, cert):
    assert verdict(registry, transfer(cert, "s0", "bob", "alice")) == (COMMITTED, "")
    assert slices(registry, cert) == {"s0": ("bob", 1000, "available")}


@pytest.mark.parametrize(
    ("source", "signer", "message"),
    [("s9", "alice", "slice not found"), ("s0", "bob", "not signed by the slice's owner")],
)
def test_a_transfer_needs_an_available_slice_signed_by_its_owner(
    registry, cert, source, signer, message
):
    assert verdict(registry, transfer(cert, source, "bob", signer)) == (FAILED, message)


def test_transferring_on_an_unknown_or_withdrawn_certificate_fails(registry, cert):
    assert verdict(registry, transfer(new_id(), "s0", "bob", "alice")) == (
        FAILED,
        "certificate not found",
    )
    verdict(registry, withdraw(cert))
    assert verdict(registry, transfer(cert, "s0", "bob", "alice")) == (
        FAILED,
        "certificate withdrawn",
    )


# --- allocate and claim -------------------------------------------------------------------


@pytest.fixture
def pair(registry, cert) -> tuple[str, str]:
    """alice's production s0 (1000 Wh, one hour) and bob's consumption c0 (1000 Wh, 15 min)."""
    consumption = new_id()
    data = issue(consumption, slice_ref="c0", owner="bob", kind="CONSUMPTION", period=QUARTER)
    assert verdict(registry, data)[0] == COMMITTED
    return cert, consumption


def allocation_of(pair, allocation, on, signer, production_slice="s0", consumption_slice="c0"):
    production, consumption = pair
    stream = production if on == "production" else consumption
    return allocate(
        stream, allocation, production, consumption, production_slice, consumption_slice, signer
    )


def test_allocating_and_claiming_both_sides_claims_both_slices(registry, pair):
    production, consumption = pair
    aid = new_id()
    steps = [
        allocation_of(pair, aid, "production", "alice"),
        allocation_of(pair, aid, "consumption", "bob"),
        claim(production, aid, "alice"),
        claim(consumption, aid, "bob"),
    ]
    assert [r.status for r in registry.send(steps)] == [COMMITTED] * 4
    assert slices(registry, production) == {"s0": ("alice", 1000, "claimed")}
    assert slices(registry, consumption) == {"c0": ("bob", 1000, "claimed")}
    assert registry.snapshot(production)["allocations"][0]["claimed"] is True


def test_an_allocated_slice_can_no_longer_be_transferred(registry, pair):
    production, _ = pair
    verdict(registry, allocation_of(pair, new_id(), "production", "alice"))
    assert slices(registry, production)["s0"][2] == "allocated"
    assert verdict(registry, transfer(production, "s0", "carol", "alice")) == (
        FAILED,
        "slice not found",
    )


def test_the_consumption_side_cannot_be_allocated_first(registry, pair):
    data = allocation_of(pair, new_id(), "consumption", "bob")
    assert verdict(registry, data) == (FAILED, "production side not allocated")


def test_the_production_slice_must_be_signed_by_its_owner(registry, pair):
    data = allocation_of(pair, new_id(), "production", "bob")
    assert verdict(registry, data) == (FAILED, "not signed by the slice's owner")


def test_the_consumption_certificate_must_exist_and_be_consumption(registry, pair):
    production, _ = pair
    aid = new_id()
    missing = allocate(production, aid, production, new_id(), "s0", "c0", "alice")
    assert verdict(registry, missing) == (FAILED, "consumption certificate not found")
    other_production = new_id()
    verdict(registry, issue(other_production, slice_ref="p0"))
    wrong = allocate(production, aid, production, other_production, "s0", "p0", "alice")
    assert verdict(registry, wrong) == (FAILED, "consumption certificate is not CONSUMPTION")


def test_periods_that_do_not_enclose_one_another_are_refused(registry, cert):
    consumption = new_id()
    later = {"start": "2025-01-01T10:30:00+00:00", "end": "2025-01-01T11:30:00+00:00"}
    verdict(registry, issue(consumption, slice_ref="c0", kind="CONSUMPTION", period=later))
    data = allocate(cert, new_id(), cert, consumption, "s0", "c0", "alice")
    assert verdict(registry, data) == (FAILED, "periods do not enclose one another")


def test_the_consumption_side_needs_an_equal_quantity(registry, cert):
    consumption = new_id()
    verdict(registry, issue(consumption, slice_ref="c0", quantity=999, kind="CONSUMPTION"))
    aid = new_id()
    # Upstream checks the equality proof on the production side, before anything is allocated.
    data = allocate(cert, aid, cert, consumption, "s0", "c0", "alice")
    assert verdict(registry, data) == (FAILED, "quantities differ")


def test_claiming_without_an_allocation_fails(registry, pair):
    production, _ = pair
    assert verdict(registry, claim(production, new_id(), "alice")) == (
        FAILED,
        "allocation not found",
    )


def test_the_production_side_is_claimed_first(registry, pair):
    production, consumption = pair
    aid = new_id()
    registry.send(
        [
            allocation_of(pair, aid, "production", "alice"),
            allocation_of(pair, aid, "consumption", "bob"),
        ]
    )
    assert verdict(registry, claim(consumption, aid, "bob")) == (
        FAILED,
        "production side not claimed",
    )
    assert verdict(registry, claim(production, aid, "alice"))[0] == COMMITTED
    assert verdict(registry, claim(production, aid, "alice")) == (
        FAILED,
        "allocation already claimed",
    )


def test_nothing_is_claimed_once_either_certificate_is_withdrawn(registry, pair):
    production, consumption = pair
    aid = new_id()
    registry.send(
        [
            allocation_of(pair, aid, "production", "alice"),
            allocation_of(pair, aid, "consumption", "bob"),
            withdraw(consumption),
        ]
    )
    assert verdict(registry, claim(production, aid, "alice")) == (FAILED, "certificate withdrawn")


def test_unclaim_restores_a_claimed_slice_once_the_opposite_side_is_withdrawn(registry, pair):
    production, consumption = pair
    aid = new_id()
    for data in (
        allocation_of(pair, aid, "production", "alice"),
        allocation_of(pair, aid, "consumption", "bob"),
        claim(production, aid, "alice"),
        claim(consumption, aid, "bob"),
    ):
        assert verdict(registry, data)[0] == COMMITTED
    assert verdict(registry, unclaim(production, aid, "alice")) == (
        FAILED,
        "opposite certificate is NOT withdrawn",
    )
    assert verdict(registry, withdraw(consumption))[0] == COMMITTED
    assert verdict(registry, unclaim(production, aid, "bob")) == (
        FAILED,
        "not signed by the claimed slice's owner",
    )
    assert verdict(registry, unclaim(consumption, aid, "bob")) == (FAILED, "certificate withdrawn")
    assert verdict(registry, unclaim(production, aid, "alice")) == (COMMITTED, "")
    assert slices(registry, production) == {"s0": ("alice", 1000, "available")}
    assert verdict(registry, unclaim(production, aid, "alice")) == (
        FAILED,
        "certificate claim does not exist",
    )
    stream = [
        e.data for e in registry.log() if e.stream_id == production and e.verdict == COMMITTED
    ]
    (folded,) = fold(production, stream).slices.values()
    assert (folded.owner, folded.quantity_wh, folded.allocated, folded.claimed) == (
        "alice",
        1000,
        False,
        False,
    )


# --- withdraw -----------------------------------------------------------------------------


def test_an_issuer_withdraws_a_certificate_once(registry, cert):
    assert verdict(registry, withdraw(cert, signer="alice")) == (
        FAILED,
        "not signed by an issuer of grid area DK1",
    )
    assert verdict(registry, withdraw(cert)) == (COMMITTED, "")
    assert registry.snapshot(cert)["withdrawn"] is True
    assert verdict(registry, withdraw(cert)) == (FAILED, "certificate already withdrawn")
    assert verdict(registry, withdraw(new_id())) == (FAILED, "certificate not found")


# --- ordering -----------------------------------------------------------------------------


def test_the_first_of_two_commands_spending_one_slice_wins(registry, cert):
    first = slice_(cert, "s0", [("a1", 500, "alice"), ("a2", 500, "alice")], "alice")
    second = slice_(cert, "s0", [("b1", 100, "alice"), ("b2", 900, "alice")], "alice")
    receipts = registry.send([first, second])
    assert [(r.status, r.message) for r in receipts] == [
        (COMMITTED, ""),
        (FAILED, "slice not found"),
    ]
    assert set(slices(registry, cert)) == {"a1", "a2"}


def test_a_stream_applies_transactions_in_the_order_received(registry, cert):
    handover = transfer(cert, "s0", "bob", "alice")
    by_bob = slice_(cert, "s0", [("b1", 1000, "carol")], "bob")
    # Received in the wrong order, the slice by bob fails: he does not own s0 yet.
    assert [r.status for r in registry.send([by_bob, handover])] == [FAILED, COMMITTED]
    assert slices(registry, cert) == {"s0": ("bob", 1000, "available")}
