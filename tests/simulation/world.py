"""The simulated world: a virtual clock, SQS FIFO, Lambda invocations that can die, the registry.

Concurrency without threads. Every call a use case makes to the book, the queue or the
registry goes through a `Wired` proxy that belongs to one invocation (an API request, a worker
batch, a reconciler pass). At each call the scheduler may

- kill the invocation, before or after the call (a `Crash`, a BaseException: no handler of
  ours catches it, and a dead invocation makes no further call, not even in a `finally`);
- pause it and run other invocations first (another worker, the reconciler, a client, an
  operator, time passing): that is how two workers come to hold the same message, or the
  reconciler settles a command whose worker is between two writes;
- find that its Lambda timeout has passed meanwhile, and kill it there;
- after a reconciler pass reads a certificate's stream from the registry, land work on that
  very certificate (its queued messages, or an owner's request on it) before the pass writes,
  and judge that write, which must never move a certificate the book holds as the registry
  does away from it (`World.judge_repair`).

The timing assumptions of the deployment are kept, because the design relies on them
(settings.check_order): the registry client's timeout < the Lambda timeout < the worker's lease.
The queue's visibility timeout is drawn per run and is sometimes shorter than the Lambda
timeout (a misconfiguration, or a slow batch), so a message does come back to a second worker
while the first one still holds it.
"""

from __future__ import annotations

import base64
import contextlib
import itertools
import json
import logging
import random
import shlex
import traceback
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from chalicelib import entrypoints
from chalicelib.adapters.memory import InMemoryBook
from chalicelib.adapters.sqs import message_body
from chalicelib.api.auth import SharedSecretVerifier, mint_token
from chalicelib.api.handlers import ENDPOINTS
from chalicelib.api.http import HttpRequest, dispatch
from chalicelib.composition import Services
from chalicelib.domain import Command, CommandKind, CommandStatus
from chalicelib.ports import DependencyDown
from chalicelib.registry import envelope
from chalicelib.registry.builder import PlainTransactionBuilder
from chalicelib.registry.envelope import transaction_id_of
from chalicelib.registry.federation import Registries
from chalicelib.registry.port import RegistryAmbiguous, RegistryUnavailable
from chalicelib.registry.sandbox.simulator import RegistrySimulator, SimulatorConfig, VirtualClock
from chalicelib.settings import Settings
from chalicelib.usecases.process import Worker
from chalicelib.usecases.reconcile import Reconciler
from chalicelib.usecases.shards import for_shard

T0 = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
SECRET = "simulation-secret-that-is-long-enough-for-hs256"
MAX_RECEIVES = 10  # infra/resources.json: the command queue's redrive maxReceiveCount
LAMBDA_TIMEOUT_S = 60.0
LEASE_S = 120.0
REGISTRY_TIMEOUT_S = 10.0
# A federated run's registries: DK1's is the service's default one, DK2's its own, and a claim
# may match the two grid areas.
DEFAULT_REGISTRY = Settings.model_fields["registry_name"].default
SECOND_REGISTRY = "dk2"
FEDERATION = {
    "registries": {DEFAULT_REGISTRY: {}, SECOND_REGISTRY: {}},
    "grid_area_registries": {"DK1": DEFAULT_REGISTRY, "DK2": SECOND_REGISTRY},
    "matching_boundary": {"DK": ["DK1", "DK2"]},
}
REDRIVE_AFTER_S = 300.0
MAX_DEPTH = 2  # how deep invocations nest inside one another's pauses
DEFAULT_STEPS = 100
# The book's certificate writes a reconciler pass makes (judged by World.judge_repair).
REPAIR_WRITES = frozenset({"book.update_certificate", "book.update_certificate_at"})


class Crash(BaseException):
    """The process dies here."""


class ItemRefused(Exception):
    """An error the reconciler cannot expect, on one command's item (a DynamoDB validation
    error, a query the registry refuses): injected for one command, until the world heals."""


@dataclass(frozen=True)
class Violation:
    rule: str  # I1..I7, or API-* for the answers of the API
    detail: str

    def __str__(self) -> str:
        return f"{self.rule}: {self.detail}"


BOOKS = ("memory", "dynamo")  # the in-memory book, or the DynamoDB book on moto
# How the reconciler is scheduled: drawn from the seed, one pass over the whole book (the
# embedded stack), or one pass per shard (Lambda's fan-out).
SCHEDULES = ("seed", "whole", "sharded")


def replay_command(
    seed: int,
    queries: bool,
    steps: int = DEFAULT_STEPS,
    book: str = "memory",
    schedule: str = "seed",
) -> str:
    args = ["--seed", str(seed), "--queries" if queries else "--no-queries"]
    if steps != DEFAULT_STEPS:
        args += ["--steps", str(steps)]
    if book != "memory":
        args += ["--book", book]
    if schedule != "seed":
        args += ["--schedule", schedule]
    return ".venv/bin/python -m tests.simulation " + shlex.join(args)


@dataclass
class Result:
    seed: int
    queries: bool
    steps: int
    stats: Counter
    violations: list[Violation]
    exempt: Counter  # checks not applied, by reason
    book: str = "memory"
    schedule: str = "seed"

    @property
    def replay(self) -> str:
        return replay_command(self.seed, self.queries, self.steps, self.book, self.schedule)

    def report(self) -> str:
        lines = [
            f"seed {self.seed} ({'queries' if self.queries else 'no queries'}, {self.book} book): "
            f"{len(self.violations)} violation(s)",
            *(f"  {v}" for v in self.violations[:20]),
            f"replay: {self.replay}",
        ]
        return "\n".join(lines)


# --- invocations and the proxies that run them ----------------------------------------------


@dataclass
class Invocation:
    """One Lambda invocation (or API request): it dies at its crash point or its timeout."""

    kind: str
    deadline: float
    depth: int
    crash_at: int | None = None
    crash_before: bool = True
    calls: int = 0
    dead: bool = False
    crashed: str | None = None
    preempted: bool = False


