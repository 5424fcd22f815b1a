"""A registry that measures itself: the time and outcome of every call, per registry.

It wraps whichever registry the composition root built, so the worker and the reconciler do
not change. Every call becomes a CloudWatch metric (embedded metric format: a log line, no API
call) for the operations dashboard of infra/, and a running tally in the process for the
embedded stack's /ops page.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

from chalicelib import observability
from chalicelib.registry.port import QueriesNotSupported, Receipt, Registry


@dataclass
class CallTally:
    calls: int = 0
    errors: int = 0
    total_ms: float = 0.0
    last_ms: float = 0.0
    last_error: str = ""

    @property
    def mean_ms(self) -> float:
        return self.total_ms / self.calls if self.calls else 0.0


class MeasuredRegistry:
    def __init__(self, inner: Registry, name: str) -> None:
        self._inner = inner
        self.name = name
        self.tallies: dict[str, CallTally] = {}
        self._lock = threading.Lock()

    @property
    def supports_queries(self) -> bool:
        return self._inner.supports_queries

    def send(self, transactions: Sequence[bytes]) -> list[Receipt]:
        return self._measured("send", lambda: self._inner.send(transactions))

    def status(self, transaction_id: str) -> Receipt:
        return self._measured("status", lambda: self._inner.status(transaction_id))

    def stream(self, certificate_id: str) -> list[bytes]:
        return self._measured("stream", lambda: self._inner.stream(certificate_id))

    def _measured(self, call: str, run):
        started = time.perf_counter()
        error = ""
        try:
            return run()
        except QueriesNotSupported:
            raise  # an answer, not a failure
        except Exception as exc:  # counted and raised again: the caller decides what it means
            error = type(exc).__name__
            raise
        finally:
            ms = (time.perf_counter() - started) * 1000
            with self._lock:
                tally = self.tallies.setdefault(call, CallTally())
                tally.calls += 1
                tally.total_ms += ms
                tally.last_ms = ms
                if error:
                    tally.errors += 1
                    tally.last_error = error
            observability.metrics(
                {"registry_call_ms": round(ms, 1), "registry_errors": 1 if error else 0},
                units={"registry_call_ms": "Milliseconds"},
                Registry=self.name,
                Call=call,
            )

    def __getattr__(self, name: str):
        # Anything else the concrete registry offers (the simulator's test hooks) passes through.
        return getattr(self._inner, name)
