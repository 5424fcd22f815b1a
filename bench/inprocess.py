"""The service in one process over moto (mock_aws), driven through its HTTP routes with
chalice.test.Client, its queue fed to app.worker by the devstack poller (the stand-in for
Lambda's SQS event source mapping), and the registry simulator in-process.

Used by the calls/capacity measurement and by the profile. The poller gets an SQS client from
a session of its own, so the calls it makes (what Lambda's event source mapping would make on
AWS) can be counted apart from the calls our code makes.

Two transaction formats (`fmt`): "plain" (the JSON envelope) and "proto" (the registry's wire
format: range proofs, signatures, slice secrets sealed under a KMS key, owners' seeds in custody
under that key, issuers' keys read from Secrets Manager), set up as a deployed stage sets it up
(.chalice/config.json, prod: CERTS_SECRETS_KMS_KEY_ID, CERTS_REGISTRY_ISSUER_KEYS_SECRET), all
on moto, so the KMS and Secrets Manager calls are made and counted like the others.

With registry queries the simulated registry commits a transaction only when the harness says
a block has passed (`drain`): the worker's first status query answers PENDING, as on a real
registry, so the worker hands the message back (ChangeMessageVisibility) and settles it when
it comes back, exactly the path that would run.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import time
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
# Owners as a deployed stage names them: the `sub` of an OIDC token (Cognito's are UUIDs). An
# owner's id is in several attributes of every item that holds one of its slices, so a short
# name would measure items smaller than they are.
ALICE = "5b0e6c1a-3f27-4d8e-9a41-7c2d90e1b3f4"
BOB = "c81f2d47-0a95-4b63-8e1c-2f7a6d4b9e05"


class CountingRegistry:
    """The registry port, counting the calls the service makes to it."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.calls: Counter = Counter()
        self.transactions = 0
        self.bytes = 0  # serialized transactions sent, as the registry received them

    @property
    def supports_queries(self) -> bool:
        return self.inner.supports_queries

    def send(self, transactions):
        self.calls["send"] += 1
        self.transactions += len(transactions)
        self.bytes += sum(len(t) for t in transactions)
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
    fmt: str = "plain"
    # Advances the simulated registry's clock past its block time (queries mode), so what was
    # sent commits; None when the registry answers verdicts at once.
    commit_block: Any = None
    # The queue's depth (visible + in flight), read through an uncounted client.
    queue_depth: Any = None
    # The services of the container serving the next invocation (a new one each time, cold).
    container: Any = None
    _serial: int = 0

    # --- HTTP ----------------------------------------------------------------------------------

    def post(self, path: str, body: Any, who: str) -> dict[str, Any]:
        self._serial += 1
        if self.container is not None:
            self.app_module.use_services(self.container())
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

    def drain(self, timeout_s: float = 60.0) -> None:
        """Feed the worker until the queue is empty. A message handed back to wait for a block
        (ChangeMessageVisibility) is in flight meanwhile: the block passes (the registry
        commits what it holds) and the message is received again once visible."""
        deadline = time.monotonic() + timeout_s
        seen = self.poller.records
        while True:
            self.poller.drain()
            if self.poller.records != seen:  # progress: the deadline is for a stuck queue
                seen = self.poller.records
                deadline = time.monotonic() + timeout_s
            # Asked twice: moto counts visible and in-flight messages at two moments, so a
            # message that becomes visible in between is in neither count (seen under load).
            if self.queue_depth is None or self.queue_depth() == self.queue_depth() == 0:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"messages handed back did not come back in {timeout_s:g} s")
            if self.commit_block is not None:
                self.commit_block()
            time.sleep(0.2)

    # --- commands --------------------------------------------------------------------------

    def next_gsrn(self) -> str:
        self._serial += 1
        return f"5713130{self._serial:011d}"

    def issue_body(self, owner: str = ALICE, quantity: int = 1000, type_: str = "production"):
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
            "receiver": BOB,
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
        services = self.container() if self.container is not None else self.services
        report = composition.reconciler(services).run()
        return dict(report.actions)


