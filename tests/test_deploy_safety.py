"""Fail closed: outside stage local and the tests, the services refuse to build while any
development default is in effect, and packaging a stage refuses the same configuration.

The defaults are in the repository: whoever reads it could mint tokens (HS256 secret), rebuild
every owner's and issuer's signing key (sandbox secret) or open every slice secret (local
secrets key). Each case is refused with the variable named and what to set instead."""

from __future__ import annotations

import base64
import json
import os

import boto3
import pytest
from moto import mock_aws

from chalicelib import composition
from chalicelib.registry.custody import KmsOwnerKeys, StoredIssuerKeys
from chalicelib.settings import (
    DevelopmentDefaultsInEffect,
    Settings,
    check_deployable,
    development_defaults,
)
from tests.test_infra import packager

OIDC = {"auth": "oidc", "oidc_issuer": "https://id.example.invalid", "oidc_audience": "certs"}
KMS_KEY = "arn:aws:kms:eu-west-1:123456789012:key/0b6b1a52-0000-4000-8000-000000000000"
ISSUER_SECRET = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:certs-issuer-keys-AbCdEf"
GRPC = {"registry": "grpc", "registry_grpc_target": "registry.example.invalid:443"}


@pytest.fixture(autouse=True)
def _no_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    # What these tests judge is the settings they build, not what another test left behind.
    for name in list(os.environ):
        if name.upper().startswith("CERTS_"):
            monkeypatch.delenv(name)


def prod(**overrides) -> Settings:
    return Settings(stage="prod", **{**OIDC, **overrides})


def variables(settings: Settings) -> list[str]:
    return [finding.split(":", 1)[0] for finding in development_defaults(settings)]


def test_the_default_hs256_secret_is_refused_outside_local() -> None:
    settings = Settings(stage="prod", auth="hs256")
    assert variables(settings) == ["CERTS_JWT_SECRET"]
    assert "CERTS_AUTH=oidc" in development_defaults(settings)[0]
    assert variables(Settings(stage="prod", auth="hs256", jwt_secret="s" * 40)) == []


def test_the_local_secrets_key_without_a_kms_key_is_refused_when_slices_are_sealed() -> None:
    settings = prod(registry_transactions="proto")  # the in-process simulator
    assert variables(settings) == ["CERTS_SECRETS_KEY"]
    assert "CERTS_SECRETS_KMS_KEY_ID" in development_defaults(settings)[0]
    assert variables(prod(registry_transactions="proto", secrets_kms_key_id=KMS_KEY)) == []
    assert variables(prod()) == []  # plain transactions seal nothing and sign nothing


def test_the_sandbox_secret_is_refused_for_anything_but_the_simulator() -> None:
    settings = prod(**GRPC, secrets_key=base64.b64encode(os.urandom(32)).decode())
    assert variables(settings)[0] == "CERTS_REGISTRY_SANDBOX_SECRET"
    assert "owners' keys would be derived" in development_defaults(settings)[0]
    # the in-process simulator of a sandbox stage may keep the sandbox keys
    assert "CERTS_REGISTRY_SANDBOX_SECRET" not in variables(
        prod(registry_transactions="proto", secrets_kms_key_id=KMS_KEY)
    )


def test_a_sandbox_secret_of_your_own_still_needs_owners_keys_in_custody() -> None:
    settings = prod(
        **GRPC, registry_sandbox_secret="r" * 40, registry_issuer_keys_secret=(ISSUER_SECRET)
    )
    assert variables(settings) == ["CERTS_SECRETS_KEY", "CERTS_SECRETS_KMS_KEY_ID"]


def test_grpc_without_issuer_keys_is_refused() -> None:
    settings = prod(**GRPC, secrets_kms_key_id=KMS_KEY)
    assert variables(settings) == ["CERTS_REGISTRY_ISSUER_KEYS"]
    assert "CERTS_REGISTRY_ISSUER_KEYS_SECRET" in development_defaults(settings)[0]


def test_raw_issuer_keys_in_the_environment_are_refused_outside_local() -> None:
    raw = json.dumps({"DK1": base64.b64encode(bytes(32)).decode()})
    settings = prod(**GRPC, secrets_kms_key_id=KMS_KEY, registry_issuer_keys=raw)
    assert variables(settings) == ["CERTS_REGISTRY_ISSUER_KEYS"]
    assert "secret store" in development_defaults(settings)[0]
    assert variables(Settings(stage="local", **GRPC, registry_issuer_keys=raw)) == []


