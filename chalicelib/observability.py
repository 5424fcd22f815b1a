"""Structured logs: one JSON object per line, which CloudWatch Logs Insights queries as fields.

`transition` is logged for every state change of a command (command id, certificate id,
from, to, reason); `event` for everything else worth counting.
"""

from __future__ import annotations

import json
import logging
import os
import time
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


NAMESPACE = "CertificatesDomain"


def metrics(
    values: dict[str, float], units: dict[str, str] | None = None, **dimensions: str
) -> None:
    """Counts as CloudWatch metrics, through the embedded metric format: one log line, no API
    call, no extra cost per metric beyond the log bytes. `units` names any that are not
    counts (e.g. Milliseconds)."""
    if not values:
        return
    dimensions = {"Stage": os.environ.get("CERTS_STAGE", "local"), **dimensions}
    log.info(
        json.dumps(
            {
                "_aws": {
                    "Timestamp": int(time.time() * 1000),
                    "CloudWatchMetrics": [
                        {
                            "Namespace": NAMESPACE,
                            "Dimensions": [sorted(dimensions)],
                            "Metrics": [
                                {"Name": name, "Unit": (units or {}).get(name, "Count")}
                                for name in sorted(values)
                            ],
                        }
                    ],
                },
                **dimensions,
                **values,
            },
            sort_keys=True,
        )
    )
