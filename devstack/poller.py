"""Feed SQS messages to a worker handler the way Lambda's event source mapping does.

`chalice local` serves HTTP only; this is the other half. It receives up to 10 messages, hands
them to the handler as one Lambda SQS event (messageId, receiptHandle, body, MessageGroupId,
ApproximateReceiveCount), deletes the records the handler did not report as failures, and
leaves the failed ones for SQS to redeliver after their visibility timeout: with the queue's
redrive policy, a message received too often moves to the dead-letter queue, as on AWS.
If the handler raises, nothing is deleted and the whole batch comes back, as on AWS.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

Handler = Callable[[dict[str, Any]], dict[str, Any] | None]


def to_lambda_event(messages: list[dict[str, Any]], queue_arn: str) -> dict[str, Any]:
    return {
        "Records": [
            {
                "messageId": m["MessageId"],
                "receiptHandle": m["ReceiptHandle"],
                "body": m["Body"],
                "attributes": {k: str(v) for k, v in m.get("Attributes", {}).items()},
                "messageAttributes": {},
                "md5OfBody": m.get("MD5OfBody", ""),
                "eventSource": "aws:sqs",
                "eventSourceARN": queue_arn,
                "awsRegion": queue_arn.split(":")[3] if queue_arn.count(":") >= 5 else "",
            }
            for m in messages
        ]
    }


class QueuePoller:
    def __init__(
        self, sqs: Any, queue_url: str, handler: Handler, *, batch_size: int = 10, wait_s: int = 1
    ) -> None:
        self._sqs = sqs
        self._url = queue_url
        self._handler = handler
        self._batch_size = batch_size
        self._wait_s = wait_s
        self._arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])[
            "Attributes"
        ]["QueueArn"]
        self._stop = threading.Event()
        self.batches = 0
        self.records = 0

    def poll_once(self, wait_s: int | None = None) -> int:
        """One receive and one handler call; returns how many messages were received."""
        answer = self._sqs.receive_message(
            QueueUrl=self._url,
            MaxNumberOfMessages=self._batch_size,
            WaitTimeSeconds=self._wait_s if wait_s is None else wait_s,
            MessageSystemAttributeNames=["All"],
        )
        messages = answer.get("Messages", [])
        if not messages:
            return 0
        event = to_lambda_event(messages, self._arn)
        try:
            response = self._handler(event) or {}
        except Exception:  # the function failed: as on Lambda, the whole batch comes back
            log.exception("the worker failed a whole batch")
            return len(messages)
        failed = {f["itemIdentifier"] for f in response.get("batchItemFailures", [])}
        done = [m for m in messages if m["MessageId"] not in failed]
        if done:
            self._sqs.delete_message_batch(
                QueueUrl=self._url,
                Entries=[
                    {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(done)
                ],
            )
        self.batches += 1
        self.records += len(messages)
        return len(messages)

    def drain(self, max_batches: int = 10_000) -> None:
        """Poll until a receive comes back empty (tests)."""
        for _ in range(max_batches):
            if not self.poll_once(wait_s=0):
                return
        raise RuntimeError("the queue did not drain")

    def run(self) -> None:
        while not self._stop.is_set():
            try:
                self.poll_once()
            except Exception:  # keep polling: a local stack should survive a moto hiccup
                log.exception("polling the command queue failed")
                self._stop.wait(1)

    def stop(self) -> None:
        self._stop.set()
