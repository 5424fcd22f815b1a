"""The whole service in process for end-to-end tests: the Chalice app over moto (DynamoDB book,
SQS queue), its worker fed by the embedded stack's SQS poller exactly as Lambda would, and a
registry simulator that commits at once."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from typing import Any

from chalice.test import Client

import app as app_module
from chalicelib.registry.sandbox.simulator import RegistrySimulator, SimulatorConfig
from devstack.poller import QueuePoller


@contextlib.contextmanager
def serving(services: Any, aws: Any, registry: Any) -> Iterator[tuple[Client, QueuePoller]]:
    """The app over `services` and `registry`: a test client, and a poller whose drain runs
    the worker on what the queue holds."""
    services.registry = registry
    app_module.use_services(services)
    sqs = aws.client("sqs")
    url = sqs.get_queue_url(QueueName=services.settings.queue_name)["QueueUrl"]
    poller = QueuePoller(sqs, url, lambda event: app_module.worker(event, None), wait_s=0)
    try:
        with Client(app_module.app) as client:
            yield client, poller
    finally:
        app_module.use_services(None)


@contextlib.contextmanager
def app_on_moto(
    services: Any, aws: Any, queries: bool = False, **settings: Any
) -> Iterator[tuple[Client, QueuePoller, Any]]:
    """`serving` with a simulator that commits at once, and the services (the `moto_services`
    fixture's, with `settings` changed)."""
    services.settings = services.settings.model_copy(update={"commit_check_s": 1.0, **settings})
    registry = RegistrySimulator(SimulatorConfig(queries=queries, commit_delay_s=0.0))
    with serving(services, aws, registry) as (client, poller):
        yield client, poller, services


def post_accepted(client: Client, path: str, body: Any, headers: dict, key: str) -> Any:
    """POST a command and return its 202 answer."""
    answer = client.http.post(
        path,
        body=json.dumps(body),
        headers={**headers, "Content-Type": "application/json", "Idempotency-Key": key},
    )
    assert answer.status_code == 202, answer.body
    return json.loads(answer.body)
