"""A worker invocation's FIFO groups side by side: what it saves of the wall time Lambda bills.

The cost model (bench.cost) divides a worker's waits (AWS calls, the registry's status
queries) by `worker_overlap`, the groups of a batch the worker works side by side
(CERTS_WORKER_CONCURRENCY), and leaves its CPU and each round's send undivided. This checks
that division on the code that runs: the service in one process over moto (bench.inprocess),
with the latencies the model assumes injected as sleeps (each DynamoDB call 6 ms, SQS 12 ms,
KMS 8 ms, a status query 50 ms, a send 0.5 s), a batch of ten commands of one kind on ten
certificates, worked one record after another (concurrency 1) and side by side (10). Each
invocation's wall time and CPU time (this process; moto's CPU is in it, and does not overlap:
one interpreter) are summed per command.

    .venv/bin/python -m bench.overlap [--kinds issue,transfer_whole,claim] [--batches 3]

Prints a table and writes bench/results/overlap.json; bench/README.md quotes it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.inprocess import harness

RESULTS = Path(__file__).resolve().parent / "results" / "overlap.json"
LATENCY_S = {"dynamodb": 0.006, "sqs": 0.012, "kms": 0.008, "secretsmanager": 0.020}
STATUS_S, SEND_S = 0.05, 0.5
KINDS = ("issue", "transfer_whole", "claim")


class Latency:
    """Sleeps before each AWS call of the service's session, as long as the model assumes."""

    def __init__(self) -> None:
        self.slept = 0.0
        self.calls: Counter = Counter()

    def attach(self, session: Any) -> None:
        session.events.register("before-call", self._wait)

    def _wait(self, model: Any, **_: Any) -> None:
        service = model.service_model.service_name
        pause = LATENCY_S.get(service, 0.0)
        self.calls[service] += 1
        self.slept += pause
        time.sleep(pause)


def _slow_registry(registry: Any) -> None:
    send, status = registry.send, registry.status

    def slow_send(transactions):
        time.sleep(SEND_S)
        return send(transactions)

    def slow_status(transaction_id):
        time.sleep(STATUS_S)
        return status(transaction_id)

    registry.send, registry.status = slow_send, slow_status


def _timed_worker(h: Any, into: dict[str, float]) -> None:
    worker = h.app_module.worker

    def timed(event: dict, context: Any) -> dict:
        wall, cpu = time.perf_counter(), time.process_time()
        try:
            return worker(event, context)
        finally:
            into["wall_s"] += time.perf_counter() - wall
            into["cpu_s"] += time.process_time() - cpu

    h.app_module.worker = timed


def _prepare(h: Any, kind: str, n: int) -> Callable[[], list[str]]:
    """What the kind needs committed first; returns the call that accepts the n commands."""
    if kind == "issue":
        return lambda: [h.issue()["command_id"] for _ in range(n)]
    certs = [h.issue()["certificate_id"] for _ in range(n)]
    if kind == "transfer_whole":
        h.drain()
        slices = [(c, h.first_slice(c)) for c in certs]
        return lambda: [h.transfer(c, s, 1000)["command_id"] for c, s in slices]
    if kind == "claim":
        uses = [h.issue(type_="consumption")["certificate_id"] for _ in range(n)]
        h.drain()
        pairs = [
            ((p, h.first_slice(p)), (c, h.first_slice(c))) for p, c in zip(certs, uses, strict=True)
        ]
        return lambda: [h.claim(p, c, 1000)["command_id"] for p, c in pairs]
    raise ValueError(f"unknown kind {kind!r}")


