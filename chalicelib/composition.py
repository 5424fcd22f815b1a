"""The composition root: the one place that builds real adapters from settings.

Built once per cold start (see app.py); tests and the embedded stack build `Services` with
fakes or with moto-backed clients instead.
"""

from __future__ import annotations

import base64
import functools
import os
from collections.abc import Callable, Sequence
from concurrent import futures
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import boto3
from botocore.config import Config

from chalicelib.adapters.dynamo import DynamoBook
from chalicelib.adapters.sqs import SqsCommandQueue
from chalicelib.api.auth import OidcVerifier, SharedSecretVerifier, TokenVerifier
from chalicelib.ports import Book, Clock, CommandQueue
from chalicelib.registry.builder import (
    AttributeHasher,
    PlainTransactionBuilder,
    ProtoTransactionBuilder,
)
from chalicelib.registry.chronicler import Chroniclers
from chalicelib.registry.codec import PLAIN, TransactionCodec
from chalicelib.registry.custody import KmsOwnerKeys, StoredIssuerKeys
from chalicelib.registry.federation import Guarded, Registries
from chalicelib.registry.keys import IssuerKeys, OwnerKeys, SandboxOwnerKeys
from chalicelib.registry.measured import MeasuredRegistry
from chalicelib.registry.port import Registry
from chalicelib.registry.protocodec import BookSliceDirectory, ProtoCodec
from chalicelib.registry.secrets import KmsSecretBox, LocalSecretBox, SecretBox, TableDataKeys
from chalicelib.settings import Settings, check_deployable
from chalicelib.usecases.process import (
    SideBySide,
    TransactionBuilder,
    Worker,
    one_after_another,
)
from chalicelib.usecases.reconcile import Reconciler


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass
class Services:
    settings: Settings
    book: Book
    queue: CommandQueue
    verifier: TokenVerifier
    # The registry, or a federation's registries (CERTS_REGISTRIES), each measured by name.
    registry: Registry | Registries | None = None
    clock: Clock = utc_now
    # name -> a call that raises when that dependency is unhealthy
    health_checks: dict[str, Callable[[], Any]] = field(default_factory=dict)
    # Seals slice secrets (proto transactions); built once per cold start, from settings if unset.
    secret_box: SecretBox | None = None
    # The keys that sign (proto transactions). Unset: derived from the sandbox secret, as in
    # stage local and the tests; build() puts the ones in custody here on AWS.
    owner_keys: OwnerKeys | None = None
    issuer_keys: IssuerKeys | None = None
    # The chronicler each grid area names (proto transactions); from settings if unset.
    chroniclers: Chroniclers | None = None


def worker(services: Services) -> Worker:
    """The worker over the same adapters as the API."""
    settings = services.settings
    assert services.registry is not None, "the worker needs a registry"
    return Worker(
        book=services.book,
        registry=services.registry,
        builder=builder_for(services),
        clock=services.clock,
        lease_s=settings.lease_s,
        commit_check_s=settings.commit_check_s,
        batch_size=settings.registry_batch_size,
        drift_check_one_in=settings.drift_check_one_in,
        queue=services.queue,  # a withdrawal's unclaims go on at once
        run_side_by_side=side_by_side(settings.worker_concurrency),
    )


def side_by_side(threads: int) -> SideBySide:
    """Runs a batch's FIFO groups in up to `threads` threads of the container's pool, and
    returns when every one has run (the first error, if any, after all have)."""
    if threads <= 1:
        return one_after_another

    def run(tasks: Sequence[Callable[[], None]]) -> None:
        if len(tasks) <= 1:
            one_after_another(tasks)
            return
        running = [_pool(threads).submit(task) for task in tasks]
        futures.wait(running)
        for done in running:
            done.result()

    return run


@functools.cache
def _pool(threads: int) -> futures.ThreadPoolExecutor:
    # One per container, shared by its invocations (the embedded stack's pollers run several
    # at once: their tasks queue). Threads start on first use.
    return futures.ThreadPoolExecutor(max_workers=threads, thread_name_prefix="worker-group")


def postpone(services: Services) -> Callable[[list[tuple[str, float]]], int] | None:
    """How the worker's entry point makes received messages come back later: the SQS
    queue's `postpone` (ChangeMessageVisibilityBatch). A queue without it (a test's) has none,
    and such a message comes back after the queue's own visibility timeout."""
    return getattr(services.queue, "postpone", None)


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
        expiry_limit=settings.expiry_limit,
        lease_s=settings.lambda_timeout_s * 2,
        codec=codec_for(services),
        unsettled_passes_for_operator=settings.reconciler_unsettled_passes,
        pending_in_doubt_after_s=settings.pending_in_doubt_after_s,
    )


def shard_fan_out(services: Services) -> Callable[[int], None] | None:
    """In Lambda, with the fan-out on: one asynchronous invocation of this function per shard.
    Elsewhere (tests, the embedded stack) the schedule runs one pass over every shard."""
    function = os.environ.get("AWS_LAMBDA_FUNCTION_NAME")
    if not (services.settings.reconciler_fan_out and function):
        return None
    from chalicelib.adapters.fanout import LambdaFanOut

    client = boto3.Session().client("lambda", config=aws_config(services.settings))
    return LambdaFanOut(client, function).send


