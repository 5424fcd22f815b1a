"""Every setting of the service, read once from the environment (prefix CERTS_).

Stage values live in `.chalice/config.json` (deployed) or in the embedded stack's environment.
Timeouts must stay ordered: registry call < Lambda timeout < lease; `check_order` says so at
start-up rather than at three in the morning.
"""

from __future__ import annotations

import base64
import binascii
import difflib
import json
from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

DEVELOPMENT_JWT_SECRET = "certificates-domain-local-development-secret"
# Local development only: derive sandbox issuer and owner keys, and seal slice secrets.
DEVELOPMENT_SANDBOX_SECRET = "certificates-domain-local-development-sandbox-keys"
DEVELOPMENT_SECRETS_KEY = "Y2VydGlmaWNhdGVzLWRvbWFpbi1sb2NhbC1zZWFscyE="  # 32 bytes, base64
# The stages on which the development defaults above may be in effect; any other stage refuses
# to build while one is (`development_defaults`).
DEVELOPMENT_STAGES = frozenset({"local", "test"})


class ChroniclerTarget(BaseModel):
    """The chronicler a grid area's configuration names (registry/chronicler.py)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    target: str  # host:port
    tls: bool = True
    # Its Ed25519 public keys (base64 of the 32 raw bytes): a signature that verifies under
    # none is not used. Also what the in-process simulator verifies with.
    signer_keys: tuple[str, ...] = ()

    @field_validator("target")
    @classmethod
    def _host_port(cls, value: str) -> str:
        host, _, port = value.rpartition(":")
        if not host or any(c in host for c in " /") or not port.isdigit() or int(port) > 65535:
            raise ValueError("must be host:port")
        return value

    @field_validator("signer_keys")
    @classmethod
    def _ed25519_keys(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

        for key in value:
            try:
                Ed25519PublicKey.from_public_bytes(base64.b64decode(key, validate=True))
            except (binascii.Error, ValueError):
                raise ValueError(f"{key!r} is not the base64 of a raw Ed25519 public key") from None
        return value

    def public_keys(self) -> list[bytes]:
        return [base64.b64decode(key) for key in self.signer_keys]


class RegistryTarget(BaseModel):
    """One registry of a federation (CERTS_REGISTRIES), reached with CERTS_REGISTRY's protocol."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # grpc: host:port; http: the simulator's URL; simulator: none (one in-process each)
    target: str | None = None
    tls: bool = True
    queries: bool = True


def _json_setting(value: Any, shape: str) -> Any:
    """A setting given as JSON text in the environment (or already parsed)."""
    if isinstance(value, str):
        try:
            return json.loads(value) if value.strip() else {}
        except ValueError:
            raise ValueError(f"not JSON: {shape}") from None
    return value


