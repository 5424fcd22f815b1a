"""Section 1: AWS calls and DynamoDB capacity per command, from HTTP accept to COMMITTED.

For each command kind and both registry modes, `reps` commands go through the HTTP routes
(chalice.test.Client), the worker (fed by the devstack poller) and one reconciler pass, over
moto in-process. Every botocore call the service's clients make is counted by phase:

- accept: the HTTP request (API Lambda);
- worker: the worker Lambda, from receiving the message to COMMITTED;
- esm: what Lambda's SQS event source mapping would call on AWS (receives that returned
  messages, DeleteMessageBatch); counted apart, it is not our code;
- reconcile: the reconciler's marginal cost per command (a pass over the measured commands,
  minus a pass with nothing to do, divided by the commands).

Capacity units are computed from the requests and the stored items (bench/capacity.py).

Both transaction formats (`--format plain|proto|both`): plain (the JSON envelope) and proto
(the registry's wire format, proofs and signatures, secrets sealed under KMS, owners' seeds in
custody, issuers' keys from Secrets Manager: bench/inprocess.py), so the items are measured as
the book writes them in each. With proto, a second run in query mode puts every invocation in
a new container (`custody_cold`): the most KMS and Secrets Manager calls a command can cost.
The worker's CPU to build the transactions (proofs, signatures: noisy on a shared machine) is
timed around the builder.

    .venv/bin/python -m bench.calls [--reps 5] [--batch 100] [--format both]
        [--out bench/results/calls.json]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import boto3

from bench.capacity import SEED_SUFFIX, Meter, Tally
from bench.inprocess import Harness, harness, local_aws_environment

KINDS = (
    "issue",
    "batch_issue",
    "slice",
    "transfer_whole",
    "transfer_partial",
    "claim",
    "withdraw",
)
PHASES = ("accept", "worker", "esm", "reconcile")
FORMATS = ("plain", "proto")


class BuildTimer:
    """CPU seconds (this thread) spent in the transaction builders, by phase: the range proofs
    and signatures of the proto format are the worker's largest CPU cost."""

    def __init__(self) -> None:
        self.by_phase: Counter = Counter()
        self.builds: Counter = Counter()
        self.phase = "setup"
        self._saved: list[tuple[type, Any]] = []

    def __enter__(self) -> BuildTimer:
        from chalicelib.registry import builder as builders

        for cls in (builders.PlainTransactionBuilder, builders.ProtoTransactionBuilder):
            original = cls.build
            self._saved.append((cls, original))

            def timed(this: Any, *args: Any, _original: Any = original, **kwargs: Any) -> Any:
                started = time.thread_time()
                self.builds[self.phase] += 1
                try:
                    return _original(this, *args, **kwargs)
                finally:
                    self.by_phase[self.phase] += time.thread_time() - started

            cls.build = timed  # type: ignore[method-assign]
        return self

    def __exit__(self, *_: Any) -> None:
        for cls, original in self._saved:
            cls.build = original  # type: ignore[method-assign]
        self._saved.clear()


class LogBytes(logging.Handler):
    """Bytes our structured logs would ingest into CloudWatch: the `certificates` logger at
    INFO (app.py sends it to stdout in Lambda), anything else at WARNING and above (the Lambda
    runtime's root logger). Each line as formatted, plus its newline."""

    def __init__(self) -> None:
        super().__init__(level=logging.INFO)
        self.by_phase: Counter = Counter()
        self.lines: Counter = Counter()
        self.phase = "setup"

    def emit(self, record: logging.LogRecord) -> None:
        if not record.name.startswith("certificates") and record.levelno < logging.WARNING:
            return
        size = len(record.getMessage().encode()) + 1
        self.by_phase[self.phase] += size
        self.lines[self.phase] += 1


def _committed(h: Harness, command_ids: list[str]) -> None:
    statuses = Counter(h.status(c) for c in command_ids)
    if set(statuses) != {"COMMITTED"}:
        raise RuntimeError(f"not all commands committed: {dict(statuses)}")


# --- per kind: prepare (not measured) and the measured command ---------------------------------

Prepared = list[Any]


def _issued(h: Harness, n: int, **kwargs: Any) -> list[tuple[str, str]]:
    ids = [h.issue(**kwargs)["certificate_id"] for _ in range(n)]
    h.drain()
    return [(c, h.first_slice(c)) for c in ids]


def _prepare(kind: str, h: Harness, n: int) -> Prepared:
    if kind in ("issue", "batch_issue"):
        return [None] * n
    if kind == "claim":
        production = _issued(h, n, quantity=400, type_="production")
        consumption = _issued(h, n, quantity=400, type_="consumption")
        return list(zip(production, consumption, strict=True))
    return _issued(h, n, quantity=1000)