# --- the registry's transactions: plain envelope, or the real wire format -----------------------


def uses_proto(settings: Settings) -> bool:
    return settings.registry == "grpc" or settings.registry_transactions == "proto"


def issuer_keys_for(
    settings: Settings, client_for: Callable[[str], Any] | None = None
) -> IssuerKeys:
    """The issuers' keys: from the secret store, from settings, or derived (sandbox)."""
    if settings.registry_issuer_keys_secret:
        factory = client_for or (
            lambda service: boto3.Session().client(service, config=aws_config(settings))
        )
        return StoredIssuerKeys(settings.registry_issuer_keys_secret, factory)
    if settings.registry_issuer_keys is not None:
        return IssuerKeys.from_json(settings.registry_issuer_keys.get_secret_value())
    return IssuerKeys.sandbox(settings.registry_sandbox_secret.get_secret_value().encode())


def secret_box_for(services: Services) -> SecretBox:
    if services.secret_box is None:
        settings = services.settings
        if settings.secrets_kms_key_id:
            session = boto3.Session()
            services.secret_box = kms_secret_box(
                settings,
                session.client("kms", config=aws_config(settings)),
                session.client("dynamodb", config=aws_config(settings)),
            )
        else:
            key = base64.b64decode(settings.secrets_key.get_secret_value())
            services.secret_box = LocalSecretBox(key, packs=not settings.write_previous_forms)
    return services.secret_box


def kms_secret_box(settings: Settings, kms: Any, dynamodb: Any) -> KmsSecretBox:
    """Slice secrets under the KMS key; their data keys kept in the book's table, unless an
    upgrade's first deploy seals in the first form (settings.write_previous_forms)."""
    assert settings.secrets_kms_key_id
    keys = None if settings.write_previous_forms else TableDataKeys(dynamodb, settings.table_name)
    return KmsSecretBox(kms, settings.secrets_kms_key_id, keys)


def builder_for(services: Services) -> TransactionBuilder:
    settings = services.settings
    hasher = (
        AttributeHasher(settings.registry_hashed_attributes, secret_box_for(services))
        if settings.registry_hashed_attributes
        else None
    )
    if not uses_proto(settings):
        return PlainTransactionBuilder(settings.default_registry, hasher)
    if services.issuer_keys is None:
        services.issuer_keys = issuer_keys_for(settings)
    if services.owner_keys is None:
        services.owner_keys = SandboxOwnerKeys(
            settings.registry_sandbox_secret.get_secret_value().encode()
        )
    return ProtoTransactionBuilder(
        settings.default_registry,
        services.issuer_keys,
        services.owner_keys,
        secret_box_for(services),
        hasher,
        chroniclers=chroniclers_for(services),
    )


def chroniclers_for(services: Services) -> Chroniclers:
    """One gRPC client per chronicler target (CERTS_CHRONICLERS), built once per cold start."""
    if services.chroniclers is None:
        from chalicelib.registry.chronicler_grpc import GrpcChronicler

        settings = services.settings
        clients: dict[tuple, GrpcChronicler] = {}
        by_area = {}
        for area, named in settings.chroniclers.items():
            key = (named.target, named.tls, named.signer_keys)
            if key not in clients:
                clients[key] = GrpcChronicler(
                    named.target,
                    tls=named.tls,
                    timeout_s=settings.chronicler_timeout_s,
                    connect_timeout_s=settings.registry_connect_timeout_s,
                    public_keys=named.public_keys(),
                )
            by_area[area] = clients[key]
        services.chroniclers = Chroniclers(by_area)
    return services.chroniclers


def codec_of(settings: Settings) -> TransactionCodec:
    """What reads a transaction's header (its registry, its stream) in the builders' format."""
    return ProtoCodec() if uses_proto(settings) else PLAIN


def codec_for(services: Services) -> TransactionCodec:
    if not uses_proto(services.settings):
        return PLAIN
    return ProtoCodec(BookSliceDirectory(services.book, secret_box_for(services)))


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
        return OidcVerifier(
            settings.oidc_issuer,
            settings.oidc_audience,
            settings.oidc_jwks_url,
            timeout_s=settings.oidc_jwks_timeout_s,
            leeway_s=settings.token_leeway_s,
            roles_claim=settings.oidc_roles_claim,
            grid_areas_claim=settings.oidc_grid_areas_claim,
        )
    return SharedSecretVerifier(settings.jwt_secret.get_secret_value())


def registry_for(settings: Settings, issuer_keys: IssuerKeys | None = None) -> Registry:
    """The one registry (no CERTS_REGISTRIES)."""
    if settings.registry == "grpc":
        assert settings.registry_grpc_target
        return _grpc_registry(settings, settings.registry_grpc_target, settings.registry_grpc_tls)
    if settings.registry == "http":
        assert settings.registry_url
        return _http_registry(settings, settings.registry_url, settings.registry_queries)
    return _simulator(settings, settings.registry_queries, None, issuer_keys)


