"""A whole pipeline in one process and in virtual time: the use cases over the in-memory book,
a FIFO queue that delivers like SQS, the real worker, and the registry simulator."""

from __future__ import annotations

import base64
from collections import Counter, deque
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from chalicelib import domain
from chalicelib.adapters.memory import InMemoryBook
from chalicelib.domain import (
    Actor,
    CertificateType,
    Command,
    CommandStatus,
    IssueSpec,
    Period,
    Role,
    SliceRef,
)
from chalicelib.ports import Delivery, DependencyDown, Outcome
from chalicelib.registry.builder import PlainTransactionBuilder
from chalicelib.registry.sandbox.simulator import RegistrySimulator, SimulatorConfig, VirtualClock
from chalicelib.usecases import accept
from chalicelib.usecases.process import Worker, one_after_another
from chalicelib.usecases.reconcile import Reconciler, resolve_by_operator
from tests.builders import API_TIMEOUT

T0 = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
ISSUER = Actor(owner="issuer-dk", roles=frozenset({Role.ISSUER}))


@dataclass
class Message:
    delivery: Delivery
    receives: int = 0


MAX_RECEIVES = 10  # the queue's redrive policy (infra/)


class FifoQueue:
    """SQS FIFO as the worker sees it: per-group order, a group blocked while one of its
    messages is in flight, failed messages back at the head of their group."""

    def __init__(self) -> None:
        self.pending: deque[Message] = deque()
        self.available = True
        self.sent = 0

    def send(
        self, command: Command, holds_taken: bool = True, certificates: dict | None = None
    ) -> None:
        """Like SqsCommandQueue: the message carries the command and the certificates as the
        API left them, which the worker checks against the book in its first write."""
        if not self.available:
            raise DependencyDown("queue down")
        self.sent += 1
        self.pending.append(
            Message(
                Delivery(
                    command.command_id,
                    command.certificate_id,
                    holds_taken,
                    command if holds_taken else None,
                    certificates if holds_taken else None,
                )
            )
        )

    def send_many(self, messages) -> list[Command]:
        for command, certificates in messages:
            self.send(command, certificates=certificates)
        return []

    def receive(self, limit: int = 10) -> list[Message]:
        """The oldest messages, in order (one consumer, so no group is ever in flight)."""
        batch = [self.pending.popleft() for _ in range(min(limit, len(self.pending)))]
        for message in batch:
            message.receives += 1
            message.delivery = replace(message.delivery, receives=message.receives)
        return batch

    def give_back(self, messages: list[Message]) -> None:
        self.pending.extendleft(reversed(messages))


