"""The operator endpoints through chalice.test.Client: only operators, only IN_DOUBT work."""

from __future__ import annotations

import json

import pytest
from chalice.test import Client

import app as app_module
from chalicelib.registry.sandbox.simulator import RegistrySimulator, SimulatorConfig
from tests.app_on_moto import post_accepted, serving
from tests.conftest import token
from tests.test_e2e_pipeline import ISSUER

OPERATOR = {"Authorization": "Bearer " + token("ops", "operator")}
ALICE = {"Authorization": "Bearer " + token("alice")}


@pytest.fixture
def stack(moto_services, aws):
    # Every registry call times out after applying: every command ends IN_DOUBT.
    registry = RegistrySimulator(SimulatorConfig(queries=False, ambiguous_rate=1.0))
    with serving(moto_services, aws, registry) as served:
        yield served


def _in_doubt_command(client, poller) -> str:
    accepted = post_accepted(
        client,
        "/v1/certificates",
        {
            "type": "production",
            "gsrn": "571313000000000001",
            "grid_area": "DK1",
            "start": "2026-06-01T10:00:00Z",
            "end": "2026-06-01T11:00:00Z",
            "quantity_wh": 10,
            "owner": "alice",
        },
        ISSUER,
        "issue-1",
    )
    poller.drain()
    return accepted["command_id"]


def _resolve(client, command_id: str, headers: dict, outcome: str = "committed"):
    return client.http.post(
        f"/v1/ops/commands/{command_id}/resolve",
        body=json.dumps({"outcome": outcome, "reason": "seen in the registry"}),
        headers={**headers, "Content-Type": "application/json"},
    )


def test_an_operator_lists_in_doubt_work_and_resolves_it(stack) -> None:
    client, poller = stack
    command_id = _in_doubt_command(client, poller)
    stuck = json.loads(client.http.get("/v1/ops/commands?status=IN_DOUBT", headers=OPERATOR).body)
    assert [c["command_id"] for c in stuck["items"]] == [command_id]
    assert stuck["items"][0]["transaction_ids"]
    answer = _resolve(client, command_id, OPERATOR)
    assert answer.status_code == 200, answer.body
    assert json.loads(answer.body)["status"] == "COMMITTED"
    again = _resolve(client, command_id, OPERATOR)
    assert again.status_code == 409
    assert again.headers["Content-Type"] == "application/problem+json"


@pytest.mark.parametrize("headers", [ALICE, ISSUER], ids=["owner", "issuer"])
def test_only_operators_may_resolve_list_or_reconcile(stack, headers) -> None:
    client, poller = stack
    command_id = _in_doubt_command(client, poller)
    assert _resolve(client, command_id, headers).status_code == 403
    assert client.http.get("/v1/ops/commands", headers=headers).status_code == 403
    reconcile = client.http.post(
        "/v1/ops/reconcile", body="{}", headers={**headers, "Content-Type": "application/json"}
    )
    assert reconcile.status_code == 403
    status = json.loads(client.http.get(f"/v1/commands/{command_id}", headers=ISSUER).body)
    assert status["status"] == "IN_DOUBT"


def test_resolving_an_unknown_command_is_404_and_a_bad_outcome_400(stack) -> None:
    client, _ = stack
    assert _resolve(client, "nope", OPERATOR).status_code == 404
    assert _resolve(client, "nope", OPERATOR, outcome="maybe").status_code == 400


def test_an_operator_runs_a_reconciliation_pass_and_reads_its_report(stack) -> None:
    client, poller = stack
    _in_doubt_command(client, poller)
    answer = client.http.post(
        "/v1/ops/reconcile", body="{}", headers={**OPERATOR, "Content-Type": "application/json"}
    )
    assert answer.status_code == 200, answer.body
    report = json.loads(answer.body)
    assert report["actions"]["in_doubt_for_operator"] == 1
    assert report["complete"] is True


def test_an_operator_sends_again_a_step_that_never_reached_the_registry(moto_services, aws) -> None:
    moto_services.registry = RegistrySimulator(SimulatorConfig(queries=False, lost_rate=1.0))
    app_module.use_services(moto_services)
    sqs = aws.client("sqs")
    url = sqs.get_queue_url(QueueName=moto_services.settings.queue_name)["QueueUrl"]
    from devstack.poller import QueuePoller

    poller = QueuePoller(sqs, url, lambda event: app_module.worker(event, None), wait_s=0)
    try:
        with Client(app_module.app) as client:
            command_id = _in_doubt_command(client, poller)
            assert moto_services.registry.log() == []
            assert _resolve(client, command_id, ALICE, outcome="not_sent").status_code == 403
            moto_services.registry.configure(lost_rate=0.0)
            answer = _resolve(client, command_id, OPERATOR, outcome="not_sent")
            assert answer.status_code == 200, answer.body
            assert json.loads(answer.body)["status"] == "ACCEPTED"
            poller.drain()
            view = json.loads(client.http.get(f"/v1/commands/{command_id}", headers=ISSUER).body)
            assert view["status"] == "COMMITTED"
            assert len(moto_services.registry.received_ids()) == 1
    finally:
        app_module.use_services(None)
