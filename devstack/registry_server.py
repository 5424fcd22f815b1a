"""The registry simulator as a local HTTP server, for the embedded stack and the demo.

The worker in the embedded stack talks to the registry over a network, as in AWS, so that its
failure handling meets real broken connections: an ambiguous send is answered by closing the
connection without a response after the transactions were applied, exactly what a timeout
after sending looks like to a client. Control endpoints let the demo and the tests switch
faults on and off, change the registry behind the book's back, and read the log (invariant I1).

    python -m devstack.registry_server --port 8100 --seed 1 --queries --latency-ms 50

API (JSON; transactions and ids travel as base64, ids in paths as URL-safe base64):
    POST /v1/transactions {"transactions": [b64...]} -> 200 {"receipts": [...]}, 503 outage
    GET  /v1/transactions/{id}                        -> 200 receipt, 501 without queries
    GET  /v1/streams/{certificate_id}                 -> 200 {"transactions": [b64...]}, 501
    GET  /v1/log, POST /v1/faults, GET /v1/faults (with the calls each fault hit),
    POST /v1/inject, GET /v1/health
"""

from __future__ import annotations

import argparse
import base64
import binascii
import json
import re
import sys
import threading
from collections.abc import Callable
from dataclasses import asdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote

from chalicelib.registry.port import (
    QueriesNotSupported,
    Receipt,
    RegistryAmbiguous,
    RegistryRefused,
    RegistryUnavailable,
)
from chalicelib.registry.sandbox.simulator import (
    CONFIG_FIELDS,
    LogEntry,
    RegistrySimulator,
    SimulatorConfig,
)

_STATUS_PATH = re.compile(r"^/v1/transactions/([A-Za-z0-9_\-=%]+)$")
_STREAM_PATH = re.compile(r"^/v1/streams/([A-Za-z0-9\-]+)$")
MAX_BODY = 64 * 1024 * 1024


class BadRequest(Exception):
    """The request itself is wrong; nothing reached the simulator."""


class RegistryServer(ThreadingHTTPServer):
    daemon_threads = True  # a handler still sleeping out a latency never blocks shutdown

    def __init__(
        self, address: tuple[str, int], simulator: RegistrySimulator, verbose: bool = False
    ) -> None:
        super().__init__(address, _Handler)
        self.simulator = simulator
        self.verbose = verbose

    @property
    def port(self) -> int:
        return self.server_address[1]

    @property
    def url(self) -> str:
        return f"http://{self.server_address[0]}:{self.port}"


def serve(
    config: SimulatorConfig | RegistrySimulator,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    verbose: bool = False,
) -> tuple[RegistryServer, threading.Thread]:
    """Start a server in a daemon thread; `server.port` is the bound port. Pass a simulator
    (for example on a virtual clock) to keep a handle on it, or a config to get a new one.
    Stop it with `server.shutdown(); server.server_close()`."""
    simulator = config if isinstance(config, RegistrySimulator) else RegistrySimulator(config)
    server = RegistryServer((host, port), simulator, verbose)
    # A short poll interval makes shutdown() quick: it waits for the loop's next look.
    thread = threading.Thread(
        target=server.serve_forever, args=(0.05,), name="registry-simulator", daemon=True
    )
    thread.start()
    return server, thread


