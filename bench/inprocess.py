"""The service in one process over moto (mock_aws), driven through its HTTP routes with
chalice.test.Client, its queue fed to app.worker by the devstack poller (the stand-in for
Lambda's SQS event source mapping), and the registry simulator in-process.

Used by the calls/capacity measurement and by the profile. The poller gets an SQS client from
a session of its own, so the calls it makes (what Lambda's event source mapping would make on
AWS) can be counted apart from the calls our code makes.
"""

from __future__ import annotations

import contextlib
import json
import os
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import boto3
from moto import mock_aws  # imported first: sessions made after it can be mocked

CERT_START = datetime(2026, 6, 1, 10, 0, tzinfo=UTC)
SECRET = "bench-secret-that-is-long-enough-for-hs256"


class CountingRegistry:
    """The registry port, counting the calls the service makes to it."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.calls: Counter = Counter()
        self.transactions = 0

    @property
    def supports_queries(self) -> bool:
        return self.inner.supports_queries

    def send(self, transactions):
        self.calls["send"] += 1
        self.transactions += len(transactions)
        return self.inner.send(transactions)

    def status(self, transaction_id):
        self.calls["status"] += 1
        return self.inner.status(transaction_id)

    def stream(self, certificate_id):
        self.calls["stream"] += 1
        return self.inner.stream(certificate_id)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


@dataclass
class Harness:
    client: Any  # chalice.test.Client
    poller: Any
    services: Any
    app_module: Any
    registry: CountingRegistry
    headers: dict[str, dict[str, str]] = field(default_factory=dict)
    invocations: Counter = field(default_factory=Counter)
    _serial: int = 0

    # --- HTTP ----------------------------------------------------------------------------------

    def post(self, path: str, body: Any, who: str) -> dict[str, Any]:
        self._serial += 1
        answer = self.client.http.post(
            path,
            body=json.dumps(body),
            headers={
                **self.headers[who],
                "Content-Type": "application/json",
                "Idempotency-Key": f"bench-{self._serial}-{uuid.uuid4()}",
            },
        )
        if answer.status_code != 202:
            raise RuntimeError(f"POST {path} answered {answer.status_code}: {answer.body}")
        return json.loads(answer.body)

    def drain(self) -> None:
        self.poller.drain()

    # --- commands --------------------------------------------------------------------------

    def next_gsrn(self) -> str:
        self._serial += 1
        return f"5713130{self._serial:011d}"

    def issue_body(self, owner: str = "alice", quantity: int = 1000, type_: str = "production"):
        return {
            "type": type_,
            "gsrn": self.next_gsrn(),
            "grid_area": "DK1",
            "start": CERT_START.isoformat().replace("+00:00", "Z"),
            "end": (CERT_START + timedelta(hours=1)).isoformat().replace("+00:00", "Z"),
            "quantity_wh": quantity,
            "owner": owner,
            "attributes": {"technology": "T010000", "fuel": "F01040100"},
        }

    def issue(self, **kwargs: Any) -> dict[str, Any]:
        return self.post("/v1/certificates", self.issue_body(**kwargs), "issuer")

    def issue_batch(self, n: int, **kwargs: Any) -> dict[str, Any]:
        body = {"certificates": [self.issue_body(**kwargs) for _ in range(n)]}
        return self.post("/v1/certificates/batch", body, "issuer")

    def first_slice(self, certificate_id: str) -> str:
        cert = self.services.book.get_certificate(certificate_id)
        return next(iter(cert.slices))

    def slice(self, cert: str, slice_id: str, parts: list[int]) -> dict[str, Any]:
        body = {"slice_id": slice_id, "quantities_wh": parts}
        return self.post(f"/v1/certificates/{cert}/slices", body, "alice")

    def transfer(self, cert: str, slice_id: str, quantity: int) -> dict[str, Any]:
        body = {
            "certificate_id": cert,
            "slice_id": slice_id,
            "receiver": "bob",
            "quantity_wh": quantity,
        }
        return self.post("/v1/transfers", body, "alice")

    def claim(self, production: tuple[str, str], consumption: tuple[str, str], quantity: int):
        body = {
            "production": {"certificate_id": production[0], "slice_id": production[1]},
            "consumption": {"certificate_id": consumption[0], "slice_id": consumption[1]},
            "quantity_wh": quantity,
        }
        return self.post("/v1/claims", body, "alice")

    def withdraw(self, cert: str) -> dict[str, Any]:
        return self.post(f"/v1/certificates/{cert}/withdraw", {}, "issuer")

    def status(self, command_id: str) -> str:
        command = self.services.book.get_command(command_id)
        return command.status.value if command else "MISSING"

    def reconcile(self) -> dict:
        from chalicelib import composition

        self.invocations["reconciler"] += 1
        report = composition.reconciler(self.services).run()
        return dict(report.actions)


def local_aws_environment() -> None:
    """Fake credentials, and no endpoint left over that would escape the in-process mock."""
    for key in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_DYNAMODB", "AWS_ENDPOINT_URL_SQS"):
        os.environ.pop(key, None)
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")


@contextlib.contextmanager
def harness(
    queries: bool, before_build: Any = None, esm_session_hook: Any = None
) -> Iterator[Harness]:
    """The service over mock_aws. `before_build(session)` runs before the services build their
    clients (to hook the session); `esm_session_hook(session)` likewise for the poller's."""
    local_aws_environment()
    with mock_aws():
        from chalice.test import Client

        import app as app_module
        from chalicelib import composition
        from chalicelib.api.auth import mint_token
        from chalicelib.registry.simulator import RegistrySimulator, SimulatorConfig
        from chalicelib.settings import Settings
        from devstack import resources
        from devstack.poller import QueuePoller

        settings = Settings(jwt_secret=SECRET, commit_check_s=1.0)
        setup = boto3.Session(region_name=settings.region)
        resources.create(setup.client("dynamodb"), setup.client("sqs"), settings)
        session = boto3.Session(region_name=settings.region)
        if before_build:
            before_build(session)
        services = composition.build(settings, session=session)
        registry = CountingRegistry(
            RegistrySimulator(SimulatorConfig(queries=queries, commit_delay_s=0.0))
        )
        services.registry = registry
        app_module.use_services(services)
        esm = boto3.Session(region_name=settings.region)
        if esm_session_hook:
            esm_session_hook(esm)
        sqs = esm.client("sqs")
        url = sqs.get_queue_url(QueueName=settings.queue_name)["QueueUrl"]
        box: dict[str, Harness] = {}

        def handler(event: dict) -> dict:
            box["h"].invocations["worker"] += 1
            return app_module.worker(event, None)

        poller = QueuePoller(sqs, url, handler, wait_s=0)
        try:
            with Client(app_module.app) as client:
                h = Harness(
                    client=client,
                    poller=poller,
                    services=services,
                    app_module=app_module,
                    registry=registry,
                    headers={
                        "issuer": {
                            "Authorization": "Bearer " + mint_token(SECRET, "issuer-dk", ["issuer"])
                        },
                        "alice": {"Authorization": "Bearer " + mint_token(SECRET, "alice")},
                    },
                )
                box["h"] = h
                yield h
        finally:
            app_module.use_services(None)
