"""The benchmarks of bench/ run, at tiny sizes, and what they report holds together.

No timing thresholds: only facts and ratios measured within one run (a batch-issued
certificate costs no more calls than a single issue; nothing is sent to the registry twice;
throughput never beats the registry's capacity).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from bench import __main__ as bench_main
from bench import batch_writes, calls, capacity, cost, overlap, profile, scale, throughput

pytestmark = pytest.mark.moto


def test_item_sizes_follow_dynamodb_rules() -> None:
    assert capacity.item_size({"ab": {"S": "xyz"}}) == 5
    assert capacity.value_size({"N": "12345"}) == 4  # 5 significant digits: 3 + 1
    assert capacity.value_size({"M": {"k": {"S": "v"}}}) == 3 + 1 + 1 + 1
    assert capacity.value_size({"L": [{"BOOL": True}, {"NULL": True}]}) == 3 + 2 + 2
    assert capacity.write_units(1024) == 1 and capacity.write_units(1025) == 2
    assert capacity.read_units(4097, consistent=False) == 1.0
    index = capacity.Index("i", ("k",), "KEYS_ONLY")
    keys = ("pk", "sk")
    base = {"pk": {"S": "a"}, "sk": {"S": "b"}, "k": {"S": "1"}, "x": {"S": "y"}}
    assert capacity.index_writes(index, None, base, keys) == [1]
    assert capacity.index_writes(index, base, {**base, "x": {"S": "z"}}, keys) == []
    assert capacity.index_writes(index, base, {**base, "k": {"S": "2"}}, keys) == [1, 1]
    assert capacity.index_writes(index, base, {"pk": base["pk"], "sk": base["sk"]}, keys) == [1]


def test_calls_cost_and_report_at_tiny_sizes() -> None:
    kinds = ("issue", "batch_issue", "transfer_partial")
    measured = {
        "reps": 1,
        "batch": 3,
        "modes": {"plain/queries": calls.measure_mode(True, reps=1, batch=3, kinds=kinds)},
    }
    data = measured["modes"]["plain/queries"]
    assert data["registry_duplicates"] == 0
    issue, batch = data["kinds"]["issue"], data["kinds"]["batch_issue"]
    for kind in data["kinds"].values():
        assert kind["total"]["aws_calls"] > 0 and kind["total"]["wcu"] > 0
        assert kind["registry"]["transactions"] >= 1
    # Per certificate a batch costs no more than a single issue, but for what it does once
    # per request (at most 3 calls, among them the look-up that refuses a reused key; shared
    # by only 3 certificates here).
    assert batch["total"]["aws_calls"] <= issue["total"]["aws_calls"] + 3 / 3
    assert batch["invocations"]["api"] < issue["invocations"]["api"]
    assert data["kinds"]["transfer_partial"]["registry"]["transactions"] == 2

    priced = cost.run(measured)
    per_million = priced["modes"]["plain/queries"]
    assert all(c["usd_per_million"]["total_rest"] > 0 for c in per_million.values())
    assert (
        per_million["batch_issue"]["usd_per_million"]["api_gateway_rest"]
        < per_million["issue"]["usd_per_million"]["api_gateway_rest"]
    )
    text = bench_main.report(
        {"calls": measured, "cost": priced},
        {
            "finished": "now",
            "machine": "test",
            "commit": "test",
            "minutes": 0.0,
            "load_before": 0.0,
            "sections": ["calls", "cost"],
            "quick": True,
        },
    )
    assert "### Targets" in text and "issue" in text
    readme = (bench_main.HERE / "README.md").read_text()
    assert bench_main.START in readme and bench_main.END in readme


def test_both_transaction_formats_measured_and_priced() -> None:
    """--format proto measures what a deployed stage would run: protobuf transactions with
    proofs, sealed secrets, KMS and Secrets Manager calls; and the cost model prices them."""
    kinds = ("issue", "transfer_whole")
    plain = calls.measure_mode(True, reps=1, batch=2, kinds=kinds, fmt="plain")
    proto = calls.measure_mode(True, reps=1, batch=2, kinds=kinds, fmt="proto")
    cold = calls.measure_mode(True, reps=1, batch=2, kinds=("issue",), fmt="proto", cold=True)
    assert proto["format"] == "proto" and plain["format"] == "plain"
    for data in (plain, proto, cold):
        assert data["registry_duplicates"] == 0
        issue = data["kinds"]["issue"]
        # The registry commits in blocks: the worker's first status query finds the step
        # PENDING, the message is handed back (ChangeMessageVisibilityBatch) and comes again.
        assert issue["invocations"]["worker_records"] == 2
        assert issue["phases"]["worker"]["calls"]["sqs.ChangeMessageVisibilityBatch"] == 1
        total = issue["total"]
        # Small writes is a model (write-once parts put apart): with packed secrets that name
        # their data key, a certificate's item is small enough that it may cost more, not less.
        assert 0 < total["wcu_small"] <= total["wcu"] + 1
        assert 0 < total["write_once_bytes"] < total["written_bytes"]
    # The real transactions: signed, with a range proof, larger than the JSON envelope's,
    # and built by the proto builder (its proofs cost CPU; plain's nearly none).
    assert (
        proto["kinds"]["issue"]["registry"]["bytes"] > plain["kinds"]["issue"]["registry"]["bytes"]
    )
    assert proto["kinds"]["issue"]["builds"] >= 1
    assert not any(op.startswith("kms.") for op in plain["kinds"]["issue"]["total"]["calls"])
    # A new container per invocation: the data key, the owner's seed and the issuers' keys;
    # the new certificate's owner signs nothing, so the seed is read, not opened: the key of
    # public halves is (bench.cost charges that per container, the seed per command).
    worker = cold["kinds"]["issue"]["phases"]["worker"]["calls"]
    assert worker["kms.GenerateDataKey"] >= 1 and worker["kms.Decrypt"] >= 1
    assert worker["dynamodb.GetItem (seed)"] >= 1
    assert "kms.Decrypt (seed)" not in worker
    assert worker["secretsmanager.GetSecretValue"] >= 1

    measured = {
        "reps": 1,
        "batch": 2,
        "modes": {"plain/queries": plain, "proto/queries": proto},
        "custody_cold": cold,
    }
    priced = cost.run(measured)
    issue = priced["modes"]["proto/queries"]["issue"]
    assert issue["usd_per_million"]["kms"] > 0
    assert priced["modes"]["plain/queries"]["issue"]["usd_per_million"]["kms"] == 0
    # Not waiting for COMMITTED in Lambda is cheaper than waiting, on the same calls.
    assert issue["lambda_gb_s"]["worker"] < issue["lambda_gb_s_if_sleeping"]["worker"]
    assert (
        priced["small_writes"]["proto/queries"]["issue"]["usd_per_million"]["total_http"]
        <= issue["usd_per_million"]["total_http"]
    )
    rows = {r["kind"]: r for r in cost.targets_rows(priced, measured)}
    assert rows["issue"]["target"] == 8.0 and rows["issue"]["mode"] == "proto/queries"
    assert "issue" in cost.targets_table(priced, measured)
    assert "a new one per invocation" in calls.custody_table(measured)


def test_format_option() -> None:
    assert calls.formats_of("both") == ("plain", "proto")
    assert calls.formats_of("proto") == ("proto",)
    with pytest.raises(argparse.ArgumentTypeError):
        calls.formats_of("json")


def test_profile_at_tiny_size() -> None:
    result = profile.run(commands=2, log=lambda _m: None)
    assert result["commands"] == 4
    assert "ours" in result["share"] and "moto" in result["share"]
    assert abs(sum(result["share"].values()) - 1) < 1e-6


def test_scale_in_virtual_time() -> None:
    registry_bound = scale.Scenario("tiny", capacity=50, latency=0.2, workers=5, seconds=2.0)
    hot = scale.Scenario(
        "tiny-hot", capacity=500, latency=0.2, workers=5, certificates=2, parts=4, seconds=2.0
    )
    for s in (registry_bound, hot):
        result = scale.run_scenario(s, log=lambda _m: None)
        assert result["duplicates"] == 0
        assert result["all_committed"], result["statuses"]
        # Never faster than the registry can take transactions.
        assert result["saturation"]["throughput_per_s"] <= 1.05 * s.capacity


def test_throughput_on_the_embedded_stack() -> None:
    result = throughput.run(sizes=(15,), commands=3, clients=2, workers=1, log=lambda _m: None)
    (entry,) = result["sizes"]
    assert result["registry_duplicates"] == 0
    for run in entry["runs"]:
        assert run["statuses"] == {"COMMITTED": 3}, run
        assert run["refused"] == 0
        assert run["commands_per_s"] > 0


def test_a_run_of_some_sections_keeps_the_others_and_says_when_they_were_measured(
    tmp_path,
) -> None:
    """`--only calls,cost` used to write a README with only those sections' tables."""
    import json

    (tmp_path / "meta.json").write_text(
        json.dumps({"sections": ["scale"], "finished": "2026-11-28 03:38 UTC", "commit": "old"})
    )
    (tmp_path / "scale.json").write_text(json.dumps({"rows": []}))
    results = {"calls": {"modes": {}}}
    meta = {"sections": ["calls"], "finished": "2026-11-29 10:44 UTC", "commit": "new"}
    bench_main._carry_over(tmp_path, results, meta)
    assert set(results) == {"calls", "scale"}
    assert meta["rerun"] == ["calls"] and meta["sections"] == ["calls", "scale"]
    assert meta["measured"] == {
        "calls": "2026-11-29 10:44 UTC at new",
        "scale": "2026-11-28 03:38 UTC at old",
    }
    assert "scale (2026-11-28 03:38 UTC at old)" in bench_main._carried(meta)


