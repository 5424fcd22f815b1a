"""Section 2: dollars per million commands at AWS list prices (bench/prices.json).

Built from what was measured: the calls and capacity units per command (bench.calls), the
CPU our code spends per command without moto (bench.profile), and the log bytes it writes;
plus the assumptions below, which say what AWS would add (call latencies, the registry's
latency) and how the deployment is sized (memory from .chalice/config.json's prod stage).

Per command:
- API Gateway: one request per HTTP command (a batch issue: one per batch).
- Lambda: requests (API: one per HTTP request; worker: one per `batch_fill` deliveries, a
  message handed back to wait for a block being delivered again) and GB-seconds = memory x
  duration, where duration = our CPU (scaled by the share of a vCPU the function's memory
  buys: a full one at `full_vcpu_mb`, proportionally less below; with proto transactions plus
  the builder's CPU as measured) + each AWS call's latency + the registry's: every step goes
  out in one call with the other ready commands' steps of the invocation (send / batch; a step
  that commits leaves its command ready at the next, sent in the next round), plus each status
  query; the waits (AWS calls, status queries) divided by `worker_overlap`, the FIFO groups of
  a batch the worker works side by side (the CPU and the round's send are not: bench.overlap
  measures it). The worker no longer waits for COMMITTED inside Lambda (it hands the message
  back); `lambda_gb_s_if_sleeping` is what the old worker paid, waiting `commit_wait_s` per
  step, sending every step after the first in a call of its own, one record after another.
  The reconciler's share likewise (its DynamoDB calls, and in query mode its stream queries).
- DynamoDB: the write and read units measured (accept + worker + the reconciler's share).
- SQS FIFO: our SendMessage and ChangeMessageVisibilityBatch (per 64 KB) + the event source
  mapping's ReceiveMessage and DeleteMessageBatch, one of each per `batch_fill` deliveries.
- KMS and Secrets Manager (proto): as measured in warm containers, plus what containers that
  do not have it cached pay (bench.calls' custody_cold run, a new container per invocation):
  an owner's seed is read (GetItem) by `owner_seed_miss_share` of the commands, and opened
  (Decrypt) by as many where that owner signs (a container caches a seed, or its sealed
  public half, 300 s; with thousands of owners over a thousand containers most uses miss),
  data keys (the custody's key of public halves among them) and the issuers' keys by
  `cold_container_share` of them.
- CloudWatch Logs: our structured log bytes, as measured, plus the Lambda platform lines
  (START, END, REPORT) per invocation, plus per-event overhead.

    .venv/bin/python -m bench.cost [--calls bench/results/calls.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from bench.calls import ordered

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

ASSUMPTIONS: dict[str, Any] = {
    "stage": "prod",  # memory sizes are read from .chalice/config.json for this stage
    "architecture": "x86",
    "dynamodb_call_ms": 6.0,  # in-region DynamoDB latency per call, p50-ish
    "sqs_call_ms": 12.0,
    # Lambda gives a function CPU in proportion to its memory, a whole vCPU at 1,769 MB (taken
    # as one core of this machine): our CPU time stretches by 1769 / MB below that.
    "full_vcpu_mb": 1769,
    "default_cpu_ms": {"accept": 5.0, "worker": 10.0},  # when no profile was measured
    "registry_send_s": 0.5,  # one SendTransactions round trip
    "registry_query_s": 0.05,  # one status or stream query
    # Query mode: PENDING until the block commits. The worker no longer waits for it in
    # Lambda; only the "if sleeping" figures (the worker before issue 16) charge it.
    "commit_wait_s": 1.0,
    "kms_call_ms": 8.0,  # in-region KMS latency per call
    "secrets_call_ms": 20.0,
    # Share of commands whose owners' seeds are not cached in the container that serves them,
    # and share of invocations in a container that has not yet made or opened the data keys
    # and read the issuers' keys (cold start or first of its kind). Assumptions, see above.
    "owner_seed_miss_share": 1.0,
    "cold_container_share": 0.01,
    "batch_fill": 10,  # messages per worker invocation under load (Lambda's FIFO maximum)
    # FIFO groups of an invocation's batch the worker works side by side (settings'
    # worker_concurrency): their waits on AWS and the registry's status queries overlap (at
    # most batch_fill of them); their CPU does not (one interpreter), nor does the one send
    # of a round, which they share already. Each record of the bench's batches is its own group.
    "worker_overlap": 10,
    "platform_log_bytes": 330,  # START + END + REPORT lines per invocation
    "log_event_overhead_bytes": 26,
    "rate_per_s": 1000,  # for the reconciler's fixed cost per pass, spread over commands
}


def memory_mb(stage: str) -> dict[str, int]:
    config = json.loads((ROOT / ".chalice" / "config.json").read_text())
    functions = config["stages"][stage]["lambda_functions"]
    return {
        "api": functions["api_handler"]["lambda_memory_size"],
        "worker": functions["worker"]["lambda_memory_size"],
        "reconciler": functions["reconciler"]["lambda_memory_size"],
    }


def load_prices(path: Path = HERE / "prices.json") -> dict[str, Any]:
    data = json.loads(path.read_text())
    return {"meta": data, **{k: v["usd"] for k, v in data["prices"].items()}}


def _calls(phase: dict[str, Any], prefix: str) -> float:
    return sum(n for op, n in phase["calls"].items() if op.startswith(prefix))


CUSTODY = ("kms.", "secretsmanager.", "ssm.")
SEED_GET = "dynamodb.GetItem (seed)"
SEED_OPEN = "kms.Decrypt (seed)"


def custody_calls(warm: dict[str, Any], cold: dict[str, Any] | None, a: dict[str, Any]):
    """Expected KMS and Secrets Manager calls (and seed reads) per command: warm as measured,
    plus the share of commands that pay what a cold cache costs (module docstring)."""
    w, c = warm["total"]["calls"], (cold or warm)["total"]["calls"]

    def extra(op: str) -> float:
        return max(c.get(op, 0.0) - w.get(op, 0.0), 0.0)

    # A seed read for a new slice's owner needs no Decrypt (its sealed public half opens with
    # the container's key); one read for a signer is opened.
    seed_reads, seed_opens = extra(SEED_GET), extra(SEED_OPEN)
    miss, cold_share = a["owner_seed_miss_share"], a["cold_container_share"]
    kms = sum(n for op, n in w.items() if op.startswith("kms."))
    kms += miss * seed_opens
    kms += cold_share * (extra("kms.Decrypt") + extra("kms.GenerateDataKey"))
    secrets = sum(n for op, n in w.items() if op.startswith(("secretsmanager.", "ssm.")))
    secrets += cold_share * (extra("secretsmanager.GetSecretValue") + extra("ssm.GetParameter"))
    return {"kms": kms, "secrets": secrets, "seed_reads": miss * seed_reads}


def per_command(
    kind: dict[str, Any],
    queries: bool,
    prices: dict[str, Any],
    cpu_ms: dict[str, float],
    a: dict[str, Any],
    memory: dict[str, int],
    build_ms: float = 0.0,
    cold: dict[str, Any] | None = None,
    small_writes: bool = False,
) -> dict[str, Any]:
    """USD per command, by service, for one kind in one registry mode. `build_ms`: CPU the
    worker spends building the command's transactions beyond what the profile measured (the
    proto format's proofs and signatures, as bench.calls timed them). `cold`: the same kind
    measured with a new container per invocation (proto: custody's calls when not cached).
    `small_writes`: the table's write units as they would be with the write-once parts in
    items of their own (bench.capacity)."""
    p = kind["phases"]
    gb_s = prices[f"lambda_gb_second_{a['architecture']}"]
    ddb_s, sqs_s = a["dynamodb_call_ms"] / 1000, a["sqs_call_ms"] / 1000
    batch = a["batch_fill"]
    steps = kind["registry"]["transactions"]
    statuses = kind["registry"]["calls"].get("status", 0.0)
    streams = kind["registry"]["calls"].get("stream", 0.0)
    send = a["registry_send_s"]
    deliveries = kind["invocations"].get("worker_records", 1.0)
    custody = custody_calls(kind, cold, a)
    kms_s, secrets_s = a["kms_call_ms"] / 1000, a["secrets_call_ms"] / 1000

    def aws_wait(phase: dict[str, Any]) -> float:
        return (
            _calls(phase, "dynamodb.") * ddb_s
            + _calls(phase, "sqs.") * sqs_s
            + _calls(phase, "kms.") * kms_s
            + (_calls(phase, "secretsmanager.") + _calls(phase, "ssm.")) * secrets_s
        )

    def cpu_s(function: str, ms: float) -> float:
        return ms * max(1.0, a["full_vcpu_mb"] / memory[function]) / 1000

    warm_kms = _calls(kind["total"], "kms.")
    warm_secrets = _calls(kind["total"], "secretsmanager.") + _calls(kind["total"], "ssm.")
    custody_wait = (
        (custody["kms"] - warm_kms) * kms_s
        + (custody["secrets"] - warm_secrets) * secrets_s
        + custody["seed_reads"] * ddb_s
    )
    worker_cpu = cpu_s("worker", cpu_ms["worker"] + build_ms) + steps * send / batch
    worker_waits = aws_wait(p["worker"]) + custody_wait + statuses * a["registry_query_s"]
    durations = {
        "api": cpu_s("api", cpu_ms["accept"]) + aws_wait(p["accept"]),
        "worker": worker_cpu + worker_waits / max(1, min(a["worker_overlap"], batch)),
        "reconciler": aws_wait(p["reconcile"]) + streams * a["registry_query_s"],
    }
    # The worker before issue 16 waited in Lambda for each step's block to commit, and
    # worked its batch one record after another.
    commit = a["commit_wait_s"] if queries else 0.0
    later = max(steps - 1, 0)
    sleeping = (
        worker_cpu + worker_waits + later * (send - send / batch) + (1 / batch + later) * commit
    )
    api_requests = kind["invocations"]["api"]
    invocations = {"api": api_requests, "worker": deliveries / batch, "reconciler": 0.0}
    lambda_usd = sum(
        memory[f] / 1024 * durations[f] * gb_s
        + invocations[f] * prices["lambda_requests_per_million"] / 1e6
        for f in durations
    )
    total = kind["total"]
    wcu = total.get("wcu_small", total["wcu"]) if small_writes else total["wcu"]
    rcu = total["rcu"] + custody["seed_reads"]  # a seed read: one strongly consistent unit
    dynamodb = (
        wcu * prices["dynamodb_write_request_unit_per_million"]
        + rcu * prices["dynamodb_read_request_unit_per_million"]
    ) / 1e6
    # ours (SendMessage, ChangeMessageVisibilityBatch) + receive and delete per batch of deliveries.
    # The hand-backs go in one call per invocation: as many per command as the model's batch
    # says (the bench received a kind's commands together, a batch of its own size).
    handed_back = _calls(total, "sqs.ChangeMessageVisibility")
    sqs_requests = (
        total["sqs_requests"] - handed_back + (deliveries - 1) / batch + 2 * deliveries / batch
    )
    sqs = sqs_requests * prices["sqs_fifo_per_million_requests"] / 1e6
    log_bytes = sum(kind["log_bytes"].values()) + a["log_event_overhead_bytes"] * sum(
        kind["log_lines"].values()
    )
    log_bytes += (api_requests + deliveries / batch) * a["platform_log_bytes"]
    logs = log_bytes / 1e9 * prices["cloudwatch_logs_ingestion_gb"]
    services = {
        "api_gateway_rest": api_requests * prices["api_gateway_rest_per_million"] / 1e6,
        "lambda": lambda_usd,
        "dynamodb": dynamodb,
        "sqs": sqs,
        "logs": logs,
        "kms": custody["kms"] * prices["kms_requests_per_million"] / 1e6,
        "secrets": custody["secrets"] * prices["secrets_manager_api_calls_per_million"] / 1e6,
    }
    per_million = {k: v * 1e6 for k, v in services.items()}
    per_million["dynamodb_write"] = wcu * prices["dynamodb_write_request_unit_per_million"]
    per_million["total_rest"] = sum(per_million[k] for k in services)
    per_million["total_http"] = (
        per_million["total_rest"]
        - per_million["api_gateway_rest"]
        + api_requests * prices["api_gateway_http_per_million"]
    )
    return {
        "usd_per_million": per_million,
        "lambda_seconds": durations,
        "lambda_gb_s": {f: memory[f] / 1024 * durations[f] for f in durations},
        "lambda_gb_s_if_sleeping": {
            **{f: memory[f] / 1024 * durations[f] for f in durations},
            "worker": memory["worker"] / 1024 * sleeping,
        },
        "log_bytes": log_bytes,
        "sqs_requests": sqs_requests,
        "kms_calls": custody["kms"],
        "secrets_calls": custody["secrets"],
        "build_ms": build_ms,
    }


def reconciler_fixed(result: dict[str, Any], prices, a, memory) -> dict[str, float]:
    """The reconciler's cost per pass that does not depend on the commands (lease, listing
    queries, expiry sweep), per month at one pass a minute."""
    fixed = next(iter(result["modes"].values()))["reconciler_pass_fixed"]
    seconds = fixed["aws_calls"] * a["dynamodb_call_ms"] / 1000
    per_pass = (
        fixed["wcu"] * prices["dynamodb_write_request_unit_per_million"] / 1e6
        + fixed["rcu"] * prices["dynamodb_read_request_unit_per_million"] / 1e6
        + memory["reconciler"] / 1024 * seconds * prices[f"lambda_gb_second_{a['architecture']}"]
        + prices["lambda_requests_per_million"] / 1e6
    )
    month = per_pass * 60 * 24 * 30
    return {"usd_per_pass": per_pass, "usd_per_month": month}


def _is_queries(mode: str, data: dict[str, Any]) -> bool:
    return bool(data.get("queries", mode.endswith("queries") and "no_queries" not in mode))


def _mode_costs(calls, mode, prices, cpu_ms, a, memory, small_writes=False):
    data = calls["modes"][mode]
    proto = data.get("format") == "proto"
    cold = calls.get("custody_cold", {}).get("kinds", {}) if proto else {}
    return {
        kind: per_command(
            k,
            _is_queries(mode, data),
            prices,
            cpu_ms,
            a,
            memory,
            build_ms=k.get("build_cpu_ms", 0.0) if proto else 0.0,
            cold=cold.get(kind),
            small_writes=small_writes,
        )
        for kind, k in data["kinds"].items()
    }


def run(
    calls: dict[str, Any],
    profile: dict[str, Any] | None = None,
    assumptions: dict[str, Any] | None = None,
) -> dict[str, Any]:
    a = {**ASSUMPTIONS, **(assumptions or {})}
    prices = load_prices()
    memory = memory_mb(a["stage"])
    if profile:
        cpu_ms = {
            name: phase["without_moto_ms"]
            for name, phase in profile["unprofiled"]["phases"].items()
        }
    else:
        cpu_ms = dict(a["default_cpu_ms"])
    out: dict[str, Any] = {
        "assumptions": a,
        "memory_mb": memory,
        "cpu_ms_per_command": cpu_ms,
        "prices_as_of": prices["meta"]["as_of"],
        "prices_caveat": prices["meta"].get("caveat", ""),
        "region": prices["meta"]["region"],
        "modes": {},
        "small_writes": {},
        "reconciler_fixed": reconciler_fixed(calls, prices, a, memory),
    }
    for mode in calls["modes"]:
        out["modes"][mode] = _mode_costs(calls, mode, prices, cpu_ms, a, memory)
        out["small_writes"][mode] = _mode_costs(calls, mode, prices, cpu_ms, a, memory, True)
    out["sensitivity"] = sensitivity(calls, prices, cpu_ms, a, memory)
    return out


TARGET_MODE = "proto/queries"  # the targets: proto format, query mode, HTTP API
# USD per million, HTTP API (issue 16)
TARGETS = {
    "issue": 8.0,
    "batch_issue": 3.0,
    "transfer_whole": 8.0,
    "transfer_partial": 14.0,
    "claim": 20.0,
    "withdraw": 8.0,
}


def target_mode(calls_or_cost: dict[str, Any]) -> str:
    modes = list(calls_or_cost["modes"])
    for wanted in (TARGET_MODE, "plain/queries", "queries"):
        if wanted in modes:
            return wanted
    return modes[0]


def sensitivity(calls, prices, cpu_ms, a, memory) -> list[dict[str, Any]]:
    """What would change the figures of the targets' mode (HTTP API)."""
    variants = [
        ("as assumed", {}, {}, False),
        ("small writes (write-once parts in items of their own)", {}, {}, True),
        (
            "owners' seeds always cached (no seed Decrypt)",
            {"owner_seed_miss_share": 0.0},
            {},
            False,
        ),
        (
            "every invocation in a new container",
            {"owner_seed_miss_share": 1.0, "cold_container_share": 1.0},
            {},
            False,
        ),
        ("worker and API at 1,024 MB", {}, {"api": 1024, "worker": 1024}, False),
        ("worker and API at 256 MB", {}, {"api": 256, "worker": 256}, False),
        ("arm64 Lambdas", {"architecture": "arm64"}, {}, False),
        ("registry send 2 s", {"registry_send_s": 2.0}, {}, False),
        ("low load: 1 message per worker invocation", {"batch_fill": 1}, {}, False),
        (
            "worker one record after another (worker_concurrency 1)",
            {"worker_overlap": 1},
            {},
            False,
        ),
    ]
    mode = target_mode(calls)
    rows = []
    for name, change, mem, small in variants:
        aa = {**a, **change}
        mm = {**memory, **mem}
        costs = _mode_costs(calls, mode, prices, cpu_ms, aa, mm, small)
        row = {"variant": name, "mode": mode}
        for kind, cost in ordered(costs):
            row[kind] = cost["usd_per_million"]["total_http"]
        rows.append(row)
    return rows


