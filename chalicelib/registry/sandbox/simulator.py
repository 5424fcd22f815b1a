"""A stand-in for Project Origin's registry: the embedded default and the test double.

The service exists because the real registry is awkward: it goes down, it answers slowly, a
call can time out after the registry applied it, a duplicate send corrupts the reported status
of the first, a failed status is forgotten after an hour, and it may or may not answer queries
(REGISTRY.md). The simulator reproduces each of these on purpose, switchable and repeatable
from a seed, so that the worker and the reconciler can be tested against every one of them in
virtual time. It also keeps a log of every transaction it ever received, so that a test can
prove that nothing was sent twice (invariant I1).

Rules are applied per stream (certificate) strictly in the order received; first wins. State
changes take effect when a transaction is received; `status` and `stream` show them only once
the transaction has settled (`commit_delay_s` later), like a registry that commits in blocks.
"""

from __future__ import annotations

import math
import random
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields, replace
from datetime import datetime, timedelta
from typing import Any, Literal, Protocol

from chalicelib.registry.envelope import (
    ALLOCATED,
    CLAIMED,
    ISSUED,
    SLICED,
    TRANSFERRED,
    UNCLAIMED,
    WITHDRAWN,
    MalformedTransaction,
    Transaction,
    transaction_id_of,
)
from chalicelib.registry.port import (
    QueriesNotSupported,
    Receipt,
    RegistryAmbiguous,
    RegistryUnavailable,
    TransactionStatus,
)
from chalicelib.registry.sandbox import rules
from chalicelib.registry.sandbox.rules import TransactionRefused

MAX_QUANTITY = 2**32 - 1  # quantities are committed as 32-bit integers
MIN_PERIOD = timedelta(minutes=1)
MAX_PERIOD = timedelta(hours=1)
DUPLICATE = "duplicate transaction"
TIMED_OUT = "timed out waiting for the registry"

Origin = Literal["client", "injected"]
AVAILABLE, ALLOCATED_SLICE, CLAIMED_SLICE = rules.AVAILABLE, rules.ALLOCATED, rules.CLAIMED