def _named(value: Any, empty: str) -> Any:
    """A mapping by name whose names are all given (`empty`: what to say of one that is not)."""
    if isinstance(value, dict) and any(not str(name).strip() for name in value):
        raise ValueError(empty)
    return value


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
    # Below the API function's timeout: an unreachable JWKS answers 503 well before Lambda stops.
    oidc_jwks_timeout_s: float = 3.0
    oidc_roles_claim: str = "roles"  # e.g. cognito:groups
    oidc_grid_areas_claim: str = "grid_areas"  # where an issuer may issue and withdraw
    token_leeway_s: int = Field(default=45, ge=30, le=60)  # clock skew allowed on exp/nbf/iat

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
    # The same JSON held in a secret store, named by its ARN: a Secrets Manager secret or an
    # SSM SecureString parameter. Read when a transaction is first signed, never logged.
    registry_issuer_keys_secret: str | None = Field(
        default=None, pattern=r"^arn:aws[a-z-]*:(secretsmanager:.+:secret:.+|ssm:.+:parameter/.+)$"
    )
    # Root of the sandbox keys: issuers' (when registry_issuer_keys is unset) and owners'.
    registry_sandbox_secret: SecretStr = SecretStr(DEVELOPMENT_SANDBOX_SECRET)
    # Slice secrets (quantity, blinding, key path) are sealed with AES-256-GCM: under a KMS key
    # on AWS (secrets_kms_key_id), else under this base64 32-byte key.
    secrets_key: SecretStr = SecretStr(DEVELOPMENT_SECRETS_KEY)
    # On AWS also the key of the owners' keys in custody (registry/custody.py): each owner's
    # BIP32 seed is sealed under it; owner_key_version is the seed version new slices get.
    secrets_kms_key_id: str | None = None
    # Write as the code before 2026-11-30's smaller forms did, which reads only those: slice
    # secrets sealed in their first form (JSON; under KMS each with its encrypted data key),
    # certificates with each slice's id in the slice, feed marks whole. Both forms are read.
    # For the first deploy of an upgrade from that code, so that its containers, still running
    # while the new version rolls out, read what the new ones write; unset in the next
    # (docs/DEPLOY.md, "Upgrading").
    write_previous_forms: bool = False
    owner_key_version: int = Field(default=1, ge=1, lt=2**31)
    owner_key_cache_s: float = Field(default=300.0, gt=0)
    registry_name: str = "certificates-registry"
    # Attribute keys the registry holds HASHED, salted as upstream (registry/attributes.py),
    # e.g. '["address"]'; the others stay CLEARTEXT. Only the owners are shown the value.
    registry_hashed_attributes: frozenset[str] = frozenset()
    registry_queries: bool = True
    registry_timeout_s: float = 10.0
    registry_batch_size: int = 20
    # Per registry and process: transactions in flight at most, and the first back-off after
    # the registry refused a call (doubling while refusals go on, up to 30 s).
    registry_max_in_flight: int = Field(default=200, ge=1)
    registry_backoff_s: float = Field(default=1.0, ge=0)
    registry_seed: int = 1
    # {"DK1": {"target": "host:port", "tls": true, "signer_keys": ["<base64>"]}, ...}: the
    # chronicler each grid area names; a claim asks it to sign its side's allocation. Empty:
    # no area names one. Needs the registry's wire format (proto).
    chroniclers: Annotated[dict[str, ChroniclerTarget], NoDecode] = Field(default_factory=dict)
    chronicler_timeout_s: float = Field(default=5.0, gt=0)
    # Federation: the registries by name, and the registry each grid area's issuer uses.
    # Empty: one registry, CERTS_REGISTRY_NAME, reached as CERTS_REGISTRY_* say, for every
    # grid area. A certificate keeps the registry it was issued in (its stream ids name it).
    registries: Annotated[dict[str, RegistryTarget], NoDecode] = Field(default_factory=dict)
    grid_area_registries: Annotated[dict[str, str], NoDecode] = Field(default_factory=dict)
    # Which grid areas a claim may match, e.g. {"DK": ["DK1", "DK2"]}: production and
    # consumption in one group. Empty: the same grid area only (the registry requires none).
    matching_boundary: Annotated[dict[str, frozenset[str]], NoDecode] = Field(default_factory=dict)

    # the pipeline
    lambda_timeout_s: float = 60.0
    lease_s: float = 120.0  # how long a SENDING command belongs to the worker that took it
    # The FIFO groups of one queue batch the worker works side by side, in threads, so that
    # their waits on DynamoDB and the registry overlap (Lambda bills wall time); a group's
    # records still go one after another. 1: the whole batch one record after another.
    worker_concurrency: int = Field(default=10, ge=1, le=10)
    # A PENDING step's message comes back after this, doubling each time (no Lambda sleeps).
    commit_check_s: float = Field(default=2.0, gt=0, le=300)
    # An ACCEPTED command older than this lost its message. Past SQS's five-minute
    # deduplication window, or the re-drive of a message that did go out (and was dead-
    # lettered since) would be dropped as its duplicate.
    redrive_after_s: float = 360.0
    certificate_expiry_days: int = 365
    # Reconciler passes that fail to settle a command before it is marked for an operator.
    reconciler_unsettled_passes: int = Field(default=3, ge=1)
    # A step the registry holds PENDING longer than this is IN_DOUBT, for an operator.
    pending_in_doubt_after_s: float = Field(default=900.0, gt=0)
    # A claim is refused when it could land less than this before either certificate expires.
    claim_expiry_margin_hours: float = 24.0
    max_body_bytes: int = 256 * 1024
    open_command_shards: int = 8  # spreads the open-commands index over partitions
    # The change feeds hold back their newest seconds until no write stamped within them can
    # still land (adapters/dynamo.py, certificate_changes): a write's time in flight, clock
    # skew, and the delay of DynamoDB's indexes, with room to spare.
    feed_lag_s: float = Field(default=5.0, ge=0)
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
            raise ValueError(
                "timeouts must be ordered: CERTS_REGISTRY_TIMEOUT_S < CERTS_LAMBDA_TIMEOUT_S"
                f" < CERTS_LEASE_S (now {self.registry_timeout_s:g} < {self.lambda_timeout_s:g}"
                f" < {self.lease_s:g})"
            )
        if not self.oidc_jwks_timeout_s < self.lambda_timeout_s:
            raise ValueError("the JWKS fetch must time out before the function does")
        if self.auth == "oidc" and not (self.oidc_issuer and self.oidc_audience):
            raise ValueError("auth=oidc needs CERTS_OIDC_ISSUER and CERTS_OIDC_AUDIENCE")
        if self.registry == "http" and not self.registry_url:
            raise ValueError("registry=http needs CERTS_REGISTRY_URL")
        if self.registry == "grpc" and not self.registry_grpc_target:
            raise ValueError("registry=grpc needs CERTS_REGISTRY_GRPC_TARGET")
        if self.registry_issuer_keys and self.registry_issuer_keys_secret:
            raise ValueError(
                "set CERTS_REGISTRY_ISSUER_KEYS or CERTS_REGISTRY_ISSUER_KEYS_SECRET, not both"
            )
        return self

    @field_validator("chroniclers", mode="before")
    @classmethod
    def _chroniclers_json(cls, value: Any) -> Any:
        value = _json_setting(value, "{grid area: {target, tls, signer_keys}}")
        return _named(value, "a grid area name is empty")

    @field_validator("registries", mode="before")
    @classmethod
    def _registries_json(cls, value: Any) -> Any:
        value = _json_setting(value, "{name: {target, tls, queries}}")
        return _named(value, "a registry name is empty")

    @field_validator("grid_area_registries", mode="before")
    @classmethod
    def _grid_areas_json(cls, value: Any) -> Any:
        return _json_setting(value, "{grid area: registry name}")

    @field_validator("matching_boundary", mode="before")
    @classmethod
    def _boundary_json(cls, value: Any) -> Any:
        return _json_setting(value, "{boundary: [grid area, ...]}")

    @model_validator(mode="after")
    def check_federation(self) -> Settings:
        names = set(self.registries) or {self.registry_name}
        unknown = sorted(
            f"{area} -> {name}"
            for area, name in self.grid_area_registries.items()
            if name not in names
        )
        if unknown:
            raise ValueError(
                f"CERTS_GRID_AREA_REGISTRIES names a registry that is not configured: "
                f"{', '.join(unknown)} (registries: {', '.join(sorted(names))})"
            )
        if len(names) > 1 and not self.grid_area_registries:
            raise ValueError(
                "CERTS_REGISTRIES names several registries: set CERTS_GRID_AREA_REGISTRIES, "
                "the registry each grid area's issuer uses"
            )
        if self.grid_area_registries:
            for setting, areas in (
                ("CERTS_MATCHING_BOUNDARY", set().union(*self.matching_boundary.values())),
                ("CERTS_CHRONICLERS", set(self.chroniclers)),
            ):
                strangers = sorted(areas - set(self.grid_area_registries))
                if strangers:
                    raise ValueError(
                        f"{setting} names grid areas no registry issues in: "
                        f"{', '.join(strangers)} (CERTS_GRID_AREA_REGISTRIES)"
                    )
        for name, registry in self.registries.items():
            if self.registry == "grpc" and not registry.target:
                raise ValueError(f"registry {name!r} needs a target host:port (registry=grpc)")
            if self.registry == "http" and not registry.target:
                raise ValueError(f"registry {name!r} needs a target URL (registry=http)")
        return self

    @property
    def default_registry(self) -> str:
        """The registry of a certificate that names none (recorded before federation), and of
        every grid area without CERTS_GRID_AREA_REGISTRIES: CERTS_REGISTRY_NAME, or the first
        of CERTS_REGISTRIES when that does not name it."""
        if not self.registries or self.registry_name in self.registries:
            return self.registry_name
        return next(iter(self.registries))

    def registry_of_grid_area(self, grid_area: str) -> str | None:
        """The registry a grid area's certificates are issued in; None when none is."""
        if not self.grid_area_registries:
            return self.default_registry
        return self.grid_area_registries.get(grid_area)

    @model_validator(mode="after")
    def check_chroniclers(self) -> Settings:
        if self.chroniclers and not self.signs_transactions:
            raise ValueError(
                "CERTS_CHRONICLERS needs the registry's wire format: CERTS_REGISTRY=grpc or "
                "CERTS_REGISTRY_TRANSACTIONS=proto"
            )
        if not self.chronicler_timeout_s < self.lambda_timeout_s:
            raise ValueError("CERTS_CHRONICLER_TIMEOUT_S must be below CERTS_LAMBDA_TIMEOUT_S")
        return self

    @property
    def signs_transactions(self) -> bool:
        """Whether the service signs registry transactions (the proto wire format)."""
        return self.registry == "grpc" or self.registry_transactions == "proto"


