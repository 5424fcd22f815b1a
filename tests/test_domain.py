"""The rules of the domain, without fixtures: quantities, periods, GSRNs, slicing, claims,
ownership, reservations and the effect of every committed command on a certificate."""

from __future__ import annotations

import itertools
from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chalicelib import domain
from chalicelib.domain import (
    Actor,
    CertificateStatus,
    CertificateType,
    Conflict,
    Forbidden,
    NotFound,
    Period,
    Role,
    RuleViolation,
    SliceState,
)
from tests.builders import (
    HOUR_START,
    active_certificate,
    claim_command,
    issue_command,
    issue_spec,
    issuing_certificate,
    only_slice,
    ref_of,
    slice_command,
    transfer_command,
    withdraw_command,
)

MAX = 2**32 - 1


# --- quantities -------------------------------------------------------------------------------


@pytest.mark.parametrize("quantity", [1, 2, 1000, MAX])
def test_a_quantity_from_one_to_the_32_bit_limit_is_accepted(quantity):
    assert domain.check_quantity(quantity) == quantity


@pytest.mark.parametrize("quantity", [0, -1, -(2**40), 2**32, 2**64])
def test_a_quantity_outside_one_to_the_32_bit_limit_is_refused(quantity):
    with pytest.raises(RuleViolation) as refused:
        domain.check_quantity(quantity)
    assert refused.value.field == "quantity_wh"


@pytest.mark.parametrize("quantity", [True, False, 1.0, 10.5, "10", None])
def test_a_quantity_that_is_not_a_whole_number_is_refused(quantity):
    with pytest.raises(RuleViolation):
        domain.check_quantity(quantity)


def test_a_refused_quantity_names_the_field_it_came_from():
    with pytest.raises(RuleViolation) as refused:
        domain.check_quantity(0, field="quantities_wh[3]")
    assert refused.value.field == "quantities_wh[3]"


# --- GSRN -------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["571234567890123456", "000000000000000000"])
def test_a_gsrn_of_18_digits_is_accepted(value):
    assert domain.check_gsrn(value) == value


@pytest.mark.parametrize(
    "value",
    [
        "",
        "57123456789012345",  # 17
        "5712345678901234567",  # 19
        "57123456789012345a",
        " 71234567890123456",
        "57123456789012345.",
        "".join(chr(0xFF10 + int(d)) for d in "571234567890123456"),  # full-width digits
        "".join(chr(0x0660 + int(d)) for d in "571234567890123456"),  # Arabic-Indic
        "-71234567890123456",
    ],
)
def test_a_gsrn_that_is_not_18_ascii_digits_is_refused(value):
    with pytest.raises(RuleViolation) as refused:
        domain.check_gsrn(value)
    assert refused.value.field == "gsrn"


# --- periods ----------------------------------------------------------------------------------


@pytest.mark.parametrize("minutes", [15, 30, 45, 60])
def test_a_period_of_whole_quarter_hours_from_15_minutes_to_1_hour_is_accepted(minutes):
    found = Period.of(HOUR_START, HOUR_START + timedelta(minutes=minutes))
    assert found.end - found.start == timedelta(minutes=minutes)


@pytest.mark.parametrize("minutes", [-15, 0, 75, 90, 120, 24 * 60])
def test_a_period_shorter_than_15_minutes_or_longer_than_1_hour_is_refused(minutes):
    with pytest.raises(RuleViolation) as refused:
        Period.of(HOUR_START, HOUR_START + timedelta(minutes=minutes))
    assert refused.value.field == "end"


@pytest.mark.parametrize(
    ("start", "end", "field"),
    [
        (HOUR_START + timedelta(minutes=5), HOUR_START + timedelta(minutes=20), "start"),
        (HOUR_START, HOUR_START + timedelta(minutes=20), "end"),
        (HOUR_START + timedelta(seconds=1), HOUR_START + timedelta(minutes=15), "start"),
        (HOUR_START, HOUR_START + timedelta(minutes=15, microseconds=1), "end"),
        (HOUR_START + timedelta(microseconds=1), HOUR_START + timedelta(minutes=30), "start"),
    ],
)
def test_a_period_off_the_quarter_hours_is_refused(start, end, field):
    with pytest.raises(RuleViolation) as refused:
        Period.of(start, end)
    assert refused.value.field == field


def test_a_period_without_a_time_zone_is_refused():
    naive = datetime(2026, 6, 1, 10, 0)
    with pytest.raises(RuleViolation) as refused:
        Period.of(naive, naive + timedelta(hours=1))
    assert refused.value.field == "start"
    with pytest.raises(RuleViolation) as refused:
        Period.of(HOUR_START, naive + timedelta(hours=1))
    assert refused.value.field == "end"


