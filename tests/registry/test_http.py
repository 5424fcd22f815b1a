"""The simulator served over HTTP and the HTTP client of the Registry port, end to end:
every endpoint, and each failure class as the worker will see it."""

from __future__ import annotations

import base64
import json
import socket
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from chalicelib.registry.envelope import transaction_id_of
from chalicelib.registry.http_client import HttpRegistry
from chalicelib.registry.port import (
    QueriesNotSupported,
    RegistryAmbiguous,
    RegistryRefused,
    RegistryUnavailable,
    TransactionStatus,
)
from chalicelib.registry.sandbox.simulator import RegistrySimulator, SimulatorConfig, VirtualClock
from devstack.registry_server import RegistryServer, serve
from tests.registry.builders import issue, new_id, transfer

S = TransactionStatus
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def clock() -> VirtualClock:
    return VirtualClock()


@pytest.fixture
def running(clock) -> Iterator[tuple[RegistryServer, RegistrySimulator]]:
    simulator = RegistrySimulator(
        SimulatorConfig(seed=5, queries=True, commit_delay_s=1.0), clock=clock, sleep=clock.sleep
    )
    server, _ = serve(simulator)
    yield server, simulator
    server.shutdown()
    server.server_close()


@pytest.fixture
def client(running) -> HttpRegistry:
    server, _ = running
    return HttpRegistry(server.url, timeout_s=2.0, supports_queries=True)


def call(server: RegistryServer, method: str, path: str, body: dict | None = None):
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(server.url + path, data=data, method=method)
    try:
        with urllib.request.urlopen(request, timeout=2.0) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- round trips --------------------------------------------------------------------------


def test_a_send_without_queries_answers_each_verdict():
    server, _ = serve(SimulatorConfig(queries=False))
    try:
        client = HttpRegistry(server.url, timeout_s=2.0)
        cert = new_id()
        batch = [issue(cert), transfer(cert, "nope", "bob", "alice")]
        receipts = client.send(batch)
        assert [(r.transaction_id, r.status, r.message) for r in receipts] == [
            (transaction_id_of(batch[0]), S.COMMITTED, ""),
            (transaction_id_of(batch[1]), S.FAILED, "slice not found"),
        ]
        assert client.supports_queries is False
        assert client.send([]) == []
    finally:
        server.shutdown()
        server.server_close()


def test_with_queries_a_send_is_pending_until_its_status_says_committed(running, client, clock):
    _, simulator = running
    cert = new_id()
    data = issue(cert)
    [receipt] = client.send([data])
    assert receipt.status == S.PENDING
    assert client.status(receipt.transaction_id).status == S.PENDING
    assert client.stream(cert) == []
    clock.advance(1.0)
    assert client.status(receipt.transaction_id).status == S.COMMITTED
    assert client.stream(cert) == [data]
    assert simulator.received_ids() == [receipt.transaction_id]


def test_a_failed_status_travels_with_its_reason_even_for_ids_with_slashes(running, client, clock):
    cert = new_id()
    client.send([issue(cert)])
    # Ids are standard base64; find one with the characters a URL path treats specially.
    while True:
        refused = transfer(cert, "nope", "bob", "alice")
        tid = transaction_id_of(refused)
        if "/" in tid and "+" in tid:
            break
    client.send([refused])
    clock.advance(1.0)
    receipt = client.status(tid)
    assert (receipt.transaction_id, receipt.status, receipt.message) == (
        tid,
        S.FAILED,
        "slice not found",
    )
    assert client.status(transaction_id_of(b"never sent")).status == S.UNKNOWN


# --- failure classes ----------------------------------------------------------------------


def test_an_outage_is_unavailable_and_nothing_is_received(running, client):
    _, simulator = running
    simulator.set_available(False)
    with pytest.raises(RegistryUnavailable):
        client.send([issue(new_id())])
    with pytest.raises(RegistryUnavailable):
        client.status(transaction_id_of(b"x"))
    assert simulator.received_ids() == []


def test_an_ambiguous_send_is_applied_and_the_client_sees_a_broken_call(running, client):
    _, simulator = running
    simulator.configure(ambiguous_rate=1.0)
    cert = new_id()
    data = issue(cert)
    with pytest.raises(RegistryAmbiguous):
        client.send([data])
    assert simulator.received_ids() == [transaction_id_of(data)]
    assert simulator.snapshot(cert) is not None


def test_a_lost_send_looks_the_same_and_nothing_is_received(running, client):
    _, simulator = running
    simulator.configure(lost_rate=1.0)
    with pytest.raises(RegistryAmbiguous):
        client.send([issue(new_id())])
    assert simulator.received_ids() == []


def test_a_registry_that_is_not_running_is_unavailable():
    client = HttpRegistry(f"http://127.0.0.1:{free_port()}", timeout_s=1.0, supports_queries=True)
    with pytest.raises(RegistryUnavailable):
        client.send([issue(new_id())])
    with pytest.raises(RegistryUnavailable):
        client.stream(new_id())


