"""From 202 to COMMITTED through chalice.test.Client over moto, with the registry chosen by
settings as a stage would choose it: proto transactions, the real gRPC adapter, and the
verifying simulator served over gRPC on 127.0.0.1."""

from __future__ import annotations

import json

import pytest
from chalice.test import Client

import app as app_module
from chalicelib import composition
from chalicelib.registry.builder import ProtoTransactionBuilder
from chalicelib.registry.grpc_client import GrpcRegistry
from chalicelib.registry.port import TransactionStatus
from chalicelib.registry.protocodec import ProtoCodec
from chalicelib.registry.sandbox.simulator import RegistrySimulator, SimulatorConfig
from chalicelib.registry.sandbox.verifier import ProtoLedger
from devstack.poller import QueuePoller
from devstack.registry_grpc import RegistryGrpcServer
from tests.conftest import token

ISSUER = {"Authorization": "Bearer " + token("issuer-dk", "issuer")}
ALICE = {"Authorization": "Bearer " + token("alice")}


@pytest.fixture
def stack(moto_services, aws):
    settings = moto_services.settings.model_copy(
        update={"registry": "grpc", "registry_grpc_tls": False, "commit_check_s": 1.0}
    )
    simulator = RegistrySimulator(
        SimulatorConfig(queries=True, commit_delay_s=0.0),
        ledger=ProtoLedger(composition.issuer_keys_for(settings).public_keys),
    )
    server = RegistryGrpcServer(simulator)
    settings = settings.model_copy(update={"registry_grpc_target": server.target})
    moto_services.settings = settings
    moto_services.registry = composition.registry_for(settings)
    app_module.use_services(moto_services)
    sqs = aws.client("sqs")
    url = sqs.get_queue_url(QueueName=settings.queue_name)["QueueUrl"]
    poller = QueuePoller(sqs, url, lambda event: app_module.worker(event, None), wait_s=0)
    with Client(app_module.app) as client:
        yield client, poller, moto_services, simulator
    app_module.use_services(None)
    moto_services.registry.close()
    server.stop()


def _accepted(client: Client, path: str, body, headers: dict, key: str):
    answer = client.http.post(
        path,
        body=json.dumps(body),
        headers={**headers, "Content-Type": "application/json", "Idempotency-Key": key},
    )
    assert answer.status_code == 202, answer.body
    return json.loads(answer.body)


def _status(client: Client, poller: QueuePoller, accepted, headers: dict) -> str:
    poller.drain()
    answer = client.http.get(f"/v1/commands/{accepted['command_id']}", headers=headers)
    return json.loads(answer.body)["status"]


def test_a_stage_configured_for_grpc_issues_and_slices_through_the_real_adapter(stack) -> None:
    client, poller, services, simulator = stack
    worker = composition.worker(services)
    assert isinstance(worker.builder, ProtoTransactionBuilder)
    assert isinstance(services.registry, GrpcRegistry)
    assert isinstance(composition.reconciler(services).codec, ProtoCodec)

    issued = _accepted(
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
        },
        ISSUER,
        "issue-1",
    )
    assert _status(client, poller, issued, ISSUER) == "COMMITTED"
    view = json.loads(
        client.http.get(f"/v1/certificates/{issued['certificate_id']}", headers=ALICE).body
    )
    (whole,) = view["slices"]
    sliced = _accepted(
        client,
        f"/v1/certificates/{issued['certificate_id']}/slices",
        {"slice_id": whole["slice_id"], "quantities_wh": [600, 400]},
        ALICE,
        "slice-1",
    )
    assert _status(client, poller, sliced, ALICE) == "COMMITTED"
    assert [e.verdict for e in simulator.log()] == [TransactionStatus.COMMITTED] * 2
    assert {e.payload_type.rsplit(".", 1)[1] for e in simulator.log()} == {
        "IssuedEvent",
        "SlicedEvent",
    }
    report = composition.reconciler(services).run()
    assert report.actions["drift_repaired"] == 0 and report.actions["aligned"] >= 1
