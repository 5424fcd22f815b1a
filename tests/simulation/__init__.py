"""Deterministic simulation of the whole service: one seed, one schedule, every invariant.

The real use cases (the HTTP handlers over `accept`, the `Worker`, the `Reconciler`, the
operator's `resolve_by_operator`) run over the in-memory book, a queue that delivers like SQS
FIFO, and the registry simulator, all in virtual time. One `random.Random(seed)` decides
everything: which client sends what, which messages a worker receives, where a process dies,
when the registry goes down, what drifts behind the book's back. The same seed replays the
same run exactly, so every failure prints the one command that reproduces it:

    .venv/bin/python -m tests.simulation --seed 1234 --queries

`run(seed, queries)` returns a `Result` with the figures of the run and the violations found.
"""

from tests.simulation.world import Result, Violation, replay_command, run

__all__ = ["Result", "Violation", "replay_command", "run"]
