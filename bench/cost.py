"""Section 2: dollars per million commands at AWS list prices (bench/prices.json).

Built from what was measured: the calls and capacity units per command (bench.calls), the
CPU our code spends per command without moto (bench.profile), and the log bytes it writes;
plus the assumptions below, which say what AWS would add (call latencies, the registry's
latency) and how the deployment is sized (memory from .chalice/config.json's prod stage).

Per command:
- API Gateway: one request per HTTP command (a batch issue: one per batch).
- Lambda: requests (API: one per HTTP request; worker: one per batch of `batch_fill`
  messages) and GB-seconds = memory x duration, where duration = our CPU (scaled by the share
  of a vCPU the function's memory buys: a full one at `full_vcpu_mb`, proportionally less
  below) + each AWS call's latency + the time the worker waits for the registry:
  a batch's first transactions go in one call, so (send + commit wait) / batch, then every
  further step of a multi-step command alone, plus each status query; the reconciler's share
  likewise (its DynamoDB calls, and in query mode its stream queries).
- DynamoDB: the write and read units measured (accept + worker + the reconciler's share).
- SQS FIFO: our SendMessage (per 64 KB) + the event source mapping's ReceiveMessage and
  DeleteMessageBatch, one of each per `batch_fill` messages.
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
    "commit_wait_s": 1.0,  # query mode: PENDING until the block commits (the worker waits)
    "batch_fill": 10,  # messages per worker invocation under load (Lambda's FIFO maximum)
    "platform_log_bytes": 330,  # START + END + REPORT lines per invocation
    "log_event_overhead_bytes": 26,
    "rate_per_s": 1000,  # for the reconciler's fixed cost per pass, spread over commands
    # CPU ms to build and self-check the real registry's transactions (Bulletproofs range
    # proofs, signatures), per command kind, on this machine: bench/README.md, "Registry
    # crypto" (python -m bench.crypto_bench). Only the sensitivity table adds them.
    "proto_build_ms": {
        "issue": 109,
        "batch_issue": 109,
        "slice": 240,
        "transfer_whole": 1,
        "transfer_partial": 243,
        "claim": 20,
        "withdraw": 0,
    },
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


def per_command(
    kind: dict[str, Any],
    queries: bool,
    prices: dict[str, Any],
    cpu_ms: dict[str, float],
    a: dict[str, Any],
    memory: dict[str, int],
    build_ms: float = 0.0,
) -> dict[str, Any]:
    """USD per command, by service, for one kind in one registry mode. `build_ms`: CPU the
    worker spends building the command's transactions beyond what the profile measured (the
    real registry's proofs and signatures; the measured runs build plain JSON ones)."""
    p = kind["phases"]
    gb_s = prices[f"lambda_gb_second_{a['architecture']}"]
    ddb_s, sqs_s = a["dynamodb_call_ms"] / 1000, a["sqs_call_ms"] / 1000
    batch = a["batch_fill"]
    steps = kind["registry"]["transactions"]
    statuses = kind["registry"]["calls"].get("status", 0.0)
    streams = kind["registry"]["calls"].get("stream", 0.0)
    commit = a["commit_wait_s"] if queries else 0.0
    send = a["registry_send_s"]

    def aws_wait(phase: dict[str, Any]) -> float:
        return _calls(phase, "dynamodb.") * ddb_s + _calls(phase, "sqs.") * sqs_s

    def cpu_s(function: str, ms: float) -> float:
        return ms * max(1.0, a["full_vcpu_mb"] / memory[function]) / 1000

    durations = {
        "api": cpu_s("api", cpu_ms["accept"]) + aws_wait(p["accept"]),
        "worker": cpu_s("worker", cpu_ms["worker"] + build_ms)
        + aws_wait(p["worker"])
        + (send + commit) / batch
        + max(steps - 1, 0) * (send + commit)
        + statuses * a["registry_query_s"],
        "reconciler": aws_wait(p["reconcile"]) + streams * a["registry_query_s"],
    }
    api_requests = kind["invocations"]["api"]
    invocations = {"api": api_requests, "worker": 1 / batch, "reconciler": 0.0}
    lambda_usd = sum(
        memory[f] / 1024 * durations[f] * gb_s
        + invocations[f] * prices["lambda_requests_per_million"] / 1e6
        for f in durations
    )
    total = kind["total"]
    dynamodb = (
        total["wcu"] * prices["dynamodb_write_request_unit_per_million"]
        + total["rcu"] * prices["dynamodb_read_request_unit_per_million"]
    ) / 1e6
    sqs_requests = total["sqs_requests"] + 2 / batch  # ours + receive and delete per batch
    sqs = sqs_requests * prices["sqs_fifo_per_million_requests"] / 1e6
    log_bytes = sum(kind["log_bytes"].values()) + a["log_event_overhead_bytes"] * sum(
        kind["log_lines"].values()
    )
    log_bytes += (api_requests + 1 / batch) * a["platform_log_bytes"]
    logs = log_bytes / 1e9 * prices["cloudwatch_logs_ingestion_gb"]
    services = {
        "api_gateway_rest": api_requests * prices["api_gateway_rest_per_million"] / 1e6,
        "lambda": lambda_usd,
        "dynamodb": dynamodb,
        "sqs": sqs,
        "logs": logs,
    }
    per_million = {k: v * 1e6 for k, v in services.items()}
    per_million["total_rest"] = sum(per_million.values())
    per_million["total_http"] = (
        per_million["total_rest"]
        - per_million["api_gateway_rest"]
        + api_requests * prices["api_gateway_http_per_million"]
    )
    return {
        "usd_per_million": per_million,
        "lambda_seconds": durations,
        "lambda_gb_s": {f: memory[f] / 1024 * durations[f] for f in durations},
        "log_bytes": log_bytes,
        "sqs_requests": sqs_requests,
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
        "reconciler_fixed": reconciler_fixed(calls, prices, a, memory),
    }
    for mode, data in calls["modes"].items():
        out["modes"][mode] = {
            kind: per_command(k, mode == "queries", prices, cpu_ms, a, memory)
            for kind, k in data["kinds"].items()
        }
    out["sensitivity"] = sensitivity(calls, prices, cpu_ms, a, memory)
    return out