def test_a_registry_slower_than_the_client_timeout_is_ambiguous_and_still_applies():
    simulator = RegistrySimulator(SimulatorConfig(latency_s=0.3))
    server, _ = serve(simulator)
    try:
        client = HttpRegistry(server.url, timeout_s=0.05)
        data = issue(new_id())
        with pytest.raises(RegistryAmbiguous):
            client.send([data])
        waited = threading.Event()
        for _ in range(50):  # the server applies it once its latency has passed
            if simulator.received_ids():
                break
            waited.wait(0.02)
        assert simulator.received_ids() == [transaction_id_of(data)]
    finally:
        server.shutdown()
        server.server_close()


def test_queries_against_a_registry_without_them_are_not_supported():
    server, _ = serve(SimulatorConfig(queries=False))
    try:
        asks = HttpRegistry(server.url, timeout_s=2.0, supports_queries=True)
        with pytest.raises(QueriesNotSupported):
            asks.status(transaction_id_of(b"x"))
        with pytest.raises(QueriesNotSupported):
            asks.stream(new_id())
        knows = HttpRegistry(server.url, timeout_s=2.0, supports_queries=False)
        with pytest.raises(QueriesNotSupported):
            knows.status(transaction_id_of(b"x"))
    finally:
        server.shutdown()
        server.server_close()


class _Canned(BaseHTTPRequestHandler):
    """Answers every request with the server's canned status and body."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        status, body = self.server.canned  # type: ignore[attr-defined]
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST

    def log_message(self, *args) -> None:
        pass


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (200, b"not json", RegistryAmbiguous),
        (200, b'{"receipts": []}', RegistryAmbiguous),
        (500, b'{"error": "boom"}', RegistryAmbiguous),
        (504, b"gateway timeout", RegistryAmbiguous),
        (503, b'{"error": "down"}', RegistryUnavailable),
        (400, b'{"error": "bad"}', RegistryRefused),
        (413, b'{"error": "too large"}', RegistryRefused),
        (404, b'{"error": "no such resource"}', RegistryUnavailable),
    ],
)
def test_each_answer_to_a_send_maps_to_one_failure_class(status, body, expected):
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Canned)
    server.canned = (status, body)  # type: ignore[attr-defined]
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    try:
        client = HttpRegistry(f"http://127.0.0.1:{server.server_address[1]}", timeout_s=2.0)
        with pytest.raises(expected):
            client.send([issue(new_id())])
    finally:
        server.shutdown()
        server.server_close()


# --- control endpoints --------------------------------------------------------------------


def test_health_reports_availability_and_mode(running):
    server, simulator = running
    assert call(server, "GET", "/v1/health") == (
        200,
        {"status": "ok", "available": True, "queries": True},
    )
    simulator.set_available(False)
    assert call(server, "GET", "/v1/health")[1]["available"] is False


def test_faults_change_at_run_time_through_the_api(running, client):
    server, _ = running
    status, body = call(server, "POST", "/v1/faults", {"available": False, "lost_rate": 0.5})
    assert status == 200
    assert body["available"] is False
    assert body["config"]["lost_rate"] == 0.5
    with pytest.raises(RegistryUnavailable):
        client.send([issue(new_id())])
    call(server, "POST", "/v1/faults", {"available": True, "lost_rate": 0.0, "ambiguous_rate": 1})
    with pytest.raises(RegistryAmbiguous):
        client.send([issue(new_id())])
    assert call(server, "POST", "/v1/faults", {"colour": "red"})[0] == 400
    assert call(server, "POST", "/v1/faults", {"seed": 3})[0] == 400
    assert call(server, "POST", "/v1/faults", {"lost_rate": 2})[0] == 400


def test_inject_changes_the_registry_and_the_log_shows_every_receipt(running, client):
    server, simulator = running
    cert = new_id()
    issued = issue(cert)
    client.send([issued])
    drift = transfer(cert, "s0", "eve", "alice")
    status, receipt = call(server, "POST", "/v1/inject", {"transaction": _b64(drift)})
    assert (status, receipt["status"]) == (200, "COMMITTED")
    assert simulator.snapshot(cert)["slices"][0]["owner"] == "eve"
    status, log = call(server, "GET", "/v1/log")
    assert status == 200
    assert [(e["transaction_id"], e["origin"]) for e in log["entries"]] == [
        (transaction_id_of(issued), "client"),
        (transaction_id_of(drift), "injected"),
    ]
    assert log["duplicates"] == []


def test_bad_requests_get_a_400_and_unknown_paths_a_404(running):
    server, simulator = running
    assert call(server, "POST", "/v1/transactions", {"transactions": ["%%%"]})[0] == 400
    assert call(server, "POST", "/v1/transactions", {"transactions": "abc"})[0] == 400
    assert call(server, "GET", "/v1/nothing")[0] == 404
    assert simulator.log() == []


def test_the_command_line_serves_on_the_loopback_with_the_given_settings():
    process = subprocess.Popen(
        [sys.executable, "-m", "devstack.registry_server", "--port", "0", "--queries"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        line = process.stdout.readline()
        assert "status and stream queries" in line
        url = line.split()[3]
        assert url.startswith("http://127.0.0.1:")
        client = HttpRegistry(url, timeout_s=2.0, supports_queries=True)
        assert client.send([issue(new_id())])[0].status == S.PENDING
    finally:
        process.terminate()
        process.wait(timeout=5)
