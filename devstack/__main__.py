"""`make run`: the whole service on 127.0.0.1. Ctrl-C stops everything.

python -m devstack [--port 8000] [--workers 4] [--reconcile-every 60]
                   [--no-queries] [--latency-ms 0] [--ambiguous-rate 0] [--outage 60:120]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
import time

from chalicelib.api.auth import mint_token
from chalicelib.registry.sandbox.simulator import SimulatorConfig
from chalicelib.settings import (
    DEVELOPMENT_JWT_SECRET,
    Settings,
    ValidationError,
    describe,
    unknown_variables,
)
from devstack.registry_server import outage_window


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="make run", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--port",
        type=int,
        default=int(os.environ.get("PORT", "8000")),
        help="API port (env PORT, default 8000)",
    )
    parser.add_argument("--registry-port", type=int, default=0, help="default: any free port")
    parser.add_argument("--workers", type=int, default=4, help="queue pollers (default 4)")
    parser.add_argument("--reconcile-every", type=float, default=60.0, metavar="SECONDS")
    parser.add_argument(
        "--no-queries", action="store_true", help="the registry answers no status or stream queries"
    )
    parser.add_argument("--seed", type=int, default=1, help="the registry's fault seed")
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--jitter-ms", type=float, default=0.0)
    parser.add_argument(
        "--ambiguous-rate",
        type=float,
        default=0.0,
        help="share of registry calls that time out after applying",
    )
    parser.add_argument("--lost-rate", type=float, default=0.0)
    parser.add_argument("--commit-delay-s", type=float, default=0.0)
    parser.add_argument(
        "--outage",
        type=outage_window,
        action="append",
        default=[],
        metavar="START:END",
        help="registry down between these seconds",
    )
    parser.add_argument(
        "--registry-protocol",
        choices=("http", "grpc"),
        default="http",
        help="grpc: the verifying simulator over gRPC with real proofs and "
        "signatures (slower: a range proof takes tens of ms)",
    )
    parser.add_argument(
        "--chronicler",
        metavar="AREAS",
        default="",
        help="with --registry-protocol grpc: these grid areas (comma-separated, e.g. DK1,DK2) "
        "name a simulated chronicler, whose signature the registry then requires on each side "
        "of a claim (off by default)",
    )
    parser.add_argument(
        "--registries",
        type=_registries,
        default=1,
        metavar="N",
        help="a federation of N registries (dk1..dkN): grid area DKn's issuer on dkn, claims "
        "matched across all of them; the fault options apply to dk1 (default 1)",
    )
    parser.add_argument(
        "--verbose",
        action="store_true",
        help="one `access` line per request on stdout; every command's transition on stderr",
    )
    parser.add_argument(
        "--log-json",
        action="store_true",
        help="the log lines on stderr as JSON, as the deployed service writes them",
    )
    return parser.parse_args(argv)


def _registries(value: str) -> int:
    count = int(value)
    if not 1 <= count <= 9:
        raise argparse.ArgumentTypeError("between 1 and 9 registries")
    return count


class _Readable(logging.Formatter):
    """A JSON log line (observability.event, .metrics) as `event key=value ...`; others as
    they are."""

    def format(self, record: logging.LogRecord) -> str:
        message = super().format(record)
        try:
            fields = json.loads(message)
        except ValueError:
            return message
        if not isinstance(fields, dict) or not ({"event", "_aws"} & set(fields)):
            return message
        # a metrics line (observability.metrics) shows its dimensions and values
        name = fields.pop("event", None) or "metrics"
        fields.pop("_aws", None)
        shown = " ".join(f"{k}={v}" for k, v in fields.items() if v is not None)
        return f"{name} {shown}".rstrip()


def log_formatter(as_json: bool) -> logging.Formatter:
    return logging.Formatter("%(message)s") if as_json else _Readable("%(message)s")


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    handler = logging.StreamHandler()  # stderr; the access lines go to stdout (stack.py)
    handler.setFormatter(log_formatter(args.log_json))
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, handlers=[handler])
    for noisy in ("werkzeug", "botocore", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    from devstack.stack import Stack, StackOptions

    # The service reads these settings when it starts (app.py); checked here first, so that a
    # wrong one is one line naming it, before any process is started.
    for name in unknown_variables(os.environ):
        print(f"make run: warning: {name} is not a setting; it is ignored", file=sys.stderr)
    try:
        Settings()
    except ValidationError as exc:
        print(f"make run: {describe(exc)}", file=sys.stderr)
        return 2
    try:
        registry = SimulatorConfig(
            seed=args.seed,
            queries=not args.no_queries,
            latency_s=args.latency_ms / 1000,
            latency_jitter_s=args.jitter_ms / 1000,
            ambiguous_rate=args.ambiguous_rate,
            lost_rate=args.lost_rate,
            commit_delay_s=args.commit_delay_s,
            outages=tuple(args.outage),
        )
    except ValueError as exc:
        print(f"make run: {exc}", file=sys.stderr)
        return 2
    chronicler_areas = tuple(a.strip() for a in args.chronicler.split(",") if a.strip())
    if chronicler_areas and args.registry_protocol != "grpc":
        print("make run: --chronicler needs --registry-protocol grpc", file=sys.stderr)
        return 2
    secret = os.environ.get("CERTS_JWT_SECRET") or DEVELOPMENT_JWT_SECRET
    started = time.monotonic()
    stack = Stack(
        StackOptions(
            port=args.port,
            registry_port=args.registry_port,
            workers=args.workers,
            reconcile_every_s=args.reconcile_every,
            registry=registry,
            jwt_secret=secret,
            log_requests=args.verbose,
            registry_protocol=args.registry_protocol,
            chronicler_areas=chronicler_areas,
            registries=args.registries,
        )
    )
    try:
        stack.start()  # stops what it started when it fails
    except ValidationError as exc:
        print(f"make run: {describe(exc)}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(
            f"make run: cannot start: {exc} (is port {args.port} taken? try PORT=8001)",
            file=sys.stderr,
        )
        return 1
    tokens = {
        "owner (alice)": mint_token(secret, "alice"),
        "issuer": mint_token(secret, "issuer-dk", ["issuer"]),
        "operator": mint_token(secret, "ops", ["operator"]),
    }
    mode = "status and stream queries" if registry.queries else "no queries"
    registry_at = stack.registry_url
    if args.registry_protocol == "grpc":
        mode = "verifying, over gRPC at " + stack.registry_target
        if chronicler_areas:
            mode += f", chronicler of {','.join(chronicler_areas)} at {stack.chronicler.target}"
        registry_at += " (control)"
    if args.registries > 1:
        federation = stack.settings.grid_area_registries
        registry_at = "; ".join(
            f"{name} {server.url} (control, {area}'s issuer)"
            for (area, name), server in zip(federation.items(), stack.http_servers, strict=True)
        )
        mode += f"; claims matched across {'/'.join(federation)}"
    print(f"""
