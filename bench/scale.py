"""Section 4: the real worker at scale, in virtual time.

The accept use cases, `entrypoints.handle_queue_event` and the `Worker` run unchanged over the
in-memory book, an SQS FIFO model with W concurrent consumers (Lambda's event source mapping:
batches of 10, a group blocked while one of its messages is in flight, a failed record back
after the visibility timeout), and the registry simulator behind a capacity model: one FIFO
server of C transactions/s (a send of k transactions waits for the server, takes k/C of it)
plus a latency L per call (exponential jitter optional). Every DynamoDB call of the book and
every SQS receive can be given a latency too. Time is virtual: every actor (clients, workers)
is a thread, and a conductor lets exactly one run at a time, advancing the clock to the next
wake-up when all are waiting, so the results are deterministic and a minute of traffic takes
seconds.

Per scenario: a saturation run (arrivals above the bound) gives the throughput, a run at 70 %
of it gives p50/p99 accept->COMMITTED; then everything drains and I1 (no transaction sent
twice) and "every command COMMITTED" are checked. The bound of the issue is min(C, W/L): one
transaction in flight per worker; since a worker sends the first transactions of its whole
batch in one call, min(C, 10 W / L) is given as well.

    .venv/bin/python -m bench.scale [--quick]
"""

from __future__ import annotations

import argparse
import heapq
import itertools
import json
import math
import random
import statistics
import sys
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

T0 = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
BATCH = 10  # Lambda's SQS batch for FIFO queues is at most 10


# --- virtual time ------------------------------------------------------------------------------


class Conductor:
    """Cooperative threads in virtual time: one runs at a time; `sleep` yields to the next."""

    def __init__(self) -> None:
        self.now = 0.0
        self._heap: list[tuple[float, int, threading.Event]] = []
        self._seq = itertools.count()
        self._done = threading.Event()
        self._live = 0
        self.switches = 0
        self.error: BaseException | None = None

    def clock(self) -> datetime:
        return T0 + timedelta(seconds=self.now)

    def spawn(self, body: Callable[[], None], at: float = 0.0) -> None:
        wake = threading.Event()

        def run() -> None:
            wake.wait()
            try:
                body()
            except BaseException as exc:  # the first failure ends the run, and is raised
                self.error = self.error or exc
                self._heap.clear()
            finally:
                self._live -= 1
                self._next()

        self._live += 1
        threading.Thread(target=run, daemon=True).start()
        heapq.heappush(self._heap, (at, next(self._seq), wake))

    def side_by_side(self, bodies: Sequence[Callable[[], None]]) -> None:
        """Run `bodies` as actors from now and return once every one has ended (virtual time
        passes meanwhile): the worker's groups side by side, as its thread pool runs them."""
        if len(bodies) <= 1:
            from chalicelib.usecases.process import one_after_another

            one_after_another(bodies)
            return
        wake = threading.Event()
        left = [len(bodies)]

        def ending(body: Callable[[], None]) -> Callable[[], None]:
            def run() -> None:
                try:
                    body()
                finally:
                    left[0] -= 1
                    if not left[0]:  # the last one: the caller goes on from now
                        heapq.heappush(self._heap, (self.now, next(self._seq), wake))

            return run

        for body in bodies:
            self.spawn(ending(body), at=self.now)
        self._next()
        wake.wait()

    def sleep(self, seconds: float) -> None:
        wake = threading.Event()
        heapq.heappush(self._heap, (self.now + max(seconds, 0.0), next(self._seq), wake))
        self._next()
        wake.wait()

    def _next(self) -> None:
        self.switches += 1
        if not self._heap:
            self._done.set()
            return
        at, _, wake = heapq.heappop(self._heap)
        self.now = max(self.now, at)
        wake.set()

    def run(self) -> None:
        self._done = threading.Event()
        self._next()
        self._done.wait()
        if self.error:
            raise self.error


# --- the registry's capacity -----------------------------------------------------------------


class CapacityRegistry:
    """The registry port: the simulator behind one FIFO server of `capacity` transactions/s,
    plus `latency` (and exponential `jitter`) per call. Queries take the latency only."""

    def __init__(
        self,
        inner: Any,
        conductor: Conductor,
        capacity: float,
        latency: float,
        jitter: float = 0.0,
        query_latency: float = 0.05,
        seed: int = 1,
    ) -> None:
        self.inner = inner
        self.c = conductor
        self.capacity = capacity
        self.latency = latency
        self.jitter = jitter
        self.query_latency = query_latency
        self.rng = random.Random(seed)
        self.busy_until = 0.0
        self.calls: Counter = Counter()
        self.transactions = 0
        self.batch_sizes: list[int] = []

    @property
    def supports_queries(self) -> bool:
        return self.inner.supports_queries

    def _delay(self) -> float:
        return self.latency + (self.rng.expovariate(1 / self.jitter) if self.jitter else 0.0)

    def send(self, transactions):
        self.calls["send"] += 1
        self.transactions += len(transactions)
        self.batch_sizes.append(len(transactions))
        start = max(self.c.now, self.busy_until)
        self.busy_until = start + len(transactions) / self.capacity
        self.c.sleep(self.busy_until - self.c.now + self._delay())
        return self.inner.send(transactions)

    def status(self, transaction_id):
        self.calls["status"] += 1
        self.c.sleep(self.query_latency)
        return self.inner.status(transaction_id)

    def stream(self, certificate_id):
        self.calls["stream"] += 1
        self.c.sleep(self.query_latency)
        return self.inner.stream(certificate_id)


class SlowBook:
    """The in-memory book with a latency per call, like DynamoDB's."""

    def __init__(self, inner: Any, conductor: Conductor, latency: float) -> None:
        self._inner = inner
        self._c = conductor
        self._latency = latency
        self.calls = 0

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._inner, name)
        if not callable(attribute) or name.startswith("_"):
            return attribute

        def call(*args: Any, **kwargs: Any) -> Any:
            self.calls += 1
            if self._latency:
                self._c.sleep(self._latency)
            return attribute(*args, **kwargs)

        return call


# --- SQS FIFO with many consumers ------------------------------------------------------------


