"""`make demo`: a scripted day of a small market, with the registry misbehaving on purpose.

Producers get hourly production certificates and consumers hourly consumption certificates
from generated metering data; then each producer cuts its hours into parts, sells parts to
consumers, and each consumer claims what it bought against its consumption. Meanwhile the
registry is slow, goes down for a while, and times out after applying now and then. At the
end: commands per final state, the in-doubt ones and how they were resolved, throughput, and
a check of invariants I1-I6 against the registry simulator's log and the book. The exit code
is 1 if any invariant fails.

    python -m devstack.demo                     # starts its own stack
    python -m devstack.demo --registries 2      # a federation: DK1 on dk1, DK2 on dk2
    python -m devstack.demo --url http://127.0.0.1:8000 --registry-url http://127.0.0.1:8100

With `--registries 2` producers and consumers alternate between grid areas DK1 and DK2, whose
certificates live in registries dk1 and dk2; claims match across them. The outage takes dk1
down only: dk2's commands must keep committing meanwhile, and the report says how many did.
The invariants are checked against each registry's log, and every transaction must be in the
log of its certificate's registry and no other.
"""

from __future__ import annotations

import argparse
import base64
import faulthandler
import json
import math
import random
import signal
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from chalicelib.api.auth import mint_token
from chalicelib.registry.codec import PLAIN, TransactionCodec
from chalicelib.settings import DEVELOPMENT_JWT_SECRET

DAY = datetime(2026, 6, 1, tzinfo=UTC)
TERMINAL = {"COMMITTED", "REJECTED"}
LIVE = {"available", "reserved", "claimed", "withdrawn", "expired"}


class Http:
    def __init__(self, base: str) -> None:
        self.base = base.rstrip("/")

    def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        token: str | None = None,
        key: str | None = None,
    ) -> tuple[int, Any]:
        headers = {"Content-Type": "application/json"} if body is not None else {}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        if key:
            headers["Idempotency-Key"] = key
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(
            self.base + path, data=data, headers=headers, method=method
        )
        for attempt in range(5):
            try:
                with urllib.request.urlopen(request, timeout=30) as answer:
                    return answer.status, json.loads(answer.read() or b"null")
            except urllib.error.HTTPError as error:
                return error.code, json.loads(error.read() or b"null")
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                if attempt == 4:
                    raise
                time.sleep(0.5 * (attempt + 1))  # the same key makes the retry safe
        raise AssertionError("unreachable")


@dataclass
class Progress:
    label: str
    total: int
    done: int = 0
    started: float = field(default_factory=time.monotonic)

    last_line: float = 0.0

    def update(self, done: int, extra: str = "") -> None:
        """One updating line on a terminal; a plain line every few seconds otherwise."""
        self.done = done
        now = time.monotonic()
        line = f"  {self.label:<28} {done:>5}/{self.total:<5} {now - self.started:6.1f} s {extra}"
        if sys.stderr.isatty():
            sys.stderr.write("\r" + line.ljust(90))
        elif now - self.last_line >= 5:
            sys.stderr.write(line + "\n")
            self.last_line = now
        sys.stderr.flush()

    def finish(self) -> None:
        self.last_line = 0.0
        self.update(self.done)
        if sys.stderr.isatty():
            sys.stderr.write("\n")