def test_a_period_given_in_another_time_zone_is_stored_in_utc():
    copenhagen = timezone(timedelta(hours=2))
    found = Period.of(
        datetime(2026, 6, 1, 12, 0, tzinfo=copenhagen),
        datetime(2026, 6, 1, 13, 0, tzinfo=copenhagen),
    )
    assert found.start == HOUR_START and found.start.utcoffset() == timedelta(0)
    assert found.end == HOUR_START + timedelta(hours=1)


def test_quarter_hours_are_whole_in_utc_not_in_the_local_clock():
    # 10:00 at +00:30 is 09:30 UTC: a whole quarter hour. 10:00 at +05:45 is 04:15 UTC: too.
    # 10:00 at +00:07 is 09:53 UTC, which is not.
    for offset, aligned in ((30, True), (345, True), (7, False)):
        zone = timezone(timedelta(minutes=offset))
        start = datetime(2026, 6, 1, 10, 0, tzinfo=zone)
        if aligned:
            assert Period.of(start, start + timedelta(minutes=15)).start.tzinfo is not None
        else:
            with pytest.raises(RuleViolation):
                Period.of(start, start + timedelta(minutes=15))


@settings(max_examples=200, deadline=None)
@given(
    start_s=st.integers(min_value=0, max_value=4 * 24 * 3600),
    length_s=st.integers(min_value=-3600, max_value=3 * 3600),
)
def test_a_period_is_accepted_exactly_when_aligned_and_15_to_60_minutes_long(start_s, length_s):
    start = HOUR_START + timedelta(seconds=start_s)
    end = start + timedelta(seconds=length_s)
    valid = start_s % 900 == 0 and length_s % 900 == 0 and 900 <= length_s <= 3600
    if valid:
        found = Period.of(start, end)
        assert (found.start, found.end) == (start, end)
    else:
        with pytest.raises(RuleViolation):
            Period.of(start, end)


def test_a_period_contains_the_periods_inside_it_and_itself():
    hour = Period.of(HOUR_START, HOUR_START + timedelta(hours=1))
    quarter = Period.of(HOUR_START + timedelta(minutes=45), HOUR_START + timedelta(hours=1))
    next_quarter = Period.of(HOUR_START + timedelta(hours=1), HOUR_START + timedelta(minutes=75))
    assert hour.contains(hour)
    assert hour.contains(quarter)
    assert not quarter.contains(hour)
    assert not hour.contains(next_quarter)


# --- slicing ----------------------------------------------------------------------------------


@pytest.mark.parametrize("parts", [[1, 999], [500, 500], [1] * 99 + [901], [10] * 100])
def test_parts_that_are_positive_and_sum_to_the_slice_are_accepted(parts):
    assert domain.check_parts(sum(parts), parts) == parts


@pytest.mark.parametrize("count", [0, 1, 101])
def test_a_slice_is_cut_into_2_to_100_parts(count):
    parts = [1] * count
    with pytest.raises(RuleViolation) as refused:
        domain.check_parts(count, parts)
    assert refused.value.field == "quantities_wh"


@pytest.mark.parametrize(
    ("parts", "field"),
    [
        ([0, 1000], "quantities_wh[0]"),
        ([1001, -1], "quantities_wh[1]"),
        ([500, True, 499], "quantities_wh[1]"),
        ([500, 2**32], "quantities_wh[1]"),
    ],
)
def test_a_part_that_is_not_a_positive_quantity_is_refused_by_its_index(parts, field):
    with pytest.raises(RuleViolation) as refused:
        domain.check_parts(1000, parts)
    assert refused.value.field == field


@pytest.mark.parametrize("parts", [[500, 499], [500, 501], [1, 1]])
def test_parts_that_do_not_sum_to_the_slice_are_refused(parts):
    with pytest.raises(RuleViolation) as refused:
        domain.check_parts(1000, parts)
    assert refused.value.field == "quantities_wh"
    assert "1000" in refused.value.detail


def test_a_certificate_has_room_for_at_most_500_slices():
    cert = active_certificate()
    (first,) = cert.slices.values()
    # small slices (no sealed secrets): the count is the limit, not the record's size
    parts = {
        f"s{i}": first.model_copy(update={"slice_id": f"s{i}", "quantity_wh": 1})
        for i in range(domain.MAX_SLICES_PER_CERTIFICATE - 2)
    }
    nearly_full = cert.model_copy(update={"slices": {**cert.slices, **parts}})
    domain.check_slice_room(nearly_full, 1)
    with pytest.raises(RuleViolation, match="at most 500 slices"):
        domain.check_slice_room(nearly_full, 2)


