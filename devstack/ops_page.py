"""GET /ops on the embedded stack: a read-only page for operators with the figures of the
CloudWatch dashboard (infra/resources.json, OperationsDashboard), taken from the book, the
queues and the registry's tally instead of from CloudWatch, and the stuck commands with the
reason each is stuck.

It exists on the embedded stack only (the stack's HTTP front serves it, not the Lambda app),
which listens on the loopback address alone; on AWS the dashboard and /v1/ops/* do this job.
"""

from __future__ import annotations

import html
import threading
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from chalicelib.composition import Services
from chalicelib.domain import Command, CommandStatus

OPEN = (CommandStatus.ACCEPTED, CommandStatus.SENDING, CommandStatus.SENT, CommandStatus.IN_DOUBT)
MAX_LISTED = 1000
WAITING_IS_STUCK_S = 60  # an open command older than this is listed, with why


@dataclass
class Figures:
    at: datetime
    by_status: dict[str, int]
    oldest_open_s: float
    listed_all: bool
    stuck: list[tuple[Command, str]]
    queue_waiting: int
    queue_in_flight: int
    dead_letters: int
    reconciler: dict[str, Any] | None
    reconciler_failures: tuple[int, str]
    registry: dict[str, dict[str, float]]


@dataclass
class OpsPage:
    """What the page reads: the app's services, the queues, and the last reconciler pass."""

    services: Any  # () -> Services: the app's, as the stack put them in place
    sqs: Any
    queue_url: str
    dead_letter_url: str
    _last_pass: dict[str, Any] | None = None
    failed_passes: int = 0
    last_failure: str = ""
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def note_pass(self, report: dict[str, Any]) -> None:
        with self._lock:
            self._last_pass = {"at": datetime.now(UTC), **report}

    def note_failed_pass(self, error: BaseException) -> None:
        with self._lock:
            self.failed_passes += 1
            self.last_failure = f"{type(error).__name__}: {error}"

    def figures(self, now: datetime | None = None) -> Figures:
        services: Services = self.services()
        now = now or datetime.now(UTC)
        commands = services.book.open_commands(now + timedelta(seconds=1), limit=MAX_LISTED)
        counts = Counter(c.status.value for c in commands)
        waiting = self._depth(self.queue_url)
        return Figures(
            at=now,
            by_status={s.value: counts.get(s.value, 0) for s in OPEN},
            oldest_open_s=max(((now - c.created_at).total_seconds() for c in commands), default=0),
            listed_all=len(commands) < MAX_LISTED,
            stuck=[
                (c, why)
                for c in commands
                if (why := reason_stuck(c, now, services.settings.redrive_after_s))
            ]
            + [
                (c, reason_stranded(c))
                for c in services.book.stranded_commands(MAX_LISTED)
                if c.is_terminal
            ],
            queue_waiting=waiting["ApproximateNumberOfMessages"],
            queue_in_flight=waiting["ApproximateNumberOfMessagesNotVisible"],
            dead_letters=self._depth(self.dead_letter_url)["ApproximateNumberOfMessages"],
            reconciler=self._last_pass,
            reconciler_failures=(self.failed_passes, self.last_failure),
            registry={
                # a federation's calls by registry and call ("dk1 send"), one registry's by call
                (f"{name} {call}" if name else call): {
                    "calls": t.calls,
                    "errors": t.errors,
                    "mean_ms": t.mean_ms,
                    "last_ms": t.last_ms,
                }
                for name, registry in _registries(services.registry)
                for call, t in sorted(getattr(registry, "tallies", {}).items())
            },
        )

    def _depth(self, url: str) -> dict[str, int]:
        names = ["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
        found = self.sqs.get_queue_attributes(QueueUrl=url, AttributeNames=names)["Attributes"]
        return {n: int(found.get(n, 0)) for n in names}

    def render(self, now: datetime | None = None) -> str:
        registry = self.services().registry
        name = (
            ", ".join(name for name, _ in registry)
            if getattr(registry, "federated", False)
            else getattr(registry, "name", "registry")
        )
        return render(self.figures(now), name)


def _registries(registry: Any) -> list[tuple[str, Any]]:
    """(name, registry) of a federation, or ("", the one registry)."""
    if getattr(registry, "federated", False):
        return list(registry)
    return [("", registry)]


def reason_stuck(command: Command, now: datetime, redrive_after_s: float) -> str | None:
    """Why an open command needs a look, or None while it is merely in progress."""
    age = (now - command.updated_at).total_seconds()
    match command.status:
        case CommandStatus.IN_DOUBT:
            return f"in doubt: {command.error or 'the registry may or may not have it'}"
        case CommandStatus.SENDING if command.lease_until and command.lease_until < now:
            return "its worker's lease expired mid-call: the reconciler settles it"
        case CommandStatus.ACCEPTED if age > redrive_after_s:
            return (
                f"accepted {age:.0f} s ago and not taken: its message was lost; "
                "the reconciler re-drives it"
            )
    if age > WAITING_IS_STUCK_S:
        return f"{command.status.value} for {age:.0f} s"
    return None


def reason_stranded(command: Command) -> str:
    """A claim that left allocations in the registry for good: what each one holds."""
    return "stranded for good: " + "; ".join(
        f"the {a.side.value} allocation of slice {a.slice_id} (transaction {a.transaction_id})"
        for a in command.stranded
    )


def _card(name: str, value: Any, note: str = "", alert: bool = False) -> str:
    return (
        f'<div class="card{" alert" if alert else ""}" data-figure="{html.escape(name)}">'
        f'<div class="value">{html.escape(str(value))}</div>'
        f'<div class="name">{html.escape(name.replace("_", " "))}</div>'
        f'<div class="note">{html.escape(note)}</div></div>'
    )


def render(f: Figures, registry_name: str) -> str:
    cards = [
        _card(f"open {s.lower().replace('_', ' ')}", n, alert=s == "IN_DOUBT" and n > 0)
        for s, n in f.by_status.items()
    ]
    cards += [
        _card("oldest open command", f"{f.oldest_open_s:.0f} s"),
        _card("stuck", len(f.stuck), "need a look (below)", alert=bool(f.stuck)),
        _card("queue waiting", f.queue_waiting, f"{f.queue_in_flight} in flight"),
        _card("dead letters", f.dead_letters, "messages in the DLQ", alert=f.dead_letters > 0),
        _card(
            "registry errors",
            sum(int(t["errors"]) for t in f.registry.values()),
            f"of {sum(int(t['calls']) for t in f.registry.values())} calls",
            alert=any(t["errors"] for t in f.registry.values()),
        ),
        _card("reconciler failures", f.reconciler_failures[0], alert=f.reconciler_failures[0] > 0),
    ]
    stuck_rows = (
        "".join(
            "<tr>"
            f"<td><code>{html.escape(c.command_id)}</code></td><td>{html.escape(c.kind.value)}</td>"
            f"<td>{html.escape(c.status.value)}</td><td><code>{html.escape(c.certificate_id)}</code>"
            f"</td><td>{c.updated_at:%Y-%m-%d %H:%M:%S}</td><td>{html.escape(why)}</td>"
            "</tr>"
            for c, why in sorted(f.stuck, key=lambda s: s[0].updated_at)
        )
        or '<tr><td colspan="6" class="none">nothing is stuck</td></tr>'
    )
    if f.reconciler:
        done = f.reconciler.get("actions", {})
        reconciler = (
            f"last pass {f.reconciler['at']:%H:%M:%S} UTC, "
            f"{'complete' if f.reconciler.get('complete') else 'stopped at its bound'}: "
            + (", ".join(f"{k} {v}" for k, v in sorted(done.items())) or "nothing to do")
        )
    else:
        reconciler = "no pass yet"
    failed, last_failure = f.reconciler_failures
    if failed:
        reconciler += f"; {failed} failed pass(es), the last: {last_failure}"
    registry_rows = (
        "".join(
            f"<tr><td>{html.escape(registry_name)}</td><td>{html.escape(call)}</td>"
            f"<td>{t['calls']:.0f}</td><td>{t['errors']:.0f}</td><td>{t['mean_ms']:.1f}</td>"
            f"<td>{t['last_ms']:.1f}</td></tr>"
            for call, t in f.registry.items()
        )
        or '<tr><td colspan="6" class="none">no registry calls yet</td></tr>'
    )
    partial = "" if f.listed_all else f" (the first {MAX_LISTED} open commands)"
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="refresh" content="5">
<title>Certificates Domain: operations</title>
<style>
body {{ font: 15px system-ui, sans-serif; margin: 24px; color: #222; }}
h1 {{ font-size: 22px; margin: 0 0 4px; }} h2 {{ font-size: 17px; margin: 28px 0 8px; }}
.sub {{ color: #666; }}
.cards {{ display: flex; flex-wrap: wrap; gap: 12px; margin-top: 16px; }}
.card {{ border: 1px solid #ddd; border-radius: 8px; padding: 12px 16px; min-width: 130px; }}
.card .value {{ font-size: 28px; font-weight: 600; }}
.card .name {{ color: #444; }} .card .note {{ color: #888; font-size: 12px; }}
.card.alert {{ border-color: #c0392b; background: #fdecea; }}
table {{ border-collapse: collapse; }} td, th {{ padding: 4px 10px; border-bottom: 1px solid #eee;
  text-align: left; }} th {{ background: #f6f6f6; }} .none {{ color: #888; }}
</style></head><body>
<h1>Certificates Domain: operations</h1>
<div class="sub">Embedded stack, read-only, {f.at:%Y-%m-%d %H:%M:%S} UTC{partial}; refreshes
every 5 s. On AWS: the CloudWatch dashboard and GET /v1/ops/commands.</div>
<div class="cards">{"".join(cards)}</div>
<h2>Stuck commands, with the reason</h2>
<table id="stuck"><tr><th>command</th><th>kind</th><th>status</th><th>certificate</th>
<th>since</th><th>why</th></tr>{stuck_rows}</table>
<h2>Reconciler</h2><p id="reconciler">{html.escape(reconciler)}</p>
<h2>Registry</h2>
<table id="registry"><tr><th>registry</th><th>call</th><th>calls</th><th>errors</th>
<th>mean ms</th><th>last ms</th></tr>{registry_rows}</table>
</body></html>
"""