@dataclass
class Message:
    seq: int
    group: str
    body: str
    receives: int = 0


@dataclass
class Fifo:
    """SQS FIFO as Lambda's pollers see it: per group order; a group is blocked while one of
    its messages is in flight or waiting out a visibility timeout; a receive returns up to 10
    messages, oldest group heads first, several of one group together."""

    conductor: Conductor
    visibility_s: float = 30.0
    groups: dict[str, deque] = field(default_factory=dict)
    ready: list[tuple[int, str]] = field(default_factory=list)  # (head seq, group)
    delayed: list[tuple[float, int, str]] = field(default_factory=list)
    postponed: dict[int, float] = field(default_factory=dict)  # message seq -> seconds away
    busy: set = field(default_factory=set)
    seq: itertools.count = field(default_factory=itertools.count)
    sent: int = 0
    depth_max: int = 0
    depth: int = 0

    def send(self, command: Any, holds_taken: bool = True, **extra: Any) -> None:
        from chalicelib.adapters.sqs import message_body

        body = message_body(command, holds_taken, **extra)
        message = Message(next(self.seq), command.certificate_id, body)
        group = self.groups.setdefault(message.group, deque())
        group.append(message)
        if len(group) == 1 and message.group not in self.busy:
            heapq.heappush(self.ready, (message.seq, message.group))
        self.sent += 1
        self.depth += 1
        self.depth_max = max(self.depth_max, self.depth)

    def send_many(self, messages: Any) -> list:
        for command, certificates in messages:
            self.send(command, certificates=certificates)
        return []

    def receive(self, limit: int = BATCH) -> list[Message]:
        now = self.conductor.now
        while self.delayed and self.delayed[0][0] <= now:
            _, _, group = heapq.heappop(self.delayed)
            self.busy.discard(group)
            if self.groups.get(group):
                heapq.heappush(self.ready, (self.groups[group][0].seq, group))
        batch: list[Message] = []
        while self.ready and len(batch) < limit:
            _, group = heapq.heappop(self.ready)
            messages = self.groups[group]
            while messages and len(batch) < limit:
                message = messages.popleft()
                message.receives += 1
                batch.append(message)
            self.busy.add(group)
        return batch

    def postpone(self, later: list[tuple[str, float]]) -> int:
        """ChangeMessageVisibilityBatch on received messages: each group is back after its
        message's seconds."""
        for receipt_handle, seconds in later:
            self.postponed[int(receipt_handle)] = seconds
        return 0

    def settle(self, batch: list[Message], failed: set[int]) -> None:
        """Delete the done messages; the failed ones go back to the head of their group,
        visible again after the visibility timeout, or as postponed."""
        back: dict[str, list[Message]] = {}
        for message in batch:
            if message.seq in failed:
                back.setdefault(message.group, []).append(message)
            else:
                self.depth -= 1
        for group in {m.group for m in batch}:
            if group in back:
                self.groups[group].extendleft(reversed(back[group]))
                head = back[group][0].seq
                wait = self.postponed.pop(head, self.visibility_s)
                for message in back[group][1:]:
                    self.postponed.pop(message.seq, None)
                heapq.heappush(self.delayed, (self.conductor.now + wait, next(self.seq), group))
                continue
            self.busy.discard(group)
            if self.groups.get(group):
                heapq.heappush(self.ready, (self.groups[group][0].seq, group))


def lambda_event(batch: list[Message]) -> dict[str, Any]:
    return {
        "Records": [
            {
                "messageId": str(m.seq),
                "receiptHandle": str(m.seq),
                "body": m.body,
                "attributes": {
                    "MessageGroupId": m.group,
                    "ApproximateReceiveCount": str(m.receives),
                },
                "eventSource": "aws:sqs",
            }
            for m in batch
        ]
    }


# --- a scenario --------------------------------------------------------------------------------


@dataclass
class Scenario:
    name: str
    capacity: float  # C, transactions/s
    latency: float  # L, seconds per registry call
    workers: int  # W, concurrent worker invocations
    certificates: int = 0  # G: 0 = every command a new certificate (issuance)
    parts: int = 10  # hot groups: slices per certificate, each then transferred
    jitter: float = 0.0  # mean of an exponential extra latency per send
    query_latency: float = 0.05  # per status or stream query
    commit_delay: float = 1.0  # queries mode: PENDING this long after it is received
    book_latency: float = 0.005  # per DynamoDB call
    sqs_latency: float = 0.01  # per receive
    queries: bool = False
    seconds: float = 60.0  # of arrivals, per run
    steady_rate: float = 0.0  # the latency run's rate (0: 70 % of the saturation throughput)
    note: str = ""

    @property
    def bound(self) -> float:
        return min(self.capacity, self.workers / self.latency)

    @property
    def batched_bound(self) -> float:
        bound = min(self.capacity, BATCH * self.workers / self.latency)
        if self.certificates:  # one batch in flight per FIFO group
            bound = min(bound, BATCH * self.certificates / self.latency)
        return bound