def test_a_certificate_has_room_only_for_slices_its_record_can_hold():
    cert = active_certificate()
    fits = (domain.MAX_CERTIFICATE_RECORD_BYTES - domain.record_bytes(cert)) // (
        domain.MAX_SLICE_RECORD_BYTES
    )
    domain.check_slice_room(cert, fits)
    with pytest.raises(RuleViolation, match="400 KB"):
        domain.check_slice_room(cert, fits + 1)


# --- ids --------------------------------------------------------------------------------------


def test_a_certificate_id_names_one_metering_point_type_and_start():
    start = HOUR_START
    same = domain.certificate_id_for("571234567890123456", CertificateType.PRODUCTION, start)
    assert same == domain.certificate_id_for(
        "571234567890123456",
        CertificateType.PRODUCTION,
        start.astimezone(timezone(timedelta(hours=2))),
    )
    others = {
        domain.certificate_id_for("571234567890123457", CertificateType.PRODUCTION, start),
        domain.certificate_id_for("571234567890123456", CertificateType.CONSUMPTION, start),
        domain.certificate_id_for(
            "571234567890123456", CertificateType.PRODUCTION, start + timedelta(minutes=15)
        ),
    }
    assert same not in others and len(others) == 3


def test_a_command_id_names_one_caller_key_and_index():
    first = domain.command_id_for("alice", "k")
    assert first == domain.command_id_for("alice", "k")
    assert first != domain.command_id_for("bob", "k")
    assert first != domain.command_id_for("alice", "k2")
    assert first != domain.command_id_for("alice", "k", 1)
    # the separator keeps ("a", "bc") and ("ab", "c") apart
    assert domain.command_id_for("a", "bc") != domain.command_id_for("ab", "c")


def test_a_request_hash_ignores_key_order_and_spacing_but_not_values():
    assert domain.request_hash({"a": 1, "b": [1, 2]}) == domain.request_hash({"b": [1, 2], "a": 1})
    assert domain.request_hash({"a": 1}) != domain.request_hash({"a": 2})
    assert domain.request_hash({"a": [1, 2]}) != domain.request_hash({"a": [2, 1]})


# --- roles and ownership ----------------------------------------------------------------------


def test_an_actor_without_the_role_is_forbidden():
    Actor(owner="i", roles=frozenset({Role.ISSUER})).require(Role.ISSUER)
    with pytest.raises(Forbidden):
        Actor(owner="i", roles=frozenset({Role.OPERATOR})).require(Role.ISSUER)
    with pytest.raises(Forbidden):
        Actor(owner="alice").require(Role.OPERATOR)


def test_the_owner_finds_their_slice():
    cert = active_certificate()
    found = cert.slice_of(only_slice(cert).slice_id, "alice")
    assert found.owner == "alice" and found.quantity_wh == 1000


def test_a_foreign_slice_reads_exactly_like_a_missing_one():
    cert = active_certificate()
    with pytest.raises(NotFound) as foreign:
        cert.slice_of(only_slice(cert).slice_id, "mallory")
    with pytest.raises(NotFound) as missing:
        cert.slice_of("no-such-slice", "alice")
    assert foreign.value.field == missing.value.field == "slice_id"
    assert str(foreign.value).replace(only_slice(cert).slice_id, "X") == str(missing.value).replace(
        "no-such-slice", "X"
    )


# --- issue ------------------------------------------------------------------------------------


def test_an_issued_certificate_is_active_with_one_slice_of_all_its_quantity_for_its_owner():
    issue = issue_command(issue_spec(quantity_wh=750))
    cert = domain.apply_issue(issuing_certificate(issue_spec(quantity_wh=750)), issue)
    assert cert.status == CertificateStatus.ACTIVE
    only = only_slice(cert)
    assert (only.owner, only.quantity_wh, only.state) == ("alice", 750, SliceState.AVAILABLE)
    assert only.slice_id == domain.slice_id_for(issue.command_id, 0)
    assert issue.command_id in cert.applied
    assert domain.conservation_holds(cert)


def test_applying_an_issue_twice_changes_nothing():
    issue = issue_command()
    once = domain.apply_issue(issuing_certificate(), issue)
    assert domain.apply_issue(once, issue) == once


def test_a_certificate_being_issued_holds_no_slices_and_conserves_by_holding_none():
    cert = issuing_certificate()
    assert cert.status == CertificateStatus.ISSUING and not cert.slices
    assert domain.conservation_holds(cert)
    broken = cert.model_copy(update={"slices": active_certificate().slices})
    assert not domain.conservation_holds(broken)


# --- reserve and release ----------------------------------------------------------------------