def table(result: dict[str, Any]) -> str:
    lines = [
        "| kind | format / registry | API GW (REST) | Lambda | DynamoDB | SQS | Logs | KMS "
        "| Secrets Manager | **total, HTTP API** | total, REST API |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for mode, kinds in result["modes"].items():
        for kind, c in ordered(kinds):
            u = c["usd_per_million"]
            lines.append(
                f"| {kind} | {mode} | {u['api_gateway_rest']:.2f} | {u['lambda']:.2f} "
                f"| {u['dynamodb']:.2f} | {u['sqs']:.2f} | {u['logs']:.2f} | {u['kms']:.2f} "
                f"| {u['secrets']:.3f} | **{u['total_http']:.2f}** | {u['total_rest']:.2f} |"
            )
    return "\n".join(lines)


def lambda_table(result: dict[str, Any]) -> str:
    """GB-seconds per command by function; the worker as it runs now (no waiting for a
    block in Lambda) and as the worker that waited would have paid on the same calls."""
    lines = [
        "| kind | format / registry | API GB-s | worker GB-s (build CPU ms) | worker GB-s if it "
        "waited for COMMITTED | saved | reconciler GB-s |",
        "|---|---|---|---|---|---|---|",
    ]
    for mode, kinds in result["modes"].items():
        for kind, c in ordered(kinds):
            g, old = c["lambda_gb_s"], c["lambda_gb_s_if_sleeping"]
            saved = 1 - g["worker"] / old["worker"] if old["worker"] else 0.0
            lines.append(
                f"| {kind} | {mode} | {g['api']:.4f} | {g['worker']:.4f} ({c['build_ms']:.0f}) "
                f"| {old['worker']:.4f} | {saved:.0%} | {g['reconciler']:.4f} |"
            )
    return "\n".join(lines)


def targets_rows(result: dict[str, Any], calls: dict[str, Any]) -> list[dict[str, Any]]:
    """Per kind with a target: the measured cost in the targets' mode (HTTP API; REST and the
    plain format beside), the verdict, what makes up the cost, and what small writes would
    make of it."""
    mode = target_mode(result)
    plain = "plain/queries" if "plain/queries" in result["modes"] else None
    rows = []
    for kind, target in TARGETS.items():
        c = result["modes"][mode].get(kind)
        if c is None:
            continue
        u = c["usd_per_million"]
        t = calls["modes"][mode]["kinds"][kind]["total"]
        small = result["small_writes"][mode][kind]["usd_per_million"]
        services = {
            "DynamoDB writes": u["dynamodb_write"],
            "DynamoDB reads": u["dynamodb"] - u["dynamodb_write"],
            "Lambda": u["lambda"],
            "KMS": u["kms"],
            "SQS": u["sqs"],
            "API Gateway (HTTP)": u["total_http"] - u["total_rest"] + u["api_gateway_rest"],
            "Logs": u["logs"],
        }
        biggest = sorted(services.items(), key=lambda kv: -kv[1])[:3]
        index = sorted(t["wcu_index"].items(), key=lambda kv: -kv[1])
        rows.append(
            {
                "kind": kind,
                "mode": mode,
                "target": target,
                "http": u["total_http"],
                "rest": u["total_rest"],
                "plain_http": (
                    result["modes"][plain][kind]["usd_per_million"]["total_http"] if plain else None
                ),
                "met": u["total_http"] <= target,
                "biggest": biggest,
                "wcu": t["wcu"],
                "wcu_table": t["wcu_table"],
                "wcu_index": index,
                "wcu_small": t.get("wcu_small", t["wcu"]),
                "small_http": small["total_http"],
            }
        )
    return rows


def targets_table(result: dict[str, Any], calls: dict[str, Any]) -> str:
    lines = [
        "| kind | target (HTTP API) | measured, HTTP API (REST API; plain format) | verdict "
        "| biggest items, USD per million | WCU: table + indexes | with small writes: WCU, "
        "USD (HTTP) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in targets_rows(result, calls):
        verdict = (
            "met"
            if r["met"]
            else f"**missed by {r['http'] - r['target']:.2f} ({r['http'] / r['target']:.1f}x)**"
        )
        biggest = ", ".join(f"{name} {usd:.2f}" for name, usd in r["biggest"])
        index = " + ".join(f"{name} {n:.0f}" for name, n in r["wcu_index"] if n >= 0.5)
        plain = f"; {r['plain_http']:.2f}" if r["plain_http"] is not None else ""
        lines.append(
            f"| {r['kind']} | ≤ {r['target']:g} | **{r['http']:.2f}** ({r['rest']:.2f}{plain}) "
            f"| {verdict} | {biggest} | {r['wcu']:.0f} = {r['wcu_table']:.0f} + {index or '0'} "
            f"| {r['wcu_small']:.0f}, {r['small_http']:.2f} |"
        )
    return "\n".join(lines)


def sensitivity_table(result: dict[str, Any]) -> str:
    rows = result["sensitivity"]
    # in KINDS order: a run that carries the results over reads them from sorted JSON
    kinds = [k for k, _ in ordered({k: None for k in rows[0] if k not in ("variant", "mode")})]
    lines = [
        f"| variant ({rows[0]['mode']}, HTTP API, USD per million) | " + " | ".join(kinds) + " |",
        "|---|" + "---|" * len(kinds),
    ]
    for row in rows:
        lines.append(f"| {row['variant']} | " + " | ".join(f"{row[k]:.2f}" for k in kinds) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.cost", description=__doc__)
    parser.add_argument("--calls", type=Path, default=HERE / "results" / "calls.json")
    parser.add_argument("--profile", type=Path, default=HERE / "results" / "profile.json")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "cost.json")
    args = parser.parse_args(argv)
    calls = json.loads(args.calls.read_text())
    profile = json.loads(args.profile.read_text()) if args.profile.exists() else None
    result = run(calls, profile)
    args.out.write_text(json.dumps(result, indent=1))
    print(table(result))
    print()
    print(lambda_table(result))
    print()
    print(sensitivity_table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
