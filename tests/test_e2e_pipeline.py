"""From 202 to COMMITTED through chalice.test.Client over moto: the HTTP API records and
queues, the SQS poller feeds app.worker exactly as Lambda would, and the read endpoints show
the result."""

from __future__ import annotations

import json
from typing import Any

import pytest
from chalice.test import Client

from devstack.poller import QueuePoller
from tests.app_on_moto import app_on_moto, post_accepted
from tests.conftest import token

ISSUER = {"Authorization": "Bearer " + token("issuer-dk", "issuer")}
ALICE = {"Authorization": "Bearer " + token("alice")}
BOB = {"Authorization": "Bearer " + token("bob")}


@pytest.fixture(params=[False, True], ids=["no-queries", "queries"])
def stack(request, moto_services, aws):
    with app_on_moto(moto_services, aws, queries=request.param) as running:
        yield running


def _get(client: Client, path: str, headers: dict) -> Any:
    answer = client.http.get(path, headers=headers)
    assert answer.status_code == 200, answer.body
    return json.loads(answer.body)


def _committed(client: Client, poller: QueuePoller, accepted: Any, headers: dict) -> Any:
    poller.drain()
    command = _get(client, f"/v1/commands/{accepted['command_id']}", headers)
    assert command["status"] == "COMMITTED", command
    return command


def _issue(client, poller, owner: str, type_: str, gsrn: str, quantity: int) -> str:
    accepted = post_accepted(
        client,
        "/v1/certificates",
        {
            "type": type_,
            "gsrn": gsrn,
            "grid_area": "DK1",
            "start": "2026-06-01T10:00:00Z",
            "end": "2026-06-01T11:00:00Z",
            "quantity_wh": quantity,
            "owner": owner,
            "attributes": {"technology": "T010000"},
        },
        ISSUER,
        f"issue-{gsrn}-{type_}",
    )
    _committed(client, poller, accepted, ISSUER)
    return accepted["certificate_id"]


def _slices(client, certificate_id: str, headers: dict) -> dict[int, str]:
    view = _get(client, f"/v1/certificates/{certificate_id}", headers)
    return {s["quantity_wh"]: s["slice_id"] for s in view["slices"] if s["state"] == "available"}


def test_issue_slice_transfer_claim_and_withdraw_go_from_202_to_committed(stack) -> None:
    client, poller, services = stack
    production = _issue(client, poller, "alice", "production", "571313000000000001", 1000)
    consumption = _issue(client, poller, "alice", "consumption", "571313000000000002", 400)
    (whole,) = _slices(client, production, ALICE).values()

    sliced = post_accepted(
        client,
        f"/v1/certificates/{production}/slices",
        {"slice_id": whole, "quantities_wh": [600, 400]},
        ALICE,
        "slice-1",
    )
    _committed(client, poller, sliced, ALICE)
    parts = _slices(client, production, ALICE)
    assert set(parts) == {600, 400}

    moved = post_accepted(
        client,
        "/v1/transfers",
        {
            "certificate_id": production,
            "slice_id": parts[600],
            "receiver": "bob",
            "quantity_wh": 250,
        },
        ALICE,
        "transfer-1",
    )
    _committed(client, poller, moved, ALICE)
    assert _slices(client, production, BOB) == {250: _slices(client, production, BOB)[250]}
    assert set(_slices(client, production, ALICE)) == {400, 350}
    assert [t["command_id"] for t in _get(client, "/v1/transfers", BOB)["items"]] == [
        moved["command_id"]
    ]

    (consumed,) = _slices(client, consumption, ALICE).values()
    claimed = post_accepted(
        client,
        "/v1/claims",
        {
            "production": {"certificate_id": production, "slice_id": parts[400]},
            "consumption": {"certificate_id": consumption, "slice_id": consumed},
            "quantity_wh": 400,
        },
        ALICE,
        "claim-1",
    )
    _committed(client, poller, claimed, ALICE)
    view = _get(client, f"/v1/certificates/{consumption}", ALICE)
    assert [(s["quantity_wh"], s["state"]) for s in view["slices"]] == [(400, "claimed")]
    assert len(_get(client, "/v1/claims", ALICE)["items"]) == 1

    withdrawn = post_accepted(
        client, f"/v1/certificates/{consumption}/withdraw", {}, ISSUER, "withdraw-1"
    )
    _committed(client, poller, withdrawn, ISSUER)
    assert _get(client, f"/v1/certificates/{consumption}", ISSUER)["status"] == "withdrawn"
    # The consumption was claimed: its withdrawal gives alice the production part back, by an
    # unclaim the service queued (the drain above delivered it too).
    (unclaim,) = _get(client, "/v1/commands?kind=unclaim", ALICE)["items"]
    assert (unclaim["status"], unclaim["certificate_id"]) == ("COMMITTED", production)
    assert unclaim["claim_id"] == claimed["command_id"]

    listed = _get(client, "/v1/certificates", ALICE)["items"]
    assert {c["certificate_id"] for c in listed} == {production, consumption}
    totals = _get(client, "/v1/certificates/aggregate?granularity=day&type=production", ALICE)[
        "buckets"
    ]
    assert [(b["quantity_wh"], b["certificates"]) for b in totals] == [(750, 1)]  # 350 + 400
    assert services.registry.duplicates() == []


def test_a_withdrawal_leaves_no_slice_of_the_certificate_usable(stack) -> None:
    """Issue 13, item 1: the queue message carries the certificate trimmed to the slices the
    command names (none, for a withdrawal), and the DynamoDB book applied the outcome to that
    snapshot only: the certificate was `withdrawn` and its slices still `available`, counted
    in the owner's totals."""
    client, poller, _ = stack
    production = _issue(client, poller, "alice", "production", "571313000000000001", 1000)
    (whole,) = _slices(client, production, ALICE).values()
    sliced = post_accepted(
        client,
        f"/v1/certificates/{production}/slices",
        {"slice_id": whole, "quantities_wh": [600, 400]},
        ALICE,
        "slice-1",
    )
    _committed(client, poller, sliced, ALICE)

    withdrawn = post_accepted(
        client, f"/v1/certificates/{production}/withdraw", {}, ISSUER, "withdraw-1"
    )
    _committed(client, poller, withdrawn, ISSUER)

    view = _get(client, f"/v1/certificates/{production}", ALICE)
    assert view["status"] == "withdrawn"
    assert sorted(s["state"] for s in view["slices"]) == ["withdrawn", "withdrawn"]
    totals = _get(client, "/v1/certificates/aggregate?granularity=day&type=production", ALICE)
    assert totals["buckets"] == []