def test_reserving_holds_the_owners_slice_for_one_command():
    cert = active_certificate()
    held = domain.reserve(cert, ref_of(cert), "cmd-1", "alice")
    assert only_slice(held).state == SliceState.RESERVED
    assert only_slice(held).reserved_by == "cmd-1"
    assert domain.conservation_holds(held)


def test_reserving_again_for_the_same_command_is_a_replay_that_changes_nothing():
    cert = active_certificate()
    held = domain.reserve(cert, ref_of(cert), "cmd-1", "alice")
    assert domain.reserve(held, ref_of(cert), "cmd-1", "alice") is held


def test_a_reserved_slice_cannot_be_reserved_by_another_command():
    cert = active_certificate()
    held = domain.reserve(cert, ref_of(cert), "cmd-1", "alice")
    with pytest.raises(Conflict, match="reserved"):
        domain.reserve(held, ref_of(cert), "cmd-2", "alice")


def test_someone_elses_slice_cannot_be_reserved_and_reads_as_not_found():
    cert = active_certificate()
    with pytest.raises(NotFound):
        domain.reserve(cert, ref_of(cert), "cmd-1", "mallory")


def test_a_slice_smaller_than_the_command_needs_cannot_be_reserved():
    cert = active_certificate()
    domain.reserve(cert, ref_of(cert), "cmd-1", "alice", at_least_wh=1000)
    with pytest.raises(Conflict, match="less than"):
        domain.reserve(cert, ref_of(cert), "cmd-1", "alice", at_least_wh=1001)


def test_a_certificate_not_yet_issued_is_a_conflict_for_its_owner_and_unknown_to_others():
    cert = issuing_certificate()
    ref = domain.SliceRef(certificate_id=cert.certificate_id, slice_id="any")
    with pytest.raises(Conflict, match="not issued yet"):
        domain.reserve(cert, ref, "cmd-1", "alice")
    with pytest.raises(NotFound):
        domain.reserve(cert, ref, "cmd-1", "mallory")


@pytest.mark.parametrize("status", [CertificateStatus.WITHDRAWN, CertificateStatus.EXPIRED])
def test_a_withdrawn_or_expired_certificate_is_a_conflict_for_its_owners(status):
    cert = active_certificate().model_copy(update={"status": status})
    with pytest.raises(Conflict, match=status.value):
        domain.reserve(cert, ref_of(cert), "cmd-1", "alice")
    with pytest.raises(NotFound):
        domain.reserve(cert, ref_of(cert), "cmd-1", "mallory")


def test_a_rejected_certificate_reads_as_not_found():
    cert = active_certificate().model_copy(update={"status": CertificateStatus.REJECTED})
    with pytest.raises(NotFound):
        domain.reserve(cert, ref_of(cert), "cmd-1", "alice")


@pytest.mark.parametrize(
    "state",
    [SliceState.CLAIMED, SliceState.TRANSFERRED, SliceState.SLICED, SliceState.WITHDRAWN],
)
def test_a_spent_slice_cannot_be_reserved(state):
    cert = active_certificate()
    spent = only_slice(cert).model_copy(update={"state": state})
    cert = cert.model_copy(update={"slices": {spent.slice_id: spent}})
    with pytest.raises(Conflict, match=state.value):
        domain.reserve(cert, ref_of(cert), "cmd-1", "alice")


def test_no_slice_can_be_reserved_while_the_certificate_is_being_withdrawn():
    cert = domain.begin_withdrawal(active_certificate(), "withdraw-1")
    with pytest.raises(Conflict, match="being withdrawn"):
        domain.reserve(cert, ref_of(cert), "cmd-1", "alice")


def test_releasing_frees_only_what_the_command_holds():
    base = active_certificate()
    halves = slice_command(ref_of(base), [400, 600])
    cut = domain.apply_slice(domain.reserve(base, ref_of(base), halves.command_id, "alice"), halves)
    first, second = (
        cut.slices[domain.slice_id_for(halves.command_id, i)].slice_id for i in range(2)
    )
    ref_first = domain.SliceRef(certificate_id=cut.certificate_id, slice_id=first)
    ref_second = domain.SliceRef(certificate_id=cut.certificate_id, slice_id=second)
    held = domain.reserve(
        domain.reserve(cut, ref_first, "cmd-a", "alice"), ref_second, "cmd-b", "alice"
    )
    released = domain.release(held, "cmd-a")
    assert released.slices[first].state == SliceState.AVAILABLE
    assert released.slices[first].reserved_by is None
    assert released.slices[second].reserved_by == "cmd-b"


def test_releasing_a_command_that_holds_nothing_changes_nothing():
    cert = active_certificate()
    assert domain.release(cert, "cmd-x") is cert