def registries_for(
    settings: Settings, issuer_keys: IssuerKeys | None = None
) -> Registry | Registries:
    """The one registry, or a federation's, each measured under its name. Simulated registries
    of one federation know one another (the other side of an allocation is looked up there)."""
    if not settings.registries:
        name = settings.registry_name
        return MeasuredRegistry(_guarded(settings, registry_for(settings, issuer_keys), name), name)
    built: dict[str, Registry] = {}
    for name, target in settings.registries.items():
        if settings.registry == "grpc":
            assert target.target
            built[name] = _grpc_registry(settings, target.target, target.tls)
        elif settings.registry == "http":
            assert target.target
            built[name] = _http_registry(settings, target.target, target.queries)
        else:
            built[name] = _simulator(settings, target.queries, name, issuer_keys)
    if settings.registry == "simulator":
        for name, simulator in built.items():
            simulator.federate(name, built)  # type: ignore[attr-defined]
    return Registries(
        {
            name: MeasuredRegistry(_guarded(settings, registry, name), name)
            for name, registry in built.items()
        },
        settings.default_registry,
        codec_of(settings),
    )


def _guarded(settings: Settings, registry: Registry, name: str) -> Registry:
    """A bound on what this process has in flight to the registry, and a back-off after it
    refused a call (registry/federation.Guarded)."""
    return Guarded(
        registry,
        name,
        max_in_flight=settings.registry_max_in_flight,
        backoff_s=settings.registry_backoff_s,
    )


def _grpc_registry(settings: Settings, target: str, tls: bool) -> Registry:
    from chalicelib.registry.grpc_client import GrpcRegistry

    return GrpcRegistry(
        target,
        tls=tls,
        timeout_s=settings.registry_timeout_s,
        connect_timeout_s=settings.registry_connect_timeout_s,
        max_batch=settings.registry_batch_size,
    )


def _http_registry(settings: Settings, url: str, queries: bool) -> Registry:
    from chalicelib.registry.http_client import HttpRegistry

    return HttpRegistry(url, settings.registry_timeout_s, queries)


def _simulator(
    settings: Settings, queries: bool, name: str | None, issuer_keys: IssuerKeys | None
) -> Registry:
    from chalicelib.registry.sandbox.simulator import RegistrySimulator, SimulatorConfig

    ledger = None
    if uses_proto(settings):
        from chalicelib.registry.sandbox.verifier import ProtoLedger

        ledger = ProtoLedger(
            (issuer_keys or issuer_keys_for(settings)).public_keys,
            registry=name,
            chronicler_keys=chronicler_keys_for(settings),
        )
    return RegistrySimulator(
        SimulatorConfig(seed=settings.registry_seed, queries=queries), ledger=ledger
    )


def chronicler_keys_for(settings: Settings) -> Callable[[str], list[bytes]]:
    """grid area -> the keys of the chronicler it names (CERTS_CHRONICLERS' signer_keys)."""

    def keys(grid_area: str) -> list[bytes]:
        named = settings.chroniclers.get(grid_area)
        return named.public_keys() if named else []

    return keys


def build(settings: Settings | None = None, session: boto3.Session | None = None) -> Services:
    # Outside stage local and the tests, no development default may be in effect (fail closed).
    settings = check_deployable(settings or Settings())
    session = session or boto3.Session()
    config = aws_config(settings)
    dynamodb = session.client("dynamodb", config=config)
    sqs = session.client("sqs", config=config)
    queue_url = settings.queue_url or sqs.get_queue_url(QueueName=settings.queue_name)["QueueUrl"]
    issuer_keys = issuer_keys_for(settings, lambda service: session.client(service, config=config))
    owner_keys = None
    if settings.secrets_kms_key_id:  # owners' keys in custody, sealed under the same KMS key
        owner_keys = KmsOwnerKeys(
            dynamodb,
            settings.table_name,
            session.client("kms", config=config),
            settings.secrets_kms_key_id,
            version=settings.owner_key_version,
            cache_s=settings.owner_key_cache_s,
        )
    registry = registries_for(settings, issuer_keys)
    return Services(
        settings=settings,
        book=DynamoBook(
            dynamodb,
            settings.table_name,
            settings.open_command_shards,
            settings.expiry_shards,
            feed_lag_s=settings.feed_lag_s,
            previous_forms=settings.write_previous_forms,
        ),
        queue=SqsCommandQueue(sqs, queue_url),
        verifier=verifier_for(settings),
        registry=registry,
        secret_box=(
            kms_secret_box(settings, session.client("kms", config=config), dynamodb)
            if settings.secrets_kms_key_id
            else None
        ),
        owner_keys=owner_keys,
        issuer_keys=issuer_keys,
        health_checks={
            "dynamodb": lambda: dynamodb.describe_table(TableName=settings.table_name),
            "sqs": lambda: sqs.get_queue_attributes(
                QueueUrl=queue_url, AttributeNames=["QueueArn"]
            ),
            # The dependency most likely to be down; every registry client has `reachable`.
            "registry": registry.reachable,
        },
    )
