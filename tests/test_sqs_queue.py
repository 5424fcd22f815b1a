"""The SQS command queue over moto: what its deduplication keeps and what it lets through.

SQS drops a FIFO message whose deduplication id it saw in the last five minutes, without an
error. A retried send of the same command in the same state must be dropped; a command sent
again on purpose in a new state (its next step after a resolution, a step going out again
after an operator's finding) must not be, or it waits for the reconciler's re-drive.
"""

from __future__ import annotations

import json

import pytest

from chalicelib.adapters.sqs import SqsCommandQueue, deduplication_id
from chalicelib.domain import SliceRef
from chalicelib.ports import DependencyDown
from tests.builders import claim_command, gsrn, queue_counts
from tests.conftest import settings


def _queue(aws) -> tuple[object, str]:
    sqs = aws.client("sqs")
    return sqs, sqs.get_queue_url(QueueName=settings().queue_name)["QueueUrl"]


def _claim():
    production = SliceRef(certificate_id="p-" + gsrn(1), slice_id="s1")
    consumption = SliceRef(certificate_id="c-" + gsrn(2), slice_id="s2")
    return claim_command(production, consumption, 500)


def test_a_retried_send_of_the_same_state_is_dropped(aws) -> None:
    sqs, url = _queue(aws)
    queue = SqsCommandQueue(sqs, url)
    command = _claim()
    queue.send(command)
    queue.send(command)  # the API's send retried, or a replay of the same request
    assert queue_counts(sqs, url) == (1, 0)


def test_the_next_step_and_an_operators_resend_are_not_dropped(aws) -> None:
    sqs, url = _queue(aws)
    queue = SqsCommandQueue(sqs, url)
    accepted = _claim()
    queue.send(accepted)
    # A worker takes step 1 (its message in flight, not yet deleted); the registry call is
    # ambiguous, and minutes later the reconciler finds step 1 committed and sends step 2.
    received = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10)["Messages"]
    assert len(received) == 1
    next_step = accepted.model_copy(update={"step": 1, "attempts": 1})
    queue.send(next_step)
    # That step goes in doubt too, and an operator finds it never reached the registry: the
    # same step goes out again after one more guard.
    queue.send(next_step.model_copy(update={"attempts": 2}))
    assert queue_counts(sqs, url) == (2, 1)
    assert len({deduplication_id(accepted), deduplication_id(next_step)}) == 2


def test_a_postponed_message_comes_back_after_its_delay_and_its_group_waits(aws) -> None:
    sqs, url = _queue(aws)
    queue = SqsCommandQueue(sqs, url)
    queue.send(_claim())
    (message,) = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10)["Messages"]
    assert queue.postpone([(message["ReceiptHandle"], 3600)]) == 0
    assert "Messages" not in sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10)
    queue.postpone([(message["ReceiptHandle"], 0)])  # changed again: back at once
    (again,) = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10)["Messages"]
    assert again["MessageId"] == message["MessageId"]


def test_postponing_with_a_stale_receipt_handle_is_the_queue_refusing(aws) -> None:
    sqs, url = _queue(aws)
    queue = SqsCommandQueue(sqs, url)
    try:
        refused = queue.postpone([("not-a-receipt-handle", 5)])
    except DependencyDown:
        return
    assert refused == 1, "moto took a made-up receipt handle"


def test_an_invocations_records_are_postponed_ten_to_a_call(aws, monkeypatch) -> None:
    sqs, url = _queue(aws)
    queue = SqsCommandQueue(sqs, url)
    for n in range(12):
        queue.send(_claim().model_copy(update={"command_id": f"c{n}", "certificate_id": f"p{n}"}))
    received = []
    while len(received) < 12:
        received += sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10)["Messages"]
    calls = []
    batch = sqs.change_message_visibility_batch
    monkeypatch.setattr(
        sqs, "change_message_visibility_batch", lambda **kw: calls.append(kw) or batch(**kw)
    )
    assert queue.postpone([(m["ReceiptHandle"], 3600) for m in received]) == 0
    assert [len(c["Entries"]) for c in calls] == [10, 2]
    assert "Messages" not in sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10)


def test_messages_sent_together_go_ten_to_a_call_and_the_refused_ones_are_named(
    aws, monkeypatch
) -> None:
    sqs, url = _queue(aws)
    queue = SqsCommandQueue(sqs, url)
    commands = [
        _claim().model_copy(update={"command_id": f"c{n}", "certificate_id": f"p{n}"})
        for n in range(12)
    ]
    calls = []
    batch = sqs.send_message_batch

    def counted(**kwargs):
        calls.append(len(kwargs["Entries"]))
        answer = batch(**kwargs)
        if len(calls) == 2:  # SQS refusing one entry of the second call
            answer["Failed"] = [{"Id": "1", "Code": "InternalError", "SenderFault": False}]
        return answer

    monkeypatch.setattr(sqs, "send_message_batch", counted)
    assert queue.send_many([(c, None) for c in commands]) == [commands[11]]
    assert calls == [10, 2] and queue_counts(sqs, url)[0] == 12
    received = []
    while len(received) < 12:
        received += sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10)["Messages"]
    assert {json.loads(m["Body"])["command_id"] for m in received} == {
        c.command_id for c in commands
    }


def test_messages_sent_together_to_a_queue_that_is_gone_raise_dependency_down(aws) -> None:
    sqs, url = _queue(aws)
    with pytest.raises(DependencyDown):
        SqsCommandQueue(sqs, url + "-gone").send_many([(_claim(), None)])