def test_releasing_a_withdrawal_lifts_the_withdrawal_mark():
    cert = domain.begin_withdrawal(active_certificate(), "withdraw-1")
    assert domain.release(cert, "withdraw-1").withdrawal is None
    assert domain.release(cert, "other").withdrawal == "withdraw-1"


# --- withdrawal -------------------------------------------------------------------------------


def test_a_withdrawal_starts_only_on_an_active_certificate_without_pending_commands():
    cert = active_certificate()
    marked = domain.begin_withdrawal(cert, "w-1")
    assert marked.withdrawal == "w-1"
    assert domain.begin_withdrawal(marked, "w-1") is marked  # a replay
    with pytest.raises(Conflict, match="being withdrawn"):
        domain.begin_withdrawal(marked, "w-2")
    with pytest.raises(Conflict, match="pending"):
        domain.begin_withdrawal(domain.reserve(cert, ref_of(cert), "cmd-1", "alice"), "w-1")
    with pytest.raises(Conflict, match="issuing"):
        domain.begin_withdrawal(issuing_certificate(), "w-1")


def test_a_withdrawn_certificate_keeps_its_quantity_in_withdrawn_slices():
    cert = active_certificate()
    withdraw = withdraw_command(cert.certificate_id)
    done = domain.apply_withdraw(domain.begin_withdrawal(cert, withdraw.command_id), withdraw)
    assert done.status == CertificateStatus.WITHDRAWN and done.withdrawal is None
    assert only_slice(done).state == SliceState.WITHDRAWN
    assert domain.conservation_holds(done)
    assert domain.apply_withdraw(done, withdraw) == done


def test_a_repair_on_a_withdrawn_certificate_gives_the_registrys_owner_nothing_to_spend():
    """Seed 24 (queries, found by the check that a withdrawn certificate has no usable slice):
    the reconciler repaired a slice's owner on a withdrawn certificate and the new owner's
    slice was `available`, spendable in the book while the registry takes nothing from it."""
    cert = active_certificate()
    withdraw = withdraw_command(cert.certificate_id)
    done = domain.apply_withdraw(domain.begin_withdrawal(cert, withdraw.command_id), withdraw)
    view = domain.RegistrySliceView(
        ref=only_slice(done).ref, owner="carol", quantity_wh=cert.quantity_wh
    )
    aligned, repairs = domain.align(done, [view], registry_withdrawn=True)
    assert [r["action"] for r in repairs] == ["wrong_owner"]
    assert aligned.status == CertificateStatus.WITHDRAWN
    (live,) = [s for s in aligned.slices.values() if s.owner == "carol"]
    assert live.state == SliceState.WITHDRAWN
    assert domain.conservation_holds(aligned)


def test_a_withdrawal_leaves_claimed_slices_claimed():
    production, consumption = claimable_pair()
    claim = claim_command(ref_of(production), ref_of(consumption), 1000)
    claimed = domain.apply_claim_side(
        domain.reserve(production, ref_of(production), claim.command_id, "alice", 1000),
        claim,
        ref_of(production),
    )
    withdraw = withdraw_command(claimed.certificate_id)
    done = domain.apply_withdraw(claimed, withdraw)
    assert only_slice(done).state == SliceState.CLAIMED
    assert domain.conservation_holds(done)


# --- slice, transfer and claim outcomes -------------------------------------------------------


def test_a_committed_slice_replaces_the_slice_by_its_parts():
    cert = active_certificate()
    cut_command = slice_command(ref_of(cert), [100, 300, 600])
    held = domain.reserve(cert, ref_of(cert), cut_command.command_id, "alice")
    cut = domain.apply_slice(held, cut_command)
    source = cut.slices[only_slice(cert).slice_id]
    assert (source.state, source.reserved_by) == (SliceState.SLICED, None)
    parts = [cut.slices[domain.slice_id_for(cut_command.command_id, i)] for i in range(3)]
    assert [(p.owner, p.quantity_wh, p.state) for p in parts] == [
        ("alice", 100, SliceState.AVAILABLE),
        ("alice", 300, SliceState.AVAILABLE),
        ("alice", 600, SliceState.AVAILABLE),
    ]
    assert domain.conservation_holds(cut)


def test_applying_a_slice_twice_changes_nothing():
    cert = active_certificate()
    cut_command = slice_command(ref_of(cert), [400, 600])
    once = domain.apply_slice(
        domain.reserve(cert, ref_of(cert), cut_command.command_id, "alice"), cut_command
    )
    assert domain.apply_slice(once, cut_command) == once
    assert domain.conservation_holds(once)