class DevelopmentDefaultsInEffect(ValueError):
    """A stage outside DEVELOPMENT_STAGES still runs on a development default."""

    def __init__(self, stage: str, findings: list[str]) -> None:
        self.findings = findings
        super().__init__(
            f"stage {stage!r} refuses to start: development defaults are in effect "
            "(docs/DEPLOY.md says what to create):\n  " + "\n  ".join(findings)
        )


def development_defaults(settings: Settings) -> list[str]:
    """Every development default in effect, as "VARIABLE: why; what to set instead".

    The defaults are in the repository, so whatever they protect anyone can forge: tokens
    (HS256 secret), owners' and issuers' signing keys (sandbox secret), slice secrets (local
    key). None of them may reach a stage outside DEVELOPMENT_STAGES, whatever else is set."""
    if settings.stage in DEVELOPMENT_STAGES:
        return []
    found = []
    if settings.auth == "hs256" and (
        settings.jwt_secret.get_secret_value() == DEVELOPMENT_JWT_SECRET
    ):
        found.append(
            "CERTS_JWT_SECRET: the development default, anyone can mint tokens with it; set "
            "CERTS_AUTH=oidc with CERTS_OIDC_ISSUER and CERTS_OIDC_AUDIENCE"
        )
    if not settings.signs_transactions:
        return found
    custody = bool(settings.secrets_kms_key_id)
    issuer_keys = bool(settings.registry_issuer_keys or settings.registry_issuer_keys_secret)
    if not custody and settings.secrets_key.get_secret_value() == DEVELOPMENT_SECRETS_KEY:
        found.append(
            "CERTS_SECRETS_KEY: the development default, slice secrets would be sealed under a "
            "key in the repository; set CERTS_SECRETS_KMS_KEY_ID to the ARN of a KMS key"
        )
    if settings.registry == "simulator":
        return found  # the in-process simulator: sandbox keys sign for a sandbox only
    sandbox = settings.registry_sandbox_secret.get_secret_value() == DEVELOPMENT_SANDBOX_SECRET
    if not custody:
        found.append(
            (
                "CERTS_REGISTRY_SANDBOX_SECRET: the development default, owners' keys would be "
                "derived from it"
                if sandbox
                else "CERTS_SECRETS_KMS_KEY_ID: unset, owners' keys would be derived from "
                "CERTS_REGISTRY_SANDBOX_SECRET"
            )
            + "; set CERTS_SECRETS_KMS_KEY_ID to the ARN of a KMS key (owners' keys in custody)"
        )
    if settings.registry_issuer_keys:
        found.append(
            "CERTS_REGISTRY_ISSUER_KEYS: raw private keys in the environment (and in "
            ".chalice/config.json); put them in a secret store and set "
            "CERTS_REGISTRY_ISSUER_KEYS_SECRET to its ARN instead"
        )
    elif not issuer_keys:
        found.append(
            "CERTS_REGISTRY_ISSUER_KEYS: unset, issuers' keys would be derived from "
            + ("the development default " if sandbox else "")
            + "CERTS_REGISTRY_SANDBOX_SECRET; set CERTS_REGISTRY_ISSUER_KEYS_SECRET to the ARN "
            "of a Secrets Manager secret or SSM SecureString holding them"
        )
    return found