class _ManualClock:
    """The simulated registry's clock: blocks pass when the harness says so."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def _custody(setup: Any, settings: Any) -> dict[str, Any]:
    """A deployed stage's custody on moto: a KMS key (slice secrets, owners' seeds) and the
    issuers' keys in Secrets Manager (the sandbox keys, so the simulator's verifier knows them)."""
    from cryptography.hazmat.primitives import serialization

    from chalicelib.registry.keys import IssuerKeys

    key = setup.client("kms").create_key(Description="bench: slice secrets and owners' seeds")
    sandbox = IssuerKeys.sandbox(settings.registry_sandbox_secret.get_secret_value().encode())
    raw = sandbox.key_for("DK1").private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    secret = setup.client("secretsmanager").create_secret(
        Name="bench-issuer-keys", SecretString=json.dumps({"DK1": base64.b64encode(raw).decode()})
    )
    return {
        "registry_transactions": "proto",
        "secrets_kms_key_id": key["KeyMetadata"]["Arn"],
        "registry_issuer_keys_secret": secret["ARN"],
    }


def local_aws_environment() -> None:
    """Fake credentials, and no endpoint left over that would escape the in-process mock."""
    for key in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_DYNAMODB", "AWS_ENDPOINT_URL_SQS"):
        os.environ.pop(key, None)
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")


@contextlib.contextmanager
def harness(
    queries: bool,
    before_build: Any = None,
    esm_session_hook: Any = None,
    fmt: str = "plain",
    cold: bool = False,
) -> Iterator[Harness]:
    """The service over mock_aws. `before_build(session)` runs before the services build their
    clients (to hook the session); `esm_session_hook(session)` likewise for the poller's.
    `fmt`: "plain" or "proto" (module docstring). `cold`: every API request, worker invocation
    (of one message) and reconciler pass runs in a new container (services built anew, so
    nothing cached: the KMS data key, opened data keys, owners' seeds, issuers' keys), the upper
    bound of what a fleet of containers pays for custody."""
    if fmt not in ("plain", "proto"):
        raise ValueError(f"unknown transaction format {fmt!r}")
    local_aws_environment()
    with mock_aws():
        from chalice.test import Client

        import app as app_module
        from chalicelib import composition
        from chalicelib.api.auth import mint_token
        from chalicelib.registry.sandbox.simulator import RegistrySimulator, SimulatorConfig
        from chalicelib.settings import Settings
        from devstack import resources
        from devstack.poller import QueuePoller

        # As deployed (.chalice/config.json, prod): 1 in 100 committed commands left for the
        # reconciler's drift check.
        base = Settings(jwt_secret=SECRET, commit_check_s=1.0, drift_check_one_in=100)
        setup = boto3.Session(region_name=base.region)
        resources.create(setup.client("dynamodb"), setup.client("sqs"), base)
        custody: dict[str, Any] = {}
        if fmt == "proto":
            custody = _custody(setup, base)
        settings = base.model_copy(
            update={
                "queue_url": setup.client("sqs").get_queue_url(QueueName=base.queue_name)[
                    "QueueUrl"
                ],
                **custody,
            }
        )
        session = boto3.Session(region_name=settings.region)
        if before_build:
            before_build(session)
        services = composition.build(settings, session=session)
        clock = _ManualClock()
        ledger = None
        if fmt == "proto":
            from chalicelib.registry.keys import IssuerKeys
            from chalicelib.registry.sandbox.verifier import ProtoLedger

            root = settings.registry_sandbox_secret.get_secret_value().encode()
            ledger = ProtoLedger(IssuerKeys.sandbox(root).public_keys)
        registry = CountingRegistry(
            RegistrySimulator(
                SimulatorConfig(queries=queries, commit_delay_s=1.0), clock=clock, ledger=ledger
            )
        )
        services.registry = registry

        def container() -> Any:
            """The services of the container that serves the next invocation."""
            if not cold:
                return services
            fresh = composition.build(settings, session=session)
            fresh.registry = registry
            return fresh

        app_module.use_services(services)
        esm = boto3.Session(region_name=settings.region)
        if esm_session_hook:
            esm_session_hook(esm)
        sqs = esm.client("sqs")
        url = sqs.get_queue_url(QueueName=settings.queue_name)["QueueUrl"]
        box: dict[str, Harness] = {}

        def handler(event: dict) -> dict:
            if queries:
                # A block passes between two invocations: what was sent before this one has
                # committed, what this one sends is PENDING at its first status query. So a
                # step is handed back once, as with a block time under CERTS_COMMIT_CHECK_S.
                clock.advance(2.0)
            box["h"].invocations["worker"] += 1
            box["h"].invocations["worker_records"] += len(event.get("Records", []))
            app_module.use_services(container())
            return app_module.worker(event, None)

        watch = setup.client("sqs")

        def depth() -> int:
            attributes = watch.get_queue_attributes(
                QueueUrl=url,
                AttributeNames=[
                    "ApproximateNumberOfMessages",
                    "ApproximateNumberOfMessagesNotVisible",
                ],
            )["Attributes"]
            return sum(int(v) for v in attributes.values())

        # Cold: one message per invocation, so every delivery meets a new container.
        poller = QueuePoller(sqs, url, handler, batch_size=1 if cold else 10, wait_s=0)
        try:
            with Client(app_module.app) as client:
                h = Harness(
                    client=client,
                    poller=poller,
                    services=services,
                    app_module=app_module,
                    registry=registry,
                    fmt=fmt,
                    commit_block=(lambda: clock.advance(2.0)) if queries else None,
                    queue_depth=depth,
                    container=container,
                    headers={
                        "issuer": {
                            "Authorization": "Bearer " + mint_token(SECRET, "issuer-dk", ["issuer"])
                        },
                        "alice": {"Authorization": "Bearer " + mint_token(SECRET, ALICE)},
                    },
                )
                box["h"] = h
                yield h
        finally:
            app_module.use_services(None)
