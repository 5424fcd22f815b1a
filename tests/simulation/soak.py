"""Many seeds, in both registry modes, on every core: a progress line and a summary.

`make soak SEEDS=N` runs this (`BOOK=dynamo` over the DynamoDB book on moto, `BOOK=both` each
seed over both books). Each run is independent and deterministic, so the figures of a
soak depend only on the seeds, and every failing run is printed with the command replaying it.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor

from tests.simulation.world import Result, run

SHOWN_FAILURES = 20


def _some(jobs: Sequence[tuple[int, bool, int, str]]) -> list[Result]:
    return [run(*job) for job in jobs]


def _leave_interrupts_to_the_soak() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches every process of the group
    # A worker forks with the soak's SIGTERM handler (an interrupt), which the pool catches as
    # one run's failure and goes on to the next: the worker must die of it instead.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def summarize(results: Sequence[Result], seconds: float) -> tuple[str, Counter]:
    totals: Counter = Counter()
    rules: Counter = Counter()
    exempt: Counter = Counter()
    for result in results:
        totals.update(result.stats)
        exempt.update(result.exempt)
        rules.update(v.rule for v in result.violations)
    faults = sum(n for name, n in totals.items() if name.startswith("faults."))
    timeouts = sum(n for name, n in totals.items() if name.startswith("timeouts."))
    failed = [r for r in results if r.violations]
    seeds = len({r.seed for r in results})
    books = ", ".join(sorted({r.book for r in results}))
    lines = [
        f"book: {books}  seeds: {seeds}  runs: {len(results)}  ({seconds:.0f} s)",
        f"commands: {totals['commands']}  (requests {totals['api.requests']}, "
        f"retries after no answer {totals['api.retries']} (of which sent while the first"
        f" was still running {totals['api.overlapping_retries']}; told the first was still at"
        f" work {totals['api.told_to_wait']}), reads {totals['reads']})",
        f"crashes injected: {totals['crashes']}  (api {totals['crashes.api']}, worker "
        f"{totals['crashes.worker']}, reconciler {totals['crashes.reconciler']}); "
        f"killed at their timeout: {timeouts}",
        f"faults injected: {faults}  ("
        + ", ".join(
            f"{name.removeprefix('faults.')} {n}"
            for name, n in sorted(totals.items())
            if name.startswith("faults.")
        )
        + ")",
        f"pauses (other invocations run inside one): {totals['pauses']}; deliveries: "
        f"{totals['deliveries']}; reconciler passes: {totals['reconciler.passes']} (of one "
        f"shard {totals['reconciler.shard_passes']}); "
        f"operator resolutions: {totals['operator.resolutions']}; dead-lettered: "
        f"{totals['queue.dead_lettered']}; stale receipt handles: {totals['queue.stale_delete']}"
        f"; claims that stranded an allocation: {totals['claims.stranded']}; unclaims "
        f"committed {totals['unclaims.committed']}, rejected {totals['unclaims.rejected']}",
        f"federated runs (two registries): {totals['federated_runs']}; registry faults aimed "
        f"at each: {_aimed(totals)}; claims committed across the two: "
        f"{totals['claims.across_registries']}",
        f"violations: {sum(rules.values())} in {len(failed)} run(s)"
        + (f"  by rule: {dict(sorted(rules.items()))}" if rules else ""),
    ]
    for reason, n in sorted(exempt.items()):
        lines.append(f"not checked: {reason} x{n}")
    for result in failed[:SHOWN_FAILURES]:
        lines.append(result.report())
    return "\n".join(lines), totals


def _aimed(totals: Counter) -> str:
    prefix = "registry_faults_aimed_at."
    aimed = {k.removeprefix(prefix): n for k, n in totals.items() if k.startswith(prefix)}
    return ", ".join(f"{name} {n}" for name, n in sorted(aimed.items())) or "none"


def soak(
    seeds: Iterable[int],
    modes: Sequence[bool],
    steps: int,
    jobs: int | None = None,
    books: Sequence[str] = ("memory",),
) -> int:
    jobs_list = [
        (seed, queries, steps, book) for seed in seeds for queries in modes for book in books
    ]
    jobs = jobs or os.cpu_count() or 1
    started = time.monotonic()
    results: list[Result] = []
    violations = 0
    tty = sys.stderr.isatty()
    # SIGTERM as Ctrl-C: a soak stopped early still prints the summary of the runs it finished.
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    pool = ProcessPoolExecutor(max_workers=jobs, initializer=_leave_interrupts_to_the_soak)
    stopped = False
    # Submitted by hand, not by pool.map: its iterator cancels the runs not started when an
    # interrupt goes through it, and the pool, its workers gone, then marks those same runs
    # broken, which raised in the pool's thread on Python 3.11 (InvalidStateError).
    chunks = [jobs_list[i : i + 4] for i in range(0, len(jobs_list), 4)]
    futures = [pool.submit(_some, chunk) for chunk in chunks]
    runs = (result for future in futures for result in future.result())
    try:
        for done, result in enumerate(runs, start=1):
            results.append(result)
            violations += len(result.violations)
            if result.violations:
                print(("\n" if tty else "") + result.report(), file=sys.stderr)
            if tty or done % 50 == 0 or done == len(jobs_list):
                rate = done / max(time.monotonic() - started, 1e-9)
                line = (
                    f"[{done}/{len(jobs_list)}] seed {result.seed} "
                    f"{'queries' if result.queries else 'no-queries'} {result.book}  "
                    f"violations {violations}  {rate:.1f} runs/s"
                )
                print(("\r" + line) if tty else line, end="" if tty else "\n", file=sys.stderr)
    except KeyboardInterrupt:
        stopped = True
        for worker in multiprocessing.active_children():
            worker.terminate()  # the runs under way are not waited for, nor counted
        print(("\n" if tty else "") + _stopped_early(results, jobs_list), file=sys.stderr)
    finally:
        pool.shutdown(wait=True)  # its workers are done or terminated: this returns at once
        signal.signal(signal.SIGTERM, previous)
    if tty:
        print(file=sys.stderr)
    summary, _ = summarize(results, time.monotonic() - started)
    print(summary)
    return 1 if violations else 130 if stopped else 0


def _stopped_early(results: Sequence[Result], jobs: Sequence[tuple[int, bool, int, str]]) -> str:
    """Which seeds a stopped soak finished: results come in the order of the jobs, so they are
    every run of the seeds before the first one missing, and the next soak can start there."""
    if len(results) == len(jobs):
        return "stopped after its last run"
    first_missing = jobs[len(results)][0]
    first = jobs[0][0]
    finished = f"seeds {first}-{first_missing - 1}" if first_missing > first else "no seed"
    return (
        f"stopped early: {len(results)} of {len(jobs)} runs; {finished} complete in every "
        f"mode and book; go on with --start {first_missing}"
    )