def test_batch_writes_compare_parallel_puts_with_one_transaction() -> None:
    """Issue 16's comparison, small: a transaction's writes cost twice a put's; a duplicate
    cancels it whole (a second call, and more units again) but refuses one put only."""
    data = batch_writes.run(size=8, reps=1, threads=4)
    puts, transaction = data["results"]["all new|puts"], data["results"]["all new|transaction"]
    assert puts["calls"] == {"dynamodb.PutItem": 8} and puts["failed_conditions"] == 0
    assert transaction["calls"] == {"dynamodb.TransactWriteItems": 1}
    assert transaction["wcu_per_certificate"] == 2 * puts["wcu_per_certificate"]
    duplicate = data["results"]["one issued already|transaction"]
    assert duplicate["calls"] == {"dynamodb.TransactWriteItems": 2}
    assert duplicate["wcu_per_certificate"] > transaction["wcu_per_certificate"]
    one_refused = data["results"]["one issued already|puts"]
    assert one_refused["refused_per_batch"] == 1 and one_refused["failed_conditions"] == 1
    assert one_refused["calls"] == {"dynamodb.PutItem": 8}
    assert "| one issued already | transaction |" in batch_writes.table(data)


def test_hand_backs_are_priced_one_batch_call_per_invocation() -> None:
    """A claim hands its message back once per registry step; with batch_fill records an
    invocation, their ChangeMessageVisibilityBatch calls are shared as receives are."""
    measured = json.loads((Path(cost.__file__).parent / "results" / "calls.json").read_text())
    claim = measured["modes"]["proto/queries"]["kinds"]["claim"]
    hand_backs = claim["invocations"]["worker_records"] - 1
    assert hand_backs >= 3  # one per step awaiting its block
    prices = cost.load_prices()
    price = prices["sqs_fifo_per_million_requests"]

    def sqs(batch_fill: int) -> float:
        a = {**cost.ASSUMPTIONS, "batch_fill": batch_fill}
        priced = cost.per_command(
            claim, True, prices, dict(a["default_cpu_ms"]), a, cost.memory_mb(a["stage"])
        )
        return priced["usd_per_million"]["sqs"]

    deliveries = hand_backs + 1
    # From one record an invocation to ten: the hand-backs' and the receives' and deletes'
    # calls shared by ten.
    saved = (hand_backs + 2 * deliveries) * (1 - 1 / 10) * price
    assert sqs(1) - sqs(10) == pytest.approx(saved)


