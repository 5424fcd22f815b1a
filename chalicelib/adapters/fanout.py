"""The reconciler's fan-out on AWS: the scheduled invocation starts one asynchronous
invocation of the same function per shard (usecases.shards).

The payload has the shape of the scheduled event (Chalice's schedule handler reads `version`,
`account`, `region`, `detail`...), with the shard in `detail`, so the one function serves the
schedule and the shards. An asynchronous invoke is queued by Lambda and retried by it on
failure; a shard whose invocation is lost is simply worked by the next minute's fan-out.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from chalicelib.ports import DependencyDown

SHARD_SOURCE = "certificates-domain.reconciler-shard"


def shard_event(shard: int, now: datetime | None = None) -> dict[str, Any]:
    return {
        "version": "0",
        "id": f"shard-{shard}",
        "detail-type": "Reconciler shard",
        "source": SHARD_SOURCE,
        "account": "",
        "time": (now or datetime.now(UTC)).isoformat(),
        "region": "",
        "resources": [],
        "detail": {"reconciler_shard": shard},
    }


def shard_of_event(event: dict[str, Any]) -> int | None:
    """The shard an invocation is for, or None for the schedule's own invocation."""
    if event.get("source") != SHARD_SOURCE:
        return None
    return int(event["detail"]["reconciler_shard"])


class LambdaFanOut:
    def __init__(self, client: Any, function_name: str) -> None:
        self._lambda = client
        self._function = function_name

    def send(self, shard: int) -> None:
        try:
            self._lambda.invoke(
                FunctionName=self._function,
                InvocationType="Event",
                Payload=json.dumps(shard_event(shard)).encode(),
            )
        except (BotoCoreError, ClientError) as exc:
            raise DependencyDown(f"fan-out to shard {shard}: {exc}") from exc