class Wired:
    """An adapter as one invocation sees it: every call is a point where the scheduler may
    pause the invocation, kill it, or find its time is up."""

    def __init__(self, target: Any, invocation: Invocation, world: World, name: str) -> None:
        self._target = target
        self._invocation = invocation
        self._world = world
        self._name = name

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._target, name)
        if not callable(attribute):
            return attribute

        def call(*args: Any, **kwargs: Any) -> Any:
            where = f"{self._name}.{name}"
            self._world.before_call(self._invocation, where)
            self._world.refuse(self._invocation, where, args)
            judge = self._world.judge_repair(self._invocation, where, args)
            result = attribute(*args, **kwargs)
            if judge is not None:
                judge()
            self._world.after_call(self._invocation, where, args)
            return result

        return call


class RegistryClient:
    """The registry as our client sees it over the network: a call slower than the client's
    timeout gives up (the registry may still apply what it was sent), as HttpRegistry does:
    ambiguous for a send, unavailable for a query."""

    def __init__(self, registry: RegistrySimulator, clock: VirtualClock, stats: Counter) -> None:
        self._registry = registry
        self._clock = clock
        self._stats = stats
        self.before_send: Callable[[Any], None] | None = None  # a fault, run before each send

    @property
    def supports_queries(self) -> bool:
        return self._registry.supports_queries

    def _timed(self, call: Callable[[], Any], on_timeout: type[Exception]) -> Any:
        start = self._clock()
        try:
            result = call()
        except RegistryAmbiguous:
            self._stats["faults.registry_ambiguous"] += 1
            raise
        except RegistryUnavailable:
            self._stats["faults.registry_unavailable"] += 1
            raise
        if self._clock() - start > REGISTRY_TIMEOUT_S:
            self._stats["faults.registry_client_timeout"] += 1
            raise on_timeout("the registry client timed out")
        return result

    def send(self, transactions: Any) -> Any:
        self._stats["registry.sends"] += 1
        if self.before_send is not None:
            self.before_send(transactions)
        return self._timed(lambda: self._registry.send(transactions), RegistryAmbiguous)

    def status(self, transaction_id: str) -> Any:
        return self._timed(lambda: self._registry.status(transaction_id), RegistryUnavailable)

    def stream(self, certificate_id: str) -> Any:
        return self._timed(lambda: self._registry.stream(certificate_id), RegistryUnavailable)


class SimulatedFederation:
    """The registries of a federated run, as the harness drives them (issue 17): the faults of
    a step aim at one of them (drawn), drift and the checks see them all, and a change to a
    stream goes to the registry that holds it."""

    def __init__(self, members: dict[str, RegistrySimulator], rng: random.Random) -> None:
        self.members = members
        self._rng = rng
        self.target = next(iter(members.values()))

    def aim(self) -> str:
        """Aim the next fault at one registry; its name."""
        name = self._rng.choice(sorted(self.members))
        self.target = self.members[name]
        return name

    def log(self) -> list[Any]:
        return [entry for member in self.members.values() for entry in member.log()]

    def holder(self, stream: str) -> RegistrySimulator:
        for member in self.members.values():
            if member.snapshot(stream) is not None:
                return member
        return self.target

    def snapshot(self, stream: str) -> Any:
        return self.holder(stream).snapshot(stream)

    def withdraw(self, stream: str, *args: Any) -> Any:
        return self.holder(stream).withdraw(stream, *args)

    def set_owner(self, stream: str, *args: Any) -> Any:
        return self.holder(stream).set_owner(stream, *args)

    def split_slice(self, stream: str, *args: Any) -> Any:
        return self.holder(stream).split_slice(stream, *args)

    def is_available(self) -> bool:
        return self.target.is_available()

    def set_available(self, up: bool) -> None:
        self.target.set_available(up)

    def configure(self, **changes: Any) -> None:
        self.target.configure(**changes)

    @property
    def config(self) -> Any:
        return self.target.config


# --- SQS FIFO -----------------------------------------------------------------------------


@dataclass
class Message:
    number: int
    command_id: str
    group: str
    body: str
    receives: int = 0
    visible_at: float = 0.0
    handle: int = 0  # the receipt handle of its latest receive