def test_the_worker_s_waits_are_priced_shared_by_the_groups_it_works_side_by_side() -> None:
    """Its waits (AWS calls, status queries) divided by the groups side by side; its CPU and
    each round's send are not."""
    measured = json.loads((Path(cost.__file__).parent / "results" / "calls.json").read_text())
    issue = measured["modes"]["proto/queries"]["kinds"]["issue"]
    prices = cost.load_prices()

    def worker_s(**change: float) -> float:
        a = {**cost.ASSUMPTIONS, **change}
        memory = cost.memory_mb(a["stage"])
        priced = cost.per_command(issue, True, prices, dict(a["default_cpu_ms"]), a, memory)
        return priced["lambda_gb_s"]["worker"] / (memory["worker"] / 1024)

    one, ten = worker_s(worker_overlap=1), worker_s(worker_overlap=10)
    waits = (one - ten) / (1 - 1 / 10)
    assert 0 < waits < one
    # With fewer records in a batch there is less to overlap.
    assert worker_s(worker_overlap=10, batch_fill=1) > ten
    # The worker that slept for COMMITTED worked one record after another.
    a = {**cost.ASSUMPTIONS, "worker_overlap": 10}
    priced = cost.per_command(
        issue, True, prices, dict(a["default_cpu_ms"]), a, cost.memory_mb(a["stage"])
    )
    assert priced["lambda_gb_s_if_sleeping"]["worker"] > priced["lambda_gb_s"]["worker"] * 1.5


def test_overlap_measures_the_worker_side_by_side_against_one_after_another() -> None:
    result = overlap.measure(("issue",), batches=1, log=lambda _m: None)
    (summary,) = result["summary"]
    # Ratios within one run: side by side the waits overlap, the sends do not.
    assert summary["wall_side_by_side_ms"] < summary["wall_one_after_another_ms"]
    assert summary["waits_overlap"] > 2
    rows = {r["worker_concurrency"]: r for r in result["rows"]}
    assert rows[1]["worker_sends_ms"] == rows[10]["worker_sends_ms"]
    assert "| issue |" in overlap.table(result)