def test_one_error_names_every_offending_variable() -> None:
    settings = Settings(stage="prod", auth="hs256", **GRPC)
    with pytest.raises(DevelopmentDefaultsInEffect) as refused:
        check_deployable(settings)
    message = str(refused.value)
    assert message.startswith("stage 'prod' refuses to start")
    for variable in (
        "CERTS_JWT_SECRET",
        "CERTS_SECRETS_KEY",
        "CERTS_REGISTRY_SANDBOX_SECRET",
        "CERTS_REGISTRY_ISSUER_KEYS",
    ):
        assert f"\n  {variable}: " in message
    assert len(refused.value.findings) == 4


@pytest.mark.parametrize("stage", ["local", "test"])
def test_local_and_test_stages_keep_the_development_defaults(stage) -> None:
    assert development_defaults(Settings(stage=stage, **GRPC)) == []


def test_building_the_services_of_a_misconfigured_stage_fails_before_touching_aws() -> None:
    session = boto3.Session(
        region_name="eu-west-1", aws_access_key_id="x", aws_secret_access_key="x"
    )
    with pytest.raises(DevelopmentDefaultsInEffect, match="CERTS_JWT_SECRET"):
        composition.build(Settings(stage="prod", auth="hs256"), session=session)


def test_a_correctly_configured_prod_stage_builds_with_keys_in_custody() -> None:
    for key in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_DYNAMODB", "AWS_ENDPOINT_URL_SQS"):
        os.environ.pop(key, None)
    with mock_aws():
        session = boto3.Session(
            region_name="eu-west-1", aws_access_key_id="x", aws_secret_access_key="x"
        )
        key = session.client("kms").create_key()["KeyMetadata"]["Arn"]
        secret = session.client("secretsmanager").create_secret(
            Name="certs-issuer-keys",
            SecretString=json.dumps({"DK1": base64.b64encode(os.urandom(32)).decode()}),
        )["ARN"]
        settings = prod(
            **GRPC,
            registry_grpc_tls=True,
            secrets_kms_key_id=key,
            registry_issuer_keys_secret=secret,
        )
        from devstack import resources

        resources.create(session.client("dynamodb"), session.client("sqs"), settings)
        services = composition.build(settings, session=session)
        assert isinstance(services.owner_keys, KmsOwnerKeys)
        assert isinstance(services.issuer_keys, StoredIssuerKeys)
        builder = composition.worker(services).builder
        assert builder._owners is services.owner_keys
        assert len(services.issuer_keys.public_keys("DK1")) == 1
        services.registry.close()


# --- packaging runs the same check first ---------------------------------------------------------


def test_packaging_a_stage_with_a_development_default_is_refused(tmp_path, monkeypatch, capsys):
    config = json.loads(packager.CONFIG.read_text())
    prod_env = config["stages"]["prod"]["environment_variables"]
    prod_env.update(CERTS_AUTH="hs256", CERTS_REGISTRY="grpc", CERTS_REGISTRY_GRPC_TARGET="r:443")
    for name in ("CERTS_SECRETS_KMS_KEY_ID", "CERTS_REGISTRY_ISSUER_KEYS_SECRET"):
        prod_env.pop(name, None)
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    monkeypatch.setattr(packager, "CONFIG", path)
    monkeypatch.setenv("CERTS_JWT_SECRET", "a-secret-of-this-shell-that-the-stage-does-not-have")
    out = tmp_path / "prod"
    assert packager.main(["--stage", "prod", "--out", str(out)]) == 1
    error = capsys.readouterr().err
    assert error.startswith("stage 'prod' refuses to build: development defaults are in effect")
    for variable in ("CERTS_JWT_SECRET", "CERTS_REGISTRY_SANDBOX_SECRET"):  # said once
        assert error.count(f"\n  {variable}: ") == 1
    assert not out.exists()


def test_the_committed_stages_pass_the_check() -> None:
    for stage in ("dev", "prod"):
        assert packager.unsafe_settings(stage) == []