class SqsFifo:
    """SQS FIFO as the worker's event source mapping sees it: per-group order; a group is
    blocked while a message of it is in flight; a message not deleted comes back when its
    visibility timeout passes (also while its first consumer still works on it); after
    MAX_RECEIVES it moves to the dead-letter queue."""

    def __init__(self, world: World) -> None:
        self._world = world
        self.messages: list[Message] = []
        self.dead_letters: list[Message] = []
        self.available = True
        self.sent = 0
        self._numbers = itertools.count(1)

    def send(self, command: Command, holds_taken: bool = True, **extra: Any) -> None:
        if not self.available:
            self._world.stats["faults.queue_send_refused"] += 1
            raise DependencyDown("the command queue is unavailable")
        copies = 1
        if self._world.rng.random() < self._world.duplicate_send_p:
            copies = 2  # a producer retry past the deduplication window
            self._world.stats["faults.duplicate_message"] += 1
        for _ in range(copies):
            body = message_body(command, holds_taken, **extra)
            self.put(command.command_id, command.certificate_id, body)

    def send_many(self, messages: list[tuple[Command, Any]]) -> list[Command]:
        """SendMessageBatch: down, the whole call fails; else each entry as `send` (a
        duplicate copy included)."""
        if not self.available:
            self._world.stats["faults.queue_send_refused"] += 1
            raise DependencyDown("the command queue is unavailable")
        for command, certificates in messages:
            self.send(command, certificates=certificates)
        return []

    def put(self, command_id: str, group: str, body: str) -> None:
        self.sent += 1
        self.messages.append(Message(next(self._numbers), command_id, group, body))

    def duplicate(self, message: Message) -> None:
        self.put(message.command_id, message.group, message.body)

    def _groups(self) -> dict[str, list[Message]]:
        groups: dict[str, list[Message]] = {}
        for message in self.messages:
            groups.setdefault(message.group, []).append(message)
        return groups

    def receive(
        self, now: float, limit: int, visibility_s: float, group: str | None = None
    ) -> list[tuple[Message, int]]:
        """A batch of visible messages; of one FIFO group only, when `group` is given (a
        receive may return any one group's messages, and only those)."""
        rng = self._world.rng
        ready: list[list[Message]] = []
        for name, members in self._groups().items():
            if group is not None and name != group:
                continue
            while members and members[0].visible_at <= now and members[0].receives >= MAX_RECEIVES:
                dead = members.pop(0)
                self.messages.remove(dead)
                self.dead_letters.append(dead)
                self._world.stats["queue.dead_lettered"] += 1
            if members and members[0].visible_at <= now:
                ready.append(members)  # in flight messages are a prefix: these are all visible
        rng.shuffle(ready)
        chunks = [members[: rng.randint(1, len(members))] for members in ready]
        # Interleave the groups arbitrarily, each group's messages staying in order.
        batch: list[Message] = []
        while chunks and len(batch) < limit:
            chunk = rng.choice(chunks)
            batch.append(chunk.pop(0))
            if not chunk:
                chunks.remove(chunk)
        received = []
        for message in batch:
            message.receives += 1
            message.handle += 1
            message.visible_at = now + visibility_s
            received.append((message, message.handle))
        return received

    def postpone(self, later: list[tuple[str, float]]) -> int:
        """ChangeMessageVisibilityBatch: each message comes back its seconds from now. A stale
        handle (received again meanwhile) changes nothing, as on AWS. A fault refuses the call
        or some of its entries: those come back after the queue's visibility timeout."""
        world = self._world
        if world.faults_on and world.postpone_rng.random() < world.postpone_down_p:
            world.stats["faults.postpone_down"] += 1
            raise DependencyDown("the command queue is unavailable")
        refused = 0
        for receipt_handle, seconds in later:
            if world.faults_on and world.postpone_rng.random() < world.postpone_refused_p:
                refused += 1
                world.stats["faults.postpone_refused"] += 1
                continue
            number, handle = receipt_handle.removeprefix("m").split("/")
            for message in self.messages:
                if message.number == int(number) and message.handle == int(handle):
                    message.visible_at = world.clock() + seconds
                    world.stats["queue.postponed"] += 1
        return refused

    def delete(self, message: Message, handle: int) -> None:
        if message not in self.messages:
            return
        if message.handle != handle:
            # Received again by another consumer meanwhile: a stale receipt handle. AWS may or
            # may not delete with it; both happen here.
            self._world.stats["queue.stale_delete"] += 1
            if self._world.rng.random() < 0.5:
                return
        self.messages.remove(message)

    def next_visible_at(self) -> float | None:
        """When the next group may be received from: its head's visibility decides."""
        heads = [members[0] for members in self._groups().values()]
        return min((m.visible_at for m in heads), default=None)


# --- deterministic nonces -------------------------------------------------------------------


class _SeededSecrets:
    """Stands in for `secrets` in the envelope, so that a replay builds the same transaction
    ids. Only the nonce's randomness changes; the code that builds transactions is the real one."""

    def __init__(self, seed: int) -> None:
        self._rng = random.Random(seed)

    def token_hex(self, nbytes: int = 32) -> str:
        return self._rng.getrandbits(8 * nbytes).to_bytes(nbytes, "big").hex()


class _Trace(logging.Handler):
    def __init__(self, world: World) -> None:
        super().__init__(logging.INFO)
        self._world = world

    def emit(self, record: logging.LogRecord) -> None:
        self._world.note(f"    log {record.getMessage()}")


@contextlib.contextmanager
def deterministic(world: World) -> Iterator[None]:
    original = envelope.secrets
    envelope.secrets = _SeededSecrets(world.seed ^ 0x5EED)  # type: ignore[assignment]
    service_log = logging.getLogger("certificates")
    handler, level = _Trace(world), service_log.level
    if world.trace is None:
        logging.disable(logging.CRITICAL)  # the worker logs every fault it survives
    else:
        service_log.addHandler(handler)
        service_log.setLevel(logging.INFO)
    try:
        yield
    finally:
        envelope.secrets = original
        logging.disable(logging.NOTSET)
        service_log.removeHandler(handler)
        service_log.setLevel(level)


# --- the world ------------------------------------------------------------------------------


@dataclass
class Answer:
    status: int
    body: Any


@dataclass
class ApiCall:
    """One HTTP request of a client, as the scheduler made it up."""

    operation: str
    actor: str
    path_params: dict[str, str] = field(default_factory=dict)
    body: Any = None  # JSON, or None for no body
    key: str | None = None
    intent: str = ""
    query: dict[str, str] = field(default_factory=dict)
    raw: bytes | None = None  # a body that is not JSON

    def body_bytes(self) -> bytes:
        if self.raw is not None:
            return self.raw
        return b"" if self.body is None else json.dumps(self.body).encode()


USERS: dict[str, tuple[str, ...]] = {
    "issuer-dk": ("issuer",),
    "alice": (),
    "bob": (),
    "carol": (),
    "ops": ("operator",),
}
OWNERS = ("alice", "bob", "carol")