def measure(kinds: tuple[str, ...], batches: int, log: Callable = print) -> dict[str, Any]:
    latency = Latency()
    rows = []
    with harness(queries=True, before_build=latency.attach) as h:
        _slow_registry(h.registry)
        spent = {"wall_s": 0.0, "cpu_s": 0.0}
        _timed_worker(h, spent)
        for kind in kinds:
            for threads in (1, 10):
                h.services.settings = h.services.settings.model_copy(
                    update={"worker_concurrency": threads}
                )
                totals = Counter()
                for _ in range(batches):
                    accept = _prepare(h, kind, 10)
                    h.drain()  # what the kind needs, committed; not measured
                    spent.update(wall_s=0.0, cpu_s=0.0)
                    slept, calls = latency.slept, sum(latency.calls.values())
                    sends = h.registry.calls["send"]
                    ids = accept()
                    accepted = latency.slept - slept
                    h.drain()
                    assert {h.status(c) for c in ids} == {"COMMITTED"}, kind
                    totals["commands"] += len(ids)
                    totals["wall_s"] += spent["wall_s"]
                    totals["cpu_s"] += spent["cpu_s"]
                    totals["aws_waits_s"] += latency.slept - slept - accepted
                    totals["aws_calls"] += sum(latency.calls.values()) - calls
                    totals["sends_s"] += (h.registry.calls["send"] - sends) * SEND_S
                n = totals["commands"]
                row = {
                    "kind": kind,
                    "worker_concurrency": threads,
                    "commands": n,
                    "worker_wall_ms": 1000 * totals["wall_s"] / n,
                    "worker_cpu_ms": 1000 * totals["cpu_s"] / n,
                    # the worker's AWS sleeps only (accept's are left out above)
                    "worker_aws_waits_ms": 1000 * totals["aws_waits_s"] / n,
                    # the registry's sends: one per round, shared by the batch already
                    "worker_sends_ms": 1000 * totals["sends_s"] / n,
                }
                # what is left of the wall: the waits that side by side can overlap
                row["worker_other_waits_ms"] = (
                    row["worker_wall_ms"] - row["worker_cpu_ms"] - row["worker_sends_ms"]
                )
                rows.append(row)
                log(
                    f"overlap: {kind} x{n}, concurrency {threads}: worker wall "
                    f"{row['worker_wall_ms']:.0f} ms per command, CPU {row['worker_cpu_ms']:.0f} ms"
                )
    by = {(r["kind"], r["worker_concurrency"]): r for r in rows}
    summary = []
    for kind in kinds:
        one, ten = by[(kind, 1)], by[(kind, 10)]
        summary.append(
            {
                "kind": kind,
                "wall_one_after_another_ms": one["worker_wall_ms"],
                "wall_side_by_side_ms": ten["worker_wall_ms"],
                "ratio": ten["worker_wall_ms"] / one["worker_wall_ms"],
                # the wall beyond CPU and sends: the waits, how many times fewer side by side
                "waits_overlap": one["worker_other_waits_ms"]
                / max(ten["worker_other_waits_ms"], 1e-9),
            }
        )
    return {
        "rows": rows,
        "summary": summary,
        "latency_s": LATENCY_S,
        "status_s": STATUS_S,
        "send_s": SEND_S,
    }


def table(result: dict[str, Any]) -> str:
    lines = [
        "| kind | worker wall per command, one after another / side by side (ms) | ratio "
        "| CPU per command (ms, moto's included) | sends per command (ms) "
        "| other waits, one after another / side by side (ms) | overlap |",
        "|---|---|---|---|---|---|---|",
    ]
    rows = {(r["kind"], r["worker_concurrency"]): r for r in result["rows"]}
    for s in result["summary"]:
        one, ten = rows[(s["kind"], 1)], rows[(s["kind"], 10)]
        lines.append(
            f"| {s['kind']} | {s['wall_one_after_another_ms']:.0f} / "
            f"{s['wall_side_by_side_ms']:.0f} | {s['ratio']:.2f} | "
            f"{one['worker_cpu_ms']:.0f} / {ten['worker_cpu_ms']:.0f} | "
            f"{one['worker_sends_ms']:.0f} / {ten['worker_sends_ms']:.0f} | "
            f"{one['worker_other_waits_ms']:.0f} / {ten['worker_other_waits_ms']:.0f} | "
            f"{s['waits_overlap']:.1f}x |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kinds", default=",".join(KINDS))
    parser.add_argument("--batches", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    result = measure(tuple(args.kinds.split(",")), args.batches)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
