"""The deterministic simulation over a fixed set of seeds, and the bugs it found, each kept as a
regression test that names the seed that found it.

A failing seed prints the one command that replays it, e.g.
`.venv/bin/python -m tests.simulation --seed 35 --no-queries --trace`.
"""

from __future__ import annotations

from chalicelib.domain import CommandStatus
from tests.pipeline import Pipeline

# --- the bugs the simulation found ---------------------------------------------------------


def test_a_registry_stream_shows_no_transaction_before_an_earlier_one_settled() -> None:
    """Seed 170 (queries): an injected withdrawal settled at once and showed in the stream
    before the still pending issuance; the reconciler aligned the book with that impossible
    history, removed the certificate's only slice and broke conservation (I3)."""
    p = Pipeline(queries=True, commit_delay_s=600)
    command = p.issue()
    p.run()
    assert p.command(command.command_id).status == CommandStatus.SENT
    p.registry.withdraw(command.certificate_id)
    assert p.registry.stream(command.certificate_id) == []
    p.vclock.advance(600)
    assert len(p.registry.stream(command.certificate_id)) == 2
    p.settle()
    p.check_settled()