class World:
    def __init__(self, s: Scenario, seed: int = 1) -> None:
        from chalicelib.adapters.memory import InMemoryBook
        from chalicelib.registry.builder import PlainTransactionBuilder
        from chalicelib.registry.sandbox.simulator import RegistrySimulator, SimulatorConfig
        from chalicelib.settings import Settings
        from chalicelib.usecases.process import Worker

        self.s = s
        self.c = Conductor()
        self.memory = InMemoryBook()
        self.book = SlowBook(self.memory, self.c, s.book_latency)
        self.queue = Fifo(self.c)
        simulator = RegistrySimulator(
            SimulatorConfig(
                queries=s.queries, commit_delay_s=s.commit_delay if s.queries else 0.0, seed=seed
            ),
            clock=lambda: self.c.now,
            sleep=lambda _s: None,
        )
        self.simulator = simulator
        self.registry = CapacityRegistry(
            simulator, self.c, s.capacity, s.latency, s.jitter, s.query_latency, seed=seed
        )
        settings = Settings()  # the deployed defaults: lease, commit check, registry batch
        self.worker = Worker(
            book=self.book,
            registry=self.registry,
            builder=PlainTransactionBuilder(settings.registry_name),
            clock=self.c.clock,
            lease_s=settings.lease_s,
            commit_check_s=settings.commit_check_s,
            batch_size=settings.registry_batch_size,
            run_side_by_side=self.c.side_by_side,  # as deployed: a batch's groups side by side
        )
        self.rng = random.Random(seed)
        self.accepted: list[str] = []
        self.stop_at = 0.0
        self.invocations = 0
        self.refused = 0
        self.busy_s = 0.0  # worker time spent in invocations, summed over workers
        self._serial = 0

    # --- clients ---------------------------------------------------------------------------

    def _request(self, actor: Any) -> Any:
        from chalicelib import domain
        from chalicelib.usecases import accept

        self._serial += 1
        key = f"k-{self._serial}"
        return accept.Request(
            actor=actor,
            idempotency_key=key,
            body_hash=domain.request_hash(key),
            now=self.c.clock(),
            attempt_timeout=timedelta(seconds=25),
        )

    def issue(self, n: int, owner: str = "alice") -> Any:
        from chalicelib.domain import Actor, CertificateType, IssueSpec, Period, Role
        from chalicelib.usecases import accept

        start = T0.replace(hour=0) - timedelta(hours=n % 5000)
        spec = IssueSpec(
            type=CertificateType.PRODUCTION,
            gsrn=f"57{n:016d}",
            grid_area="DK1",
            period=Period.of(start, start + timedelta(hours=1)),
            quantity_wh=1000,
            owner=owner,
            attributes={"technology": "T010000"},
        )
        issuer = Actor(owner="issuer-dk", roles=frozenset({Role.ISSUER}))
        return accept.issue(self.book, self.queue, self._request(issuer), spec)

    def arrivals(
        self, rate: float, seconds: float, make: Callable[[int], Any], count: int | None
    ) -> None:
        """Open-loop arrivals at `rate` per second (Poisson) for `seconds`, or `count` of
        them evenly spaced. Each request is its own actor (API Lambdas run side by side)."""
        end = self.c.now + seconds
        n = 0
        while self.c.now < end if count is None else n < count:
            self.c.spawn(lambda n=n: self._accept(make, n), at=self.c.now)
            n += 1
            self.c.sleep(self.rng.expovariate(rate) if count is None else 1 / rate)

    def _accept(self, make: Callable[[int], Any], n: int) -> None:
        from chalicelib.domain import DomainError

        try:
            command = make(n)
        except DomainError:
            self.refused += 1
            return
        if command is not None:
            self.accepted.append(command.command_id)

    # --- workers -----------------------------------------------------------------------------

    def worker_loop(self) -> None:
        from chalicelib import entrypoints

        while True:
            batch = self.queue.receive()
            if not batch:
                if self.c.now >= self.stop_at and self.queue.depth == 0:
                    return
                self.c.sleep(0.05)  # an empty (long) poll
                continue
            began = self.c.now
            self.c.sleep(self.s.sqs_latency)
            self.invocations += 1
            answer = entrypoints.handle_queue_event(
                lambda_event(batch), self.worker, 10, self.queue.postpone
            )
            failed = {int(f["itemIdentifier"]) for f in answer.get("batchItemFailures", [])}
            self.queue.settle(batch, failed)
            self.busy_s += self.c.now - began

    # --- a run -------------------------------------------------------------------------------

    def run(
        self,
        rate: float,
        make: Callable[[int], Any],
        seconds: float,
        count: int | None = None,
        saturating: bool = False,
    ) -> dict[str, Any]:
        started = self.c.now
        before = len(self.accepted)
        busy_before = self.busy_s
        if count is not None:
            seconds = count / rate
        self.stop_at = started + seconds
        self.c.spawn(lambda: self.arrivals(rate, seconds, make, count), at=started)
        for i in range(self.s.workers):
            self.c.spawn(self.worker_loop, at=started + i * 1e-6)
        wall = time.perf_counter()
        self.c.run()
        wall = time.perf_counter() - wall
        ids = self.accepted[before:]
        commands = [self.memory.get_command(i) for i in ids]
        statuses = Counter(c.status.value for c in commands)
        done = [c for c in commands if c.status.value == "COMMITTED"]
        latencies = sorted((c.updated_at - c.created_at).total_seconds() for c in done)
        # Throughput in the steady part of the arrival window (after a warm-up of 10 %). Below
        # saturation, commits trail arrivals by the latency: the window moves with it.
        lag = statistics.median(latencies) if latencies and not saturating else 0.0
        t_from = T0 + timedelta(seconds=started + 0.1 * seconds + lag)
        t_to = T0 + timedelta(seconds=started + seconds + lag)
        window = [c for c in done if t_from <= c.updated_at < t_to]
        last = max((c.updated_at for c in done), default=self.c.clock())
        makespan = (last - (T0 + timedelta(seconds=started))).total_seconds()
        return {
            "drain_throughput_per_s": len(done) / max(makespan, 1e-9),
            "offered_per_s": rate,
            "commands": len(ids),
            "statuses": dict(statuses),
            "throughput_per_s": len(window) / (0.9 * seconds),
            "latency_p50_s": statistics.median(latencies) if latencies else None,
            "latency_p99_s": latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))]
            if latencies
            else None,
            "virtual_s": self.c.now - started,
            "wall_s": wall,
            # Mean worker invocations in progress (Lambda concurrency in use), by Little's law.
            "mean_concurrency": (self.busy_s - busy_before) / max(self.c.now - started, 1e-9),
        }


def run_scenario(s: Scenario, log: Callable = print) -> dict[str, Any]:
    """Saturation, then a run at 70 % of the measured throughput, on one world."""
    world = World(s)
    if s.certificates:
        return _run_transfers(world, s, log)
    saturation = world.run(1.25 * s.batched_bound, world.issue, s.seconds, saturating=True)
    rate = s.steady_rate or 0.7 * saturation["throughput_per_s"]
    offset = 10**7
    steady = world.run(rate, lambda n: world.issue(offset + n), s.seconds)
    return _summary(world, s, saturation, steady, log)


