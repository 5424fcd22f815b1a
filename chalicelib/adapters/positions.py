"""Positions in the caller's own list of commands (GET /v1/commands), shared by both books.

A command's position is its `by_caller_sk`: `<created_at ISO>#<command id>`, which sorts as
text in creation order. A cursor names the last position a page gave; the next page starts
strictly before it (newest first).
"""

from __future__ import annotations

import base64
import json
from datetime import UTC

from chalicelib import domain
from chalicelib.domain import Command
from chalicelib.ports import CommandQuery

# Sort below and above every position (positions start with a four-digit year).
LOWEST, HIGHEST = "0", "~"
_TAG = "own"


def of(command: Command) -> str:
    return f"{command.created_at.isoformat()}#{command.command_id}"


def encode(position: str) -> str:
    return base64.urlsafe_b64encode(json.dumps([_TAG, position]).encode()).decode()


def decode(cursor: str) -> str:
    """The position an own-commands cursor of ours names; RuleViolation for anything else
    (another list's cursor included), so that nothing a client sends reaches a query."""
    try:
        tag, position = json.loads(base64.urlsafe_b64decode(cursor.encode()))
        if tag != _TAG or not isinstance(position, str) or not LOWEST < position < HIGHEST:
            raise ValueError("not an own-commands position")
    except (ValueError, TypeError) as exc:
        raise domain.RuleViolation(
            "the cursor is not one this service gave out", field="cursor"
        ) from exc
    return position


def bounds(query: CommandQuery) -> tuple[str, str]:
    """[low, high): the positions the query may return. `<moment>#id` sorts after `<moment>`,
    so a command created at `created_after` is in, one created at `created_before` is out."""
    low = query.created_after.astimezone(UTC).isoformat() if query.created_after else LOWEST
    high = query.created_before.astimezone(UTC).isoformat() if query.created_before else HIGHEST
    if query.cursor is not None:
        high = min(high, decode(query.cursor))
    return low, high


def matches(query: CommandQuery, command: Command) -> bool:
    return (query.kinds is None or command.kind in query.kinds) and (
        query.statuses is None or command.status in query.statuses
    )
