"""Section 5: where the time of the hot path goes (pyinstrument).

The in-process service of bench/inprocess.py (HTTP routes through chalice.test.Client, the
worker fed by the devstack poller, moto in-process, the registry simulator in queries mode with
no commit delay) runs `n` issues and then `n` whole-slice transfers of those certificates
(accept to COMMITTED) under pyinstrument. Every sample is charged to the innermost frame that
belongs to a known owner, so the standard library is charged to whoever called it (json in
botocore's serializer is botocore; json in moto's responses is moto):

- ours: chalicelib/ (except the registry simulator) and app.py;
- pydantic: model validation and dumping our code asks for;
- botocore/boto3: request serialization, response parsing, signing, event hooks, retries;
- moto: the AWS stand-in itself (not there on AWS);
- chalice: the test client's routing (API Gateway and the Lambda runtime on AWS);
- registry simulator, jwt, harness (the poller and this bench), other.

    .venv/bin/python -m bench.profile [--commands 60] [--out bench/results/profile.json]
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

ROOT = str(Path(__file__).resolve().parent.parent) + "/"
OWNERS = (  # (bucket, path fragment), the first match wins
    ("registry simulator", ROOT + "chalicelib/registry/sandbox/simulator.py"),
    ("harness", ROOT + "devstack/poller.py"),
    ("harness", ROOT + "bench/"),
    ("ours", ROOT + "chalicelib/"),
    ("ours", ROOT + "app.py"),
    ("moto", "/moto/"),
    ("moto", "/werkzeug/"),
    ("moto", "/responses/"),
    ("botocore/boto3", "/botocore/"),
    ("botocore/boto3", "/boto3/"),
    ("botocore/boto3", "/s3transfer/"),
    ("pydantic", "/pydantic/"),
    ("pydantic", "/pydantic_core/"),
    ("chalice", "/chalice/"),
    ("jwt", "/jwt/"),
    ("jwt", "/cryptography/"),
)


def owner_of(path: str | None) -> str | None:
    if not path:
        return None
    for bucket, fragment in OWNERS:
        if fragment in path:
            return bucket
    return None


def attribute(root: Any) -> tuple[Counter, Counter, Counter]:
    """Self time by owner; inclusive and self time of our own functions."""
    by_owner: Counter = Counter()
    ours_total: Counter = Counter()
    ours_self: Counter = Counter()

    def walk(frame: Any, inherited: str, our_stack: frozenset, our_frame: str | None) -> None:
        known = owner_of(frame.file_path)
        own = known or inherited
        self_time = frame.time - sum(c.time for c in frame.children)
        by_owner[own] += self_time
        if known == "ours":
            our_frame = f"{frame.function} ({frame.file_path.removeprefix(ROOT)}:{frame.line_no})"
            if our_frame not in our_stack:  # recursion counts once
                ours_total[our_frame] += frame.time
            our_stack = our_stack | {our_frame}
        if own == "ours" and our_frame:  # ours, or the standard library it calls directly
            ours_self[our_frame] += self_time
        for child in frame.children:
            walk(child, own, our_stack, our_frame if own == "ours" else None)

    walk(root, "other", frozenset(), None)
    return by_owner, ours_total, ours_self


class CallClock:
    """CPU time spent inside AWS SDK calls (serialization, moto, parsing), per phase."""

    def __init__(self) -> None:
        self.inside: Counter = Counter()
        self.calls: Counter = Counter()
        self.by_operation: Counter = Counter()  # CPU seconds inside calls, by operation
        self.operations: Counter = Counter()
        self.phase = "setup"
        self._started: dict[int, float] = {}

    def attach(self, session: Any) -> None:
        session.events.register("provide-client-params", self._before)
        session.events.register("after-call", self._after)

    def _before(self, context: dict, **_: Any) -> None:
        context["bench_cpu"] = time.thread_time()  # the call's own thread: calls may overlap

    def _after(self, context: dict, model: Any, **_: Any) -> None:
        if "bench_cpu" in context and self.phase != "setup":
            spent = time.thread_time() - context["bench_cpu"]
            self.inside[self.phase] += spent
            self.calls[self.phase] += 1
            name = f"{model.service_model.service_name}.{model.name}"
            self.by_operation[name] += spent
            self.operations[name] += 1


def _workload(h: Any, commands: int, clock: CallClock | None = None) -> dict[str, float]:
    """`commands` issues, then as many whole transfers; CPU seconds of each phase."""
    cpu: Counter = Counter()

    def phase(name: str, body: Callable[[], Any]) -> Any:
        if clock:
            clock.phase = name
        started = time.process_time()
        out = body()
        cpu[name] += time.process_time() - started
        if clock:
            clock.phase = "setup"
        return out

    issued = phase("accept", lambda: [h.issue()["certificate_id"] for _ in range(commands)])
    phase("worker", h.drain)
    slices = [(c, h.first_slice(c)) for c in issued]
    phase("accept", lambda: [h.transfer(c, s, 1000) for c, s in slices])
    phase("worker", h.drain)
    return dict(cpu)


def run(commands: int = 60, log: Callable = print) -> dict[str, Any]:
    from pyinstrument import Profiler

    clock = CallClock()
    with harness(queries=True, before_build=clock.attach, esm_session_hook=clock.attach) as h:
        # pyinstrument samples the thread that starts it: the worker's groups one after
        # another, so that all its work runs on this thread (its CPU per command is the same).
        h.services.settings = h.services.settings.model_copy(update={"worker_concurrency": 1})
        # Warm up: imports, first calls, the table's first items.
        for _ in range(3):
            h.issue()
        h.drain()
        # Unprofiled: CPU per phase, and how much of it is inside AWS SDK calls.
        started = time.perf_counter()
        cpu = _workload(h, commands, clock)
        plain_wall = time.perf_counter() - started
        # Profiled: where that time goes.
        profiler = Profiler(interval=0.001)
        profiler.start()
        started = time.perf_counter()
        _workload(h, commands)
        wall = time.perf_counter() - started
        profiler.stop()
    root = profiler.last_session.root_frame()
    by_owner, ours_total, ours_self = attribute(root)
    total = sum(by_owner.values())
    n = 2 * commands
    moto_share = by_owner["moto"] / max(by_owner["moto"] + by_owner["botocore/boto3"], 1e-9)
    phases = {}
    for name in ("accept", "worker"):
        inside = clock.inside[name]
        phases[name] = {
            "cpu_ms": 1000 * cpu[name] / n,
            "in_aws_calls_ms": 1000 * inside / n,
            "aws_calls": clock.calls[name] / n,
            "outside_calls_ms": 1000 * (cpu[name] - inside) / n,
            # What a Lambda would spend on CPU: all but moto (the profile's moto share of
            # the time inside calls).
            "without_moto_ms": 1000 * (cpu[name] - moto_share * inside) / n,
        }
    result = {
        "commands": n,
        "unprofiled": {
            "wall_ms_per_command": 1000 * plain_wall / n,
            "cpu_ms_per_command": 1000 * sum(cpu.values()) / n,
            "phases": phases,
        },
        "profiled_wall_ms_per_command": 1000 * wall / n,
        "moto_share_of_aws_calls": moto_share,
        "cpu_ms_per_call": {
            op: {
                "calls_per_command": clock.operations[op] / n,
                "cpu_ms_per_call": 1000 * clock.by_operation[op] / clock.operations[op],
            }
            for op, _ in clock.by_operation.most_common()
        },
        "ms_per_command": {k: 1000 * v / n for k, v in by_owner.most_common()},
        "share": {k: v / total for k, v in by_owner.most_common()},
        "ours_inclusive_ms_per_command": {k: 1000 * v / n for k, v in ours_total.most_common(15)},
        "book_operations_ms_per_command": {
            k: 1000 * v / n for k, v in ours_total.most_common() if "chalicelib/adapters/" in k
        },
        "ours_self_ms_per_command": {k: 1000 * v / n for k, v in ours_self.most_common(10)},
        "text": profiler.output_text(unicode=False, color=False, show_all=False),
    }
    log(
        f"profile: {n} commands, {result['unprofiled']['cpu_ms_per_command']:.1f} ms CPU each "
        "in one process; profiled: "
        + ", ".join(f"{k} {v:.0%}" for k, v in result["share"].items() if v >= 0.01)
    )
    return result


def table(result: dict[str, Any]) -> str:
    lines = ["| where (profiled, wall) | ms per command | share |", "|---|---|---|"]
    for k, v in sorted(result["ms_per_command"].items(), key=lambda kv: -kv[1]):
        lines.append(f"| {k} | {v:.1f} | {result['share'][k]:.0%} |")
    return "\n".join(lines)


def cpu_table(result: dict[str, Any]) -> str:
    lines = [
        "| phase (unprofiled) | CPU ms per command | of which in AWS SDK calls | calls "
        "| outside calls | all but moto (Lambda CPU estimate) |",
        "|---|---|---|---|---|---|",
    ]
    for name, p in result["unprofiled"]["phases"].items():
        lines.append(
            f"| {name} | {p['cpu_ms']:.1f} | {p['in_aws_calls_ms']:.1f} | {p['aws_calls']:.1f} "
            f"| {p['outside_calls_ms']:.1f} | {p['without_moto_ms']:.1f} |"
        )
    return "\n".join(lines)


def operations_table(result: dict[str, Any]) -> str:
    lines = [
        "| AWS operation (in-process moto) | calls per command | CPU ms per call (SDK + moto) |",
        "|---|---|---|",
    ]
    rows = sorted(result["cpu_ms_per_call"].items(), key=lambda kv: -kv[1]["calls_per_command"])
    for op, v in rows:
        lines.append(f"| {op} | {v['calls_per_command']:.2f} | {v['cpu_ms_per_call']:.1f} |")
    return "\n".join(lines)


def hot_functions(result: dict[str, Any], n: int = 8) -> str:
    """Our book and queue operations by inclusive time (with the AWS calls they make)."""
    rows = sorted(
        (
            (k, v)
            for k, v in result["book_operations_ms_per_command"].items()
            if not k.startswith(("_call ", "_get ", "_batch_get ", "<"))
        ),
        key=lambda kv: -kv[1],
    )
    lines = [
        "| our book / queue operation (inclusive: with its AWS calls) | ms per command |",
        "|---|---|",
    ]
    for k, v in rows[:n]:
        lines.append(f"| `{k}` | {v:.1f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__)
    parser.add_argument("--commands", type=int, default=60, help="issues (and as many transfers)")
    parser.add_argument("--out", type=Path, default=Path("bench/results/profile.json"))
    args = parser.parse_args(argv)
    result = run(args.commands)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    text = result.pop("text")
    args.out.write_text(json.dumps(result, indent=1))
    args.out.with_suffix(".txt").write_text(text)
    print(cpu_table(result))
    print()
    print(operations_table(result))
    print()
    print(table(result))
    print()
    print(hot_functions(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