def _run_transfers(world: World, s: Scenario, log: Callable) -> dict[str, Any]:
    """G certificates, each cut into parts that are then transferred one by one: several
    commands queued on one FIFO group at a time."""
    from chalicelib.domain import Actor, SliceRef
    from chalicelib.usecases import accept

    parts = s.parts
    alice = Actor(owner="alice")
    # Set-up (not measured): issue G certificates and cut each into `parts` slices.
    world.run(1000, world.issue, 0, count=s.certificates)
    certs = [world.memory.get_command(i).certificate_id for i in world.accepted]

    def cut(n: int) -> Any:
        cert = world.memory.get_certificate(certs[n % len(certs)])
        ref = SliceRef(certificate_id=cert.certificate_id, slice_id=next(iter(cert.slices)))
        return accept.slice_certificate(
            world.book, world.queue, world._request(alice), ref, [1000 // parts] * parts
        )

    world.run(1000, cut, 0, count=len(certs))
    free = deque()
    for cid in certs:
        cert = world.memory.get_certificate(cid)
        free.extend(
            (cid, sid)
            for sid, sl in cert.slices.items()
            if sl.state.value == "available" and sl.owner == "alice"
        )
    world.rng.shuffle(free)

    def transfer(_n: int) -> Any:
        if not free:
            return None
        cid, sid = free.popleft()
        return accept.transfer(
            world.book,
            world.queue,
            world._request(alice),
            SliceRef(certificate_id=cid, slice_id=sid),
            "bob",
            1000 // parts,
        )

    # Saturation: half the transfers at once (a burst well above every bound); throughput is
    # what completes over the time from the first request to the last COMMITTED. Then the
    # other half at 70 % of that, for the latencies.
    half = len(free) // 2
    saturation = world.run(1.25 * s.batched_bound, transfer, 0, count=half, saturating=True)
    saturation["throughput_per_s"] = saturation["drain_throughput_per_s"]
    rate = 0.7 * saturation["throughput_per_s"]
    steady = world.run(rate, transfer, 0, count=len(free))
    return _summary(world, s, saturation, steady, log)


def _summary(world: World, s: Scenario, saturation: dict, steady: dict, log: Callable) -> dict:
    statuses = Counter(c.status.value for c in world.memory.commands.values())
    duplicates = world.simulator.duplicates()
    sizes = world.registry.batch_sizes
    result = {
        "scenario": s.__dict__,
        "bound_per_s": s.bound,
        "batched_bound_per_s": s.batched_bound,
        "saturation": saturation,
        "steady": steady,
        "ratio_to_bound": saturation["throughput_per_s"] / s.bound,
        "ratio_to_batched_bound": saturation["throughput_per_s"] / s.batched_bound,
        "all_committed": set(statuses) == {"COMMITTED"},
        "statuses": dict(statuses),
        "duplicates": len(duplicates),
        "registry_calls": dict(world.registry.calls),
        "mean_transactions_per_send": sum(sizes) / len(sizes) if sizes else 0,
        "registry_utilisation": world.registry.transactions / (s.capacity * world.c.now),
        "worker_invocations": world.invocations,
        "book_calls_per_command": world.book.calls / max(1, len(world.memory.commands)),
        "queue_depth_max": world.queue.depth_max,
    }
    log(
        f"scale: {s.name}: {saturation['throughput_per_s']:.1f}/s of bound {s.bound:.1f} "
        f"({result['ratio_to_bound']:.0%}; batched bound {s.batched_bound:.0f}), "
        f"p50/p99 {steady['latency_p50_s']:.2f}/{steady['latency_p99_s']:.2f} s at "
        f"{steady['offered_per_s']:.0f}/s, duplicates {len(duplicates)}, "
        f"wall {saturation['wall_s'] + steady['wall_s']:.1f} s"
    )
    return result


# --- the scenarios -----------------------------------------------------------------------------

REGISTRY_INSTANCE_TX_S = 160  # REGISTRY.md: ~150-170 transactions/s per instance


def scenarios(quick: bool = False, danish_scale: float = 0.1) -> list[Scenario]:
    seconds = 5.0 if quick else 30.0
    out = [
        Scenario("registry-bound", capacity=160, latency=0.5, workers=100, seconds=seconds),
        Scenario("worker-bound", capacity=2000, latency=1.0, workers=20, seconds=seconds),
        Scenario(
            "balanced",
            capacity=160,
            latency=1.0,
            workers=160,
            seconds=seconds,
            note="W/L = C",
        ),
        Scenario(
            "queries-mode",
            capacity=160,
            latency=0.5,
            workers=100,
            queries=True,
            seconds=seconds,
            note="send answers PENDING; COMMITTED 1 s later; the worker polls status",
        ),
        Scenario(
            "hot-groups",
            capacity=2000,
            latency=0.5,
            workers=50,
            certificates=10,
            parts=20 if quick else 50,
            seconds=seconds,
            note="G certificates cut into parts, each part transferred: many commands per "
            "FIFO group (not a target: one batch in flight per group bounds it at G x 10 / L)",
        ),
    ]
    instances = math.ceil(4000 / REGISTRY_INSTANCE_TX_S / 0.8)  # 80 % utilisation at most
    out.append(
        Scenario(
            "danish",
            capacity=instances * REGISTRY_INSTANCE_TX_S * danish_scale,
            latency=0.5,
            jitter=0.5,
            queries=True,
            workers=max(1, round(1500 * danish_scale)),
            seconds=3.0 if quick else 15.0,
            steady_rate=4000 * danish_scale,
            note=f"4,000 commands/s at scale {danish_scale:g}: {instances} registry instances "
            f"of {REGISTRY_INSTANCE_TX_S} tx/s; send 0.5 s + exp(0.5 s), COMMITTED 1 s later",
        )
    )
    return out


def danish(result: dict[str, Any], scale: float) -> dict[str, Any]:
    """The sizing for 4,000 commands/s from the simulated run (scaled back up)."""
    s = result["scenario"]
    steady = result["steady"]
    # Little's law on the worker side: concurrency = rate x time a command holds a worker.
    return {
        "rate": 4000,
        "registry_instances": round(s["capacity"] / scale / REGISTRY_INSTANCE_TX_S),
        "workers_simulated": s["workers"],
        "mean_concurrency_simulated": steady["mean_concurrency"],
        "worker_concurrency_at_4000": round(steady["mean_concurrency"] / scale),
        "throughput_at_4000_est": result["saturation"]["throughput_per_s"] / scale,
        "latency_p50_s": steady["latency_p50_s"],
        "latency_p99_s": steady["latency_p99_s"],
        "mean_transactions_per_send": result["mean_transactions_per_send"],
    }


def run(quick: bool = False, danish_scale: float = 0.1, log: Callable = print) -> dict[str, Any]:
    out: dict[str, Any] = {"scenarios": [], "danish_scale": danish_scale}
    for s in scenarios(quick, danish_scale):
        result = run_scenario(s, log)
        out["scenarios"].append(result)
        if s.name == "danish":
            out["danish"] = danish(result, danish_scale)
    return out


def table(result: dict[str, Any]) -> str:
    lines = [
        "| scenario | C tx/s | L s | W | G | bound min(C, W/L) | throughput | ratio "
        "| batched bound | below saturation: offered -> done /s, p50 / p99 s | tx/send "
        "| I1 dup | all COMMITTED |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["scenarios"]:
        s = r["scenario"]
        st = r["steady"]
        lines.append(
            f"| {s['name']} | {s['capacity']:.0f} | {s['latency']:g}"
            f"{'+exp' + format(s['jitter'], 'g') if s['jitter'] else ''} | {s['workers']} "
            f"| {s['certificates'] or 'new'} | {r['bound_per_s']:.0f} "
            f"| **{r['saturation']['throughput_per_s']:.1f}** | {r['ratio_to_bound']:.0%} "
            f"| {r['batched_bound_per_s']:.0f} "
            f"| {st['offered_per_s']:.0f} -> {st['throughput_per_s']:.0f}, "
            f"{st['latency_p50_s']:.2f} / {st['latency_p99_s']:.2f} "
            f"| {r['mean_transactions_per_send']:.1f} | {r['duplicates']} "
            f"| {'yes' if r['all_committed'] else 'NO ' + json.dumps(r['statuses'])} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.scale", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="short runs (smoke)")
    parser.add_argument("--danish-scale", type=float, default=0.1)
    parser.add_argument("--out", type=Path, default=Path("bench/results/scale.json"))
    args = parser.parse_args(argv)
    result = run(args.quick, args.danish_scale)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1, sort_keys=True, default=str))
    print(table(result))
    return 0