def test_a_whole_transfer_gives_the_receiver_a_new_slice_of_the_same_quantity():
    cert = active_certificate()
    give = transfer_command(ref_of(cert), 1000)
    done = domain.apply_transfer(
        domain.reserve(cert, ref_of(cert), give.command_id, "alice", 1000), give
    )
    assert done.slices[only_slice(cert).slice_id].state == SliceState.TRANSFERRED
    received = done.slices[domain.slice_id_for(give.command_id, "received")]
    assert (received.owner, received.quantity_wh, received.state) == (
        "bob",
        1000,
        SliceState.AVAILABLE,
    )
    assert done.owners() == {"alice", "bob"}
    assert done.available_quantity("alice") == 0 and done.available_quantity("bob") == 1000
    assert domain.conservation_holds(done)
    assert domain.apply_transfer(done, give) == done


def test_a_partial_transfer_cuts_the_slice_and_gives_away_the_first_part():
    cert = active_certificate()
    give = transfer_command(ref_of(cert), 300)
    assert domain.is_partial_transfer(give, 1000)
    held = domain.reserve(cert, ref_of(cert), give.command_id, "alice", 300)
    cut = domain.apply_slice(held, give)
    assert domain.conservation_holds(cut)
    done = domain.apply_transfer(cut, give)
    assert done.available_quantity("alice") == 700
    assert done.available_quantity("bob") == 300
    assert domain.conservation_holds(done)
    assert domain.apply_slice(done, give) == done
    assert domain.apply_transfer(done, give) == done


def claimable_pair(**consumption):
    production = active_certificate()
    spec = issue_spec(type_=domain.CertificateType.CONSUMPTION, meter="571234567890000001")
    spec = spec.model_copy(update=consumption)
    return production, active_certificate(spec, key="issue-c")


def test_a_claim_of_whole_slices_marks_both_sides_claimed():
    production, consumption = claimable_pair()
    claim = claim_command(ref_of(production), ref_of(consumption), 1000)
    for cert in (production, consumption):
        held = domain.reserve(cert, ref_of(cert), claim.command_id, "alice", 1000)
        done = domain.apply_claim_side(held, claim, ref_of(cert))
        assert only_slice(done).state == SliceState.CLAIMED
        assert only_slice(done).reserved_by is None
        assert domain.conservation_holds(done)
        assert domain.apply_claim_side(done, claim, ref_of(cert)) == done


def test_a_claim_of_part_of_a_slice_cuts_it_and_keeps_the_rest_available():
    production, consumption = claimable_pair(quantity_wh=400)
    claim = claim_command(ref_of(production), ref_of(consumption), 400)
    held = domain.reserve(production, ref_of(production), claim.command_id, "alice", 400)
    done = domain.apply_claim_side(held, claim, ref_of(production))
    states = sorted((s.quantity_wh, s.state.value) for s in done.slices.values())
    assert states == [(400, "claimed"), (600, "available"), (1000, "sliced")]
    assert domain.conservation_holds(done)


@pytest.mark.parametrize("kind", ["slice", "transfer", "claim"])
def test_an_outcome_is_applied_only_to_a_slice_its_command_reserved(kind):
    cert = active_certificate()
    ref = ref_of(cert)
    held_by_another = domain.reserve(cert, ref, "another-command", "alice")
    with pytest.raises(Conflict, match="not reserved"):
        match kind:
            case "slice":
                domain.apply_slice(held_by_another, slice_command(ref, [500, 500]))
            case "transfer":
                domain.apply_transfer(held_by_another, transfer_command(ref, 1000))
            case "claim":
                claim = claim_command(ref, ref, 1000)
                domain.apply_claim_side(held_by_another, claim, ref)


# --- claim pairs ------------------------------------------------------------------------------


def test_production_and_consumption_of_the_same_area_and_hour_make_a_claim_pair():
    production, consumption = claimable_pair()
    domain.check_claim_pair(production, consumption)


def test_a_quarter_inside_the_hour_matches_the_hour_either_way_round():
    production, consumption = claimable_pair()
    quarter = issue_spec(
        type_=domain.CertificateType.CONSUMPTION,
        start=HOUR_START + timedelta(minutes=30),
        minutes=15,
        meter="571234567890000009",
    )
    domain.check_claim_pair(production, active_certificate(quarter, key="q"))
    quarter_production = issue_spec(start=HOUR_START + timedelta(minutes=15), minutes=15)
    domain.check_claim_pair(active_certificate(quarter_production, key="qp"), consumption)


