"""The composition root: the one place that builds real adapters from settings.

Built once per cold start (see app.py); tests and the embedded stack build `Services` with
fakes or with moto-backed clients instead.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import boto3
from botocore.config import Config

from chalicelib.adapters.dynamo import DynamoBook
from chalicelib.adapters.sqs import SqsCommandQueue
from chalicelib.api.auth import OidcVerifier, SharedSecretVerifier, TokenVerifier
from chalicelib.ports import Book, Clock, CommandQueue
from chalicelib.registry.builder import PlainTransactionBuilder
from chalicelib.registry.port import Registry
from chalicelib.settings import Settings
from chalicelib.usecases.process import Worker
from chalicelib.usecases.reconcile import Reconciler


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass
class Services:
    settings: Settings
    book: Book
    queue: CommandQueue
    verifier: TokenVerifier
    registry: Registry | None = None
    clock: Clock = utc_now
    sleep: Callable[[float], None] = time.sleep
    # name -> a call that raises when that dependency is unhealthy
    health_checks: dict[str, Callable[[], Any]] = field(default_factory=dict)


def worker(services: Services) -> Worker:
    """The worker over the same adapters as the API."""
    settings = services.settings
    assert services.registry is not None, "the worker needs a registry"
    return Worker(
        book=services.book,
        registry=services.registry,
        builder=PlainTransactionBuilder(settings.registry_name),
        clock=services.clock,
        sleep=services.sleep,
        lease_s=settings.lease_s,
        commit_poll_s=settings.commit_poll_s,
        batch_size=settings.registry_batch_size,
    )


def reconciler(services: Services) -> Reconciler:
    settings = services.settings
    assert services.registry is not None, "the reconciler needs a registry"
    return Reconciler(
        book=services.book,
        queue=services.queue,
        registry=services.registry,
        worker=worker(services),
        clock=services.clock,
        redrive_after_s=settings.redrive_after_s,
        expiry_days=settings.certificate_expiry_days,
        lease_s=settings.lambda_timeout_s * 2,
    )


def aws_config(settings: Settings) -> Config:
    # Standard retries absorb throttling; short timeouts keep a request inside its Lambda.
    return Config(
        region_name=settings.region,
        retries={"mode": "standard", "max_attempts": 3},
        connect_timeout=2,
        read_timeout=5,
    )


def verifier_for(settings: Settings) -> TokenVerifier:
    if settings.auth == "oidc":
        assert settings.oidc_issuer and settings.oidc_audience
        return OidcVerifier(settings.oidc_issuer, settings.oidc_audience, settings.oidc_jwks_url)
    return SharedSecretVerifier(settings.jwt_secret.get_secret_value())


def registry_for(settings: Settings) -> Registry:
    if settings.registry == "http":
        from chalicelib.registry.http_client import HttpRegistry

        assert settings.registry_url
        return HttpRegistry(
            settings.registry_url, settings.registry_timeout_s, settings.registry_queries
        )
    from chalicelib.registry.simulator import RegistrySimulator, SimulatorConfig

    return RegistrySimulator(
        SimulatorConfig(seed=settings.registry_seed, queries=settings.registry_queries)
    )


def build(settings: Settings | None = None, session: boto3.Session | None = None) -> Services:
    settings = settings or Settings()
    session = session or boto3.Session()
    config = aws_config(settings)
    dynamodb = session.client("dynamodb", config=config)
    sqs = session.client("sqs", config=config)
    queue_url = settings.queue_url or sqs.get_queue_url(QueueName=settings.queue_name)["QueueUrl"]
    return Services(
        settings=settings,
        book=DynamoBook(dynamodb, settings.table_name, settings.open_command_shards),
        queue=SqsCommandQueue(sqs, queue_url),
        verifier=verifier_for(settings),
        registry=registry_for(settings),
        health_checks={
            "dynamodb": lambda: dynamodb.describe_table(TableName=settings.table_name),
            "sqs": lambda: sqs.get_queue_attributes(
                QueueUrl=queue_url, AttributeNames=["QueueArn"]
            ),
        },
    )