# --- the whole service at Danish scale (issue 16) ---------------------------------------------
#
# Accept, the worker, the reconciler (today's single pass, or one pass per shard) and expiry,
# over the in-memory book behind DynamoDB's per-partition limits. The keys and units each book
# call touches follow the DynamoDB book's layout (chalicelib/adapters/dynamo.py) and the units
# bench/capacity.py measures; a partition key may take 1,000 WCU and 3,000 RCU a second. A
# throttled call is retried as the SDK retries DynamoDB (up to 10 attempts, 50 ms x 2^n
# backoff), then fails as DependencyDown. Everything per second (arrivals, registry capacity,
# per-key limits, per-pass limits) is scaled by `scale`; key and shard counts are not.

PARTITION_WCU, PARTITION_RCU = 1000.0, 3000.0
EXPIRY_PER_DAY = 84_000_000  # 15-minute resolution, all Danish metering points


class Partitions:
    """Per-key use of write and read units against DynamoDB's partition limits.

    At scale s every key sees s times its traffic, and Poisson arrivals make a second of it far
    noisier than at full scale; so a key's "second" here is 1/s seconds of simulated time, with
    the full limits: the counts per window have the mean and spread of a full-scale second. A
    single actor (a reconciler pass) does not get faster with the population: its units are
    weighted by s (`weight`, set per thread)."""

    def __init__(self, conductor: Conductor, scale: float) -> None:
        self.c = conductor
        self.window = 1.0 / scale
        self.used: dict[tuple[str, int], list[float]] = {}
        self.peak: dict[str, list[float]] = {}  # key -> [peak WCU/s, peak RCU/s] at full scale
        self.throttled: Counter = Counter()  # key -> throttled requests
        self.scale = scale
        self.wcu_total = 0.0  # simulated units (x 1/scale for full scale)
        self.rcu_total = 0.0
        self._local = threading.local()

    def weigh_as_one_actor(self) -> None:
        self._local.weight = self.scale

    def _weight(self) -> float:
        return getattr(self._local, "weight", 1.0)

    def fits(self, charges: list[tuple[str, float, float]]) -> bool:
        window, weight = int(self.c.now / self.window), self._weight()
        for key, w, r in charges:
            used = self.used.get((key, window), [0.0, 0.0])
            if used[0] + w * weight > PARTITION_WCU or used[1] + r * weight > PARTITION_RCU:
                self.throttled[key] += 1
                return False
        return True

    def charge(self, charges: list[tuple[str, float, float]]) -> None:
        window, weight = int(self.c.now / self.window), self._weight()
        for key, w, r in charges:
            used = self.used.setdefault((key, window), [0.0, 0.0])
            used[0] += w * weight
            used[1] += r * weight
            self.wcu_total += w
            self.rcu_total += r
            peak = self.peak.setdefault(key, [0.0, 0.0])
            peak[0] = max(peak[0], used[0])
            peak[1] = max(peak[1], used[1])
            if used[0] > PARTITION_WCU or used[1] > PARTITION_RCU:
                self.throttled[key] += 1  # a write the call made after the fact (an index)
        if len(self.used) > 200_000:  # forget old windows
            self.used = {k: v for k, v in self.used.items() if k[1] >= window - 1}

    def hottest(self, n: int = 5) -> list[tuple[str, float, float]]:
        ranked = sorted(
            self.peak.items(),
            key=lambda kv: -max(kv[1][0] / PARTITION_WCU, kv[1][1] / PARTITION_RCU),
        )
        return [(k, round(w), round(r)) for k, (w, r) in ranked[:n]]