def sensitivity(calls, prices, cpu_ms, a, memory) -> list[dict[str, Any]]:
    """What would change the figure for a single issue (query mode) and a batch-issued
    certificate."""
    variants = [
        ("as assumed", {}, {}, False),
        ("real registry transactions (proofs built in the worker)", {}, {}, True),
        ("worker and API at 1,024 MB", {}, {"api": 1024, "worker": 1024}, False),
        ("worker and API at 256 MB", {}, {"api": 256, "worker": 256}, False),
        ("arm64 Lambdas", {"architecture": "arm64"}, {}, False),
        (
            "registry send 2 s, commit 3 s",
            {"registry_send_s": 2.0, "commit_wait_s": 3.0},
            {},
            False,
        ),
        ("low load: 1 message per worker invocation", {"batch_fill": 1}, {}, False),
    ]
    rows = []
    for name, change, mem, proto in variants:
        aa = {**a, **change}
        mm = {**memory, **mem}
        row = {"variant": name}
        mode = "queries" if "queries" in calls["modes"] else next(iter(calls["modes"]))
        for kind in ("issue", "batch_issue", "transfer_partial", "claim"):
            k = calls["modes"][mode]["kinds"].get(kind)
            if k:
                build = aa["proto_build_ms"].get(kind, 0.0) if proto else 0.0
                cost = per_command(k, mode == "queries", prices, cpu_ms, aa, mm, build)
                cost = cost["usd_per_million"]
                row[kind] = cost["total_http" if kind == "batch_issue" else "total_rest"]
        rows.append(row)
    return rows


def table(result: dict[str, Any]) -> str:
    lines = [
        "| kind | registry | API GW (REST) | Lambda | DynamoDB | SQS | Logs "
        "| **total, REST API** | total, HTTP API |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for mode, kinds in result["modes"].items():
        for kind, c in kinds.items():
            u = c["usd_per_million"]
            lines.append(
                f"| {kind} | {mode} | {u['api_gateway_rest']:.2f} | {u['lambda']:.2f} "
                f"| {u['dynamodb']:.2f} | {u['sqs']:.2f} | {u['logs']:.2f} "
                f"| **{u['total_rest']:.2f}** | {u['total_http']:.2f} |"
            )
    return "\n".join(lines)


def sensitivity_table(result: dict[str, Any]) -> str:
    rows = result["sensitivity"]
    kinds = [k for k in rows[0] if k != "variant"]
    lines = [
        "| variant (query mode; REST API, batch on HTTP API) | " + " | ".join(kinds) + " |",
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
    print(sensitivity_table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