def _command(kind: str, h: Harness, arg: Any) -> list[str]:
    match kind:
        case "issue":
            return [h.issue()["command_id"]]
        case "slice":
            return [h.slice(arg[0], arg[1], [600, 400])["command_id"]]
        case "transfer_whole":
            return [h.transfer(arg[0], arg[1], 1000)["command_id"]]
        case "transfer_partial":
            return [h.transfer(arg[0], arg[1], 250)["command_id"]]
        case "claim":
            return [h.claim(arg[0], arg[1], 400)["command_id"]]
        case "withdraw":
            return [h.withdraw(arg[0])["command_id"]]
    raise ValueError(kind)


def measure_kind(
    h: Harness,
    meter: Meter,
    logs: LogBytes,
    kind: str,
    reps: int,
    batch: int,
    fixed: Tally,
    timer: BuildTimer | None = None,
) -> dict[str, Any]:
    timer = timer or BuildTimer()

    def phase(name: str) -> Any:
        logs.phase = f"{kind}/{name}"
        timer.phase = f"{kind}/{name}"
        return meter.measuring(f"{kind}/{name}")

    with phase("setup"):
        prepared = _prepare(kind, h, reps)
        h.reconcile()  # settle the setup's own commands out of the measured pass
    before = (
        Counter(h.registry.calls),
        h.registry.transactions,
        Counter(h.invocations),
        h.registry.bytes,
    )
    started = time.perf_counter()
    with phase("accept"):
        if kind == "batch_issue":
            answer = h.issue_batch(batch)
            command_ids = [c["command"]["command_id"] for c in answer["commands"]]
            api_requests = 1
        else:
            command_ids = [cid for arg in prepared for cid in _command(kind, h, arg)]
            api_requests = len(command_ids)
    with phase("worker"):
        h.drain()
    with phase("reconcile"):
        actions = h.reconcile()
    elapsed = time.perf_counter() - started
    with phase("check"):
        _committed(h, command_ids)
    n = len(command_ids)
    registry_calls = Counter(h.registry.calls)
    registry_calls.subtract(before[0])
    invocations = Counter(h.invocations)
    invocations.subtract(before[2])

    def per(phase_name: str, channel: str = "app") -> dict[str, Any]:
        return meter.tally(f"{kind}/{phase_name}", channel).scaled(1 / n)

    reconcile = Tally()
    reconcile.add(meter.tally(f"{kind}/reconcile", "app"))
    marginal = _amortized(_minus(reconcile, fixed), n)
    phases = {
        "accept": per("accept"),
        "worker": per("worker"),
        "esm": per("worker", "esm"),
        "reconcile": marginal.scaled(1 / n),
    }
    app_total = Tally()
    for name in ("accept", "worker"):
        app_total.add(meter.tally(f"{kind}/{name}", "app"))
    app_total.add(marginal)
    return {
        "commands": n,
        "phases": phases,
        "total": app_total.scaled(1 / n),  # our code's calls: accept + worker + reconcile
        "esm": per("worker", "esm"),
        "registry": {
            "calls": {k: v / n for k, v in sorted(registry_calls.items()) if v},
            "transactions": (h.registry.transactions - before[1]) / n,
            "bytes": (h.registry.bytes - before[3]) / n,
        },
        "invocations": {
            "api": api_requests / n,
            "worker": invocations["worker"] / n,
            # Messages handed to the worker per command: 1, + 1 each time it came back
            # (handed back to wait for a block, or a retry).
            "worker_records": invocations["worker_records"] / n,
        },
        "build_cpu_ms": 1000 * timer.by_phase[f"{kind}/worker"] / n,
        # Builds per command: 1 would do; a message that comes back with the snapshot of the
        # command as accepted is built again before its guard write fails (see bench/README.md).
        "builds": timer.builds[f"{kind}/worker"] / n,
        "log_bytes": {
            name: logs.by_phase[f"{kind}/{name}"] / n for name in ("accept", "worker", "reconcile")
        },
        "log_lines": {
            name: logs.lines[f"{kind}/{name}"] / n for name in ("accept", "worker", "reconcile")
        },
        "reconciler_actions": actions,
        "seconds": elapsed,
    }


# The reconciler lists its work per shard of the open-commands index: one Query and one
# BatchGetItem (up to 100 keys) per shard with work, in each of its two listings (open, then
# settled commands). Over the few commands measured per kind that is one call per shard; over a
# full pass (Reconciler.max_commands) it is a small share per command. The units they read are
# per item and stay as measured; only the call counts are scaled to a full pass.
FULL_PASS = 500
SHARDS = 8
LISTING_CALLS = ("dynamodb.Query", "dynamodb.BatchGetItem")