@pytest.mark.parametrize(
    ("production_spec", "consumption_spec", "field"),
    [
        ({"type_": CertificateType.CONSUMPTION}, {}, "production.certificate_id"),
        ({}, {"type_": CertificateType.PRODUCTION}, "consumption.certificate_id"),
        ({}, {"start": HOUR_START + timedelta(hours=1)}, "consumption.certificate_id"),
        (
            {"start": HOUR_START, "minutes": 30},
            {"start": HOUR_START + timedelta(minutes=15), "minutes": 30},
            "consumption.certificate_id",
        ),
    ],
    ids=["production-is-consumption", "consumption-is-production", "hours", "overlap"],
)
def test_a_claim_pair_of_other_types_areas_or_periods_is_refused(
    production_spec, consumption_spec, field
):
    production = active_certificate(issue_spec(**production_spec), key="p")
    consumption = active_certificate(
        issue_spec(
            **{
                "type_": CertificateType.CONSUMPTION,
                "meter": "571234567890000002",
                **consumption_spec,
            }
        ),
        key="c",
    )
    with pytest.raises(RuleViolation) as refused:
        domain.check_claim_pair(production, consumption)
    assert refused.value.field == field


BOUNDARY = {"DK": ["DK1", "DK2"], "SE": ["SE3", "SE4"]}


@pytest.mark.parametrize(
    ("production_area", "consumption_area", "boundary", "matched"),
    [
        ("DK1", "DK1", {}, True),
        ("DK1", "DK2", {}, False),
        ("DK1", "DK2", BOUNDARY, True),
        ("DK2", "DK1", BOUNDARY, True),
        ("DK1", "SE3", BOUNDARY, False),
        ("DK1", "DE1", BOUNDARY, False),
        ("DE1", "DE1", BOUNDARY, True),  # one grid area needs no boundary
    ],
)
def test_a_claim_matches_one_grid_area_or_two_within_one_boundary(
    production_area, consumption_area, boundary, matched
):
    production = active_certificate(issue_spec(grid_area=production_area), key="p")
    consumption = active_certificate(
        issue_spec(
            type_=CertificateType.CONSUMPTION,
            meter="571234567890000002",
            grid_area=consumption_area,
        ),
        key="c",
    )
    if matched:
        domain.check_matching_boundary(production, consumption, boundary)
        return
    with pytest.raises(domain.RuleViolation, match="may not be matched") as refused:
        domain.check_matching_boundary(production, consumption, boundary)
    assert refused.value.field == "consumption.certificate_id"


# --- conservation under random work -----------------------------------------------------------


@st.composite
def slicings(draw):
    """A certificate quantity and a random cut of it into 2 to 100 positive parts."""
    count = draw(st.integers(min_value=2, max_value=100))
    total = draw(st.integers(min_value=count, max_value=MAX))
    cuts = sorted(draw(st.sets(st.integers(1, total - 1), min_size=count - 1, max_size=count - 1)))
    bounds = [0, *cuts, total]
    return total, [b - a for a, b in itertools.pairwise(bounds)]


@settings(max_examples=100, deadline=None)
@given(slicing=slicings(), give_index=st.integers(min_value=0, max_value=99))
def test_random_slicings_and_a_transfer_of_a_part_conserve_the_quantity(slicing, give_index):
    total, parts = slicing
    assert domain.check_parts(total, parts) == parts
    cert = active_certificate(issue_spec(quantity_wh=total))
    cut_command = slice_command(ref_of(cert), parts)
    cut = domain.apply_slice(
        domain.reserve(cert, ref_of(cert), cut_command.command_id, "alice"), cut_command
    )
    assert domain.conservation_holds(cut)
    assert cut.available_quantity("alice") == total
    part = cut.slices[domain.slice_id_for(cut_command.command_id, give_index % len(parts))]
    part_ref = domain.SliceRef(certificate_id=cut.certificate_id, slice_id=part.slice_id)
    give = transfer_command(part_ref, part.quantity_wh)
    done = domain.apply_transfer(
        domain.reserve(cut, part_ref, give.command_id, "alice", part.quantity_wh), give
    )
    assert domain.conservation_holds(done)
    assert done.available_quantity("bob") == part.quantity_wh
    assert done.available_quantity("alice") == total - part.quantity_wh


@settings(max_examples=100, deadline=None)
@given(total=st.integers(min_value=2, max_value=MAX), data=st.data())
def test_a_random_partial_transfer_conserves_the_quantity(total, data):
    given_wh = data.draw(st.integers(min_value=1, max_value=total - 1))
    cert = active_certificate(issue_spec(quantity_wh=total))
    give = transfer_command(ref_of(cert), given_wh)
    held = domain.reserve(cert, ref_of(cert), give.command_id, "alice", given_wh)
    done = domain.apply_transfer(domain.apply_slice(held, give), give)
    assert domain.conservation_holds(done)
    assert (done.available_quantity("alice"), done.available_quantity("bob")) == (
        total - given_wh,
        given_wh,
    )


