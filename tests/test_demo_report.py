"""`make demo`'s closing report, from what the demo saw: the faults it injected and how many
calls each hit, commands counted by kind (a transfer is one transfer, whatever it takes in the
registry), and a throughput that says what it measures."""

from __future__ import annotations

from devstack.demo import report_lines


def view(kind: str, steps: int, status: str = "COMMITTED") -> dict:
    return {"kind": kind, "status": status, "steps": steps}


def test_the_report_lists_each_fault_with_the_calls_it_hit_and_counts_transfers_as_such():
    views = {
        **{f"i{n}": view("issue", 1) for n in range(12)},
        **{f"t{n}": view("transfer", 2) for n in range(5)},  # a part: cut, then transferred
        "t-whole": view("transfer", 1),
        **{f"c{n}": view("claim", 2) for n in range(6)},
        "r": view("claim", 2, "REJECTED"),
    }
    lines = report_lines(
        views,
        resolutions={"by the reconciler": 1},
        faults={"calls": 90, "outage": 7, "ambiguous": 3, "lost": 0, "oversized": 0},
        settings={"latency_ms": 20.0, "ambiguous_rate": 0.03, "outage_s": 5.0},
        elapsed_s=30.0,
        workers=2,
    )
    text = "\n".join(lines)
    assert "  faults injected" in lines
    assert "    registry latency 20 ms     every call (90 calls)" in lines
    assert "    registry down for 5 s      7 calls refused (retried later)" in lines
    assert "    applied, then timed out    3 calls (3% of sends): each left a command in doubt" in (
        lines
    )
    assert "    transfers                  6 (COMMITTED 6)" in lines
    assert "    claims                     7 (COMMITTED 6, REJECTED 1)" in lines
    assert "    issues                     12 (COMMITTED 12)" in lines
    # registry transactions are counted apart from the commands
    assert "  registry transactions 37 for 25 commands" in text
    # throughput in context
    assert "0.8 commands/s" in text
    assert "2 queue workers in one Python process" in text
    assert "not the deployed service's capacity" in text
    assert "bench/README.md" in text


def test_the_demo_across_two_registries_keeps_one_committing_while_the_other_is_down() -> None:
    """Issue 17: `make demo ARGS="--registries 2"`: owners in DK1 and DK2, claims across the
    two registries, dk1 down for a window while dk2 keeps committing; every invariant is
    checked against each registry's log, and each transaction is in its own registry's."""
    import os
    import re
    import subprocess
    import sys
    from pathlib import Path

    # the demo's stack and its tokens both take the development secret, whatever the tests set
    env = {k: v for k, v in os.environ.items() if k != "CERTS_JWT_SECRET"}
    done = subprocess.run(
        [sys.executable, "-m", "devstack.demo", "--registries", "2", "--hours", "2"],
        cwd=Path(__file__).resolve().parent.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "all invariants hold" in done.stdout
    assert re.search(r"each in its registry\s+ok", done.stdout), done.stdout
    kept = re.search(r"while dk1 was down, dk2 committed (\d+) transactions", done.stdout)
    assert kept and int(kept.group(1)) > 0, done.stdout
    claims = re.search(r"claims\s+(\d+) \(COMMITTED (\d+)\)", done.stdout)
    assert claims and claims.group(1) == claims.group(2) and int(claims.group(1)) > 0