def _amortized(marginal: Tally, n: int) -> Tally:
    per_listing = SHARDS * -(-FULL_PASS // SHARDS // 100)  # calls per listing of a full pass
    for op in LISTING_CALLS:
        if marginal.calls[op] > 0:
            marginal.calls[op] = min(marginal.calls[op], 2 * per_listing * n / FULL_PASS)
    return marginal


def _minus(a: Tally, b: Tally) -> Tally:
    out = Tally()
    out.add(a)
    out.calls.subtract(b.calls)
    out.calls = +out.calls  # drop zero and negative counts
    out.wcu_table -= b.wcu_table
    out.wcu_index.subtract(b.wcu_index)
    out.rcu -= b.rcu
    out.sqs_requests -= b.sqs_requests
    out.sqs_messages -= b.sqs_messages
    out.wcu_table_small -= b.wcu_table_small
    out.wcu_index_small.subtract(b.wcu_index_small)
    out.written_bytes -= b.written_bytes
    out.write_once_bytes -= b.write_once_bytes
    out.table_writes -= b.table_writes
    return out


def measure_mode(
    queries: bool, reps: int, batch: int, kinds=KINDS, fmt: str = "plain", cold: bool = False
) -> dict[str, Any]:
    local_aws_environment()
    shadow = boto3.Session(region_name="eu-west-1")
    meter = Meter(shadow)
    logs = LogBytes()
    certificates = logging.getLogger("certificates")
    saved = (certificates.level, certificates.propagate)
    certificates.setLevel(logging.INFO)
    root = logging.getLogger()
    root.addHandler(logs)
    certificates.addHandler(logs)
    certificates.propagate = False
    try:
        with (
            BuildTimer() as timer,
            harness(
                queries,
                before_build=lambda s: meter.attach(s, "app"),
                esm_session_hook=lambda s: meter.attach(s, "esm"),
                fmt=fmt,
                cold=cold,
            ) as h,
        ):
            # A pass with nothing to settle: the reconciler's fixed cost per pass.
            with meter.measuring("fixed/setup"):
                h.issue()
                h.drain()
                h.reconcile()
            with meter.measuring("fixed/reconcile"):
                h.reconcile()
            fixed = Tally()
            fixed.add(meter.tally("fixed/reconcile", "app"))
            results = {
                kind: measure_kind(h, meter, logs, kind, reps, batch, fixed, timer)
                for kind in kinds
            }
            duplicates = h.registry.inner.duplicates()
    finally:
        root.removeHandler(logs)
        certificates.removeHandler(logs)
        certificates.setLevel(saved[0])
        certificates.propagate = saved[1]
    return {
        "format": fmt,
        "queries": queries,
        "cold": cold,
        "kinds": results,
        "reconciler_pass_fixed": fixed.scaled(1),
        "registry_duplicates": len(duplicates),
    }


def mode_name(fmt: str, queries: bool) -> str:
    return f"{fmt}/{'queries' if queries else 'no_queries'}"


def run(
    reps: int = 5,
    batch: int = 100,
    kinds=KINDS,
    log: Callable = print,
    formats: tuple[str, ...] = FORMATS,
) -> dict[str, Any]:
    """Every kind in both registry modes, in each transaction format; with proto, the query
    mode once more with a new container for every invocation (custody_cold)."""
    out: dict[str, Any] = {"reps": reps, "batch": batch, "formats": list(formats), "modes": {}}
    for fmt in formats:
        for queries in (False, True):
            mode = mode_name(fmt, queries)
            t0 = time.perf_counter()
            out["modes"][mode] = measure_mode(queries, reps, batch, kinds, fmt)
            log(f"calls: {mode} measured in {time.perf_counter() - t0:.1f} s")
    if "proto" in formats:
        t0 = time.perf_counter()
        out["custody_cold"] = measure_mode(True, reps, batch, kinds, "proto", cold=True)
        took = time.perf_counter() - t0
        log(f"calls: proto/queries, a new container per invocation, measured in {took:.1f} s")
    return out


def formats_of(option: str) -> tuple[str, ...]:
    """--format plain|proto|both."""
    if option == "both":
        return FORMATS
    if option in FORMATS:
        return (option,)
    raise argparse.ArgumentTypeError(f"--format is plain, proto or both, not {option!r}")


def ordered(kinds: dict[str, Any]) -> list[tuple[str, Any]]:
    """A mode's kinds in KINDS order (the JSON file sorts its keys)."""
    return sorted(kinds.items(), key=lambda kv: KINDS.index(kv[0]) if kv[0] in KINDS else 99)


def _custody_calls(calls: dict[str, float]) -> float:
    return sum(n for op, n in calls.items() if op.split(".")[0] in ("kms", "secretsmanager", "ssm"))


def table(result: dict[str, Any]) -> str:
    """Markdown: per kind, format and registry mode, calls and units end to end (our code), ESM
    apart, and what small writes would make of the table's write units."""
    lines = [
        "| kind | format / registry | AWS calls (accept + worker + reconcile) | of which KMS "
        "+ Secrets Manager | WCU (table + GSI) | WCU with small writes | RCU | KB written "
        "(write-once part) | deliveries | registry tx (bytes) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for mode, data in result["modes"].items():
        for kind, k in ordered(data["kinds"]):
            p = k["phases"]
            t = k["total"]
            calls = (
                f"**{t['aws_calls']:.1f}** = {p['accept']['aws_calls']:.1f} + "
                f"{p['worker']['aws_calls']:.1f} + {p['reconcile']['aws_calls']:.1f}"
            )
            index = sum(t["wcu_index"].values())
            wcu = f"**{t['wcu']:.1f}** = {t['wcu_table']:.1f} + {index:.1f}"
            once = t.get("write_once_bytes", 0) / 1024
            written = f"{t.get('written_bytes', 0) / 1024:.1f} ({once:.1f})"
            registry = k["registry"]
            lines.append(
                f"| {kind} | {mode} | {calls} | {_custody_calls(t['calls']):.2f} | {wcu} "
                f"| {t.get('wcu_small', t['wcu']):.1f} | {t['rcu']:.1f} | {written} "
                f"| {k['invocations'].get('worker_records', 1):.1f} "
                f"| {registry['transactions']:.0f} ({registry.get('bytes', 0):,.0f}) |"
            )
    return "\n".join(lines)


def custody_table(result: dict[str, Any]) -> str:
    """Markdown: KMS and Secrets Manager calls per command (proto), in warm containers (as
    measured: one container throughout) and with a new container for every invocation."""
    warm = result["modes"].get("proto/queries")
    cold = result.get("custody_cold")
    if not warm or not cold:
        return ""
    ops = sorted(
        {
            op
            for data in (warm, cold)
            for k in data["kinds"].values()
            for op in k["total"]["calls"]
            if op.split(".")[0] in ("kms", "secretsmanager", "ssm")
        }
    )
    lines = [
        "| kind | containers | "
        + " | ".join(op.split(".")[1] for op in ops)
        + " | seed reads and puts (DynamoDB) | all AWS calls | WCU | RCU |",
        "|---|---|" + "---|" * len(ops) + "---|---|---|---|",
    ]
    for kind, _ in ordered(warm["kinds"]):
        for label, data in (("warm", warm), ("a new one per invocation", cold)):
            k = data["kinds"].get(kind)
            if not k:
                continue
            t = k["total"]
            seeds = sum(
                n
                for op, n in t["calls"].items()
                if op.startswith("dynamodb.") and op.endswith(SEED_SUFFIX)
            )
            lines.append(
                f"| {kind} | {label} | "
                + " | ".join(f"{t['calls'].get(op, 0.0):.2f}" for op in ops)
                + f" | {seeds:.2f} | {t['aws_calls']:.1f} | {t['wcu']:.1f} | {t['rcu']:.1f} |"
            )
    return "\n".join(lines)


def breakdown(result: dict[str, Any], mode: str = "proto/queries") -> str:
    """Markdown: where the calls and write units of each kind go, by operation and index."""
    if mode not in result["modes"]:
        mode = next(iter(result["modes"]))
    lines = ["| kind | phase | calls by operation | WCU table | WCU by index | RCU |"]
    lines.append("|---|---|---|---|---|---|")
    for kind, k in ordered(result["modes"][mode]["kinds"]):
        for phase in ("accept", "worker", "reconcile"):
            p = k["phases"][phase]
            ops = ", ".join(
                f"{op.split('.')[1]} {n:.1f}" if n >= 0.1 else f"{op.split('.')[1]} {n:.2f}"
                for op, n in p["calls"].items()
                if abs(n) > 1e-9
            )
            idx = ", ".join(f"{i} {n:.1f}" for i, n in p["wcu_index"].items() if abs(n) > 1e-9)
            lines.append(
                f"| {kind} | {phase} | {ops} | {p['wcu_table']:.1f} | {idx or '-'} "
                f"| {p['rcu']:.1f} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.calls", description=__doc__)
    parser.add_argument("--reps", type=int, default=5, help="commands measured per kind")
    parser.add_argument("--batch", type=int, default=100, help="certificates per batch issue")
    parser.add_argument(
        "--format",
        type=formats_of,
        default=FORMATS,
        help="transaction format: plain, proto or both (default)",
    )
    parser.add_argument("--out", type=Path, default=Path("bench/results/calls.json"))
    args = parser.parse_args(argv)
    result = run(args.reps, args.batch, formats=args.format)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1, sort_keys=True))
    print(table(result))
    print()
    print(breakdown(result))
    print()
    print(custody_table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
