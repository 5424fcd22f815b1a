"""The command queue on SQS FIFO: one message group per certificate.

MessageGroupId = the certificate, so commands on one certificate run one at a time and in
order while different certificates run in parallel. MessageDeduplicationId = the command, which
saves a duplicate send inside SQS's five-minute window; it is a saving, never the guard (moto
forgets dedup ids once a message is deleted, and the window is short): the command record in
the book is what stops a second send to the registry.
"""

from __future__ import annotations

import json
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from chalicelib.domain import Command
from chalicelib.ports import DependencyDown
from chalicelib.usecases.process import Delivery, Outcome, PoisonMessage


def message_body(command: Command, holds_taken: bool = True) -> str:
    return json.dumps(
        {
            "command_id": command.command_id,
            "certificate_id": command.certificate_id,
            "holds": holds_taken,
        }
    )


def delivery_of(record: dict[str, Any]) -> Delivery:
    """A Lambda SQS event record as the worker needs it; PoisonMessage if it makes no sense."""
    try:
        body = json.loads(record["body"])
        return Delivery(
            command_id=str(body["command_id"]),
            group=record.get("attributes", {}).get("MessageGroupId") or body["certificate_id"],
            holds_taken=bool(body.get("holds", True)),
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise PoisonMessage(f"unreadable message {record.get('messageId')}: {exc}") from exc


def batch_response(records: list[dict[str, Any]], outcomes: list[Outcome | None]) -> dict:
    """The partial batch response: only the records that must come back. Needs
    ReportBatchItemFailures on the event source (infra/), or Lambda deletes them all."""
    return {
        "batchItemFailures": [
            {"itemIdentifier": record["messageId"]}
            for record, outcome in zip(records, outcomes, strict=True)
            if outcome != Outcome.DONE
        ]
    }


class SqsCommandQueue:
    def __init__(self, client: Any, queue_url: str) -> None:
        self._sqs = client
        self._url = queue_url

    def send(self, command: Command, holds_taken: bool = True) -> None:
        try:
            self._sqs.send_message(
                QueueUrl=self._url,
                MessageBody=message_body(command, holds_taken),
                MessageGroupId=command.certificate_id,
                MessageDeduplicationId=command.command_id,
            )
        except (ClientError, BotoCoreError) as exc:
            raise DependencyDown(f"the command queue is unavailable: {exc}") from exc