class _Handler(BaseHTTPRequestHandler):
    server: RegistryServer
    server_version = "RegistrySimulator/1"

    def do_GET(self) -> None:
        self._guarded(self._get)

    def do_POST(self) -> None:
        self._guarded(self._post)

    def _guarded(self, route: Callable[[str], None]) -> None:
        """The simulator's outcomes become HTTP answers here, in one place."""
        try:
            route(self.path.split("?", 1)[0])
        except RegistryUnavailable as exc:
            self._reply(503, {"error": str(exc)})
        except QueriesNotSupported as exc:
            self._reply(501, {"error": str(exc)})
        except (BadRequest, RegistryRefused) as exc:
            self._reply(400, {"error": str(exc)})
        except RegistryAmbiguous as exc:
            # What a timeout after sending looks like to a client: the connection closes
            # with no answer at all (the server closes it when this handler returns).
            self.close_connection = True
            self.log_message('"%s" dropped without an answer (%s)', self.requestline, exc)

    def _get(self, path: str) -> None:
        simulator = self.server.simulator
        if path == "/v1/health":
            health = {
                "status": "ok",
                "available": simulator.is_available(),
                "queries": simulator.supports_queries,
            }
            self._reply(200, health)
        elif path == "/v1/faults":
            self._reply(
                200,
                {
                    "available": simulator.is_available(),
                    "config": asdict(simulator.config),
                    "hits": simulator.fault_hits(),
                },
            )
        elif path == "/v1/log":
            entries = [_entry_json(e) for e in simulator.log()]
            self._reply(200, {"entries": entries, "duplicates": simulator.duplicates()})
        elif match := _STATUS_PATH.match(path):
            receipt = simulator.status(_standard_id(match.group(1)))
            self._reply(200, _receipt_json(receipt))
        elif match := _STREAM_PATH.match(path):
            found = simulator.stream(match.group(1))
            self._reply(200, {"transactions": [_b64(data) for data in found]})
        else:
            self._reply(404, {"error": f"no such resource {path}"})

    def _post(self, path: str) -> None:
        simulator = self.server.simulator
        if path == "/v1/transactions":
            batch = _decode_all(self._body().get("transactions"))
            receipts = simulator.send(batch)
            self._reply(200, {"receipts": [_receipt_json(r) for r in receipts]})
        elif path == "/v1/inject":
            [data] = _decode_all([self._body().get("transaction")])
            self._reply(200, _receipt_json(simulator.inject(data)))
        elif path == "/v1/faults":
            self._reply(200, _change_faults(simulator, self._body()))
        else:
            self._reply(404, {"error": f"no such resource {path}"})

    def _body(self) -> dict[str, Any]:
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError as exc:
            raise BadRequest("Content-Length is not a number") from exc
        if not 0 <= length <= MAX_BODY:
            raise BadRequest("request body too large")
        try:
            body = json.loads(self.rfile.read(length) or b"{}")
        except ValueError as exc:
            raise BadRequest(f"body is not JSON: {exc}") from exc
        if not isinstance(body, dict):
            raise BadRequest("body must be a JSON object")
        return body

    def _reply(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        if self.server.verbose:
            sys.stderr.write(f"registry-simulator {format % args}\n")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _decode_all(items: Any) -> list[bytes]:
    if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
        raise BadRequest("transactions must be a list of base64 strings")
    try:
        return [base64.b64decode(item, validate=True) for item in items]
    except binascii.Error as exc:
        raise BadRequest(f"a transaction is not base64: {exc}") from exc


def _standard_id(path_id: str) -> str:
    """Transaction ids are standard base64; in a path they travel URL-safe."""
    return unquote(path_id).replace("-", "+").replace("_", "/")


def _receipt_json(receipt: Receipt) -> dict[str, str]:
    return {
        "transaction_id": receipt.transaction_id,
        "status": receipt.status.value,
        "message": receipt.message,
    }


def _entry_json(entry: LogEntry) -> dict[str, Any]:
    return {
        "transaction_id": entry.transaction_id,
        "stream_id": entry.stream_id,
        "payload_type": entry.payload_type,
        "received_at": entry.received_at,
        "settles_at": entry.settles_at,
        "verdict": entry.verdict.value,
        "message": entry.message,
        "origin": entry.origin,
        "transaction": _b64(entry.data),
    }


def _change_faults(simulator: RegistrySimulator, body: dict[str, Any]) -> dict[str, Any]:
    """{"available": bool, and any config field but the seed} -> the settings now in force."""
    changes = dict(body)
    available = changes.pop("available", None)
    unknown = set(changes) - CONFIG_FIELDS
    if unknown:
        raise BadRequest(f"unknown settings: {sorted(unknown)}")
    if "outages" in changes:
        changes["outages"] = tuple(tuple(window) for window in changes["outages"] or ())
    if available is not None and not isinstance(available, bool):
        raise BadRequest("available must be true or false")
    try:
        simulator.configure(**changes)
    except (TypeError, ValueError) as exc:
        raise BadRequest(str(exc)) from exc
    if available is not None:
        simulator.set_available(available)
    return {"available": simulator.is_available(), "config": asdict(simulator.config)}


def outage_window(text: str) -> tuple[float, float]:
    """An argparse type: START:END in seconds."""
    start, _, end = text.partition(":")
    try:
        return float(start), float(end)
    except ValueError as exc:
        raise argparse.ArgumentTypeError("an outage is START:END in seconds") from exc


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m devstack.registry_server",
        description="Run the registry simulator on 127.0.0.1.",
    )
    parser.add_argument("--port", type=int, default=8100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--queries", action="store_true", help="answer status and stream queries")
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--jitter-ms", type=float, default=0.0, help="mean exponential jitter")
    parser.add_argument("--ambiguous-rate", type=float, default=0.0)
    parser.add_argument("--lost-rate", type=float, default=0.0)
    parser.add_argument("--max-batch", type=int, default=SimulatorConfig.max_batch)
    parser.add_argument("--commit-delay-s", type=float, default=SimulatorConfig.commit_delay_s)
    parser.add_argument("--finalize-delay-s", type=float, default=SimulatorConfig.finalize_delay_s)
    parser.add_argument("--status-ttl-s", type=float, default=SimulatorConfig.status_ttl_s)
    parser.add_argument(
        "--outage",
        type=outage_window,
        action="append",
        default=[],
        metavar="START:END",
        help="refuse calls between these seconds after start (repeatable)",
    )
    parser.add_argument("--verbose", action="store_true", help="log one line per request")
    args = parser.parse_args(argv)
    try:
        config = SimulatorConfig(
            seed=args.seed,
            queries=args.queries,
            latency_s=args.latency_ms / 1000,
            latency_jitter_s=args.jitter_ms / 1000,
            outages=tuple(args.outage),
            ambiguous_rate=args.ambiguous_rate,
            lost_rate=args.lost_rate,
            max_batch=args.max_batch,
            commit_delay_s=args.commit_delay_s,
            finalize_delay_s=args.finalize_delay_s,
            status_ttl_s=args.status_ttl_s,
        )
    except ValueError as exc:
        parser.error(str(exc))
    # Loopback only: the simulator has no authentication and accepts drift injection.
    server = RegistryServer(("127.0.0.1", args.port), RegistrySimulator(config), args.verbose)
    mode = "status and stream queries" if config.queries else "no queries"
    print(f"registry simulator on {server.url} ({mode}, seed {config.seed})", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
