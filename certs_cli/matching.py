"""`certs matching`: the hourly matching report as a table, a CSV file and a PNG chart.

The chart answers two questions at a glance: how much of each day's consumption was matched
by claimed production (bars split into matched and unmatched, with the day's coverage written
on top), and at which hours of the day the matching falls short (the same split over the hours
of the day, all days together, with the production you still hold unclaimed beside it).
matplotlib is a development dependency of the client only (requirements-dev.txt): the Lambda
package never carries it.
"""

from __future__ import annotations

import csv
import io
from collections import defaultdict
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO

COLUMNS = (
    "start",
    "consumption_wh",
    "matched_wh",
    "unmatched_wh",
    "coverage_pct",
    "unclaimed_production_wh",
)
MATCHED, UNMATCHED, UNCLAIMED = "#2e8b57", "#d9d9d9", "#e8a33d"


def pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}%"


def table_rows(report: dict[str, Any]) -> list[tuple[Any, ...]]:
    rows = [
        (
            b["start"],
            b["consumption_wh"],
            b["matched_wh"],
            b["unmatched_wh"],
            pct(b.get("coverage_pct")),
            b["unclaimed_production_wh"],
        )
        for b in report["buckets"]
    ]
    t = report["total"]
    rows.append(
        (
            "total",
            t["consumption_wh"],
            t["matched_wh"],
            t["unmatched_wh"],
            pct(t.get("coverage_pct")),
            t["unclaimed_production_wh"],
        )
    )
    return rows


def write_csv(report: dict[str, Any], stream: TextIO) -> None:
    writer = csv.writer(stream, lineterminator="\n")
    writer.writerow(COLUMNS)
    for b in report["buckets"]:
        writer.writerow([b.get(c, "") if b.get(c) is not None else "" for c in COLUMNS])


def csv_text(report: dict[str, Any]) -> str:
    out = io.StringIO()
    write_csv(report, out)
    return out.getvalue()


def _parse(moment: str) -> datetime:
    return datetime.fromisoformat(moment.replace("Z", "+00:00"))


def profiles(hourly: dict[str, Any]) -> tuple[list[tuple], list[tuple]]:
    """From an hourly report: per day (day, consumption, matched, unclaimed) and per hour of
    the day (hour 0-23, consumption, matched, unclaimed), in Wh."""
    days: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
    hours = {h: [0, 0, 0] for h in range(24)}
    for b in hourly["buckets"]:
        moment = _parse(b["start"])
        for sums in (days[moment.date().isoformat()], hours[moment.hour]):
            sums[0] += b["consumption_wh"]
            sums[1] += b["matched_wh"]
            sums[2] += b["unclaimed_production_wh"]
    return (
        [(d, *v) for d, v in sorted(days.items())],
        [(h, *v) for h, v in sorted(hours.items())],
    )


def _scale(values: list[int]) -> tuple[float, str]:
    peak = max(values, default=0)
    if peak >= 10_000_000:
        return 1e6, "MWh"
    if peak >= 10_000:
        return 1e3, "kWh"
    return 1.0, "Wh"


def draw_chart(hourly: dict[str, Any], path: Path) -> None:
    """Two panels from an hourly report: daily coverage, and the hour-of-day profile."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display is needed, nor wanted
    import matplotlib.pyplot as plt

    days, hours = profiles(hourly)
    total = hourly["total"]
    score = hourly.get("hourly_matching_score_pct")
    figure, (top, bottom) = plt.subplots(
        2, 1, figsize=(11, 9), gridspec_kw={"height_ratios": [1, 1], "hspace": 0.75}
    )
    start, end = _parse(hourly["start"]), _parse(hourly["end"])
    figure.suptitle(
        f"{pct(score)} of your consumption matched hour by hour",
        fontsize=15,
        fontweight="bold",
    )
    figure.text(
        0.5,
        0.895,
        f"{start:%Y-%m-%d %H:%M} to {end:%Y-%m-%d %H:%M} UTC\nConsumption "
        f"{total['consumption_wh']:,} Wh: matched {total['matched_wh']:,} Wh, unmatched "
        f"{total['unmatched_wh']:,} Wh.  Production you hold unclaimed: "
        f"{total['unclaimed_production_wh']:,} Wh",
        ha="center",
        fontsize=10,
        color="#444444",
    )

    # Daily coverage: consumption split into matched and unmatched, coverage on top.
    unit, name = _scale([d[1] for d in days])
    labels = [d[0][5:] for d in days]  # MM-DD
    matched = [d[2] / unit for d in days]
    unmatched = [(d[1] - d[2]) / unit for d in days]
    x = range(len(days))
    top.bar(x, matched, color=MATCHED, label="matched by claimed production")
    top.bar(x, unmatched, bottom=matched, color=UNMATCHED, label="unmatched consumption")
    for i, d in enumerate(days):
        if d[1]:
            top.annotate(
                f"{100 * d[2] / d[1]:.0f}%",
                (i, d[1] / unit),
                xytext=(0, 3),
                textcoords="offset points",
                ha="center",
                fontsize=9 if len(days) <= 31 else 6,
            )
    top.set_title("Daily coverage of consumption (percent matched above each bar)", loc="left")
    top.set_ylabel(f"consumption ({name})")
    top.set_xticks(list(x), labels, rotation=90 if len(days) > 14 else 0, fontsize=8)
    top.set_xlabel("day (UTC)")
    top.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2, frameon=False, fontsize=9)
    top.margins(y=0.15)

    # Hour of day: where the matching falls short, and the unclaimed production beside it.
    unit, name = _scale([max(h[1], h[3]) for h in hours])
    hx = [h[0] for h in hours]
    h_matched = [h[2] / unit for h in hours]
    h_unmatched = [(h[1] - h[2]) / unit for h in hours]
    width = 0.4
    bottom.bar(
        [x - width / 2 for x in hx], h_matched, width, color=MATCHED, label="matched consumption"
    )
    bottom.bar(
        [x - width / 2 for x in hx],
        h_unmatched,
        width,
        bottom=h_matched,
        color=UNMATCHED,
        label="unmatched consumption",
    )
    bottom.bar(
        [x + width / 2 for x in hx],
        [h[3] / unit for h in hours],
        width,
        color=UNCLAIMED,
        label="production you hold, unclaimed",
    )
    bottom.set_title("Hour of day profile, all days together", loc="left")
    bottom.set_xticks(hx, [f"{h:02d}" for h in hx], fontsize=8)
    bottom.set_xlabel("hour of day (UTC)")
    bottom.set_ylabel(name)
    bottom.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=3, frameon=False, fontsize=9)
    for axis in (top, bottom):
        axis.spines[["top", "right"]].set_visible(False)
        axis.grid(axis="y", color="#eeeeee")
        axis.set_axisbelow(True)
    figure.subplots_adjust(left=0.08, right=0.97, top=0.85, bottom=0.12)
    figure.savefig(path, dpi=110)
    plt.close(figure)