def test_conservation_fails_when_a_live_slice_goes_missing():
    cert = active_certificate()
    assert not domain.conservation_holds(cert.model_copy(update={"slices": {}}))


def test_iter_reserved_lists_the_held_slices_of_each_certificate():
    cert = active_certificate()
    held = domain.reserve(cert, ref_of(cert), "cmd-1", "alice")
    assert [(c.certificate_id, s.reserved_by) for c, s in domain.iter_reserved([cert, held])] == [
        (cert.certificate_id, "cmd-1")
    ]


# --- stranded allocations (issue 15) -----------------------------------------------------------


def _view(cert, state: SliceState, **fields) -> domain.RegistrySliceView:
    s = only_slice(cert)
    return domain.RegistrySliceView(
        ref=s.ref,
        owner=fields.get("owner", s.owner),
        quantity_wh=s.quantity_wh,
        claimed=state == SliceState.CLAIMED,
        allocated=state in (SliceState.ALLOCATED, SliceState.CLAIMED),
    )


def _with_state(cert, state: SliceState):
    s = only_slice(cert)
    return cert.model_copy(update={"slices": {s.slice_id: s.model_copy(update={"state": state})}})


def test_alignment_shows_a_slice_the_registry_holds_allocated_as_allocated():
    """The registry's allocated slice read as available before: the book hid a stranded
    allocation, and every later use of the slice was refused by the registry."""
    cert = active_certificate()
    aligned, repairs = domain.align(cert, [_view(cert, SliceState.ALLOCATED)], False)
    assert [(r["action"], r["state"]) for r in repairs] == [("claim_state", "allocated")]
    assert only_slice(aligned).state == SliceState.ALLOCATED
    assert domain.conservation_holds(aligned)  # allocated is live: it holds its quantity
    assert domain.align(aligned, [_view(cert, SliceState.ALLOCATED)], False) == (aligned, [])


@pytest.mark.parametrize(
    ("book", "registry"),
    [
        (SliceState.AVAILABLE, SliceState.ALLOCATED),
        (SliceState.ALLOCATED, SliceState.AVAILABLE),  # unclaimed, say
        (SliceState.ALLOCATED, SliceState.CLAIMED),
        (SliceState.CLAIMED, SliceState.ALLOCATED),
        (SliceState.WITHDRAWN, SliceState.ALLOCATED),
    ],
)
def test_alignment_takes_the_registrys_use_of_a_slice(book, registry):
    cert = _with_state(active_certificate(), book)
    aligned, repairs = domain.align(cert, [_view(cert, registry)], False)
    assert only_slice(aligned).state == registry
    assert len(repairs) == 1


def test_a_slice_the_book_lacks_is_added_in_the_registrys_state_allocated_too():
    cert = active_certificate()
    gone = _with_state(cert, SliceState.REMOVED)
    aligned, _ = domain.align(gone, [_view(cert, SliceState.ALLOCATED)], False)
    (added,) = [s for s in aligned.slices.values() if s.is_live]
    assert added.state == SliceState.ALLOCATED


def test_an_allocated_slice_stays_allocated_when_its_certificate_is_withdrawn_or_expires():
    cert = _with_state(active_certificate(), SliceState.ALLOCATED)
    withdraw = withdraw_command(cert.certificate_id)
    done = domain.apply_withdraw(domain.begin_withdrawal(cert, withdraw.command_id), withdraw)
    assert only_slice(done).state == SliceState.ALLOCATED
    assert only_slice(domain.expire(cert)).state == SliceState.ALLOCATED


@pytest.mark.parametrize(
    ("cuts", "step", "stopped"),
    [
        (0, 0, {}),
        (0, 1, {0: SliceState.ALLOCATED}),
        (0, 2, {0: SliceState.ALLOCATED, 1: SliceState.ALLOCATED}),
        (0, 3, {0: SliceState.CLAIMED, 1: SliceState.ALLOCATED}),
        (1, 1, {}),
        (2, 3, {0: SliceState.ALLOCATED}),
        (2, 5, {0: SliceState.CLAIMED, 1: SliceState.ALLOCATED}),
    ],
)
def test_a_claim_stopped_at_a_step_left_allocated_what_committed_and_was_not_claimed(
    cuts, step, stopped
):
    production, consumption = claimable_pair()
    claim = claim_command(ref_of(production), ref_of(consumption), 100).model_copy(
        update={"transactions": ("tx",) * (cuts + 4), "step": step}
    )
    assert domain.claim_stopped_sides(claim) == stopped
