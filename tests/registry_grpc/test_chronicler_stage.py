"""The chronicler as a stage configures it: CERTS_CHRONICLERS read and checked at start (one
line naming what is wrong), composition's clients, and a claim from POST /v1/claims to
COMMITTED over gRPC with the registry requiring the chronicler's signature."""

from __future__ import annotations

import base64
import json

import pytest
from chalice.test import Client
from pydantic import ValidationError

from chalicelib import composition
from chalicelib.domain import Command, CommandKind, SliceRef
from chalicelib.registry.chronicler_grpc import GrpcChronicler
from chalicelib.registry.sandbox.chronicler import SimulatedChronicler
from chalicelib.registry.sandbox.simulator import RegistrySimulator, SimulatorConfig
from chalicelib.registry.sandbox.verifier import ProtoLedger
from chalicelib.settings import Settings, describe
from devstack.chronicler_grpc import ChroniclerGrpcServer
from devstack.poller import QueuePoller
from devstack.registry_grpc import RegistryGrpcServer
from tests.app_on_moto import post_accepted, serving
from tests.conftest import token

ISSUER = {"Authorization": "Bearer " + token("issuer-dk", "issuer")}
ALICE = {"Authorization": "Bearer " + token("alice")}
KEY = base64.b64encode(SimulatedChronicler().public_key).decode()
PROTO = {"CERTS_REGISTRY_TRANSACTIONS": "proto"}


def _settings(monkeypatch, **env: str) -> Settings:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return Settings()


def _error(monkeypatch, **env: str) -> str:
    with pytest.raises(ValidationError) as raised:
        _settings(monkeypatch, **env)
    line = describe(raised.value)
    assert "\n" not in line
    return line


def test_chroniclers_are_read_per_grid_area_from_json(monkeypatch) -> None:
    value = {"DK1": {"target": "chronicler.example:5001", "signer_keys": [KEY]}}
    settings = _settings(monkeypatch, CERTS_CHRONICLERS=json.dumps(value), **PROTO)
    named = settings.chroniclers["DK1"]
    assert (named.target, named.tls, named.public_keys()) == (
        "chronicler.example:5001",
        True,
        [base64.b64decode(KEY)],
    )
    assert _settings(monkeypatch, CERTS_CHRONICLERS="").chroniclers == {}


@pytest.mark.parametrize(
    ("value", "said"),
    [
        ("{DK1: nope", "CERTS_CHRONICLERS='{DK1: nope': not JSON"),
        ('["DK1"]', "CERTS_CHRONICLERS=['DK1']: Input should be a valid dictionary"),
        (
            '{"DK1": {"target": "nope"}}',
            "CERTS_CHRONICLERS at DK1.target='nope': must be host:port",
        ),
        ('{"DK1": {"target": "h:99999"}}', "at DK1.target='h:99999': must be host:port"),
        ('{"DK1": {}}', "CERTS_CHRONICLERS at DK1.target"),
        ('{"DK1": {"target": "h:1", "tsl": false}}', "at DK1.tsl=False: Extra inputs"),
        (
            '{"DK1": {"target": "h:1", "signer_keys": ["AAAA"]}}',
            "at DK1.signer_keys=['AAAA']: 'AAAA' is not the base64 of a raw Ed25519 public key",
        ),
        ('{" ": {"target": "h:1"}}', "a grid area name is empty"),
    ],
)
def test_a_wrong_chronicler_setting_is_one_line_naming_it(monkeypatch, value, said) -> None:
    assert said in _error(monkeypatch, CERTS_CHRONICLERS=value, **PROTO)


def test_chroniclers_need_the_registrys_wire_format(monkeypatch) -> None:
    value = json.dumps({"DK1": {"target": "h:1"}})
    assert "CERTS_CHRONICLERS needs the registry's wire format" in _error(
        monkeypatch, CERTS_CHRONICLERS=value
    )


def test_the_chronicler_call_times_out_before_the_function(monkeypatch) -> None:
    said = _error(monkeypatch, CERTS_CHRONICLER_TIMEOUT_S="60", CERTS_LAMBDA_TIMEOUT_S="30")
    assert "CERTS_CHRONICLER_TIMEOUT_S must be below CERTS_LAMBDA_TIMEOUT_S" in said


