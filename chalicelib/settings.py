"""Every setting of the service, read once from the environment (prefix CERTS_).

Stage values live in `.chalice/config.json` (deployed) or in the embedded stack's environment.
Timeouts must stay ordered: registry call < Lambda timeout < lease; `check_order` says so at
start-up rather than at three in the morning.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEVELOPMENT_JWT_SECRET = "certificates-domain-local-development-secret"
# Local development only: derive sandbox issuer and owner keys, and seal slice secrets.
DEVELOPMENT_SANDBOX_SECRET = "certificates-domain-local-development-sandbox-keys"
DEVELOPMENT_SECRETS_KEY = "Y2VydGlmaWNhdGVzLWRvbWFpbi1sb2NhbC1zZWFscyE="  # 32 bytes, base64


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CERTS_", extra="ignore")

    stage: str = "local"
    region: str = Field(default="eu-west-1")
    table_name: str = "certificates-book"
    queue_url: str | None = None  # the FIFO command queue; looked up by name when unset
    queue_name: str = "certificates-commands.fifo"
    dead_letter_queue_name: str = "certificates-commands-dlq.fifo"

    # identity
    auth: Literal["hs256", "oidc"] = "hs256"
    jwt_secret: SecretStr = SecretStr(DEVELOPMENT_JWT_SECRET)
    oidc_issuer: str | None = None
    oidc_audience: str | None = None
    oidc_jwks_url: str | None = None  # defaults to {issuer}/.well-known/jwks.json

    # the registry
    # simulator: in-process; http: the simulator served by devstack/registry_server.py; grpc: a
    # real Project Origin registry (or devstack/registry_grpc.py) at registry_grpc_target.
    registry: Literal["simulator", "http", "grpc"] = "simulator"
    registry_url: str | None = None
    # plain: the JSON envelope (simulator and http); proto: the registry's wire format with
    # real proofs and signatures, which the simulator then verifies. grpc is always proto.
    registry_transactions: Literal["plain", "proto"] = "plain"
    registry_grpc_target: str | None = None  # host:port
    registry_grpc_tls: bool = True
    registry_connect_timeout_s: float = 2.0
    # {"DK1": "<base64 Ed25519 private key>", ...}: the issuers' keys per grid area. Unset, the
    # keys are derived from registry_sandbox_secret (a simulator or a sandbox registry only).
    registry_issuer_keys: SecretStr | None = None
    # Root of the sandbox keys: issuers' (when registry_issuer_keys is unset) and owners'.
    registry_sandbox_secret: SecretStr = SecretStr(DEVELOPMENT_SANDBOX_SECRET)
    # Slice secrets (quantity, blinding, key path) are sealed with AES-256-GCM: under a KMS key
    # on AWS (secrets_kms_key_id), else under this base64 32-byte key.
    secrets_key: SecretStr = SecretStr(DEVELOPMENT_SECRETS_KEY)
    secrets_kms_key_id: str | None = None
    registry_name: str = "certificates-registry"
    registry_queries: bool = True
    registry_timeout_s: float = 10.0
    registry_batch_size: int = 20
    registry_seed: int = 1

    # the pipeline
    lambda_timeout_s: float = 60.0
    lease_s: float = 120.0  # how long a SENDING command belongs to the worker that took it
    commit_poll_s: float = 5.0  # how long a worker waits for a PENDING transaction to commit
    # An ACCEPTED command older than this lost its message. Past SQS's five-minute
    # deduplication window, or the re-drive of a message that did go out (and was dead-
    # lettered since) would be dropped as its duplicate.
    redrive_after_s: float = 360.0
    certificate_expiry_days: int = 365
    max_body_bytes: int = 256 * 1024
    open_command_shards: int = 8  # spreads the open-commands index over partitions
    # Spreads one period day's certificates in the expiry index over partitions; reconciler
    # shard k sweeps the expiry shards e with e % open_command_shards == k.
    expiry_shards: int = 8
    # Registry with queries: 1 in N committed commands is left for a drift check (1: all).
    drift_check_one_in: int = 1
    # Certificates per expiry listing (one per expiry shard and day swept by a pass).
    expiry_limit: int = 500
    # The schedule starts one reconciler invocation per open-commands shard (in Lambda only).
    reconciler_fan_out: bool = False

    @model_validator(mode="after")
    def check_order(self) -> Settings:
        if not self.registry_timeout_s < self.lambda_timeout_s < self.lease_s:
            raise ValueError("timeouts must be ordered: registry call < Lambda timeout < lease")
        if self.auth == "oidc" and not (self.oidc_issuer and self.oidc_audience):
            raise ValueError("auth=oidc needs CERTS_OIDC_ISSUER and CERTS_OIDC_AUDIENCE")
        if self.registry == "http" and not self.registry_url:
            raise ValueError("registry=http needs CERTS_REGISTRY_URL")
        if self.registry == "grpc" and not self.registry_grpc_target:
            raise ValueError("registry=grpc needs CERTS_REGISTRY_GRPC_TARGET")
        if self.registry == "grpc" and self.stage != "local" and not self.registry_issuer_keys:
            # Outside local, an issuer signs with its grid area's real key, never a derived one.
            raise ValueError("registry=grpc outside stage local needs CERTS_REGISTRY_ISSUER_KEYS")
        return self
