"""Hashed attributes through the whole service (DynamoDB book over moto, SQS, the worker, the
simulator): the registry gets salted hashes, the book keeps the salts sealed, and only the
certificate's owners see the clear values (and the salts, to reveal them) in
GET /v1/certificates/{id}; issuers and operators see what the registry holds."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from chalice.test import Client

import app as app_module
from chalicelib.registry import attributes
from chalicelib.registry.envelope import Transaction
from chalicelib.registry.sandbox.simulator import RegistrySimulator, SimulatorConfig
from devstack.poller import QueuePoller
from tests.conftest import token

ISSUER = {"Authorization": "Bearer " + token("issuer-dk", "issuer")}
OPERATOR = {"Authorization": "Bearer " + token("ops", "operator")}
ALICE = {"Authorization": "Bearer " + token("alice")}
BOB = {"Authorization": "Bearer " + token("bob")}


@pytest.fixture
def stack(moto_services, aws):
    moto_services.registry = RegistrySimulator(SimulatorConfig(commit_delay_s=0.0))
    moto_services.settings = moto_services.settings.model_copy(
        update={"commit_check_s": 1.0, "registry_hashed_attributes": frozenset({"address"})}
    )
    app_module.use_services(moto_services)
    sqs = aws.client("sqs")
    url = sqs.get_queue_url(QueueName=moto_services.settings.queue_name)["QueueUrl"]
    poller = QueuePoller(sqs, url, lambda event: app_module.worker(event, None), wait_s=0)
    with Client(app_module.app) as client:
        yield client, poller, moto_services
    app_module.use_services(None)


def _post(client: Client, path: str, body: Any, headers: dict, key: str) -> Any:
    answer = client.http.post(
        path,
        body=json.dumps(body),
        headers={**headers, "Content-Type": "application/json", "Idempotency-Key": key},
    )
    assert answer.status_code == 202, answer.body
    return json.loads(answer.body)


def _get(client: Client, path: str, headers: dict) -> tuple[int, Any]:
    answer = client.http.get(path, headers=headers)
    return answer.status_code, json.loads(answer.body)


def test_owners_see_hashed_attributes_in_clear_and_others_see_the_registrys_hash(stack):
    client, poller, services = stack
    accepted = _post(
        client,
        "/v1/certificates",
        {
            "type": "production",
            "gsrn": "571313000000000001",
            "grid_area": "DK1",
            "start": "2026-06-01T10:00:00Z",
            "end": "2026-06-01T11:00:00Z",
            "quantity_wh": 1000,
            "owner": "alice",
            "attributes": {"technology": "T010000", "address": "Some road 1"},
        },
        ISSUER,
        "issue-1",
    )
    poller.drain()
    certificate_id = accepted["certificate_id"]
    command = services.book.get_command(accepted["command_id"])
    assert command is not None and command.status.value == "COMMITTED"

    # What went to the registry: the salted hash, no GSRN hash, the rest in clear.
    (issued,) = [Transaction.parse(base64.b64decode(t)) for t in command.transactions]
    sent = {a["key"]: a for a in issued.payload["attributes"]}
    assert issued.payload["asset_id_hash"] == ""
    assert sent["technology"] == {"key": "technology", "value": "T010000", "type": "CLEARTEXT"}
    assert sent["address"]["type"] == "HASHED"
    assert "Some road 1" not in json.dumps(issued.payload)

    status, mine = _get(client, f"/v1/certificates/{certificate_id}", ALICE)
    assert status == 200
    assert mine["attributes"] == {"technology": "T010000", "address": "Some road 1"}
    revealed = mine["hashed_attributes"]["address"]
    salt = base64.b64decode(revealed["salt"])
    assert len(salt) == 16
    assert revealed["registry_value"] == sent["address"]["value"]
    assert revealed["registry_value"] == attributes.hashed_value(
        "address", "Some road 1", certificate_id, salt
    )
    # The list shows the owner the value too (without the salt).
    status, listed = _get(client, "/v1/certificates", ALICE)
    (item,) = listed["items"]
    assert item["attributes"]["address"] == "Some road 1"
    assert "salt" not in item["hashed_attributes"]["address"]

    # Issuers and operators see every certificate, but a hashed attribute as the registry does.
    for who in (ISSUER, OPERATOR):
        status, seen = _get(client, f"/v1/certificates/{certificate_id}", who)
        assert status == 200
        assert seen["attributes"] == {
            "technology": "T010000",
            "address": sent["address"]["value"],
        }
        assert seen["hashed_attributes"] == {
            "address": {"registry_value": sent["address"]["value"]}
        }
        assert "Some road 1" not in json.dumps(seen)

    # Another owner sees nothing of it at all (owner isolation: reads like a missing one).
    status, problem = _get(client, f"/v1/certificates/{certificate_id}", BOB)
    assert status == 404
    assert "Some road 1" not in json.dumps(problem)
    status, listed = _get(client, "/v1/certificates", BOB)
    assert listed["items"] == []
