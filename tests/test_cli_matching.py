"""`certs matching` against the app over real HTTP: the table, the CSV and the PNG chart of a
consumer whose consumption is partly covered by a claim."""

from __future__ import annotations

import csv

import pytest

from tests.test_cli import (  # noqa: F401 (fixtures)
    available_slices,
    certs,
    http_url,
    issued,
    stack,
    tokens,
)

DAY = ["--start", "2026-06-01T00:00:00Z", "--end", "2026-06-02T00:00:00Z"]


@pytest.fixture
def claimed(certs, tokens):  # noqa: F811
    """Alice consumes 1000 Wh at 10:00 and claims 400 Wh of her 1000 Wh production there."""
    production = issued(certs, tokens, "alice", "571313000000000001", "production", 1000)
    consumption = issued(certs, tokens, "alice", "571313000000000002", "consumption", 1000)
    (p,) = available_slices(certs, tokens["alice"], production).values()
    (c,) = available_slices(certs, tokens["alice"], consumption).values()
    ran = certs(
        "claim",
        "--production",
        f"{production}:{p}",
        "--consumption",
        f"{consumption}:{c}",
        "--quantity",
        "400",
        "--wait",
        token=tokens["alice"],
    )
    assert ran.code == 0, ran


def test_matching_prints_coverage_per_day_with_the_score(certs, tokens, claimed):  # noqa: F811
    ran = certs("matching", *DAY, token=tokens["alice"])
    assert ran.code == 0, ran
    lines = ran.out.splitlines()
    assert lines[0].split() == [
        "DAY",
        "CONSUMPTION_WH",
        "MATCHED_WH",
        "UNMATCHED_WH",
        "COVERAGE",
        "UNCLAIMED_PRODUCTION_WH",
    ]
    assert lines[1].split() == ["2026-06-01T00:00:00Z", "1000", "400", "600", "40.0%", "600"]
    assert lines[2].split() == ["total", "1000", "400", "600", "40.0%", "600"]
    assert "hourly matching score: 40.0%" in lines
    assert "matched by technology T010000, fuel unknown: 400 Wh" in lines


def test_matching_writes_csv_and_a_png_chart(certs, tokens, claimed, tmp_path):  # noqa: F811
    pytest.importorskip("matplotlib")
    table, chart = tmp_path / "m.csv", tmp_path / "coverage.png"
    ran = certs(
        "matching", *DAY, "--granularity", "hour", "--csv", str(table), "--chart", str(chart),
        token=tokens["alice"],
    )  # fmt: skip
    assert ran.code == 0, ran
    rows = list(csv.DictReader(table.open()))
    assert len(rows) == 24
    assert rows[10] == {
        "start": "2026-06-01T10:00:00Z",
        "consumption_wh": "1000",
        "matched_wh": "400",
        "unmatched_wh": "600",
        "coverage_pct": "40.0",
        "unclaimed_production_wh": "600",
    }
    assert rows[0]["coverage_pct"] == ""  # no consumption: no coverage
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"wrote {chart}" in ran.err_lines


def test_matching_refuses_a_backwards_range(certs, tokens):  # noqa: F811
    ran = certs(
        "matching", "--start", "2026-06-02T00:00:00Z", "--end", "2026-06-01T00:00:00Z",
        token=tokens["alice"],
    )  # fmt: skip
    assert ran.code == 1
    assert "end" in ran.err


def test_the_plotting_library_is_a_client_dependency_and_not_in_the_lambda_package():
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    assert "matplotlib" not in (root / "requirements.txt").read_text()
    assert "matplotlib==" in (root / "requirements-dev.txt").read_text()
