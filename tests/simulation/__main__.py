"""Replay one seed, or soak many:

.venv/bin/python -m tests.simulation --seed 1234 --queries      # one run, its violations
.venv/bin/python -m tests.simulation --seeds 500                # a soak: both registry modes
.venv/bin/python -m tests.simulation --seeds 500 --book dynamo  # over the DynamoDB book (moto)
"""

from __future__ import annotations

import argparse
import sys

from tests.simulation.soak import soak
from tests.simulation.world import BOOKS, DEFAULT_STEPS, SCHEDULES, run, trace


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.simulation", description=__doc__)
    parser.add_argument("--seed", type=int, help="replay this one seed")
    parser.add_argument(
        "--queries",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="registry mode (default: both for a soak, no queries for --seed)",
    )
    parser.add_argument("--steps", type=int, default=DEFAULT_STEPS, help="steps per run")
    parser.add_argument("--seeds", type=int, default=100, help="a soak: how many seeds")
    parser.add_argument("--start", type=int, default=0, help="a soak: the first seed")
    parser.add_argument(
        "--book",
        choices=[*BOOKS, "both"],
        default="memory",
        help="the book the use cases run over: in memory, DynamoDB on moto, or both",
    )
    parser.add_argument(
        "--schedule",
        choices=SCHEDULES,
        default="seed",
        help="the reconciler's schedule: drawn from the seed, whole-book passes, or per shard",
    )
    parser.add_argument("--verbose", action="store_true", help="print the run's figures")
    parser.add_argument("--trace", action="store_true", help="print all that happened in it")
    args = parser.parse_args(argv)
    books = list(BOOKS) if args.book == "both" else [args.book]
    if args.seed is not None:
        failed = False
        for book in books:
            if args.trace:
                result, lines = trace(
                    args.seed, bool(args.queries), args.steps, book, args.schedule
                )
                print("\n".join(lines))
            else:
                result = run(args.seed, bool(args.queries), args.steps, book, args.schedule)
            print(result.report())
            if args.verbose:
                for name, value in sorted(result.stats.items()):
                    print(f"  {name} = {value}")
                for reason, n in sorted(result.exempt.items()):
                    print(f"  exempt: {reason} x{n}")
            failed = failed or bool(result.violations)
        return 1 if failed else 0
    modes = [False, True] if args.queries is None else [args.queries]
    return soak(range(args.start, args.start + args.seeds), modes, args.steps, books=books)


if __name__ == "__main__":
    sys.exit(main())
