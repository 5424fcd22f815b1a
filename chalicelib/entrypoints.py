"""What the queue and schedule handlers of app.py do, kept out of app.py so it stays wiring
and so the embedded stack's poller calls exactly the same code as Lambda does."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from chalicelib import observability
from chalicelib.adapters.fanout import shard_of_event
from chalicelib.adapters.sqs import batch_response, delivery_of, receive_count
from chalicelib.ports import Delivery, DependencyDown, Outcome, PoisonMessage
from chalicelib.usecases import shards
from chalicelib.usecases.process import Worker
from chalicelib.usecases.reconcile import Reconciler

# Make received records come back after their seconds; returns how many could not be.
Postpone = Callable[[list[tuple[str, float]]], int]


def handle_queue_event(
    event: dict[str, Any],
    worker: Worker,
    max_receives: int,
    postpone: Postpone | None = None,
) -> dict:
    """One Lambda SQS batch: returns the partial batch response (records that come back).
    `postpone([(receipt_handle, seconds), ...])` makes records come back after their seconds
    (one call for the batch), and says how many it could not."""
    records = event.get("Records", [])
    outcomes: list[Outcome | None] = [None] * len(records)
    deliveries: list[tuple[int, Delivery]] = []
    blocked_groups: set[str] = set()
    for i, record in enumerate(records):
        group = record.get("attributes", {}).get("MessageGroupId")
        if group in blocked_groups:
            outcomes[i] = Outcome.RETRY  # FIFO: an earlier record of its group comes back
            continue
        try:
            deliveries.append((i, delivery_of(record)))
        except PoisonMessage as exc:
            observability.event(
                "delivery.poison", reason=str(exc), receive_count=receive_count(record)
            )
            outcomes[i] = Outcome.FAILED
            if group:
                blocked_groups.add(group)
    for (i, delivery), outcome in zip(
        deliveries, worker.process([d for _, d in deliveries]), strict=True
    ):
        outcomes[i] = outcome
        if outcome == Outcome.FAILED and receive_count(records[i]) >= max_receives:
            worker.give_up(delivery, "processing failed on every receive")
    _check_again_later(records, outcomes, worker, max_receives, postpone)
    return batch_response(records, outcomes)


def _check_again_later(
    records: list[dict[str, Any]],
    outcomes: list[Outcome | None],
    worker: Worker,
    max_receives: int,
    postpone: Postpone | None,
) -> None:
    """A record whose step awaits the registry comes back after the worker's delay, and so do
    the records of its group behind it (FIFO: they wait for it). Its receives spent, it is
    deleted instead, for the reconciler to settle: the dead-letter queue is for failures."""
    delays: dict[str | None, float] = {}
    later: list[tuple[str, float]] = []
    for i, record in enumerate(records):
        group = record.get("attributes", {}).get("MessageGroupId")
        if outcomes[i] == Outcome.LATER and group not in delays:
            delay = worker.check_again_in(receive_count(record), max_receives)
            if delay is None:
                outcomes[i] = Outcome.DONE
                continue
            delays[group] = delay
        if group in delays and outcomes[i] != Outcome.DONE:
            later.append((record["receiptHandle"], delays[group]))
    if not later or postpone is None:
        return
    # Not taken, a record comes back after the queue's own timeout: later, never lost.
    try:
        refused = postpone(later)
    except DependencyDown as exc:
        observability.event(
            "delivery.postpone_failed", logging.WARNING, reason=str(exc), records=len(later)
        )
        return
    if refused:
        observability.event(
            "delivery.postpone_failed", logging.WARNING, reason="refused by SQS", records=refused
        )


def handle_schedule(
    event: dict[str, Any], reconciler: Reconciler, send_shard: Callable[[int], None] | None
) -> dict:
    """The reconciler's invocation: one shard's pass when the event names a shard; else (the
    schedule) one invocation per shard when `send_shard` is given, or one pass over all."""
    shard = shard_of_event(event)
    if shard is not None:
        report = shards.run_shard(reconciler, shard)
        return {"shard": shard, "actions": dict(report.actions), "complete": report.complete}
    if send_shard is None:
        report = reconciler.run()
        return {"actions": dict(report.actions), "complete": report.complete}
    return {"fanned_out": shards.fan_out(shards.shards_of(reconciler.book), send_shard)}