Certificates Domain is running ({time.monotonic() - started:.1f} s to start)
  API        {stack.api_url}   (OpenAPI: {stack.api_url}/v1/openapi.json)
  registry   {registry_at}   (simulator, {mode}, seed {registry.seed})
  workers    {args.workers}, reconciler every {args.reconcile_every:g} s

Tokens (valid 12 h; secret from CERTS_JWT_SECRET or the development default):""")
    for role, token in tokens.items():
        print(f"  {role:14} {token}")
    print(
        f"""
Try:
  export ISSUER={tokens["issuer"]}
  curl -s -X POST {stack.api_url}/v1/certificates \\
    -H "Authorization: Bearer $ISSUER" -H "Content-Type: application/json" \\
    -H "Idempotency-Key: first-try" \\
    -d '{{"type":"production","gsrn":"571313000000000099","grid_area":"DK1",
         "start":"2026-06-01T08:00:00Z","end":"2026-06-01T09:00:00Z",
         "quantity_wh":1000,"owner":"alice"}}'
  (a certificate of its own: the README's walk-through issues others)

Follow it: this window shows warnings and errors only; `make run ARGS=--verbose` adds one
`access` line per request (stdout) and every command's transition (stderr, `key=value`;
add --log-json for the JSON lines the deployed service writes).
`certs health`, `certs ops stuck` and GET /v1/ops/commands show what is in flight.
Nothing is kept: the book, the queues and the registry live in memory and go when it stops.
Ctrl-C stops everything.""",
        flush=True,
    )
    done = threading.Event()
    # Both set explicitly: a process started with SIGINT ignored (as by some test runners and
    # shells) inherits that, and Ctrl-C would then do nothing.
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    try:
        while not done.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    print("\nstopping...", flush=True)
    stack.stop()
    print("stopped.", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