def check_deployable(settings: Settings) -> Settings:
    """Raise DevelopmentDefaultsInEffect naming every development default in effect."""
    if found := development_defaults(settings):
        raise DevelopmentDefaultsInEffect(settings.stage, found)
    return settings


ENV_PREFIX = "CERTS_"
# Read by the `certs` client, not by the service.
CLIENT_VARIABLES = frozenset({"CERTS_URL", "CERTS_TOKEN"})


def unknown_variables(environ: Mapping[str, str]) -> list[str]:
    """CERTS_ variables no setting reads (a misspelt name is otherwise silently ignored), each
    with the nearest real name when there is one."""
    known = {ENV_PREFIX + name.upper() for name in Settings.model_fields}
    found = []
    for name in sorted(environ):
        upper = name.upper()
        if upper.startswith(ENV_PREFIX) and upper not in known | CLIENT_VARIABLES:
            close = difflib.get_close_matches(upper, sorted(known), n=1, cutoff=0.75)
            found.append(f"{name} (did you mean {close[0]}?)" if close else name)
    return found


def describe(error: ValidationError) -> str:
    """A settings error as one line that names the variable, instead of pydantic's report."""
    parts = []
    for item in error.errors():
        message = item["msg"].removeprefix("Value error, ")
        if item["loc"]:
            field = str(item["loc"][0])
            name = ENV_PREFIX + field.upper()
            if len(item["loc"]) > 1:  # inside a JSON setting: say where
                name += " at " + ".".join(str(part) for part in item["loc"][1:])
            secret = Settings.model_fields[field].annotation in (SecretStr, SecretStr | None)
            shown = "" if secret else f"={item.get('input')!r}"  # never echo a secret
            parts.append(f"{name}{shown}: {message}")
        else:
            parts.append(message)
    return "; ".join(parts)
