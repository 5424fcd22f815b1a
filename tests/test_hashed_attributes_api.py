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

from chalicelib.registry import attributes
from chalicelib.registry.envelope import Transaction
from tests.app_on_moto import app_on_moto, post_accepted
from tests.conftest import token

ISSUER = {"Authorization": "Bearer " + token("issuer-dk", "issuer")}
OPERATOR = {"Authorization": "Bearer " + token("ops", "operator")}
ALICE = {"Authorization": "Bearer " + token("alice")}
BOB = {"Authorization": "Bearer " + token("bob")}


@pytest.fixture
def stack(moto_services, aws):
    hashed = frozenset({"address"})
    with app_on_moto(moto_services, aws, registry_hashed_attributes=hashed) as running:
        yield running


def _get(client: Client, path: str, headers: dict) -> tuple[int, Any]:
    answer = client.http.get(path, headers=headers)
    return answer.status_code, json.loads(answer.body)


def test_owners_see_hashed_attributes_in_clear_and_others_see_the_registrys_hash(stack):
    client, poller, services = stack
    accepted = post_accepted(
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