class Pipeline:
    # How its workers run a batch's FIFO groups (tests run the worker's tests both ways).
    side_by_side = staticmethod(one_after_another)

    def __init__(self, *, queries: bool = False, **faults: Any) -> None:
        self.vclock = VirtualClock()
        self.book = InMemoryBook()
        self.queue = FifoQueue()
        self.registry = RegistrySimulator(
            SimulatorConfig(queries=queries, **faults), clock=self.vclock, sleep=self.vclock.sleep
        )
        self.worker = self.make_worker()
        self._keys = 0

    def now(self) -> datetime:
        return T0 + timedelta(seconds=self.vclock())

    def make_worker(self, book: Any = None, registry: Any = None) -> Worker:
        return Worker(
            book=book or self.book,
            registry=registry or self.registry,
            builder=PlainTransactionBuilder("test-registry"),
            clock=self.now,
            lease_s=120,
            commit_check_s=2.0,
            queue=self.queue,
            run_side_by_side=self.side_by_side,
        )

    def make_reconciler(self, **overrides: Any) -> Reconciler:
        settings = {"redrive_after_s": 300.0, "expiry_days": 365, "lease_s": 120.0, **overrides}
        return Reconciler(
            book=self.book,
            queue=self.queue,
            registry=self.registry,
            worker=self.worker,
            clock=self.now,
            **settings,
        )

    def reconcile(self) -> Counter:
        return self.make_reconciler().run().actions

    def settle(self, max_rounds: int = 50) -> None:
        """Deliver and reconcile until quiet, then resolve what is left in doubt as an operator
        who looked at the registry would (I2: every command ends terminal)."""
        for _ in range(max_rounds):
            self.run()
            self.vclock.advance(301)
            self.reconcile()
            self.run()
            stuck = self.book.open_commands(self.now() + timedelta(days=1), 10_000)
            if all(c.status == CommandStatus.IN_DOUBT for c in stuck):
                break
        operator = Actor(owner="ops", roles=frozenset({Role.OPERATOR}))
        worker = self.make_worker()
        for command in self.book.open_commands(self.now() + timedelta(days=1), 10_000):
            if command.status != CommandStatus.IN_DOUBT:
                continue
            data = base64.b64decode(command.transactions[command.step])
            applied = any(e.data == data and e.verdict != "FAILED" for e in self.registry.log())
            resolve_by_operator(
                self.book,
                self.queue,
                worker,
                operator,
                command.command_id,
                applied,
                "checked the registry by hand",
            )
        self.run()
        self.reconcile()
        self.run()

    def request(self, actor: Actor, key: str | None = None, body: Any = None) -> accept.Request:
        self._keys += 1
        key = key or f"key-{self._keys}"
        return accept.Request(
            actor=actor,
            idempotency_key=key,
            body_hash=domain.request_hash(body or key),
            now=self.now(),
            attempt_timeout=API_TIMEOUT,
        )

    # --- commands ----------------------------------------------------------------------------

    def issue(
        self,
        owner: str = "alice",
        quantity: int = 1000,
        hour: int = 0,
        type_: CertificateType = CertificateType.PRODUCTION,
        grid_area: str = "DK1",
        gsrn: str = "571313000000000001",
        attributes: dict[str, str] | None = None,
    ) -> Command:
        start = T0.replace(hour=hour)
        spec = IssueSpec(
            type=type_,
            gsrn=gsrn,
            grid_area=grid_area,
            period=Period.of(start, start + timedelta(hours=1)),
            quantity_wh=quantity,
            owner=owner,
            attributes=attributes or {},
        )
        return accept.issue(self.book, self.queue, self.request(ISSUER), spec)

    def issued(self, **kwargs: Any) -> tuple[str, str]:
        """Issue and commit a certificate; returns (certificate id, its first slice id)."""
        command = self.issue(**kwargs)
        self.run()
        cert = self.book.get_certificate(command.certificate_id)
        assert cert is not None and cert.status == domain.CertificateStatus.ACTIVE, cert
        return cert.certificate_id, next(iter(cert.slices))

    def slice(self, owner: str, cert: str, slice_id: str, parts: list[int]) -> Command:
        return accept.slice_certificate(
            self.book,
            self.queue,
            self.request(Actor(owner=owner)),
            SliceRef(certificate_id=cert, slice_id=slice_id),
            parts,
        )

    def transfer(
        self, owner: str, cert: str, slice_id: str, receiver: str, quantity: int
    ) -> Command:
        return accept.transfer(
            self.book,
            self.queue,
            self.request(Actor(owner=owner)),
            SliceRef(certificate_id=cert, slice_id=slice_id),
            receiver,
            quantity,
        )

    def claim(
        self, owner: str, production: tuple[str, str], consumption: tuple[str, str], quantity: int
    ) -> Command:
        return accept.claim(
            self.book,
            self.queue,
            self.request(Actor(owner=owner)),
            SliceRef(certificate_id=production[0], slice_id=production[1]),
            SliceRef(certificate_id=consumption[0], slice_id=consumption[1]),
            quantity,
        )

    def withdraw(self, cert: str) -> Command:
        return accept.withdraw(self.book, self.queue, self.request(ISSUER), cert)

    # --- delivery ----------------------------------------------------------------------------

    def run(
        self, worker: Worker | None = None, rounds: int = 1000, visibility_s: float = 30
    ) -> None:
        """Deliver until the queue is empty; a message that must come back does so after the
        visibility timeout."""
        worker = worker or self.worker
        for _ in range(rounds):
            batch = self.queue.receive()
            if not batch:
                return
            outcomes = worker.process([m.delivery for m in batch])
            back, wait = [], 0.0
            for message, outcome in zip(batch, outcomes, strict=True):
                if outcome == Outcome.LATER:  # as the entry point does: back soon, or the end
                    later = worker.check_again_in(message.receives, MAX_RECEIVES)
                    if later is None:
                        continue
                    wait = max(wait, later)
                elif outcome != Outcome.DONE:
                    wait = max(wait, visibility_s)
                else:
                    continue
                back.append(message)
            if back:
                self.queue.give_back(back)
                self.vclock.advance(wait)
        raise AssertionError("the queue did not drain")

    def command(self, command_id: str) -> Command:
        found = self.book.get_command(command_id)
        assert found is not None
        return found

    # --- invariants --------------------------------------------------------------------------

    def check_never_twice(self) -> None:
        """I1: no transaction reached the registry twice."""
        assert self.registry.duplicates() == []

    def check_conservation(self) -> None:
        """I3 for every certificate in the book."""
        for cert in self.book.certificates.values():
            assert domain.conservation_holds(cert), cert

    def check_no_stale_lock(self) -> None:
        """I5: every reservation belongs to a command that is not terminal."""
        for cert in self.book.certificates.values():
            for s in cert.slices.values():
                if s.reserved_by:
                    assert not self.command(s.reserved_by).is_terminal, (cert, s)
            if cert.withdrawal:
                assert not self.command(cert.withdrawal).is_terminal

    def check_invariants(self) -> None:
        self.check_never_twice()
        self.check_conservation()
        self.check_no_stale_lock()

    def aligned(self, certificate_id: str) -> bool:
        """I6 for one certificate: the book's current slices are the registry's."""
        cert = self.book.get_certificate(certificate_id)
        snapshot = self.registry.snapshot(certificate_id)
        if cert is None or cert.status in (
            domain.CertificateStatus.ISSUING,
            domain.CertificateStatus.REJECTED,
        ):
            return snapshot is None
        if snapshot is None or snapshot["withdrawn"] != (
            cert.status == domain.CertificateStatus.WITHDRAWN
        ):
            return False
        book = sorted(
            (s.ref, s.owner, s.quantity_wh, _registry_use(s.state))
            for s in cert.slices.values()
            if s.is_live
        )
        registry = sorted(
            (s["ref"], s["owner"], s["quantity"], s["state"]) for s in snapshot["slices"]
        )
        return book == registry

    def check_nothing_lost(self) -> None:
        """I2 after settling: every command is terminal."""
        open_ = self.book.open_commands(self.now() + timedelta(days=1), 10_000)
        assert open_ == [], [(c.command_id, c.status, c.error) for c in open_]

    def check_all_aligned(self) -> None:
        """I6: every certificate of the book equals the registry's."""
        for certificate_id in self.book.certificates:
            assert self.aligned(certificate_id), (
                self.book.get_certificate(certificate_id),
                self.registry.snapshot(certificate_id),
            )

    def check_settled(self) -> None:
        self.check_invariants()
        self.check_nothing_lost()
        self.check_all_aligned()


def _registry_use(state: domain.SliceState) -> str:
    """A book slice's state as the registry tells it: claimed, allocated, or available."""
    if state in (domain.SliceState.CLAIMED, domain.SliceState.ALLOCATED):
        return state.value
    return "available"