@dataclass(frozen=True)
class SimulatorConfig:
    """How the simulated registry behaves. Times are in seconds of the injected clock."""

    seed: int = 0
    # False: "no queries" (the seed's assumption), send answers each verdict.
    # True: send answers PENDING, and status and stream queries work.
    queries: bool = False
    latency_s: float = 0.0  # added to every call
    latency_jitter_s: float = 0.0  # mean of an exponential extra delay per call
    outages: tuple[tuple[float, float], ...] = ()  # [start, end) windows of refusal
    ambiguous_rate: float = 0.0  # per send: applied, then the call times out
    lost_rate: float = 0.0  # per send: lost on the way, then the call times out
    max_batch: int = 100  # a larger send times out without applying anything
    commit_delay_s: float = 1.0  # PENDING until then
    finalize_delay_s: float = 180.0  # COMMITTED until this long after commit
    status_ttl_s: float = 3600.0  # a FAILED status is forgotten after this long

    def __post_init__(self) -> None:
        for name in ("ambiguous_rate", "lost_rate"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1")
        if self.ambiguous_rate + self.lost_rate > 1.0:
            raise ValueError("ambiguous_rate + lost_rate must not exceed 1")
        for name in (
            "latency_s",
            "latency_jitter_s",
            "commit_delay_s",
            "finalize_delay_s",
            "status_ttl_s",
        ):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative")
        if self.max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        outages = tuple((float(start), float(end)) for start, end in self.outages)
        if any(start >= end for start, end in outages):
            raise ValueError("an outage window must end after it starts")
        object.__setattr__(self, "outages", outages)


CONFIG_FIELDS = frozenset(f.name for f in fields(SimulatorConfig))


@dataclass(frozen=True)
class LogEntry:
    """One transaction as the registry received it; repeated ids are kept, that is the point."""

    transaction_id: str
    data: bytes
    stream_id: str | None  # None when the bytes were not a transaction
    payload_type: str | None
    received_at: float
    settles_at: float  # when its status stops reading PENDING
    verdict: TransactionStatus  # COMMITTED or FAILED
    message: str
    origin: Origin


class SignatureCheck(Protocol):
    """The one place that decides whether a header is signed by someone; the crypto codec
    replaces it with Ed25519 (issuers) and secp256k1 (owners) verification."""

    def signed_by_owner(self, tx: Transaction, owner: str) -> bool: ...

    def signed_by_issuer(self, tx: Transaction, grid_area: str) -> bool: ...


class SignerIds:
    """The envelope's stand-in: header_signature holds the signer's id in clear."""

    def signed_by_owner(self, tx: Transaction, owner: str) -> bool:
        return tx.header_signature == owner

    def signed_by_issuer(self, tx: Transaction, grid_area: str) -> bool:
        return tx.header_signature.startswith("issuer")


class VirtualClock:
    """A clock that only moves when told: pass `clock` and `clock.sleep` to the simulator
    and latency, commit delays, outages and status expiry all happen in no real time."""

    def __init__(self, start: float = 0.0) -> None:
        self._now = start
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            return self._now

    def sleep(self, seconds: float) -> None:
        self.advance(seconds)

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("time does not run backwards")
        with self._lock:
            self._now += seconds


class RegistrySimulator:
    """The `Registry` port, simulated. Thread-safe: the local HTTP server is threaded."""

    def __init__(
        self,
        config: SimulatorConfig | None = None,
        *,
        clock: Callable[[], float] | None = None,
        sleep: Callable[[float], None] = time.sleep,
        signatures: SignatureCheck | None = None,
        ledger: Ledger | None = None,
    ) -> None:
        self._config = config or SimulatorConfig()
        if clock is None:
            # Seconds since the simulator started, so that outage windows read naturally.
            started = time.monotonic()

            def clock() -> float:
                return time.monotonic() - started

        self._clock = clock
        self._sleep = sleep
        self._rng = random.Random(self._config.seed)
        self._lock = threading.RLock()
        self._available = True
        # How many calls each fault hit (and all calls), for the demo's report.
        self._hits = {"calls": 0, "outage": 0, "ambiguous": 0, "lost": 0, "oversized": 0}
        self._rules = _Rules(signatures or SignerIds())
        # What the registry verifies and holds: the plain envelope's rules by default, or the
        # real wire format's verifier (registry/sandbox/verifier.py). The drift helpers below
        # (set_owner, split_slice, withdraw) speak the plain envelope only.
        self._ledger: Ledger = ledger or _PlainLedger(self._rules)
        self._log: list[LogEntry] = []
        self._first: dict[str, LogEntry] = {}  # the first receipt of each id
        self._corrupted: dict[str, float] = {}  # id -> when a duplicate turned it FAILED
        self._applied: dict[str, list[LogEntry]] = {}  # stream -> committed, in order

    # --- the Registry port -------------------------------------------------------------------

    @property
    def supports_queries(self) -> bool:
        return self._config.queries

    def send(self, transactions: Sequence[bytes]) -> list[Receipt]:
        batch = [bytes(data) for data in transactions]
        if not batch:
            return []
        with self._lock:
            config = self._config
            self._refuse_during_outage()
            delay = self._draw_latency()
            fault = self._rng.random()  # drawn on every send, so one rate never shifts another
        self._sleep(delay)
        if len(batch) > config.max_batch:
            # The real registry times out on very large batches; the caller cannot tell.
            self._hit("oversized")
            raise RegistryAmbiguous(TIMED_OUT)
        if fault < config.lost_rate:
            self._hit("lost")
            raise RegistryAmbiguous(TIMED_OUT)
        with self._lock:
            now = self._clock()
            entries = [self._receive(data, "client", now) for data in batch]
        if fault < config.lost_rate + config.ambiguous_rate:
            self._hit("ambiguous")
            raise RegistryAmbiguous(TIMED_OUT)
        if config.queries:
            return [Receipt(e.transaction_id, TransactionStatus.PENDING) for e in entries]
        return [self._verdict_of(e) for e in entries]

    def status(self, transaction_id: str) -> Receipt:
        self._query_call()
        with self._lock:
            return self._status_at(transaction_id, self._clock())

    def stream(self, certificate_id: str) -> list[bytes]:
        self._query_call()
        with self._lock:
            now = self._clock()
            settled = []
            # Blocks commit a stream in order: a transaction settled after an earlier one that
            # is still pending (an injected one settles at once) is not visible before it.
            for entry in self._applied.get(certificate_id, []):
                if entry.settles_at > now:
                    break
                settled.append(entry.data)
            return settled

    # --- faults at run time ------------------------------------------------------------------

    @property
    def config(self) -> SimulatorConfig:
        return self._config

    def configure(self, **changes: Any) -> SimulatorConfig:
        """Change faults, latency or mode while running. The seed stays: the RNG is made once."""
        if "seed" in changes:
            raise ValueError("the seed cannot change while running")
        with self._lock:
            self._config = replace(self._config, **changes)
            return self._config

    def set_available(self, available: bool) -> None:
        with self._lock:
            self._available = available

    def is_available(self) -> bool:
        with self._lock:
            return self._is_available_at(self._clock())

    def reachable(self) -> None:
        """For /v1/health: raises while the simulator plays an outage."""
        if not self.is_available():
            raise RegistryUnavailable("the simulator is in an outage")

    # --- drift: change the registry behind the book's back -----------------------------------

    def inject(self, data: bytes) -> Receipt:
        """Apply a transaction that did not come from our client: no faults, no latency, and
        settled at once. The receipt carries its verdict, whatever the query mode."""
        with self._lock:
            entry = self._receive(bytes(data), "injected", self._clock())
            return self._verdict_of(entry)

    def set_owner(self, certificate_id: str, ref: str, owner: str) -> Receipt:
        """Its current owner transfers the slice to `owner` (a TransferredEvent)."""
        with self._lock:
            cert = self._certificate(certificate_id)
            payload = {
                "certificate_id": _certificate_ref(cert),
                "source_slice_hash": ref,
                "new_owner": {"content": owner},
            }
            return self._inject_edit(cert, TRANSFERRED, payload, self._owner_of(cert, ref))

    def split_slice(
        self, certificate_id: str, ref: str, parts: Sequence[tuple[str, str, int]]
    ) -> Receipt:
        """Its current owner slices `ref` into parts of (ref, owner, quantity) (a SlicedEvent)."""
        with self._lock:
            cert = self._certificate(certificate_id)
            payload = {
                "certificate_id": _certificate_ref(cert),
                "source_slice_hash": ref,
                "new_slices": [
                    {"quantity": {"content": r, "quantity": q}, "new_owner": {"content": o}}
                    for r, o, q in parts
                ],
                "sum_proof": "",
            }
            return self._inject_edit(cert, SLICED, payload, self._owner_of(cert, ref))

    def withdraw(self, certificate_id: str, issuer: str = "issuer") -> Receipt:
        """The issuer withdraws the certificate (a WithdrawnEvent)."""
        with self._lock:
            cert = self._certificate(certificate_id)
            return self._inject_edit(cert, WITHDRAWN, {}, issuer)

    # --- what tests and the reconciler look at -----------------------------------------------

    def federate(self, name: str, registries: Mapping[str, RegistrySimulator]) -> None:
        """Be registry `name` of a federation: take only transactions for `name`, and look up a
        certificate of another registry (the other side of an allocation) in `registries`, as
        upstream's verifier asks the registry that holds it."""
        rules_ = self._ledger.rules  # type: ignore[attr-defined]
        rules_.registry = name

        def peer(registry: str, stream: str) -> Any:
            other = registries.get(registry)
            if other is None or other is self:
                return None
            with other._lock:
                return other._ledger.rules.certificates.get(stream)  # type: ignore[attr-defined]

        rules_.peers = peer

    def snapshot(self, certificate_id: str) -> dict[str, Any] | None:
        """The certificate's state as the registry holds it now, or None if it does not exist.
        Unlike `stream`, this includes transactions that have not settled yet."""
        with self._lock:
            return self._ledger.snapshot(certificate_id)

    def log(self) -> list[LogEntry]:
        with self._lock:
            return list(self._log)

    def received_ids(self, origin: Origin | None = None) -> list[str]:
        """Every transaction id ever received, in order, repeats included."""
        with self._lock:
            return [e.transaction_id for e in self._log if origin in (None, e.origin)]

    def duplicates(self) -> list[str]:
        """Ids received more than once: invariant I1 holds while this is empty."""
        seen: set[str] = set()
        repeated: list[str] = []
        for tid in self.received_ids():
            if tid in seen and tid not in repeated:
                repeated.append(tid)
            seen.add(tid)
        return repeated

    # --- inside ------------------------------------------------------------------------------

    def _receive(self, data: bytes, origin: Origin, now: float) -> LogEntry:
        tid = transaction_id_of(data)
        first = self._first.get(tid)
        if first is not None:
            # Not applied again, but the upstream bug reports the first one as FAILED.
            self._corrupted.setdefault(tid, now)
            entry = LogEntry(
                tid,
                data,
                first.stream_id,
                first.payload_type,
                now,
                now,
                TransactionStatus.FAILED,
                DUPLICATE,
                origin,
            )
            self._log.append(entry)
            return entry
        stream_id = payload_type = None
        try:
            stream_id, payload_type, tx = self._ledger.parse(data)
            self._ledger.apply(tx)
        except MalformedTransaction as exc:
            verdict, message = TransactionStatus.FAILED, f"malformed: {exc}"
        except _Malformed as exc:
            verdict, message = TransactionStatus.FAILED, f"malformed: {exc}"
        except TransactionRefused as exc:
            verdict, message = TransactionStatus.FAILED, str(exc)
        else:
            verdict, message = TransactionStatus.COMMITTED, ""
        settles_at = now if origin == "injected" else now + self._config.commit_delay_s
        entry = LogEntry(
            tid, data, stream_id, payload_type, now, settles_at, verdict, message, origin
        )
        self._log.append(entry)
        self._first[tid] = entry
        if verdict == TransactionStatus.COMMITTED and stream_id is not None:
            self._applied.setdefault(stream_id, []).append(entry)
        return entry

    def _verdict_of(self, entry: LogEntry) -> Receipt:
        return Receipt(entry.transaction_id, entry.verdict, entry.message)

    def _status_at(self, tid: str, now: float) -> Receipt:
        first = self._first.get(tid)
        if first is None:
            return Receipt(tid, TransactionStatus.UNKNOWN)
        if tid in self._corrupted:
            failed_at, message = self._corrupted[tid], DUPLICATE
        elif now < first.settles_at:
            return Receipt(tid, TransactionStatus.PENDING)
        elif first.verdict == TransactionStatus.FAILED:
            failed_at, message = first.settles_at, first.message
        elif now >= first.settles_at + self._config.finalize_delay_s:
            return Receipt(tid, TransactionStatus.FINALIZED)
        else:
            return Receipt(tid, TransactionStatus.COMMITTED)
        # The registry caches FAILED statuses for a while only; then it knows nothing.
        if now - failed_at > self._config.status_ttl_s:
            return Receipt(tid, TransactionStatus.UNKNOWN)
        return Receipt(tid, TransactionStatus.FAILED, message)

    def _query_call(self) -> None:
        with self._lock:
            if not self._config.queries:
                raise QueriesNotSupported("this registry answers no queries")
            self._refuse_during_outage()
            delay = self._draw_latency()
        self._sleep(delay)

    def _refuse_during_outage(self) -> None:
        """Every call passes here first (under the lock): it counts the call, and a refusal."""
        self._hits["calls"] += 1
        if not self._is_available_at(self._clock()):
            self._hits["outage"] += 1
            raise RegistryUnavailable("registry unavailable (outage)")

    def _hit(self, fault: str) -> None:
        with self._lock:
            self._hits[fault] += 1

    def fault_hits(self) -> dict[str, int]:
        """Calls made (`calls`), and how many each fault hit: refused in an outage, lost on
        the way, applied then timed out (`ambiguous`), a batch over the size limit."""
        with self._lock:
            return dict(self._hits)

    def _is_available_at(self, now: float) -> bool:
        in_window = any(start <= now < end for start, end in self._config.outages)
        return self._available and not in_window

    def _draw_latency(self) -> float:
        u = self._rng.random()  # drawn even without jitter, so that draws stay aligned
        jitter = -self._config.latency_jitter_s * math.log(1.0 - u)
        return self._config.latency_s + jitter

    def _certificate(self, certificate_id: str) -> _Certificate:
        cert = self._rules.certificates.get(certificate_id)
        if cert is None:
            raise ValueError(f"no certificate {certificate_id} in the registry")
        return cert

    @staticmethod
    def _owner_of(cert: _Certificate, ref: str) -> str:
        found = cert.slices.get(ref)
        if found is None:
            raise ValueError(f"no slice {ref} on certificate {cert.certificate_id}")
        return found.owner

    def _inject_edit(
        self, cert: _Certificate, payload_type: str, payload: dict[str, Any], signer: str
    ) -> Receipt:
        # A real, valid transaction rather than a silent edit, so `stream` stays truthful.
        tx = Transaction.build(cert.registry, cert.certificate_id, payload_type, payload, signer)
        receipt = self.inject(tx.serialize())
        if receipt.status != TransactionStatus.COMMITTED:
            raise ValueError(f"the registry refused the edit: {receipt.message}")
        return receipt


# --- the registry's state and verifier: the plain envelope's side of sandbox/rules.py -----------


class Ledger(Protocol):
    """The registry's verifier and state: parse a transaction (MalformedTransaction if it is
    not one), then apply it (TransactionRefused, changing nothing, if the verifier says no)."""

    def parse(self, data: bytes) -> tuple[str, str, Any]:
        """(stream id, payload type, the parsed transaction for `apply`)."""
        ...

    def apply(self, parsed: Any) -> None: ...

    def snapshot(self, certificate_id: str) -> dict[str, Any] | None: ...


class _PlainLedger:
    def __init__(self, rules: _Rules) -> None:
        self._rules = rules
        self.rules = rules  # what a federated peer looks certificates up in

    def parse(self, data: bytes) -> tuple[str, str, Any]:
        tx = Transaction.parse(data)
        return tx.header.stream_id, tx.header.payload_type, tx

    def apply(self, parsed: Any) -> None:
        self._rules.apply(parsed)

    def snapshot(self, certificate_id: str) -> dict[str, Any] | None:
        cert = self._rules.certificates.get(certificate_id)
        return None if cert is None else _plain(cert)


class _Malformed(Exception):
    """A payload that lacks a field or holds one of the wrong kind."""


_Certificate = rules.Certificate


def _plain(cert: rules.Certificate) -> dict[str, Any]:
    return cert.plain(
        lambda ref, s: {"ref": ref, "owner": s.owner, "quantity": s.value, "state": s.state}
    )


def _certificate_ref(cert: rules.Certificate) -> dict[str, str]:
    return {"registry": cert.registry, "stream_id": cert.certificate_id}


def _get(payload: dict[str, Any], *path: str, kind: type = str) -> Any:
    value: Any = payload
    for key in path:
        if not isinstance(value, dict) or key not in value:
            raise _Malformed(f"missing {'.'.join(path)}")
        value = value[key]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise _Malformed(f"{'.'.join(path)} must be {kind.__name__}")
    return value


def _ref(payload: dict[str, Any], key: str) -> rules.StreamRef:
    return rules.StreamRef(_get(payload, key, "registry"), _get(payload, key, "stream_id"))


def _moment(payload: dict[str, Any], key: str) -> datetime:
    text = _get(payload, "period", key)
    try:
        moment = datetime.fromisoformat(text)
    except ValueError as exc:
        raise _Malformed(f"period.{key} is not ISO 8601") from exc
    if moment.tzinfo is None:
        raise _Malformed(f"period.{key} has no time zone")
    return moment


class _PlainChecks:
    """Quantities in clear, owners by id, signatures through `SignatureCheck`."""

    def __init__(self, signatures: SignatureCheck) -> None:
        self.signatures = signatures

    def signed_by_owner(self, tx: rules.Envelope, owner: Any) -> bool:
        return self.signatures.signed_by_owner(tx.signature, owner)

    def signed_by_issuer(self, tx: rules.Envelope, grid_area: str) -> bool:
        return self.signatures.signed_by_issuer(tx.signature, grid_area)

    def owner_key(self, owner: Any, what: str) -> None:
        pass  # any id names an owner

    def quantity(self, value: Any, label: str) -> None:
        if not 1 <= value <= MAX_QUANTITY:
            rules.refuse("quantity out of range")

    def parts_add_up(self, source: Any, parts: Sequence[Any], proof: Any, label: str) -> None:
        if sum(parts) != source:
            rules.refuse("new slices do not sum to the source slice")

    def equal(self, production: Any, consumption: Any, proof: Any, label: str) -> None:
        if production != consumption:
            rules.refuse("quantities differ")

    def signed_by_chronicler(
        self, keys: list[bytes], signature: Any, certificate: rules.StreamRef, value: Any
    ) -> bool:
        return False  # the plain sandbox has no chronicler (its rules are given no keys)


class _Rules(rules.Rules):
    """sandbox/rules.py over the plain envelope: its JSON payloads made into the rules' events."""

    def __init__(self, signatures: SignatureCheck) -> None:
        super().__init__(_PlainChecks(signatures))

    def apply(self, tx: Transaction, event: Any = None) -> None:  # type: ignore[override]
        if not isinstance(tx.payload, dict):
            raise _Malformed("payload must be an object")
        parse = {
            ISSUED: _issue,
            SLICED: _slicing,
            TRANSFERRED: _transfer,
            ALLOCATED: _allocate,
            CLAIMED: _claim,
            UNCLAIMED: _unclaim,
            WITHDRAWN: lambda p: rules.Withdraw(),
        }[tx.header.payload_type]
        envelope = rules.Envelope(tx.header.registry, tx.header.stream_id, tx)
        super().apply(envelope, parse(tx.payload))


def _issue(p: dict[str, Any]) -> rules.Issue:
    certificate = _ref(p, "certificate_id")
    start, end = _moment(p, "start"), _moment(p, "end")
    _get(p, "asset_id_hash")
    attributes = _get(p, "attributes", kind=list)
    return rules.Issue(
        certificate=certificate,
        type=_get(p, "type"),
        start=start,
        end=end,
        grid_area=_get(p, "grid_area"),
        ref=_get(p, "quantity", "content"),
        value=_get(p, "quantity", "quantity", kind=int),
        owner=_get(p, "owner_public_key", "content"),
        attributes={_get(a, "key"): _get(a, "value") for a in attributes if isinstance(a, dict)},
    )


def _slicing(p: dict[str, Any]) -> rules.Slicing:
    certificate = _ref(p, "certificate_id")
    source = _get(p, "source_slice_hash")
    parts = _get(p, "new_slices", kind=list)
    if not parts:
        raise _Malformed("new_slices is empty")
    new = [
        rules.Part(
            _get(part, "quantity", "content"),
            _get(part, "quantity", "quantity", kind=int),
            _get(part, "new_owner", "content"),
        )
        for part in parts
    ]
    return rules.Slicing(certificate, source, new, None)


def _transfer(p: dict[str, Any]) -> rules.Transfer:
    return rules.Transfer(
        _ref(p, "certificate_id"), _get(p, "source_slice_hash"), _get(p, "new_owner", "content")
    )


def _allocate(p: dict[str, Any]) -> rules.Allocate:
    return rules.Allocate(
        allocation_id=_get(p, "allocation_id"),
        production=_ref(p, "production_certificate_id"),
        consumption=_ref(p, "consumption_certificate_id"),
        production_slice=_get(p, "production_source_slice_hash"),
        consumption_slice=_get(p, "consumption_source_slice_hash"),
        proof=None,
    )


def _claim(p: dict[str, Any]) -> rules.Claim:
    return rules.Claim(_ref(p, "certificate_id"), _get(p, "allocation_id"))


def _unclaim(p: dict[str, Any]) -> rules.Unclaim:
    return rules.Unclaim(_get(p, "allocation_id"))
