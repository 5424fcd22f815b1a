"""The command queue on SQS FIFO: one message group per certificate.

MessageGroupId = the certificate, so commands on one certificate run one at a time and in
order while different certificates run in parallel. MessageDeduplicationId = the command in
the state it is sent in (see `deduplication_id`), which saves a duplicate send inside SQS's
five-minute window; it is a saving, never the guard (moto forgets dedup ids once a message
is deleted, and the window is short): the command record in the book is what stops a second
send to the registry.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError
from pydantic import ValidationError

from chalicelib.domain import Certificate, Command
from chalicelib.ports import Delivery, DependencyDown, Outcome, Outgoing, PoisonMessage


def _trimmed(cert: Certificate, command: Command) -> Certificate:
    """Only what the worker builds from: the certificate with the slices the command uses."""
    used = {ref.slice_id for ref in command.slices if ref.certificate_id == cert.certificate_id}
    return cert.model_copy(
        update={"slices": {k: v for k, v in cert.slices.items() if k in used}, "applied": ()}
    )


def message_body(
    command: Command, holds_taken: bool = True, certificates: dict[str, Certificate] | None = None
) -> str:
    """The command as accepted and, when the API took its holds, the certificates as they
    left them: the worker's guard checks the snapshot against the book in its first write."""
    body: dict[str, Any] = {
        "command_id": command.command_id,
        "certificate_id": command.certificate_id,
        "holds": holds_taken,
    }
    if holds_taken:
        body["command"] = command.model_dump(mode="json", exclude_none=True)
        if certificates:
            body["certificates"] = {
                cid: _trimmed(cert, command).model_dump(mode="json", exclude_none=True)
                for cid, cert in certificates.items()
            }
    return json.dumps(body)


def delivery_of(record: dict[str, Any]) -> Delivery:
    """A Lambda SQS event record as the worker needs it; PoisonMessage if it makes no sense.
    A snapshot that does not parse is dropped: the worker then reads the book."""
    try:
        body = json.loads(record["body"])
        delivery = Delivery(
            command_id=str(body["command_id"]),
            group=record.get("attributes", {}).get("MessageGroupId") or body["certificate_id"],
            holds_taken=bool(body.get("holds", True)),
            receives=receive_count(record),
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise PoisonMessage(f"unreadable message {record.get('messageId')}: {exc}") from exc
    try:
        command = Command.model_validate(body["command"]) if "command" in body else None
        certificates = {
            cid: Certificate.model_validate(cert)
            for cid, cert in body.get("certificates", {}).items()
        }
    except (ValidationError, AttributeError, TypeError):
        return delivery
    if command is not None and command.command_id != delivery.command_id:
        return delivery
    return replace(delivery, command=command, certificates=certificates or None)


def receive_count(record: dict[str, Any]) -> int:
    """How often SQS has handed the record out (1 when it does not say)."""
    try:
        return int(record.get("attributes", {}).get("ApproximateReceiveCount", 1))
    except (TypeError, ValueError):
        return 1


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


def deduplication_id(command: Command) -> str:
    """The same command in the same state: a retried send of it is dropped. A command is sent
    again on purpose in a new state: its next step after the reconciler or an operator
    resolved the one in doubt, or a step going out again after an operator found it never
    left (a guard since: one more attempt). Keyed on the command alone, SQS would drop those
    inside its five-minute window, and the command would wait for the reconciler's re-drive."""
    return f"{command.command_id}:{command.step}:{command.attempts}"


class SqsCommandQueue:
    def __init__(self, client: Any, queue_url: str) -> None:
        self._sqs = client
        self._url = queue_url

    def send(
        self,
        command: Command,
        holds_taken: bool = True,
        certificates: dict[str, Certificate] | None = None,
    ) -> None:
        try:
            self._sqs.send_message(
                QueueUrl=self._url,
                MessageBody=message_body(command, holds_taken, certificates),
                MessageGroupId=command.certificate_id,
                MessageDeduplicationId=deduplication_id(command),
            )
        except (ClientError, BotoCoreError) as exc:
            raise DependencyDown(f"the command queue is unavailable: {exc}") from exc

    def send_many(self, messages: Sequence[Outgoing]) -> list[Command]:
        """SendMessageBatch: ten to a call, and no call over SQS's 256 KiB. Returns the
        commands SQS did not take; DependencyDown if no call was answered."""
        chunks: list[list[tuple[Command, str]]] = [[]]
        size = 0
        for command, certificates in messages:
            body = message_body(command, True, certificates)
            body_bytes = len(body.encode())
            if len(chunks[-1]) == _BATCH or size + body_bytes > _BATCH_BYTES:
                chunks.append([])
                size = 0
            chunks[-1].append((command, body))
            size += body_bytes
        refused: list[Command] = []
        answered = False
        for chunk in chunks:
            if not chunk:
                continue
            entries = [
                {
                    "Id": str(i),
                    "MessageBody": body,
                    "MessageGroupId": command.certificate_id,
                    "MessageDeduplicationId": deduplication_id(command),
                }
                for i, (command, body) in enumerate(chunk)
            ]
            try:
                answer = self._sqs.send_message_batch(QueueUrl=self._url, Entries=entries)
            except (ClientError, BotoCoreError):
                refused += [command for command, _ in chunk]
                continue
            answered = True
            refused += [chunk[int(f["Id"])][0] for f in answer.get("Failed", [])]
        if refused and not answered:
            raise DependencyDown("the command queue is unavailable")
        return refused

    def postpone(self, later: Sequence[tuple[str, float]]) -> int:
        """Received messages come back after their seconds, not the queue's visibility timeout
        (FIFO messages take no delay of their own); their groups wait for them. One call per
        ten (an invocation's records, handed back together). Returns how many SQS did not
        take: those come back after the queue's own timeout."""
        refused = 0
        for start in range(0, len(later), _BATCH):
            entries = [
                {"Id": str(i), "ReceiptHandle": handle, "VisibilityTimeout": max(0, math.ceil(s))}
                for i, (handle, s) in enumerate(later[start : start + _BATCH])
            ]
            try:
                answer = self._sqs.change_message_visibility_batch(
                    QueueUrl=self._url, Entries=entries
                )
            except (ClientError, BotoCoreError) as exc:
                raise DependencyDown(f"the command queue is unavailable: {exc}") from exc
            refused += len(answer.get("Failed", []))
        return refused


_BATCH = 10  # SQS's most entries in one batch request
_BATCH_BYTES = 256 * 1024  # and its most payload