def test_composition_gives_each_named_area_its_chronicler_one_client_per_target() -> None:
    settings = Settings(
        registry_transactions="proto",
        chroniclers={
            "DK1": {"target": "127.0.0.1:5001", "tls": False},
            "DK2": {"target": "127.0.0.1:5001", "tls": False},
            "SE3": {"target": "127.0.0.1:5002", "tls": False},
        },
    )
    services = composition.Services(settings=settings, book=None, queue=None, verifier=None)  # type: ignore[arg-type]
    routes = composition.chroniclers_for(services)
    dk1, dk2, se3 = (routes.for_area(a) for a in ("DK1", "DK2", "SE3"))
    assert isinstance(dk1, GrpcChronicler) and dk1 is dk2 and dk1 is not se3
    assert routes.for_area("DE1") is None
    builder = composition.builder_for(services)
    claim = Command(
        command_id="c",
        kind=CommandKind.CLAIM,
        certificate_id="p",
        caller="alice",
        request_hash="h",
        created_at=composition.utc_now(),
        updated_at=composition.utc_now(),
        slices=(
            SliceRef(certificate_id="p", slice_id="a"),
            SliceRef(certificate_id="c", slice_id="b"),
        ),
        quantity_wh=1,
    )

    class Area:
        def __init__(self, grid_area: str) -> None:
            self.grid_area = grid_area

    assert builder.asks_outside(claim, {"p": Area("DK1"), "c": Area("DK1")})
    assert not builder.asks_outside(claim, {"p": Area("DE1"), "c": Area("DE1")})
    for client in {dk1, se3}:
        client.close()


def test_the_in_process_simulator_requires_the_signer_keys_of_the_settings() -> None:
    settings = Settings(
        registry_transactions="proto",
        chroniclers={"DK1": {"target": "127.0.0.1:5001", "signer_keys": [KEY]}},
    )
    ledger = composition.registry_for(settings)._ledger
    assert ledger.rules.chronicler_keys("DK1") == [base64.b64decode(KEY)]
    assert ledger.rules.chronicler_keys("DK2") == []


@pytest.fixture
def stage(moto_services, aws):
    """A stage with CERTS_CHRONICLERS naming a chronicler for DK1, and a registry that
    requires it there."""
    served = ChroniclerGrpcServer(SimulatedChronicler())
    key = base64.b64encode(served.chronicler.public_key).decode()
    settings = moto_services.settings.model_copy(
        update={"registry": "grpc", "registry_grpc_tls": False, "commit_check_s": 1.0}
    )
    simulator = RegistrySimulator(
        SimulatorConfig(queries=True, commit_delay_s=0.0),
        ledger=ProtoLedger(
            composition.issuer_keys_for(settings).public_keys,
            chronicler_keys=lambda area: [served.chronicler.public_key] if area == "DK1" else [],
        ),
    )
    server = RegistryGrpcServer(simulator)
    settings = Settings(
        **{
            **settings.model_dump(),
            "registry_grpc_target": server.target,
            "chroniclers": {"DK1": {"target": served.target, "tls": False, "signer_keys": [key]}},
        }
    )
    moto_services.settings = settings
    with serving(moto_services, aws, composition.registry_for(settings)) as (client, poller):
        yield client, poller, simulator, served
    moto_services.registry.close()
    moto_services.chroniclers.for_area("DK1").close()
    server.stop()
    served.stop()


def _status(client: Client, poller: QueuePoller, accepted: dict, headers: dict) -> dict:
    poller.drain()
    answer = client.http.get(f"/v1/commands/{accepted['command_id']}", headers=headers)
    return json.loads(answer.body)


def _issued(client: Client, poller: QueuePoller, type_: str, gsrn: str) -> tuple[str, str]:
    body = {
        "type": type_,
        "gsrn": gsrn,
        "grid_area": "DK1",
        "start": "2026-06-01T10:00:00Z",
        "end": "2026-06-01T11:00:00Z",
        "quantity_wh": 1000,
        "owner": "alice",
    }
    issued = post_accepted(client, "/v1/certificates", body, ISSUER, f"issue-{gsrn}")
    assert _status(client, poller, issued, ISSUER)["status"] == "COMMITTED"
    cert = issued["certificate_id"]
    view = json.loads(client.http.get(f"/v1/certificates/{cert}", headers=ALICE).body)
    (whole,) = view["slices"]
    return cert, whole["slice_id"]


def test_a_claim_on_a_stage_with_a_chronicler_commits_through_post_claims(stage) -> None:
    client, poller, simulator, served = stage
    production = _issued(client, poller, "production", "571313000000000001")
    consumption = _issued(client, poller, "consumption", "571313000000000002")
    body = {
        "production": {"certificate_id": production[0], "slice_id": production[1]},
        "consumption": {"certificate_id": consumption[0], "slice_id": consumption[1]},
        "quantity_wh": 400,
    }
    claimed = post_accepted(client, "/v1/claims", body, ALICE, "claim-1")
    status = _status(client, poller, claimed, ALICE)
    assert status["status"] == "COMMITTED", status
    assert [(i.certificate_id, i.quantity) for i in served.chronicler.intents] == [
        (production[0], 400),
        (consumption[0], 400),
    ]
    allocated = [e for e in simulator.log() if e.payload_type.endswith("AllocatedEvent")]
    assert [e.verdict for e in allocated] == ["COMMITTED", "COMMITTED"]
