"""The simulator's faults, query modes, status lifecycle and log, all in virtual time."""

from __future__ import annotations

import contextlib
import threading

import pytest

from chalicelib.registry.envelope import TRANSFERRED, Transaction, transaction_id_of
from chalicelib.registry.port import (
    QueriesNotSupported,
    RegistryAmbiguous,
    RegistryUnavailable,
    TransactionStatus,
)
from chalicelib.registry.sandbox.simulator import RegistrySimulator, SimulatorConfig, VirtualClock
from tests.registry.builders import issue, new_id, slice_, transfer

S = TransactionStatus


def simulator(**settings) -> tuple[RegistrySimulator, VirtualClock]:
    clock = VirtualClock()
    return RegistrySimulator(SimulatorConfig(**settings), clock=clock, sleep=clock.sleep), clock


# --- latency ------------------------------------------------------------------------------


def test_every_call_takes_the_base_latency_in_virtual_time():
    registry, clock = simulator(latency_s=0.25, queries=True)
    data = issue(new_id())
    registry.send([data])
    assert clock() == pytest.approx(0.25)
    registry.status(transaction_id_of(data))
    assert clock() == pytest.approx(0.5)
    assert registry.log()[0].received_at == pytest.approx(0.25)


def test_jitter_adds_a_random_delay_that_the_seed_repeats():
    def delays(seed: int) -> list[float]:
        registry, clock = simulator(seed=seed, latency_s=0.1, latency_jitter_s=0.05)
        out = []
        for _ in range(20):
            before = clock()
            registry.send([issue(new_id())])
            out.append(clock() - before)
        return out

    first = delays(7)
    assert all(d > 0.1 for d in first)
    assert len(set(first)) == len(first)
    assert delays(7) == first
    assert delays(8) != first


# --- outages ------------------------------------------------------------------------------


def test_a_send_inside_an_outage_window_is_refused_and_nothing_is_received():
    registry, clock = simulator(outages=[(10.0, 20.0)], queries=True)
    clock.advance(10.0)
    data = issue(new_id())
    with pytest.raises(RegistryUnavailable):
        registry.send([data])
    with pytest.raises(RegistryUnavailable):
        registry.status(transaction_id_of(data))
    assert registry.log() == []
    clock.advance(10.0)
    assert registry.send([data])[0].status == S.PENDING


def test_a_registry_switched_off_refuses_until_switched_on_again():
    registry, _ = simulator()
    registry.set_available(False)
    assert registry.is_available() is False
    with pytest.raises(RegistryUnavailable):
        registry.send([issue(new_id())])
    assert registry.received_ids() == []
    registry.set_available(True)
    assert registry.send([issue(new_id())])[0].status == S.COMMITTED


# --- ambiguous, lost, too large -----------------------------------------------------------


def test_an_ambiguous_send_applies_the_transactions_then_times_out():
    registry, clock = simulator(ambiguous_rate=1.0, queries=True)
    cert = new_id()
    data = issue(cert)
    with pytest.raises(RegistryAmbiguous):
        registry.send([data])
    assert registry.received_ids() == [transaction_id_of(data)]
    assert registry.snapshot(cert) is not None
    clock.advance(1.0)
    assert registry.status(transaction_id_of(data)).status == S.COMMITTED


def test_a_lost_send_times_out_the_same_way_and_nothing_is_received():
    registry, clock = simulator(lost_rate=1.0, queries=True)
    cert = new_id()
    data = issue(cert)
    with pytest.raises(RegistryAmbiguous) as lost:
        registry.send([data])
    assert registry.received_ids() == []
    assert registry.snapshot(cert) is None
    clock.advance(10.0)
    assert registry.status(transaction_id_of(data)).status == S.UNKNOWN
    # Indistinguishable from an ambiguous one that was applied.
    applied, _ = simulator(ambiguous_rate=1.0)
    with pytest.raises(RegistryAmbiguous) as ambiguous:
        applied.send([issue(new_id())])
    assert str(lost.value) == str(ambiguous.value)


def test_a_batch_larger_than_max_batch_times_out_without_applying_anything():
    registry, _ = simulator(max_batch=2)
    batch = [issue(new_id()) for _ in range(3)]
    with pytest.raises(RegistryAmbiguous):
        registry.send(batch)
    assert registry.log() == []
    assert [r.status for r in registry.send(batch[:2])] == [S.COMMITTED, S.COMMITTED]


