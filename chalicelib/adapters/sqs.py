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


def message_body(command: Command) -> str:
    return json.dumps({"command_id": command.command_id, "certificate_id": command.certificate_id})


class SqsCommandQueue:
    def __init__(self, client: Any, queue_url: str) -> None:
        self._sqs = client
        self._url = queue_url

    def send(self, command: Command) -> None:
        try:
            self._sqs.send_message(
                QueueUrl=self._url,
                MessageBody=message_body(command),
                MessageGroupId=command.certificate_id,
                MessageDeduplicationId=command.command_id,
            )
        except (ClientError, BotoCoreError) as exc:
            raise DependencyDown(f"the command queue is unavailable: {exc}") from exc
