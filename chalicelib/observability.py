"""Structured logs: one JSON object per line, which CloudWatch Logs Insights queries as fields.

`transition` is logged for every state change of a command (command id, certificate id,
from, to, reason); `event` for everything else worth counting.
"""

from __future__ import annotations

import json
import logging
from typing import Any

log = logging.getLogger("certificates")


def event(name: str, level: int = logging.INFO, **fields: Any) -> None:
    if log.isEnabledFor(level):
        log.log(level, json.dumps({"event": name, **fields}, default=str, sort_keys=True))


def transition(
    command_id: str,
    certificate_id: str,
    before: str,
    after: str,
    reason: str | None = None,
    **fields: Any,
) -> None:
    event(
        "command.transition",
        command_id=command_id,
        certificate_id=certificate_id,
        **{"from": before, "to": after},
        reason=reason,
        **fields,
    )