def test_rates_split_sends_into_clean_ambiguous_and_lost_ones():
    registry, _ = simulator(seed=3, ambiguous_rate=0.3, lost_rate=0.2)
    outcomes = {"ok": 0, "timed out": 0}
    for _ in range(200):
        try:
            registry.send([issue(new_id())])
            outcomes["ok"] += 1
        except RegistryAmbiguous:
            outcomes["timed out"] += 1
    received = len(registry.received_ids())
    assert 70 < outcomes["ok"] < 130
    # Received = clean + ambiguous; lost ones never arrived.
    assert outcomes["ok"] < received < 200


def test_faults_can_be_changed_while_running_but_not_the_seed():
    registry, _ = simulator()
    registry.configure(ambiguous_rate=1.0)
    with pytest.raises(RegistryAmbiguous):
        registry.send([issue(new_id())])
    registry.configure(ambiguous_rate=0.0, latency_s=0.5)
    assert registry.config.latency_s == 0.5
    with pytest.raises(ValueError):
        registry.configure(seed=2)
    with pytest.raises(ValueError):
        registry.configure(lost_rate=1.5)


# --- modes and the status lifecycle -------------------------------------------------------


def test_without_queries_a_send_answers_verdicts_and_queries_are_refused():
    registry, _ = simulator(queries=False)
    assert registry.supports_queries is False
    data = issue(new_id())
    assert registry.send([data])[0].status == S.COMMITTED
    with pytest.raises(QueriesNotSupported):
        registry.status(transaction_id_of(data))
    with pytest.raises(QueriesNotSupported):
        registry.stream(new_id())


def test_a_committed_transaction_reads_pending_then_committed_then_finalized():
    registry, clock = simulator(queries=True, commit_delay_s=2.0, finalize_delay_s=180.0)
    data = issue(new_id())
    tid = transaction_id_of(data)
    assert registry.send([data])[0].status == S.PENDING
    clock.advance(1.9)
    assert registry.status(tid).status == S.PENDING
    clock.advance(0.1)
    assert registry.status(tid).status == S.COMMITTED
    clock.advance(180.0)
    assert registry.status(tid).status == S.FINALIZED
    clock.advance(100_000.0)
    assert registry.status(tid).status == S.FINALIZED


def test_a_failed_status_is_forgotten_after_the_ttl():
    registry, clock = simulator(queries=True, commit_delay_s=1.0, status_ttl_s=3600.0)
    cert = new_id()
    registry.send([issue(cert)])
    refused = transfer(cert, "nope", "bob", "alice")
    assert registry.send([refused])[0].status == S.PENDING
    tid = transaction_id_of(refused)
    clock.advance(1.0 + 3600.0)
    receipt = registry.status(tid)
    assert (receipt.status, receipt.message) == (S.FAILED, "slice not found")
    clock.advance(0.001)
    assert registry.status(tid).status == S.UNKNOWN


def test_a_transaction_never_received_reads_unknown():
    registry, _ = simulator(queries=True)
    assert registry.status("bm90IGFuIGlk").status == S.UNKNOWN


def test_a_stream_lists_its_applied_transactions_in_order_once_settled():
    registry, clock = simulator(queries=True, commit_delay_s=1.0)
    cert = new_id()
    issued = issue(cert)
    refused = transfer(cert, "nope", "bob", "alice")
    split = slice_(cert, "s0", [("s1", 1, "alice"), ("s2", 999, "bob")], "alice")
    registry.send([issued, refused, split])
    assert registry.stream(cert) == []
    clock.advance(1.0)
    assert registry.stream(cert) == [issued, split]
    assert registry.stream(new_id()) == []


# --- the duplicate-send bug ---------------------------------------------------------------


def test_a_second_send_is_not_applied_but_reports_the_first_as_failed():
    registry, _ = simulator(queries=False)
    cert = new_id()
    registry.send([issue(cert)])
    split = slice_(cert, "s0", [("s1", 400, "alice"), ("s2", 600, "alice")], "alice")
    assert registry.send([split])[0].status == S.COMMITTED
    again = registry.send([split])[0]
    assert (again.status, again.message) == (S.FAILED, "duplicate transaction")
    assert {s["ref"] for s in registry.snapshot(cert)["slices"]} == {"s1", "s2"}
    assert registry.duplicates() == [transaction_id_of(split)]
    assert len(registry.log()) == 3


def test_with_queries_a_duplicate_turns_the_status_of_an_applied_transaction_to_failed():
    registry, clock = simulator(queries=True, commit_delay_s=1.0)
    cert = new_id()
    issued = issue(cert)
    registry.send([issued])
    clock.advance(1.0)
    tid = transaction_id_of(issued)
    assert registry.status(tid).status == S.COMMITTED
    registry.send([issued])
    receipt = registry.status(tid)
    assert (receipt.status, receipt.message) == (S.FAILED, "duplicate transaction")
    # The registry still holds it, once: only its reported status lies.
    assert registry.stream(cert) == [issued]