class PartitionedBook:
    """The in-memory book as DynamoDB would serve it: latency per call, the keys each call
    writes and reads charged against their partition's limits, throttling retried like the
    SDK does and then raised as DependencyDown."""

    RETRIES = 10

    def __init__(self, inner: Any, conductor: Conductor, latency: float, parts: Partitions):
        self._inner = inner
        self._c = conductor
        self._latency = latency
        self.parts = parts
        self.calls = 0
        self.failed = 0

    # the keys of the DynamoDB layout
    def _open(self, command_id: str) -> str:
        from chalicelib.adapters.memory import shard_of

        return f"OPEN#{shard_of(command_id, self._inner.shards)}"

    def _expiry(self, cert: Any) -> str:
        from chalicelib.adapters.memory import shard_of

        shard = shard_of(cert.certificate_id, self._inner._expiry_shards)
        return f"EXPIRY#{cert.period.start.date()}#{shard}"

    def _charges(self, name: str, args: tuple, kwargs: dict) -> list[tuple[str, float, float]]:
        inner = self._inner
        if name == "add_command":
            (command,) = args
            out = [(f"CMD#{command.command_id}", 2, 0), (self._open(command.command_id), 1, 0)]
            if command.kind.value in ("transfer", "claim"):
                out.append((f"CALLER#{command.caller}#{command.kind.value}", 1, 0))
            return out
        if name == "transition":
            command_id, change = args
            out = [(f"CMD#{command_id}", 2, 0)]
            if change.reconciled and change.target.value in ("COMMITTED", "REJECTED"):
                out.append((self._open(command_id), 1, 0))
            return out
        if name == "mark_reconciled":
            return [(f"CMD#{args[0]}", 2, 0), (self._open(args[0]), 1, 0)]
        if name == "get_command":
            return [(f"CMD#{args[0]}", 0, 1)]
        if name == "keep_command":
            return [(f"CMD#{args[0]}", 2, 0)]
        if name == "forget_command":
            return [(f"CMD#{args[0].command_id}", 2, 0), (self._open(args[0].command_id), 1, 0)]
        if name == "get_certificate":
            return [(f"CERT#{args[0]}", 0, 1)]
        if name == "get_certificates":
            return [(f"CERT#{i}", 0, 1) for i in dict.fromkeys(args[0])]
        if name == "add_certificate":
            (cert,) = args
            return [
                (f"CERT#{cert.certificate_id}", 1, 0),
                (f"OWNER#{cert.owner}", 1, 0),
                (self._expiry(cert), 1, 0),
            ]
        if name == "reserve":
            return [(f"CERT#{args[0].certificate_id}", 1, 1)]
        if name == "update_certificate":
            return [(f"CERT#{args[0]}", 1, 1)]
        if name == "add_holding":
            return [(f"OWNER#{args[0]}", 1, 0)]
        if name == "note_receipt":
            (command,) = args
            return [
                (f"CMD#{command.command_id}#R", 1, 0),
                (f"CALLER#{command.receiver}#transfer", 1, 0),
            ]
        if name in ("open_commands", "settled_commands"):
            shard = kwargs.get("shard")
            shards = range(inner.shards) if shard is None else (shard,)
            return [(f"OPEN#{k}", 0, 0.5) for k in shards]
        if name == "expiring_certificates":
            day, shard = args[0], kwargs.get("shard")
            shards, expiry = inner.shards, inner._expiry_shards
            wanted = range(expiry) if shard is None else range(shard, expiry, shards)
            return [(f"EXPIRY#{day}#{e}", 0, 0.5) for e in wanted]
        if name in ("acquire_lease", "release_lease"):
            return [(f"LEASE#{args[0]}", 1, 0)]
        if name == "add_audit":
            return [(f"AUDIT#{args[0]}", 1, 0)]
        return []

    def _after(self, name: str, args: tuple, kwargs: dict, result: Any, before: Any) -> list:
        """Writes a call makes that depend on what it found: index entries it removes, the
        items a listing reads."""
        if name == "update_certificate" and before is not None and result is not None:
            live = ("issuing", "active")
            if before.status.value in live and result.status.value not in live:
                return [(self._expiry(before), 1, 0)]
        if name in ("open_commands", "settled_commands"):
            return [(f"CMD#{c.command_id}", 0, 1) for c in result]
        return []

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._inner, name)
        if not callable(attribute) or name.startswith("_"):
            return attribute

        def call(*args: Any, **kwargs: Any) -> Any:
            from chalicelib.ports import DependencyDown

            self.calls += 1
            charges = self._charges(name, args, kwargs)
            for attempt in range(self.RETRIES):
                if self._latency:
                    self._c.sleep(self._latency)
                if self.parts.fits(charges):
                    break
                # the SDK's backoff, stretched as a key's second is (see Partitions)
                self._c.sleep(0.05 * 2**attempt * random.random() * self.parts.window)
            else:
                self.failed += 1
                raise DependencyDown(f"{name}: throttled {self.RETRIES} times")
            before = self._inner.get_certificate(args[0]) if name == "update_certificate" else None
            result = attribute(*args, **kwargs)
            self.parts.charge(charges + self._after(name, args, kwargs, result, before))
            return result

        return call


@dataclass
class Layout:
    """How the service is deployed: today's single pass, or the scaled-out reconciler."""

    name: str
    open_shards: int
    expiry_shards: int
    reconciler_shards: bool  # one pass per shard (usecases.shards) or one pass for all
    drift_check_one_in: int  # the worker settles all but 1 in N committed commands
    max_commands: int = 500  # per pass (per shard): open and settled commands
    expiry_limit: int = 500  # per expiry listing


TODAY = Layout(
    "today", open_shards=8, expiry_shards=1, reconciler_shards=False, drift_check_one_in=1
)
SCALED = Layout(
    "scaled-out",
    open_shards=64,
    expiry_shards=64,
    reconciler_shards=True,
    drift_check_one_in=100,
    expiry_limit=2000,
)


