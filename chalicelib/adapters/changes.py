"""Positions in the change feeds, shared by both books.

A position is the time a change was written, as fixed-width UTC text, then `#` and what makes
it unique; positions sort as text in the order the changes were written. A cursor names the
last position a client has seen, so that the next page starts strictly after it.
"""

from __future__ import annotations

import base64
import json
import re
from datetime import UTC, datetime

from chalicelib import domain

STAMP_LENGTH = len("2026-01-01T00:00:00.000000Z")
_POSITION = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z(#[^\x00-\x1f]{1,300})?")


def stamp(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def start_after(since: datetime | None, cursor: str | None) -> str:
    """Where a page starts (exclusive): after the cursor's position, or at `since` (a position
    `<stamp>#...` sorts after its bare stamp, so changes made at `since` are included)."""
    if cursor is not None:
        return decode(cursor)
    if since is not None:
        return stamp(since)
    return ""


def encode(position: str) -> str:
    return base64.urlsafe_b64encode(json.dumps({"after": position}).encode()).decode()


def decode(cursor: str) -> str:
    """The position a change cursor of ours names; RuleViolation for anything else (a list
    cursor, a forged one), which would otherwise reach DynamoDB as a bad key condition."""
    try:
        value = json.loads(base64.urlsafe_b64decode(cursor.encode()))
    except ValueError:
        value = None
    if (
        not isinstance(value, dict)
        or list(value) != ["after"]
        or not isinstance(value["after"], str)
        or not (value["after"] == "" or _POSITION.fullmatch(value["after"]))
    ):
        raise domain.RuleViolation(
            "the cursor is not one this service gave out for this feed", field="cursor"
        )
    return value["after"]
