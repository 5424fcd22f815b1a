"""The worker runs a batch's FIFO groups side by side (threads, on Lambda and the embedded
stack), a group's records one after another in their order; the commands come out as they do
one record at a time: each step sent once, each command ended."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from chalicelib import composition
from chalicelib.domain import CommandStatus
from chalicelib.settings import Settings
from chalicelib.usecases.process import Worker, one_after_another
from tests.pipeline import Pipeline


class Watched:
    """The book, with each guard (the write that takes a step, ACCEPTED -> SENDING) watched:
    which commands were inside one at the same time, in which order each group's came."""

    def __init__(self, book: Any, meet: threading.Barrier | None = None) -> None:
        self._book = book
        self._meet = meet  # the first guard of each group waits here for the others
        self._lock = threading.Lock()
        self.inside: set[str] = set()
        self.most_inside = 0
        self.overlaps: list[tuple[str, str]] = []  # (command, command already inside)
        self.order: list[str] = []
        self._met: set[str] = set()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._book, name)

    def transition(self, command_id: str, change: Any) -> Any:
        if change.target != CommandStatus.SENDING:
            return self._book.transition(command_id, change)
        group = self._book.get_command(command_id).certificate_id
        with self._lock:
            self.overlaps += [(command_id, other) for other in self.inside]
            self.inside.add(command_id)
            self.most_inside = max(self.most_inside, len(self.inside))
            self.order.append(command_id)
            first = group not in self._met
            self._met.add(group)
        try:
            if self._meet is not None and first:
                self._meet.wait()
            return self._book.transition(command_id, change)
        finally:
            with self._lock:
                self.inside.discard(command_id)


def test_the_groups_of_a_batch_wait_side_by_side():
    p = Pipeline()
    commands = [p.issue(gsrn=f"57131300000000{i:04d}") for i in range(8)]
    # Each guard waits until all eight are inside: one after another, the first would wait
    # alone until the barrier broke.
    watched = Watched(p.book, threading.Barrier(8, timeout=10))
    worker = p.make_worker(book=watched)
    worker.run_side_by_side = composition.side_by_side(8)
    p.run(worker)
    assert watched.most_inside == 8
    assert {p.book.get_command(c.command_id).status for c in commands} == {CommandStatus.COMMITTED}
    assert p.registry.duplicates() == []


def test_a_groups_records_go_one_after_another_in_their_order():
    p = Pipeline()
    parts: dict[str, list[str]] = {}
    for i in range(3):
        cert, first = p.issued(gsrn=f"57131300000000{i:04d}")
        p.slice("alice", cert, first, [300, 300, 400])
        p.run()
        parts[cert] = [s for s in p.book.get_certificate(cert).slices if s != first]
    assert all(len(ids) == 3 for ids in parts.values())
    # Nine messages in one batch: three transfers on each of three certificates (groups).
    transfers = {
        cert: [
            p.transfer("alice", cert, slice_id, "bob", quantity).command_id
            for slice_id, quantity in zip(
                ids, [p.book.get_certificate(cert).slices[s].quantity_wh for s in ids], strict=True
            )
        ]
        for cert, ids in parts.items()
    }
    watched = Watched(p.book, threading.Barrier(3, timeout=10))
    worker = p.make_worker(book=watched)
    worker.run_side_by_side = composition.side_by_side(10)
    p.run(worker)

    assert watched.most_inside >= 2  # the groups met at the barrier
    for ids in transfers.values():
        assert [c for c in watched.order if c in ids] == ids  # in the order they were accepted
        assert not [pair for pair in watched.overlaps if set(pair) <= set(ids)]
        assert {p.book.get_command(c).status for c in ids} == {CommandStatus.COMMITTED}
    assert p.registry.duplicates() == []


def test_under_registry_faults_side_by_side_sends_each_step_once_and_ends_every_command():
    p = Pipeline(queries=True, ambiguous_rate=0.1, lost_rate=0.1, seed=7)
    p.worker.run_side_by_side = composition.side_by_side(10)
    issued = [p.issue(gsrn=f"57131300000000{i:04d}", hour=i % 20) for i in range(40)]
    p.settle()
    live = [
        c.certificate_id
        for c in issued
        if p.book.get_command(c.command_id).status == CommandStatus.COMMITTED
    ]
    assert len(live) > 20
    moved = []
    for cert_id in live:
        cert = p.book.get_certificate(cert_id)
        slice_id, s = next(iter(cert.slices.items()))
        moved.append(p.transfer("alice", cert_id, slice_id, "bob", s.quantity_wh // 2))
    p.settle()
    ended = {CommandStatus.COMMITTED, CommandStatus.REJECTED}
    for command in [*issued, *moved]:
        assert p.book.get_command(command.command_id).status in ended
    assert p.registry.duplicates() == []


def test_one_after_another_unless_the_settings_say_otherwise():
    assert Worker.__dataclass_fields__["run_side_by_side"].default is one_after_another
    assert composition.side_by_side(1) is one_after_another
    assert composition.side_by_side(10) is not one_after_another
    assert Settings(_env_file=None).worker_concurrency == 10


@pytest.mark.parametrize("threads", [0, 11])
def test_the_worker_concurrency_is_bounded(threads):
    with pytest.raises(ValueError, match="worker_concurrency"):
        Settings(_env_file=None, worker_concurrency=threads)


def test_a_task_that_fails_fails_the_run_after_the_others_have_run():
    ran: list[int] = []

    def boom() -> None:
        raise RuntimeError("boom")

    def slow(n: int) -> None:
        threading.Event().wait(0.05)
        ran.append(n)

    with pytest.raises(RuntimeError, match="boom"):
        composition.side_by_side(4)([boom, lambda: slow(1), lambda: slow(2)])
    assert sorted(ran) == [1, 2]