class ServiceWorld(World):
    """World with the whole service: partitions, the reconciler and expiry."""

    def __init__(self, s: Scenario, layout: Layout, scale: float, seed: int = 1) -> None:
        super().__init__(s, seed)
        from chalicelib.adapters.memory import InMemoryBook

        self.layout = layout
        self.scale = scale
        self.memory = InMemoryBook(
            open_shards=layout.open_shards, expiry_shards=layout.expiry_shards
        )
        self.parts = Partitions(self.c, scale)
        self.book = PartitionedBook(self.memory, self.c, s.book_latency, self.parts)
        self.worker.book = self.book
        self.worker.drift_check_one_in = layout.drift_check_one_in
        self.backlog: list[tuple[float, int]] = []  # (t, open-commands index entries)
        self.expiry_backlog: list[tuple[float, int]] = []  # (t, certificates due, not expired)
        self.passes: Counter = Counter()
        self.pass_seconds: list[float] = []
        self.transferable: deque = deque()
        self.due: list[tuple[datetime, str]] = []  # (expires at, certificate id), preloaded

    # the Danish mix: 80 % issues (15-minute periods of the last day), 20 % whole transfers
    def danish_command(self, n: int) -> Any:
        from chalicelib.domain import Actor, CertificateType, IssueSpec, Period, Role, SliceRef
        from chalicelib.usecases import accept

        if n % 5 == 4 and self.transferable:
            certificate_id = self.transferable.popleft()
            cert = self.memory.get_certificate(certificate_id)
            if cert is None or cert.status.value != "active":
                self.refused += 1
                return None
            slice_id, piece = next(iter(cert.slices.items()))
            owner = piece.owner
            receiver = f"owner-{(int(owner.split('-')[1]) + 1) % 2000}"
            return accept.transfer(
                self.book,
                self.queue,
                self._request(Actor(owner=owner)),
                SliceRef(certificate_id=certificate_id, slice_id=slice_id),
                receiver,
                piece.quantity_wh,
            )
        start = T0.replace(hour=0) - timedelta(minutes=15 * (n % 96))
        spec = IssueSpec(
            type=CertificateType.PRODUCTION,
            gsrn=f"57{n:016d}",
            grid_area="DK1",
            period=Period.of(start, start + timedelta(minutes=15)),
            quantity_wh=1000,
            owner=f"owner-{n % 2000}",
            attributes={"technology": "T010000"},
        )
        issuer = Actor(owner="issuer-dk", roles=frozenset({Role.ISSUER}))
        command = accept.issue(self.book, self.queue, self._request(issuer), spec)
        self.c.spawn(lambda: self._later_transferable(command.certificate_id), at=self.c.now + 20)
        return command

    def _later_transferable(self, certificate_id: str) -> None:
        self.transferable.append(certificate_id)

    def _accept(self, make: Callable[[int], Any], n: int) -> None:
        from chalicelib.ports import DependencyDown

        try:
            super()._accept(make, n)
        except DependencyDown:  # the API answers 503; the client retries later (not counted)
            self.refused += 1

    def preload_expiring(self, expiry_days: int) -> None:
        """The quarter hour whose certificates expire as the run starts: 84 million a day are
        875,000 a quarter hour (scaled), all due at once, to be swept before the next quarter.
        Written straight into the book as issued a year ago."""
        from chalicelib import domain
        from chalicelib.domain import CertificateType, IssueSpec, Period
        from chalicelib.usecases import holds

        start = self.c.clock() - timedelta(days=expiry_days)
        for i in range(int(EXPIRY_PER_DAY / 96 * self.scale)):
            spec = IssueSpec(
                type=CertificateType.PRODUCTION,
                gsrn=f"58{i:016d}",
                grid_area="DK1",
                period=Period.of(start, start + timedelta(minutes=15)),
                quantity_wh=1000,
                owner=f"owner-{i % 2000}",
            )
            certificate_id = domain.certificate_id_for(spec.gsrn, spec.type, spec.period.start)
            command = self._preload_command(certificate_id, spec, i)
            self.memory.add_certificate(holds.certificate_to_issue(command))
            self.memory.update_certificate(
                certificate_id, lambda c, cmd=command: domain.apply_issue(c, cmd)
            )
            self.due.append((start + timedelta(days=expiry_days), certificate_id))

    def _preload_command(self, certificate_id: str, spec: Any, i: int) -> Any:
        from chalicelib.domain import Command, CommandKind

        return Command(
            command_id=f"preload-{i}",
            kind=CommandKind.ISSUE,
            certificate_id=certificate_id,
            caller="issuer-dk",
            request_hash="-",
            created_at=T0 - timedelta(days=400),
            updated_at=T0 - timedelta(days=400),
            issue=spec,
        )

    def reconciler_loop(self, shard: int | None, until: float) -> None:
        from chalicelib.settings import Settings
        from chalicelib.usecases import shards
        from chalicelib.usecases.reconcile import Reconciler

        settings = Settings()
        reconciler = Reconciler(
            book=self.book,
            queue=self.queue,
            registry=self.registry,
            worker=self.worker,
            clock=self.c.clock,
            redrive_after_s=settings.redrive_after_s,
            expiry_days=settings.certificate_expiry_days,
            max_commands=max(1, round(self.layout.max_commands * self.scale)),
            expiry_limit=max(1, round(self.layout.expiry_limit * self.scale)),
            lease_s=settings.lambda_timeout_s * 2,
        )
        if shard is not None:
            reconciler = shards.for_shard(reconciler, shard)
        self.parts.weigh_as_one_actor()
        while self.c.now < until:
            began = self.c.now
            from chalicelib.ports import DependencyDown

            try:
                report = reconciler.run()
                self.passes.update(report.actions)
            except DependencyDown:
                self.passes["pass_failed_throttled"] += 1
            self.pass_seconds.append(self.c.now - began)
            self.c.sleep(max(0.0, 60.0 - (self.c.now - began)))

    def observer(self, until: float) -> None:
        while self.c.now < until:
            self.backlog.append((self.c.now, len(self.memory._listed)))
            now = self.c.clock()
            due = [cid for at, cid in self.due if at <= now]
            left = sum(
                1 for cid in due if self.memory.get_certificate(cid).status.value == "active"
            )
            self.expiry_backlog.append((self.c.now, left))
            self.c.sleep(30.0)