class World:
    def __init__(
        self,
        seed: int,
        queries: bool,
        steps: int = DEFAULT_STEPS,
        trace: bool = False,
        book: str = "memory",
        schedule: str = "seed",
    ) -> None:
        from tests.simulation import checks
        from tests.simulation.client import Clients

        self.seed = seed
        self.queries = queries
        self.trace: list[str] | None = [] if trace else None
        self.steps = steps
        self.rng = random.Random(seed)
        rng = self.rng
        self.stats: Counter = Counter()
        self.exempt: Counter = Counter()
        self.violations: list[Violation] = []
        self.clock = VirtualClock()
        self.book_kind = book
        self._resources = contextlib.ExitStack()
        if book == "dynamo":
            from tests.simulation.dynamo import DynamoView, moto_table

            self.book: Any = DynamoView(self._resources.enter_context(moto_table()))
        else:
            self.book = InMemoryBook()
        self.queue = SqsFifo(self)
        # The shape of this run: each seed draws its own faults and timings.
        self.visibility_s = rng.choice([30.0, 90.0, 180.0])
        self.duplicate_send_p = rng.choice([0.0, 0.05, 0.2])
        self.crash_p = rng.choice([0.05, 0.15, 0.3])
        self.preempt_p = rng.choice([0.0, 0.03, 0.08])
        self.drift_on = rng.random() < 0.6
        self.expiry_days = 1 if rng.random() < 0.1 else 365
        self.base_faults = {
            "ambiguous_rate": rng.choice([0.0, 0.05, 0.15]),
            "lost_rate": rng.choice([0.0, 0.03]),
            "latency_s": rng.choice([0.0, 0.2, 1.0]),
            "latency_jitter_s": rng.choice([0.0, 0.5, 2.0]),
            "max_batch": rng.choice([100, 100, 3]),
        }
        self.registry = RegistrySimulator(
            SimulatorConfig(
                seed=rng.randrange(2**31),
                queries=queries,
                commit_delay_s=rng.choice([0.0, 1.0, 30.0, 400.0]),
                **self.base_faults,
            ),
            clock=self.clock,
            sleep=self.clock.sleep,
        )
        self.registry_client = RegistryClient(self.registry, self.clock, self.stats)
        # A federation (issue 17) in half the runs: DK2's certificates in a registry of their
        # own, with faults of its own, and claims across the two. Its own generator, so that the
        # other draws of a seed stay as they were.
        self.federation_rng = random.Random(f"federation/{seed}")
        self.federated = self.federation_rng.random() < 0.5
        self.registry_clients = {DEFAULT_REGISTRY: self.registry_client}
        if self.federated:
            second = RegistrySimulator(
                SimulatorConfig(
                    seed=self.federation_rng.randrange(2**31),
                    queries=queries,
                    commit_delay_s=self.federation_rng.choice([0.0, 1.0, 30.0, 400.0]),
                    **self.base_faults,
                ),
                clock=self.clock,
                sleep=self.clock.sleep,
            )
            members = {DEFAULT_REGISTRY: self.registry, SECOND_REGISTRY: second}
            for name, member in members.items():
                member.federate(name, members)
            self.registry_clients[SECOND_REGISTRY] = RegistryClient(second, self.clock, self.stats)
            self.registry = SimulatedFederation(members, self.federation_rng)
            self.stats["federated_runs"] = 1
        # Claims stranded on purpose: the issuer withdraws the consumption certificate in the
        # registry just before a claim's consumption allocation (its own generator, so that
        # the other draws of a seed stay as they were).
        self.strand_rng = random.Random(f"strand/{seed}")
        self.strand_p = self.strand_rng.choice([0.0, 0.5, 1.0])
        for client in self.registry_clients.values():
            client.before_send = self.strand_a_claim
        self.worker_batch = rng.choice([1, 3, 10, 20])
        self.settings = Settings(
            jwt_secret=SECRET,
            lease_s=LEASE_S,
            lambda_timeout_s=LAMBDA_TIMEOUT_S,
            registry_timeout_s=REGISTRY_TIMEOUT_S,
            registry_batch_size=self.worker_batch,
            commit_check_s=2.0,
            redrive_after_s=REDRIVE_AFTER_S,
            certificate_expiry_days=self.expiry_days,
            **(FEDERATION if self.federated else {}),
        )
        self.verifier = SharedSecretVerifier(SECRET)
        self.tokens = {user: mint_token(SECRET, user, roles) for user, roles in USERS.items()}
        self.builder = PlainTransactionBuilder(self.settings.registry_name)
        self.reconcilers = itertools.count(1)
        self.faults_on = True  # False while driving to quiet: no crashes, pauses or faults
        self.drifted: dict[str, float] = {}  # certificate -> when it last drifted
        self.clients = Clients(self)
        self.checks = checks
        self.last_invocation: Invocation | None = None
        # Faults aimed at the reconciler draw from their own generator, so that a seed that
        # never meets one runs exactly as it did before they existed.
        self.fault_rng = random.Random(f"reconciler-faults/{seed}")
        self.refusal_p = self.fault_rng.choice([0.0, 0.02, 0.05])
        self.race_alignment_p = self.fault_rng.choice([0.0, 0.3, 0.7])
        self.refused: set[str] = set()  # commands whose items the reconciler meets with errors
        # How the schedule runs the reconciler: one pass over the whole book (the embedded
        # stack), or, as on Lambda, one pass per shard (each fan-out invocation on its own, so
        # a shard's pass may run inside another's). Its own generator, as above.
        self.unclaim_rng = random.Random(f"unclaim/{seed}")
        self.withdraw_claimed_p = self.unclaim_rng.choice([0.0, 0.0, 0.6])
        # Clients that give up waiting and send a request again while the first is still
        # running (its answer still comes): only while one is paused, from a generator of its
        # own, so a seed that draws none runs as it did before.
        self.overlap_rng = random.Random(f"overlap/{seed}")
        self.overlap_p = self.overlap_rng.choice([0.0, 0.0, 0.25])
        self.in_flight: list[ApiCall] = []  # keyed requests being handled now, outermost first
        # Hand-backs SQS refuses, whole or in part (the messages come back later, not lost):
        # their own generator, as above.
        self.postpone_rng = random.Random(f"postpone/{seed}")
        self.postpone_down_p = self.postpone_rng.choice([0.0, 0.0, 0.1])
        self.postpone_refused_p = self.postpone_rng.choice([0.0, 0.0, 0.2])
        # The worker runs a batch's FIFO groups side by side on Lambda (threads); here in an
        # order of this generator's, so that no outcome may hang on the batch's order across
        # groups (within a group, records go in order, as there).
        self.groups_rng = random.Random(f"groups/{seed}")
        self.shard_rng = random.Random(f"shards/{seed}")
        sharded = self.shard_rng.random() < 0.5 if schedule == "seed" else schedule == "sharded"
        self.schedule = schedule
        self.shards = self.settings.open_command_shards if sharded else 0
        self._reported: set[tuple[str, str]] = set()

    # --- time -------------------------------------------------------------------------------

    def now(self) -> datetime:
        return T0 + timedelta(seconds=self.clock())

    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)

    # --- invocations ------------------------------------------------------------------------

    def invocation(self, kind: str, depth: int) -> Invocation:
        inv = Invocation(kind=kind, deadline=self.clock() + LAMBDA_TIMEOUT_S, depth=depth)
        if self.faults_on and self.rng.random() < self.crash_p:
            inv.crash_at = self.rng.randint(1, {"api": 10, "worker": 24, "reconciler": 40}[kind])
            inv.crash_before = self.rng.random() < 0.5
        return inv

    def before_call(self, inv: Invocation, where: str) -> None:
        if inv.dead:
            raise Crash(f"{inv.kind} is dead")
        self._check_deadline(inv, where)
        inv.calls += 1
        if self.faults_on and inv.depth < MAX_DEPTH and self.rng.random() < self.preempt_p:
            inv.preempted = True
            self.stats["pauses"] += 1
            self.note(f"  pause {inv.kind} before {where} (depth {inv.depth + 1})")
            self.interleave(inv.depth + 1)
            self._check_deadline(inv, where)
        if inv.crash_at == inv.calls and inv.crash_before:
            self._die(inv, f"before {where}")

    def after_call(self, inv: Invocation, where: str, args: tuple[Any, ...] = ()) -> None:
        if inv.crash_at == inv.calls and not inv.crash_before:
            self._die(inv, f"after {where}")
        if (
            where == "registry.stream"
            and inv.kind == "reconciler"
            and self.faults_on
            and inv.depth < MAX_DEPTH
            and self.fault_rng.random() < self.race_alignment_p
        ):
            # A commit racing alignment: between the stream's answer and the reconciler's
            # write, work on that very certificate lands. Any other work leaves what the
            # reconciler compares as it was, so an arbitrary batch would almost never race.
            inv.preempted = True
            self.stats["faults.commit_racing_alignment"] += 1
            self.note(
                f"  pause {inv.kind} after {where}({args[0][:8]}): work on it "
                f"(depth {inv.depth + 1})"
            )
            self.work_on(args[0], inv.depth + 1)

    def judge_repair(
        self, inv: Invocation, where: str, args: tuple[Any, ...]
    ) -> Callable[[], None] | None:
        """I6 at the reconciler's write: a certificate the book holds as the registry does is
        never written away from it. A repair computed from a look at the registry that is
        older than the certificate it is written over does exactly that (a commit landed on
        both in between); the check at quiet sees it only where its audit entry is not
        excused by drift, and the next pass heals the book."""
        if inv.kind != "reconciler" or where not in REPAIR_WRITES:
            return None
        certificate_id = args[0]
        if certificate_id in self.drifted:
            # Changed behind the book's back: an agreement before the write may be chance (soak
            # seed 300367: a transfer committed, then drift gave the slice back to its sender;
            # the reconciler then rightly applied the committed transfer). The check at quiet
            # still compares it, and audits a repair only where it drifted.
            self.exempt["I6 at the reconciler's write: the certificate drifted"] += 1
            return None
        if self._differences(certificate_id):
            return None  # differs already: drift (or a commit) for the reconciler to repair

        def judge() -> None:
            for difference in self._differences(certificate_id):
                self.violate(
                    "I6",
                    f"{certificate_id}: the reconciler's write moved it away from the "
                    f"registry, which it agreed with: {difference}",
                )

        return judge

    def _differences(self, certificate_id: str) -> list[str]:
        """The book's certificate against the registry's, as the check at quiet compares
        them; the comparisons it leaves out are not counted in the run's figures."""
        counted, self.exempt = self.exempt, Counter()
        try:
            return self.checks.differences(self, certificate_id)
        finally:
            self.exempt = counted

    def work_on(self, certificate_id: str, depth: int) -> None:
        """A commit on one certificate lands now: a worker receives the messages queued for
        it; with none visible, one of its owners asks for a transfer or a slice of it first."""
        if self.deliver(depth, group=certificate_id):
            self.stats["race.queued_work_delivered"] += 1
        elif self.clients.act_on(certificate_id, depth):
            self.stats["race.owner_request_accepted"] += 1
            self.deliver(depth, group=certificate_id)

    def refuse(self, inv: Invocation, where: str, args: tuple[Any, ...]) -> None:
        if inv.kind != "reconciler" or not self.refused:
            return
        for arg in args:
            command_id = arg.command_id if isinstance(arg, Command) else arg
            if isinstance(command_id, str) and command_id in self.refused:
                self.stats["faults.item_refused"] += 1
                self.note(f"  REFUSED {where} on {command_id[:8]}")
                raise ItemRefused(f"ValidationException on {command_id} at {where}")

    def refuse_one_command(self) -> None:
        """From now until the world heals, the reconciler meets an error on one open
        command's item."""
        open_ = self.book.open_commands(self.now() + timedelta(days=1), 1000)
        if open_:
            command = self.fault_rng.choice(open_)
            self.refused.add(command.command_id)
            self.stats["faults.command_refused"] += 1
            self.note(f"REFUSE {command.command_id[:8]} ({command.status}) to the reconciler")

    def _check_deadline(self, inv: Invocation, where: str) -> None:
        if self.clock() > inv.deadline:
            inv.dead = True
            inv.crashed = f"timeout before {where}"
            self.stats[f"timeouts.{inv.kind}"] += 1
            self.note(f"  TIMEOUT {inv.kind} {where}")
            raise Crash(inv.crashed)

    def _die(self, inv: Invocation, where: str) -> None:
        self.note(f"  CRASH {inv.kind} {where}")
        inv.dead = True
        inv.crashed = where
        self.stats["crashes"] += 1
        self.stats[f"crashes.{inv.kind}"] += 1
        raise Crash(where)

    def wired(self, inv: Invocation) -> tuple[Any, Any, Any]:
        registry: Any = Wired(self.registry_client, inv, self, "registry")
        if self.federated:
            registry = Registries(
                {
                    name: Wired(client, inv, self, "registry")
                    for name, client in self.registry_clients.items()
                },
                DEFAULT_REGISTRY,
            )
        return (
            Wired(self.book, inv, self, "book"),
            Wired(self.queue, inv, self, "queue"),
            registry,
        )

    def worker_for(self, inv: Invocation) -> Worker:
        book, queue, registry = self.wired(inv)
        return Worker(
            book=book,
            registry=registry,
            queue=queue,
            builder=self.builder,
            clock=self.now,
            lease_s=LEASE_S,
            commit_check_s=self.settings.commit_check_s,
            batch_size=self.worker_batch,
            run_side_by_side=self._groups_in_any_order,
        )

    def _groups_in_any_order(self, tasks: Sequence[Callable[[], None]]) -> None:
        for task in self.groups_rng.sample(list(tasks), len(tasks)):
            task()

    def _statuses(self) -> dict[str, CommandStatus]:
        return {cid: c.status for cid, c in self.book.commands.items()}

    def _settled_by(self, inv: Invocation, before: dict[str, CommandStatus]) -> None:
        """I5, where it can be told exactly: the commands an invocation that ran alone (no
        pause, no crash) brought to an end hold nothing once it returns."""
        if inv.preempted or inv.dead:
            return
        for command_id, command in self.book.commands.items():
            if command.is_terminal and before.get(command_id) not in (
                CommandStatus.COMMITTED,
                CommandStatus.REJECTED,
            ):
                for problem in self.checks.holds_of(self.book, command):
                    self.violate("I5", f"{inv.kind} ended {command_id} {command.status}: {problem}")

    # --- actors -----------------------------------------------------------------------------

    def deliver(self, depth: int = 0, limit: int | None = None, group: str | None = None) -> bool:
        """One worker invocation on one batch received from the queue (from one certificate's
        FIFO group only, when `group` is given)."""
        batch = self.queue.receive(
            self.clock(), limit or self.rng.randint(1, 10), self.visibility_s, group
        )
        if not batch:
            return False
        self.stats["deliveries"] += len(batch)
        self.stats["worker.batches"] += 1
        records = [
            {
                "messageId": f"m{m.number}",
                "receiptHandle": f"m{m.number}/{handle}",
                "body": m.body,
                "attributes": {
                    "MessageGroupId": m.group,
                    "ApproximateReceiveCount": str(m.receives),
                },
            }
            for m, handle in batch
        ]
        inv = self.invocation("worker", depth)
        self.note(f"deliver {[(m.number, m.command_id[:8], m.receives) for m, _ in batch]}")
        before = self._statuses()
        try:
            response = entrypoints.handle_queue_event(
                {"Records": records}, self.worker_for(inv), MAX_RECEIVES, self.queue.postpone
            )
        except Crash:
            return True  # nothing deleted: the batch comes back after the visibility timeout
        except Exception as exc:  # the function failed: as on Lambda, the batch comes back
            self.unhandled("worker", exc)
            return True
        failed = {f["itemIdentifier"] for f in response["batchItemFailures"]}
        self.note(f"  worker done, back: {sorted(failed)}")
        for (message, handle), record in zip(batch, records, strict=True):
            if record["messageId"] not in failed:
                self.queue.delete(message, handle)
        self._settled_by(inv, before)
        return True

    def reconcile(self, depth: int = 0) -> None:
        """One pass, as a schedule tick or one fan-out invocation (of a shard drawn at random)."""
        self._reconcile(depth, self.shard_rng.randrange(self.shards) if self.shards else None)

    def reconcile_all(self) -> None:
        """What one schedule tick does: a pass over every shard (or the whole book)."""
        for shard in range(self.shards) if self.shards else [None]:
            self._reconcile(0, shard)

    def _reconcile(self, depth: int, shard: int | None) -> None:
        inv = self.invocation("reconciler", depth)
        book, queue, registry = self.wired(inv)
        reconciler = Reconciler(
            book=book,
            queue=queue,
            registry=registry,
            worker=self.worker_for(inv),
            clock=self.now,
            redrive_after_s=REDRIVE_AFTER_S,
            expiry_days=self.expiry_days,
            lease_s=LAMBDA_TIMEOUT_S * 2,
            holder=f"reconciler-{next(self.reconcilers)}",
        )
        if shard is not None:
            reconciler = for_shard(reconciler, shard)
            self.stats["reconciler.shard_passes"] += 1
        before = self._statuses()
        self.stats["reconciler.passes"] += 1
        try:
            report = reconciler.run()
        except Crash:
            return
        except Exception as exc:  # the pass ended: everything after the error was skipped
            where = traceback.extract_tb(exc.__traceback__)[-3:]
            self.violate_once(
                "I2",
                f"a reconciler pass ended on {type(exc).__name__}: {exc} at "
                + " <- ".join(f"{f.name}:{f.lineno}" for f in reversed(where))
                + "; re-drive, leases, in-doubt, holds, drift and expiry after it were skipped",
            )
            return
        self.note(f"reconciled {dict(report.actions)} unsettled {report.unsettled}")
        for phase, reason in report.failed_phases.items():
            # Errors here are aimed at single commands: a phase they stop skipped every
            # command after that one.
            self.violate_once("I2", f"the reconciler's {phase} phase ended on {reason}")
        for action, n in report.actions.items():
            self.stats[f"reconciler.{action}"] += n
        self._settled_by(inv, before)

    def call_api(self, call: ApiCall, depth: int = 0) -> Answer | None:
        """One HTTP request through the real dispatch and handler; None when the API died
        before answering (the client saw no answer)."""
        inv = self.invocation("api", depth)
        self.last_invocation = inv
        book, queue, registry = self.wired(inv)
        services = Services(
            settings=self.settings,
            book=book,
            queue=queue,
            verifier=self.verifier,
            registry=registry,
            clock=self.now,
        )
        endpoint, handler = ENDPOINTS[call.operation]
        headers = {"authorization": f"Bearer {self.tokens[call.actor]}"}
        if call.body is not None or call.raw is not None:
            headers["content-type"] = "application/json"
        if call.key is not None:
            headers["idempotency-key"] = call.key
        request = HttpRequest(
            method=endpoint.method,
            path=endpoint.path.format(**call.path_params),
            headers=headers,
            query=call.query,
            body=call.body_bytes(),
            path_params=call.path_params,
        )
        self.note(
            f"api {call.actor} {call.operation} {call.intent} key={call.key} "
            f"{call.path_params} {json.dumps(call.body)[:300]}"
        )
        before_book = self.checks.book_state(self.book, self.queue)
        before = self._statuses()
        self.stats["api.requests"] += 1
        if call.key is not None:
            self.in_flight.append(call)
        try:
            response = dispatch(
                endpoint,
                lambda c: handler(services, c),
                request,
                self.verifier,
                self.settings.max_body_bytes,
            )
        except Crash:
            self.stats["api.no_answer"] += 1
            return None
        except Exception as exc:  # dispatch answers every Exception: this is a bug of it
            self.unhandled("api", exc)
            return None
        finally:
            if call.key is not None:
                self.in_flight.remove(call)
        answer = Answer(response.status, response.body)
        self.note(f"  -> {answer.status} {json.dumps(answer.body)[:300]}")
        self.stats[f"api.{answer.status}"] += 1
        if answer.status >= 500 and answer.status != 503:
            self.violate("API-5xx", f"{call.operation} ({call.intent}) answered {answer.body}")
        if 400 <= answer.status < 500:
            if inv.preempted:
                self.exempt["refusal unchanged: other invocations ran during it"] += 1
            else:
                for change in self.checks.changes(before_book, self.book, self.queue):
                    self.violate(
                        "API-refused-changed",
                        f"{call.operation} ({call.intent}) refused {answer.status} "
                        f"but changed {change}",
                    )
        self._settled_by(inv, before)
        return answer

    def resolve_as_operator(self, command: Command, depth: int = 0) -> Answer | None:
        """A careful operator looks the step up in the registry (its log) and says what they
        saw: applied, refused, or never arrived (which, once no worker can still send it, is
        as good as refused: nothing of it is in the registry)."""
        data = base64.b64decode(command.transactions[command.step])
        tid = transaction_id_of(data)
        first = next((e for e in self.registry.log() if e.transaction_id == tid), None)
        if first is not None and first.settles_at > self.clock():
            return None  # the registry has not decided yet: a careful operator waits
        applied = first is not None and first.verdict == "COMMITTED"
        seen = "absent" if first is None else first.verdict
        self.stats["operator.resolutions"] += 1
        return self.call_api(
            ApiCall(
                "resolve_command",
                "ops",
                {"command_id": command.command_id},
                {
                    "outcome": "committed" if applied else "rejected",
                    "reason": f"step {command.step + 1} is {seen} in the registry",
                },
                intent="operator",
            ),
            depth,
        )

    def in_doubt(self) -> list[Command]:
        return [c for c in self.book.commands.values() if c.status == CommandStatus.IN_DOUBT]

    # --- faults -----------------------------------------------------------------------------

    def registry_fault(self) -> None:
        rng = self.rng
        if self.federated:
            aimed = self.registry.aim()
            self.stats[f"registry_faults_aimed_at.{aimed}"] += 1  # not a fault: where one went
            self.note(f"fault aimed at registry {aimed}")
        match rng.randrange(5):
            case 0:
                was_up = self.registry.is_available()
                self.registry.set_available(not was_up)
                self.stats["faults.outage" if was_up else "registry.outage_over"] += 1
            case 1:
                self.registry.configure(latency_s=rng.choice([5.0, 15.0, 40.0]))
                self.stats["faults.latency_spike"] += 1
            case 2:
                self.registry.configure(ambiguous_rate=rng.choice([0.3, 0.8]), lost_rate=0.1)
                self.stats["faults.ambiguity_burst"] += 1
            case _:
                self.registry.configure(**self.base_faults)
                self.registry.set_available(True)
        self.note(f"registry now {self.registry.config} up={self.registry.is_available()}")

    def strand_a_claim(self, transactions: Any) -> None:
        """Before a claim's consumption allocation leaves, maybe withdraw that certificate in
        the registry (as its issuer, elsewhere): the allocation is refused after the production
        side's committed, and the claim strands it."""
        if not self.faults_on or not self.strand_p:
            return
        for data in transactions:
            try:
                tx = envelope.Transaction.parse(bytes(data))
            except ValueError:
                continue
            if tx.header.payload_type != envelope.ALLOCATED:
                continue
            stream = tx.header.stream_id
            if tx.payload["consumption_certificate_id"]["stream_id"] != stream:
                continue
            snapshot = self.registry.snapshot(stream)
            if snapshot is None or snapshot["withdrawn"]:
                continue
            if self.strand_rng.random() >= self.strand_p:
                continue
            self.registry.withdraw(stream)
            self.drifted[stream] = self.clock()
            self.advance(0.001)
            self.stats["faults.strand_claim"] += 1
            self.note(f"STRAND: {stream} withdrawn before a claim's consumption allocation")

    def drift(self) -> None:
        """Change the registry behind the book's back, as another client of it would."""
        rng = self.rng
        streams = sorted({e.stream_id for e in self.registry.log() if e.stream_id})
        candidates = []
        for stream in streams:
            snapshot = self.registry.snapshot(stream)
            if snapshot and not snapshot["withdrawn"]:
                candidates += [(stream, s) for s in snapshot["slices"] if s["state"] == "available"]
        if not candidates:
            return
        stream, found = rng.choice(candidates)
        n = self.stats["faults.drift"]
        match rng.randrange(4):
            case 0 | 1:
                others = [o for o in OWNERS if o != found["owner"]]
                self.registry.set_owner(stream, found["ref"], rng.choice(others))
            case 2:
                if found["quantity"] < 2:
                    return
                cut = rng.randint(1, found["quantity"] - 1)
                self.registry.split_slice(
                    stream,
                    found["ref"],
                    [
                        (f"drift-{self.seed}-{n}-a", found["owner"], cut),
                        (f"drift-{self.seed}-{n}-b", rng.choice(OWNERS), found["quantity"] - cut),
                    ],
                )
            case _:
                self.registry.withdraw(stream)
        self.drifted[stream] = self.clock()
        self.advance(0.001)  # so that what happens next is strictly after it
        self.note(f"DRIFT on {stream}: {self.registry.snapshot(stream)}")
        self.stats["faults.drift"] += 1

    # --- the schedule -----------------------------------------------------------------------

    def step(self, depth: int = 0) -> None:
        """One thing happens. Top level: anything; nested inside a paused invocation: the
        things that run concurrently with it."""
        rng = self.rng
        if depth == 0 and self.faults_on and self.fault_rng.random() < self.refusal_p:
            self.refuse_one_command()
            return
        if depth == 0 and self.unclaim_rng.random() < self.withdraw_claimed_p / 4:
            # Claims that can commit, and withdrawals of claimed certificates: the unclaims
            # they owe (their own generator: the seeds without them run as before).
            self.clients.send(self.clients.claim_or_withdraw_claimed(), depth)
            return
        actions: list[tuple[int, Callable[[], Any]]] = [
            (34, lambda: self.clients.act(depth)),
            (30, lambda: self.deliver(depth)),
            (6, lambda: self.reconcile(depth)),
            (3, lambda: self._operator(depth)),
            (4, self._tick),
            (3, self._visibility_expires),
        ]
        if depth == 0:
            actions += [
                (4, self.registry_fault),
                (2, self._jump),
                (2, self._queue_fault),
                (2, self._duplicate_delivery),
            ]
            if self.drift_on:
                actions.append((2, self.drift))
        total = sum(w for w, _ in actions)
        pick = rng.uniform(0, total)
        for weight, action in actions:
            pick -= weight
            if pick <= 0:
                action()
                return
        actions[-1][1]()

    def interleave(self, depth: int) -> None:
        for _ in range(self.rng.randint(1, 2)):
            self.step(depth)

    def _operator(self, depth: int) -> None:
        pending = self.in_doubt()
        if pending:
            self.resolve_as_operator(self.rng.choice(pending), depth)

    def _tick(self) -> None:
        self.advance(self.rng.choice([0.5, 2.0, 10.0, 45.0]))

    def _visibility_expires(self) -> None:
        self.advance(self.visibility_s + 1)
        self.stats["faults.visibility_expired"] += 1

    def _jump(self) -> None:
        self.advance(self.rng.choice([301.0, 1800.0, 4000.0, 90000.0]))
        self.note("clock jump")
        self.stats["faults.clock_jump"] += 1

    def _queue_fault(self) -> None:
        self.queue.available = not self.queue.available
        self.stats["faults.queue_outage" if not self.queue.available else "queue.back"] += 1

    def _duplicate_delivery(self) -> None:
        if self.queue.messages:
            self.queue.duplicate(self.rng.choice(self.queue.messages))
            self.stats["faults.duplicate_message"] += 1

    # --- driving to quiet -------------------------------------------------------------------

    def heal(self) -> None:
        self.faults_on = False
        members = self.registry.members.values() if self.federated else [self.registry]
        for member in members:
            member.configure(
                ambiguous_rate=0.0,
                lost_rate=0.0,
                latency_s=0.0,
                latency_jitter_s=0.0,
                max_batch=100,
                outages=(),
            )
            member.set_available(True)
        self.queue.available = True
        self.refused.clear()

    def drain(self) -> None:
        for _ in range(10_000):
            if self.deliver(limit=10):
                continue
            upcoming = self.queue.next_visible_at()
            if upcoming is None:
                return
            self.advance(max(upcoming - self.clock(), 0.0) + 0.001)
        self.violate("I2", "the queue never drained")

    def quiet(self) -> None:
        """Everything heals; deliveries, reconciler passes and careful operators until no
        command is left open."""
        self.note("--- quiet ---")
        self.heal()
        for _ in range(40):
            self.drain()
            self.advance(REDRIVE_AFTER_S + 1)
            self.reconcile_all()
            self.drain()
            open_ = self.book.open_commands(self.now() + timedelta(days=1), 100_000)
            if not open_:
                break
            if all(c.status == CommandStatus.IN_DOUBT for c in open_):
                for command in open_:
                    self.resolve_as_operator(command)
        # Passes with nothing in flight, so that every settled command's certificates have
        # been compared with the registry.
        for _ in range(2):
            self.advance(REDRIVE_AFTER_S + 1)
            self.reconcile_all()
            self.drain()

    def unhandled(self, kind: str, exc: Exception) -> None:
        """An exception out of an invocation: Lambda would log it and retry; it is a fault of
        ours all the same (a race lost must be handled, not crash the invocation)."""
        where = traceback.extract_tb(exc.__traceback__)[-3:]
        self.violate_once(
            "unhandled",
            f"{kind} raised {type(exc).__name__}: {exc} at "
            + " <- ".join(f"{f.name}:{f.lineno}" for f in reversed(where)),
        )

    def violate(self, rule: str, detail: str) -> None:
        self.violations.append(Violation(rule, detail))
        self.note(f"VIOLATION {rule}: {detail}")

    def note(self, line: str) -> None:
        if self.trace is not None:
            self.trace.append(f"{self.clock():10.3f} {line}")

    def violate_once(self, rule: str, detail: str) -> None:
        if (rule, detail) not in self._reported:
            self._reported.add((rule, detail))
            self.violate(rule, detail)

    def run(self) -> Result:
        with self._resources, deterministic(self):
            try:
                for _ in range(self.steps):
                    self.step()
                    self.checks.during_run(self)
                self.quiet()
                self.checks.at_quiet(self)
                # a withdrawal's unclaims: made by the service, not asked for by a client
                for command in self.book.commands.values():
                    if command.kind == CommandKind.UNCLAIM:
                        self.stats[f"unclaims.{command.status.value.lower()}"] += 1
            except Exception as exc:  # a bug of the harness, or one it did not expect
                self.violate("harness", "".join(traceback.format_exception(exc))[-2000:])
        return Result(
            self.seed,
            self.queries,
            self.steps,
            self.stats,
            self.violations,
            self.exempt,
            self.book_kind,
            self.schedule,
        )


def run(
    seed: int,
    queries: bool,
    steps: int = DEFAULT_STEPS,
    book: str = "memory",
    schedule: str = "seed",
) -> Result:
    return World(seed, queries, steps, book=book, schedule=schedule).run()


def trace(
    seed: int,
    queries: bool,
    steps: int = DEFAULT_STEPS,
    book: str = "memory",
    schedule: str = "seed",
) -> tuple[Result, list[str]]:
    """A run with everything that happened in it, for reading a failure."""
    world = World(seed, queries, steps, trace=True, book=book, schedule=schedule)
    result = world.run()
    assert world.trace is not None
    return result, world.trace