def test_invariant_i1_holds_while_no_id_is_received_twice():
    registry, _ = simulator()
    registry.send([issue(new_id()), issue(new_id())])
    assert registry.duplicates() == []
    assert len(set(registry.received_ids())) == 2


# --- reproducibility ----------------------------------------------------------------------


def run_script(seed: int, script: list[bytes]) -> tuple[list, list]:
    registry, _ = simulator(
        seed=seed, ambiguous_rate=0.3, lost_rate=0.2, latency_s=0.01, latency_jitter_s=0.02
    )
    outcomes = []
    for data in script:
        try:
            receipt = registry.send([data])[0]
            outcomes.append((receipt.status, receipt.message))
        except RegistryAmbiguous:
            outcomes.append("timed out")
    log = [
        (e.transaction_id, e.received_at, e.verdict, e.message, e.origin) for e in registry.log()
    ]
    return outcomes, log


def test_the_same_seed_and_calls_give_the_same_log_and_verdicts():
    script = [issue(new_id()) for _ in range(40)]
    assert run_script(11, script) == run_script(11, script)


def test_another_seed_gives_other_faults():
    script = [issue(new_id()) for _ in range(40)]
    assert run_script(11, script)[0] != run_script(12, script)[0]


# --- drift injection ----------------------------------------------------------------------


def test_an_injected_transfer_shows_in_the_stream_as_a_valid_transaction():
    registry, _ = simulator(queries=True, outages=[(0.0, 100.0)])
    cert = new_id()
    assert registry.inject(issue(cert)).status == S.COMMITTED
    receipt = registry.set_owner(cert, "s0", "eve")
    assert receipt.status == S.COMMITTED
    assert registry.snapshot(cert)["slices"] == [
        {"ref": "s0", "owner": "eve", "quantity": 1000, "state": "available"}
    ]
    registry.set_available(True)
    registry.configure(outages=())
    stream = [Transaction.parse(data) for data in registry.stream(cert)]
    assert [tx.header.payload_type.rsplit(".", 1)[1] for tx in stream] == [
        "IssuedEvent",
        "TransferredEvent",
    ]
    assert stream[1].header.payload_type == TRANSFERRED
    assert stream[1].header_signature == "alice"
    assert registry.received_ids(origin="client") == []
    assert [e.origin for e in registry.log()] == ["injected", "injected"]


def test_drift_helpers_split_and_withdraw_behind_the_books_back():
    registry, _ = simulator()
    cert = new_id()
    registry.send([issue(cert)])
    registry.split_slice(cert, "s0", [("x1", "alice", 10), ("x2", "zed", 990)])
    registry.withdraw(cert)
    snapshot = registry.snapshot(cert)
    assert snapshot["withdrawn"] is True
    assert [(s["ref"], s["owner"], s["quantity"]) for s in snapshot["slices"]] == [
        ("x1", "alice", 10),
        ("x2", "zed", 990),
    ]
    with pytest.raises(ValueError, match="refused"):
        registry.set_owner(cert, "x1", "eve")  # withdrawn: the registry refuses it


def test_an_injected_transaction_that_breaks_a_rule_is_recorded_as_failed():
    registry, _ = simulator()
    cert = new_id()
    registry.send([issue(cert)])
    receipt = registry.inject(transfer(cert, "s0", "eve", "mallory"))
    assert (receipt.status, receipt.message) == (S.FAILED, "not signed by the slice's owner")


# --- threads ------------------------------------------------------------------------------


def test_concurrent_sends_from_many_threads_are_all_received_once():
    registry, _ = simulator()
    batches = [[issue(new_id()) for _ in range(10)] for _ in range(8)]
    threads = [threading.Thread(target=registry.send, args=(b,)) for b in batches]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(registry.received_ids()) == 80
    assert registry.duplicates() == []


# --- what the faults hit (the demo's report) --------------------------------------------------


def test_the_simulator_counts_the_calls_each_fault_hit():
    registry, _ = simulator(ambiguous_rate=0.5, queries=True, seed=3)
    for _ in range(20):
        with contextlib.suppress(RegistryAmbiguous):
            registry.send([issue(new_id())])
    registry.set_available(False)
    for _ in range(3):
        with pytest.raises(RegistryUnavailable):
            registry.send([issue(new_id())])
    with pytest.raises(RegistryUnavailable):
        registry.status("x")
    hits = registry.fault_hits()
    assert len(registry.log()) == 20  # the ambiguous sends were applied, then timed out
    assert 0 < hits["ambiguous"] < 20
    assert hits["outage"] == 4  # three sends and a query refused
    assert hits["calls"] == 24
    assert hits["lost"] == 0