@dataclass
class Market:
    api: Http
    registry: Http
    secret: str
    producers: int
    consumers: int
    hours: int
    rng: random.Random
    commands: dict[str, str] = field(default_factory=dict)  # command id -> the caller's token
    resolutions: Counter = field(default_factory=Counter)
    final: dict[str, dict[str, Any]] = field(default_factory=dict)  # terminal views, cached
    # A federation's registries by name (control planes), the outage's first; {} for one.
    federation: dict[str, Http] = field(default_factory=dict)
    # Commands of the other registries that committed while the first one was down.
    committed_in_outage: int = 0

    @property
    def logs(self) -> dict[str, list[dict[str, Any]]]:
        """Each registry's log, by name (the one registry's under "")."""
        registries = self.federation or {"": self.registry}
        return {name: r.call("GET", "/v1/log")[1]["entries"] for name, r in registries.items()}

    def grid_area(self, index: int) -> str:
        """Owners alternate between the federation's grid areas (DK1 alone without one)."""
        return f"DK{index % len(self.federation) + 1}" if self.federation else "DK1"

    def token(self, owner: str, *roles: str) -> str:
        return mint_token(self.secret, owner, roles)

    # --- the day ---------------------------------------------------------------------------

    def metering(self) -> list[dict[str, Any]]:
        """Hourly production (a sun curve) and consumption (a load curve), in Wh."""
        rows = []
        tag = uuid.uuid4().int % 10**6  # GSRNs unique per run, so demos can repeat
        for hour in range(self.hours):
            start = DAY + timedelta(hours=hour)
            sun = max(0.0, math.sin(math.pi * (hour - 5) / 14)) if 5 <= hour <= 19 else 0.0
            for p in range(self.producers):
                quantity = int(20_000 + 180_000 * sun * self.rng.uniform(0.7, 1.0))
                rows.append(
                    self._row(
                        "production",
                        f"57131310{tag:06d}{p:04d}",
                        start,
                        quantity,
                        f"producer-{p}",
                        self.grid_area(p),
                    )
                )
            for c in range(self.consumers):
                load = 40_000 + 30_000 * math.sin(math.pi * hour / 24) ** 2
                rows.append(
                    self._row(
                        "consumption",
                        f"57131320{tag:06d}{c:04d}",
                        start,
                        int(load * self.rng.uniform(0.8, 1.2)),
                        f"consumer-{c}",
                        self.grid_area(c),
                    )
                )
        return rows

    @staticmethod
    def _row(
        type_: str, gsrn: str, start: datetime, quantity: int, owner: str, grid_area: str
    ) -> dict:
        return {
            "type": type_,
            "gsrn": gsrn,
            "grid_area": grid_area,
            "start": start.isoformat(),
            "end": (start + timedelta(hours=1)).isoformat(),
            "quantity_wh": quantity,
            "owner": owner,
            "attributes": {"technology": "T020001" if type_ == "production" else "consumption"},
        }

    def issue(self) -> None:
        issuer = self.token("issuer-dk", "issuer")
        rows = self.metering()
        progress = Progress("issuing certificates", len(rows))
        for i in range(0, len(rows), 100):
            status, body = self.api.call(
                "POST",
                "/v1/certificates/batch",
                {"certificates": rows[i : i + 100]},
                issuer,
                f"batch-{uuid.uuid4()}",
            )
            if status != 202:
                raise SystemExit(f"batch issue refused: {status} {body}")
            for item in body["commands"]:
                if item.get("command"):
                    self.commands[item["command"]["command_id"]] = issuer
            progress.update(min(i + 100, len(rows)))
        progress.finish()

    def holdings(self, owner: str) -> list[dict[str, Any]]:
        token, items, cursor = self.token(owner), [], None
        while True:
            path = "/v1/certificates?limit=100" + (f"&cursor={cursor}" if cursor else "")
            status, page = self.api.call("GET", path, token=token)
            if status != 200:
                raise SystemExit(f"listing refused: {status} {page}")
            items += page["items"]
            cursor = page.get("next_cursor")
            if not cursor:
                return items

    def trade(self, outage_s: float) -> None:
        """Producers sell part of each hour to a consumer, who then claims it."""
        by_hour: dict[str, dict[str, Any]] = defaultdict(dict)
        for c in range(self.consumers):
            for cert in self.holdings(f"consumer-{c}"):
                by_hour[cert["start"]][f"consumer-{c}"] = cert
        sales = []
        for p in range(self.producers):
            owner = f"producer-{p}"
            for cert in self.holdings(owner):
                mine = [s for s in cert["slices"] if s["state"] == "available"]
                if not mine or cert["type"] != "production":
                    continue
                buyer = f"consumer-{(p + cert['start'].count('1')) % self.consumers}"
                consumption = by_hour[cert["start"]].get(buyer)
                if consumption is None:
                    continue
                want = min(mine[0]["quantity_wh"] // 2, consumption["quantity_wh"])
                sales.append((owner, buyer, cert, mine[0], want))
        progress = Progress("transfers (registry outage)", len(sales))
        down_from, down_until = len(sales) // 3, None
        outage_started: dict[str, int] = {}
        accepted = []
        for i, (owner, buyer, cert, slice_, want) in enumerate(sales):
            if i == down_from and outage_s:
                self.registry.call("POST", "/v1/faults", {"available": False})
                down_until = time.monotonic() + outage_s
                outage_started = self._logged_elsewhere()
            if down_until and time.monotonic() >= down_until:
                if self.federation:
                    self.committed_in_outage = self._committed_elsewhere(outage_started)
                self.registry.call("POST", "/v1/faults", {"available": True})
                down_until = None
            status, body = self.api.call(
                "POST",
                "/v1/transfers",
                {
                    "certificate_id": cert["certificate_id"],
                    "slice_id": slice_["slice_id"],
                    "receiver": buyer,
                    "quantity_wh": want,
                },
                self.token(owner),
                f"transfer-{uuid.uuid4()}",
            )
            if status == 202:
                self.commands[body["command_id"]] = self.token(owner)
                accepted.append((buyer, cert, want))
            progress.update(i + 1, "registry down" if down_until else "")
        if down_until:
            time.sleep(max(0.0, down_until - time.monotonic()))
            if self.federation:
                self.committed_in_outage = self._committed_elsewhere(outage_started)
            self.registry.call("POST", "/v1/faults", {"available": True})
        progress.finish()
        self.settle("transfers settling")
        progress = Progress("claims", len(accepted))
        for i, (buyer, cert, _) in enumerate(accepted):
            token = self.token(buyer)
            status, view = self.api.call(
                "GET", f"/v1/certificates/{cert['certificate_id']}", token=token
            )
            bought = (
                [s for s in view.get("slices", []) if s["state"] == "available"]
                if (status == 200)
                else []
            )
            consumption = by_hour[cert["start"]][buyer]
            status, cview = self.api.call(
                "GET", f"/v1/certificates/{consumption['certificate_id']}", token=token
            )
            theirs = (
                [s for s in cview.get("slices", []) if s["state"] == "available"]
                if (status == 200)
                else []
            )
            if not bought or not theirs:
                continue
            quantity = min(bought[0]["quantity_wh"], theirs[0]["quantity_wh"])
            status, body = self.api.call(
                "POST",
                "/v1/claims",
                {
                    "production": {
                        "certificate_id": cert["certificate_id"],
                        "slice_id": bought[0]["slice_id"],
                    },
                    "consumption": {
                        "certificate_id": consumption["certificate_id"],
                        "slice_id": theirs[0]["slice_id"],
                    },
                    "quantity_wh": quantity,
                },
                token,
                f"claim-{uuid.uuid4()}",
            )
            if status == 202:
                self.commands[body["command_id"]] = token
            progress.update(i + 1)
        progress.finish()

    def _logged_elsewhere(self) -> dict[str, int]:
        """How many entries each registry but the first has logged so far."""
        names = list(self.federation)[1:]
        return {
            name: len(self.federation[name].call("GET", "/v1/log")[1]["entries"]) for name in names
        }

    def _committed_elsewhere(self, since: dict[str, int]) -> int:
        """Transactions the other registries committed since `since` (while the first was down)."""
        now = {name: self.federation[name].call("GET", "/v1/log")[1]["entries"] for name in since}
        return sum(
            1
            for name, entries in now.items()
            for e in entries[since[name] :]
            if e["verdict"] == "COMMITTED" and e["origin"] == "client"
        )

    # --- settling ------------------------------------------------------------------------

    def statuses(self) -> dict[str, dict[str, Any]]:
        views = dict(self.final)
        for command_id, token in self.commands.items():
            if command_id in self.final:
                continue
            status, view = self.api.call("GET", f"/v1/commands/{command_id}", token=token)
            if status == 200:
                views[command_id] = view
                if view["status"] in TERMINAL:
                    self.final[command_id] = view
        return views

    def settle(self, label: str, timeout_s: float = 300) -> None:
        """Wait for the workers, run reconciler passes, then resolve what stays in doubt as an
        operator would: by looking the transaction up in the registry."""
        operator = self.token("ops", "operator")
        progress = Progress(label, len(self.commands))
        deadline = time.monotonic() + timeout_s
        passes = skipped = 0
        while True:
            views = self.statuses()
            done = sum(1 for v in views.values() if v["status"] in TERMINAL)
            doubt = [v for v in views.values() if v["status"] == "IN_DOUBT"]
            progress.update(done, f"in doubt {len(doubt)}")
            if done == len(self.commands):
                break
            if done + len(doubt) == len(self.commands) or time.monotonic() > deadline:
                if passes < 2:  # the reconciler first: it resolves from the registry's word
                    _, report = self.api.call(
                        "POST", "/v1/ops/reconcile", {}, operator, str(uuid.uuid4())
                    )
                    held = (report or {}).get("actions", {}).get("skipped_lease_held")
                    if held and skipped < 40:
                        # The stack's own scheduled pass is running (it holds the lease) and
                        # resolves them as well: wait for it rather than count a pass.
                        skipped += 1
                        time.sleep(0.5)
                    else:
                        passes += 1
                    still = {c for c, v in self.statuses().items() if v["status"] == "IN_DOUBT"}
                    self.resolutions["by the reconciler"] += len(
                        {v["command_id"] for v in doubt} - still
                    )
                    continue
                for view in doubt:
                    self.resolve(view, operator)
                passes = 0
                if time.monotonic() > deadline + 60:
                    break
            time.sleep(0.5)
        progress.finish()

    def resolve(self, view: dict[str, Any], operator: str) -> None:
        _, log = self.registry.call("GET", "/v1/log")
        target = view["transaction_ids"][view["step"]]
        applied = any(
            e["transaction_id"] == target and e["verdict"] == "COMMITTED" for e in log["entries"]
        )
        outcome = "committed" if applied else "rejected"
        status, _ = self.api.call(
            "POST",
            f"/v1/ops/commands/{view['command_id']}/resolve",
            {"outcome": outcome, "reason": "looked the transaction up in the registry"},
            operator,
        )
        if status == 200:
            self.resolutions[f"by an operator, {outcome}"] += 1


def check_invariants(
    market: Market, views: dict[str, dict[str, Any]], codec: TransactionCodec = PLAIN
) -> dict[str, str]:
    issuer = market.token("issuer-dk", "issuer")
    logs = market.logs
    entries = [e for log in logs.values() for e in log]
    results: dict[str, str] = {}
    client = [e for e in entries if e["origin"] == "client"]
    ids = Counter(e["transaction_id"] for e in client)
    twice = [i for i, n in ids.items() if n > 1]
    results["I1 never twice"] = "ok" if not twice else f"FAILED: {len(twice)} sent twice"
    open_ = [v["command_id"] for v in views.values() if v["status"] not in TERMINAL]
    lost = len(market.commands) - len(views)
    results["I2 nothing lost"] = (
        "ok" if not open_ and not lost else (f"FAILED: {len(open_)} not terminal, {lost} missing")
    )
    certificates = {
        c["certificate_id"]
        for v in views.values()
        for c in [{"certificate_id": v["certificate_id"]}]
    }
    certificates |= {s["certificate_id"] for v in views.values() for s in v["slices"]}
    book: dict[str, dict[str, Any]] = {}
    for certificate_id in certificates:
        status, cert = market.api.call("GET", f"/v1/certificates/{certificate_id}", token=issuer)
        if status == 200:
            book[certificate_id] = cert
    unbalanced = [
        c
        for c, v in book.items()
        if v["status"] not in ("issuing", "rejected")
        and sum(s["quantity_wh"] for s in v["slices"] if s["state"] in LIVE) != v["quantity_wh"]
    ]
    results["I3 conservation"] = "ok" if not unbalanced else f"FAILED: {len(unbalanced)}"
    refused = [e for e in client if e["verdict"] == "FAILED"]
    results["I4 no double spend"] = (
        "ok"
        if not refused
        else (
            f"FAILED: the registry refused {len(refused)} of our transactions: "
            f"{Counter(e['message'] for e in refused).most_common(2)}"
        )
    )
    reserved = [c for c, v in book.items() if any(s["state"] == "reserved" for s in v["slices"])]
    results["I5 no stale lock"] = "ok" if not reserved else f"FAILED: {len(reserved)}"
    streams: dict[str, list[bytes]] = defaultdict(list)
    elsewhere = []  # a transaction in the log of a registry that does not hold its stream
    for name, log in logs.items():
        for entry in log:
            if entry["verdict"] == "COMMITTED":
                data = base64.b64decode(entry["transaction"])
                streams[codec.stream_id(data)].append(data)
                if name and book.get(codec.stream_id(data), {}).get("registry", name) != name:
                    elsewhere.append(entry["transaction_id"])
    drift = []
    for certificate_id, cert in book.items():
        truth = codec.fold(certificate_id, streams.get(certificate_id, []))
        mine = sorted(
            (s["owner"], s["quantity_wh"], s["state"] == "claimed")
            for s in cert["slices"]
            if s["state"] in LIVE
        )
        theirs = (
            sorted((s.owner, s.quantity_wh, s.claimed) for s in truth.slices.values())
            if truth
            else []
        )
        if mine != theirs:
            drift.append(certificate_id)
    results["I6 alignment"] = "ok" if not drift else f"FAILED: {len(drift)} differ"
    if market.federation:
        results["each in its registry"] = (
            "ok" if not elsewhere else f"FAILED: {len(elsewhere)} in another registry's log"
        )
    return results


_KINDS = (("issue", "issues"), ("transfer", "transfers"), ("claim", "claims"))


def report_lines(
    views: dict[str, dict[str, Any]],
    resolutions: Counter | dict[str, int],
    faults: dict[str, int],
    settings: dict[str, float],
    elapsed_s: float,
    workers: int | None,
) -> list[str]:
    """The closing report (before the invariants): what was injected and what it hit, the
    commands by kind and final state, the registry transactions they took, and the
    throughput with what it measures."""
    calls = faults.get("calls", 0)
    lines = ["  faults injected"]
    latency = f"registry latency {settings['latency_ms']:g} ms"
    outage = f"registry down for {settings['outage_s']:g} s"
    lines.append(f"    {latency:<26} every call ({calls} calls)")
    lines.append(f"    {outage:<26} {faults.get('outage', 0)} calls refused (retried later)")
    lines.append(
        f"    {'applied, then timed out':<26} {faults.get('ambiguous', 0)} calls "
        f"({settings['ambiguous_rate']:.0%} of sends): each left a command in doubt"
    )
    for name, label in (("lost", "lost, then timed out"), ("oversized", "batch too large")):
        if faults.get(name):
            lines.append(f"    {label:<26} {faults[name]} calls")
    lines.append(
        "  in doubt, resolved "
        + (", ".join(f"{n} {how}" for how, n in resolutions.items()) or "none")
    )
    lines.append("  commands by kind (final states)")
    for kind, label in _KINDS + tuple(
        (k, k) for k in sorted({v["kind"] for v in views.values()} - {k for k, _ in _KINDS})
    ):
        mine = [v for v in views.values() if v["kind"] == kind]
        if mine:
            states = Counter(v["status"] for v in mine)
            shown = ", ".join(f"{s} {n}" for s, n in sorted(states.items()))
            lines.append(f"    {label:<26} {len(mine)} ({shown})")
    transactions = sum(v.get("steps", 0) for v in views.values())
    lines.append(f"  registry transactions {transactions} for {len(views)} commands")
    lines.append(
        "    (a transfer of part of a slice is two: the cut, then the transfer; a claim cuts"
    )
    lines.append("    what it needs from both sides first)")
    rate = len(views) / elapsed_s if elapsed_s else 0.0
    where = (
        f"{workers} queue workers in"
        if workers
        else "(at --url: as that stack runs) its workers in"
    )
    lines += [
        f"  throughput         {len(views)} commands in {elapsed_s:.1f} s = {rate:.1f} commands/s,",
        "    from the first request to the last final state, with the faults above and the",
        "    waits between phases in it: a scripted day, not a load test.",
        "    The embedded stack runs the API, the reconciler, the registry simulator and",
        f"    {where} one Python process, beside one moto process each",
        "    for DynamoDB and SQS: this is not the deployed service's capacity",
        "    (bench/README.md measures that).",
    ]
    return lines


def main(argv: list[str] | None = None) -> int:
    faulthandler.register(signal.SIGUSR1)  # `kill -USR1 <pid>` prints every thread's stack
    parser = argparse.ArgumentParser(prog="make demo", description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="a running stack's API (default: start one)")
    parser.add_argument("--registry-url", help="that stack's registry simulator")
    parser.add_argument("--producers", type=int, default=4)
    parser.add_argument("--consumers", type=int, default=4)
    parser.add_argument("--hours", type=int, default=24)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--latency-ms", type=float, default=20)
    parser.add_argument("--ambiguous-rate", type=float, default=0.03)
    parser.add_argument("--outage-s", type=float, default=5)
    parser.add_argument("--no-queries", action="store_true")
    parser.add_argument(
        "--registries",
        type=int,
        default=1,
        choices=range(1, 10),
        metavar="N",
        help="a federation of N registries (own stack only): owners alternate between grid "
        "areas DK1..DKN, the outage takes dk1 down only",
    )
    parser.add_argument(
        "--registry-protocol",
        choices=("http", "grpc"),
        default="http",
        help="grpc: real transactions over gRPC to the verifying simulator (own stack only)",
    )
    args = parser.parse_args(argv)
    if bool(args.url) != bool(args.registry_url):
        parser.error("--url and --registry-url go together")
    if args.url and args.registry_protocol == "grpc":
        parser.error("--registry-protocol grpc needs the demo's own stack (no --url)")
    if args.url and args.registries > 1:
        parser.error("--registries needs the demo's own stack (no --url)")
    stack = None
    federation: dict[str, Http] = {}
    if args.url is None:
        from chalicelib.registry.sandbox.simulator import SimulatorConfig
        from devstack.stack import Stack, StackOptions, free_port

        print("starting a stack on 127.0.0.1 ...", file=sys.stderr)
        stack = Stack(
            StackOptions(
                port=free_port(),
                workers=2,
                reconcile_every_s=10,
                registry=SimulatorConfig(
                    seed=args.seed, queries=not args.no_queries, commit_delay_s=0.0
                ),
                registry_protocol=args.registry_protocol,
                registries=args.registries,
            )
        ).start()
        api_url, registry_url = stack.api_url, stack.registry_url
        if args.registries > 1:
            federation = {
                name: Http(server.url)
                for name, server in zip(stack.simulators, stack.http_servers, strict=True)
            }
    else:
        api_url, registry_url = args.url, args.registry_url
    market = Market(
        Http(api_url),
        Http(registry_url),
        DEVELOPMENT_JWT_SECRET,
        args.producers,
        args.consumers,
        args.hours,
        random.Random(args.seed),
        federation=federation,
    )
    try:
        market.registry.call(
            "POST",
            "/v1/faults",
            {"latency_s": args.latency_ms / 1000, "ambiguous_rate": args.ambiguous_rate},
        )
        started = time.monotonic()
        market.issue()
        market.settle("issuance settling")
        market.trade(args.outage_s)
        market.settle("claims settling")
        elapsed = time.monotonic() - started
        market.registry.call("POST", "/v1/faults", {"ambiguous_rate": 0.0, "latency_s": 0.0})
        _, answer = market.registry.call("GET", "/v1/faults")
        faults = (answer or {}).get("hits", {})
        views = market.statuses()
        codec = PLAIN
        if args.registry_protocol == "grpc" and stack is not None:
            from chalicelib.composition import codec_for

            codec = codec_for(stack.services)  # reads owners and quantities from the book
        invariants = check_invariants(market, views, codec)
    finally:
        if stack is not None:
            stack.stop()
    print("\nA day of a small market")
    settings = {
        "latency_ms": args.latency_ms,
        "ambiguous_rate": args.ambiguous_rate,
        "outage_s": args.outage_s,
    }
    if market.federation:
        others = ", ".join(list(market.federation)[1:])
        print(
            f"  federation: {', '.join(market.federation)}; while "
            f"{next(iter(market.federation))} was down, {others} committed "
            f"{market.committed_in_outage} transactions"
        )
    for line in report_lines(
        views, market.resolutions, faults, settings, elapsed, workers=2 if stack else None
    ):
        print(line)
    print("  invariants")
    for name, verdict in invariants.items():
        print(f"    {name:<22} {verdict}")
    ok = all(v == "ok" for v in invariants.values())
    print("all invariants hold" if ok else "AN INVARIANT FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
