"""Metering data in CSV, read into the bodies of `POST /v1/certificates/batch`.

Columns: type,gsrn,grid_area,start,end,quantity_wh,owner and any number of `attr:<key>`.
Only the file's shape is checked here (its columns); every value goes to the API as written,
so that the API, which owns the rules, refuses a bad row with its own reason. An empty
`attr:` cell means that row has no such attribute.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Any

COLUMNS = ("type", "gsrn", "grid_area", "start", "end", "quantity_wh", "owner")
ATTRIBUTE_PREFIX = "attr:"
CHUNK = 100  # the most certificates one batch request takes (API.md)


class BadFile(Exception):
    """The file cannot be read as metering data at all (a usage error, not a refused row)."""


@dataclass(frozen=True)
class Row:
    line: int  # in the file, header included, so that people can find the row
    certificate: dict[str, Any]


def read(path: Path) -> list[Row]:
    try:
        with path.open(newline="", encoding="utf-8-sig") as file:
            reader = csv.DictReader(file)
            _check_header(reader.fieldnames, path)
            rows = [Row(reader.line_num, _certificate(raw)) for raw in reader]
    except OSError as exc:
        raise BadFile(f"cannot read {path}: {exc.strerror}") from None
    except (csv.Error, UnicodeDecodeError) as exc:
        raise BadFile(f"{path} is not a readable CSV file: {exc}") from None
    if not rows:
        raise BadFile(f"{path} has a header but no rows")
    return rows


def chunks(rows: list[Row], size: int = CHUNK) -> list[list[Row]]:
    return [rows[i : i + size] for i in range(0, len(rows), size)]


def _check_header(names: list[str] | None, path: Path) -> None:
    if not names:
        raise BadFile(f"{path} is empty: its first line must name the columns")
    if not set(names) & set(COLUMNS):  # a file that starts with a row, not the header
        raise BadFile(
            f"{path} has no header row: its first line must be {','.join(COLUMNS)} (then any "
            f"{ATTRIBUTE_PREFIX}<key> columns); line 1 reads as data: "
            f"{','.join(n or '' for n in names[:3])},..."
        )
    missing = [c for c in COLUMNS if c not in names]
    if missing:
        raise BadFile(f"{path} lacks the column(s) {', '.join(missing)}")
    unknown = [n for n in names if n not in COLUMNS and not n.startswith(ATTRIBUTE_PREFIX)]
    if unknown:
        raise BadFile(
            f"{path} has unknown column(s) {', '.join(unknown)}: "
            f"expected {','.join(COLUMNS)} and attr:<key> columns"
        )


def _certificate(raw: dict[str | None, Any]) -> dict[str, Any]:
    # A short row leaves cells as None; a long one puts the extra cells under the key None.
    body: dict[str, Any] = {c: (raw.get(c) or "").strip() for c in COLUMNS}
    body["quantity_wh"] = _whole_number(body["quantity_wh"])
    body["attributes"] = {
        name.removeprefix(ATTRIBUTE_PREFIX): value.strip()
        for name, value in raw.items()
        if name and name.startswith(ATTRIBUTE_PREFIX) and value and value.strip()
    }
    if raw.get(None):
        body["unexpected_cells"] = raw[None]  # the API refuses the row, naming the field
    return body


def _whole_number(text: str) -> int | str:
    try:
        return int(text)
    except ValueError:
        return text