def danish_service(
    scale: float = 0.02, minutes: float = 15.0, layout: Layout = SCALED, log: Callable = print
) -> dict[str, Any]:
    """15 minutes of the Danish mix at 4,000 commands/s (x scale) through the whole service."""
    instances = math.ceil(4000 / REGISTRY_INSTANCE_TX_S / 0.8)
    s = Scenario(
        "danish-service",
        capacity=instances * REGISTRY_INSTANCE_TX_S * scale,
        latency=0.5,
        jitter=0.5,
        queries=True,
        workers=max(1, round(1500 * scale)),
        seconds=minutes * 60,
    )
    world = ServiceWorld(s, layout, scale)
    seconds = minutes * 60
    rate = 4000 * scale
    world.preload_expiring(365)
    world.stop_at = seconds
    world.c.spawn(lambda: world.arrivals(rate, seconds, world.danish_command, None), at=0.0)
    for i in range(s.workers):
        world.c.spawn(world.worker_loop, at=i * 1e-6)
    shard_ids = range(layout.open_shards) if layout.reconciler_shards else [None]
    for k, shard in enumerate(shard_ids):  # the schedule's fan-out: spread over the minute
        world.c.spawn(lambda shard=shard: world.reconciler_loop(shard, seconds), at=5.0 + k * 0.1)
    world.c.spawn(lambda: world.observer(seconds + 1), at=0.0)
    wall = time.perf_counter()
    world.c.run()
    wall = time.perf_counter() - wall
    commands = [world.memory.get_command(i) for i in world.accepted]
    done = [c for c in commands if c.status.value == "COMMITTED"]
    end = T0 + timedelta(seconds=seconds)
    latencies = sorted((c.updated_at - c.created_at).total_seconds() for c in done)
    window_from = T0 + timedelta(seconds=0.2 * seconds)
    committed_rate = sum(1 for c in done if window_from <= c.updated_at < end) / (0.8 * seconds)
    last5 = [b for t, b in world.backlog if t >= seconds - 300]
    growth_per_min = (last5[-1] - last5[0]) / 5 if len(last5) > 1 else 0.0
    due_total = sum(1 for at, _ in world.due if at <= end)
    result = {
        "layout": layout.__dict__,
        "scale": scale,
        "minutes": minutes,
        "offered_per_s": rate,
        "accepted": len(commands),
        "refused_or_throttled_at_accept": world.refused,
        "committed_per_s": committed_rate,
        "committed_share": committed_rate / rate,
        "statuses": dict(Counter(c.status.value for c in commands)),
        "latency_p50_s": statistics.median(latencies) if latencies else None,
        "latency_p99_s": latencies[int(0.99 * (len(latencies) - 1))] if latencies else None,
        "duplicates": len(world.simulator.duplicates()),
        "open_index_backlog": world.backlog,
        "open_index_end": world.backlog[-1][1] if world.backlog else 0,
        "open_index_growth_per_min_last5": growth_per_min,
        "expiry_due": due_total,
        "expiry_backlog": world.expiry_backlog,
        "expiry_left_at_end": world.expiry_backlog[-1][1] if world.expiry_backlog else 0,
        "expired": world.passes.get("expired", 0),
        "reconciler_actions": dict(world.passes),
        "reconciler_pass_s_max": max(world.pass_seconds, default=0.0),
        "throttled_keys": dict(world.parts.throttled.most_common(10)),
        "throttled_requests": sum(world.parts.throttled.values()),
        "book_calls_failed_throttled": world.book.failed,
        "hottest_keys_peak_wcu_rcu_per_s_at_4000": world.parts.hottest(),
        "wcu_per_s_at_4000": world.parts.wcu_total / seconds / scale,
        "rcu_per_s_at_4000": world.parts.rcu_total / seconds / scale,
        "wall_s": wall,
    }
    log(
        f"danish-service [{layout.name}] at {rate:g}/s x {minutes:g} min: committed "
        f"{result['committed_share']:.0%} of offered, p50/p99 {result['latency_p50_s']} / "
        f"{result['latency_p99_s']} s, open index {result['open_index_end']} "
        f"({growth_per_min:+.0f}/min over the last 5), expired {result['expired']} of "
        f"{due_total} due, throttled requests {result['throttled_requests']}, duplicates "
        f"{result['duplicates']}, wall {wall:.0f} s"
    )
    return result


def service_table(results: list[dict[str, Any]]) -> str:
    lines = [
        "| layout | offered /s | COMMITTED (share of offered) | p50 / p99 s | open index at end "
        "(growth /min, last 5 min) | expired / due in the run | throttled requests (keys) "
        "| sent twice | hottest key, peak WCU/s at 4,000/s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        hot = r["hottest_keys_peak_wcu_rcu_per_s_at_4000"][:1]
        lines.append(
            f"| {r['layout']['name']} | {r['offered_per_s']:g} "
            f"| {r['committed_per_s']:.1f} ({r['committed_share']:.0%}) "
            f"| {r['latency_p50_s']:.1f} / {r['latency_p99_s']:.1f} "
            f"| {r['open_index_end']} ({r['open_index_growth_per_min_last5']:+.0f}) "
            f"| {r['expired']} / {r['expiry_due']} "
            f"| {r['throttled_requests']} ({', '.join(r['throttled_keys']) or 'none'}) "
            f"| {r['duplicates']} | {hot[0][0] + ' ' + str(hot[0][1]) if hot else '-'} |"
        )
    return "\n".join(lines)


def service_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.scale service")
    parser.add_argument("--scale", type=float, default=0.01)
    parser.add_argument("--minutes", type=float, default=15.0)
    parser.add_argument("--layouts", default="today,scaled-out")
    parser.add_argument("--out", type=Path, default=Path("bench/results/scale_service.json"))
    args = parser.parse_args(argv)
    layouts = {layout.name: layout for layout in (TODAY, SCALED)}
    results = [
        danish_service(args.scale, args.minutes, layouts[name]) for name in args.layouts.split(",")
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1, default=str))
    print(service_table(results))
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["service"]:
        sys.exit(service_main(sys.argv[2:]))
    sys.exit(main())
