"""Signing keys held in custody on AWS: owners' BIP32 seeds under KMS, issuers' keys in a
secret store. The sandbox derivation of keys.py stays for stage local, tests and the simulator;
a deployed stage that talks to a real registry uses these (settings.development_defaults).

Owners' seeds (`KmsOwnerKeys`): each owner's master seed is 32 random bytes made on the owner's
first use, sealed by envelope encryption (a KMS data key from GenerateDataKey, AES-256-GCM)
with an encryption context naming the owner and the seed version, and stored in the book's
table. KMS binds the context to the wrapped data key, so an item copied onto another owner
does not open, and CloudTrail shows whose seed was opened. The table item alone reveals
nothing: the seed is in it only under a data key that only KMS can unwrap.

Rotation: `version` (settings.owner_key_version) is the seed version new slices get; every
slice's key path starts with the version of the seed it was derived from, m/<version>/a/b, and
that path is sealed with the slice, so raising the version changes new slices only and old
ones stay spendable under their old seed.

Item: SEED#<owner> / V#<version>, with the wrapped data key and nonce|ciphertext of the seed.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from chalicelib import domain
from chalicelib.ports import DependencyDown
from chalicelib.registry.keys import ExtendedPrivateKey, IssuerKeys, OwnerKeys, slice_key_path

SEED_BYTES = 32
_MAX_CACHED = 10_000


class CustodyUnavailable(DependencyDown):
    """KMS, the table or the secret store did not answer: nothing was signed or sent, and the
    command can be tried again later."""


class CustodyBroken(Exception):
    """A stored seed that does not open (another owner's item, or a damaged one): never
    replaced by a new seed, which would strand the owner's slices; an operator must look."""


def _unavailable(what: str, error: Exception) -> CustodyUnavailable:
    if isinstance(error, ClientError):
        code = error.response.get("Error", {}).get("Code", "?")
        return CustodyUnavailable(f"{what}: {code}")
    return CustodyUnavailable(f"{what}: {type(error).__name__}")


class KmsOwnerKeys(OwnerKeys):
    """Owners' master keys from seeds sealed under a KMS key, kept in the book's table.

    `dynamodb` and `kms` are boto3 clients. Opened masters are cached for `cache_s` seconds
    (monotonic), so a busy owner costs one KMS Decrypt per container and period."""

    def __init__(
        self,
        dynamodb: Any,
        table_name: str,
        kms: Any,
        key_id: str,
        version: int = 1,
        cache_s: float = 300.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        if not 1 <= version < 2**31:
            raise ValueError("the owner key version is a non-hardened BIP32 index, from 1")
        self._db = dynamodb
        self._table = table_name
        self._kms = kms
        self._key_id = key_id
        self._version = version
        self._cache_s = cache_s
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._cache: dict[tuple[str, int], tuple[ExtendedPrivateKey, float]] = {}

    def __repr__(self) -> str:  # never the cache: it holds private keys
        return f"KmsOwnerKeys({self._key_id}, version {self._version})"

    def slice_path(self, owner: str, slice_id: str) -> tuple[int, ...]:
        return (self._version, *slice_key_path(slice_id))

    def master(self, owner: str, path: tuple[int, ...] = ()) -> ExtendedPrivateKey:
        if not path:
            version = self._version
        elif len(path) == 3:
            version = path[0]
        else:
            raise domain.RuleViolation(
                f"key path of {len(path)} steps is not a path of an owner's key in custody"
            )
        now = self._monotonic()
        with self._lock:
            cached = self._cache.get((owner, version))
        if cached is not None and cached[1] > now:
            return cached[0]
        master = ExtendedPrivateKey.from_seed(self._seed(owner, version))
        with self._lock:
            if len(self._cache) >= _MAX_CACHED:
                self._cache = {k: v for k, v in self._cache.items() if v[1] > now}
                if len(self._cache) >= _MAX_CACHED:
                    self._cache.clear()
            self._cache[(owner, version)] = (master, now + self._cache_s)
        return master

    # --- the seed: read, or made and put once -------------------------------------------------

    def _seed(self, owner: str, version: int) -> bytes:
        item = self._read(owner, version)
        if item is None:
            item = self._create(owner, version)
        return self._open(owner, version, item)

    def _key(self, owner: str, version: int) -> dict[str, Any]:
        return {"pk": {"S": f"SEED#{owner}"}, "sk": {"S": f"V#{version}"}}

    def _read(self, owner: str, version: int) -> dict[str, Any] | None:
        try:
            answer = self._db.get_item(
                TableName=self._table, Key=self._key(owner, version), ConsistentRead=True
            )
        except (ClientError, BotoCoreError) as exc:
            raise _unavailable("reading an owner's sealed seed", exc) from exc
        return answer.get("Item")

    def _create(self, owner: str, version: int) -> dict[str, Any]:
        seed = os.urandom(SEED_BYTES)
        try:
            answer = self._kms.generate_data_key(
                KeyId=self._key_id, KeySpec="AES_256", EncryptionContext=_context(owner, version)
            )
        except (ClientError, BotoCoreError) as exc:
            raise _unavailable("KMS GenerateDataKey for an owner's seed", exc) from exc
        nonce = os.urandom(12)
        sealed = nonce + AESGCM(answer["Plaintext"]).encrypt(nonce, seed, _aad(owner, version))
        item = {
            **self._key(owner, version),
            "wrapped_key": {"B": answer["CiphertextBlob"]},
            "sealed_seed": {"B": sealed},
            "kms_key": {"S": answer.get("KeyId", self._key_id)},
        }
        try:
            # Two first uses at once: one put wins, and the loser reads and uses the winner's
            # seed, so an owner never has two seeds of one version.
            self._db.put_item(
                TableName=self._table, Item=item, ConditionExpression="attribute_not_exists(pk)"
            )
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "ConditionalCheckFailedException":
                raise _unavailable("storing an owner's sealed seed", exc) from exc
            won = self._read(owner, version)
            if won is None:  # pragma: no cover - the condition failed on an item that exists
                raise CustodyUnavailable("an owner's seed vanished after a lost put") from exc
            return won
        except BotoCoreError as exc:
            raise _unavailable("storing an owner's sealed seed", exc) from exc
        return item

    def _open(self, owner: str, version: int, item: dict[str, Any]) -> bytes:
        try:
            answer = self._kms.decrypt(
                CiphertextBlob=bytes(item["wrapped_key"]["B"]),
                EncryptionContext=_context(owner, version),
                KeyId=self._key_id,
            )
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code")
            if code in {"InvalidCiphertextException", "IncorrectKeyException"}:
                raise CustodyBroken(f"the sealed seed of {owner} v{version} does not open") from exc
            raise _unavailable("KMS Decrypt of an owner's seed", exc) from exc
        except BotoCoreError as exc:
            raise _unavailable("KMS Decrypt of an owner's seed", exc) from exc
        sealed = bytes(item["sealed_seed"]["B"])
        try:
            return AESGCM(answer["Plaintext"]).decrypt(
                sealed[:12], sealed[12:], _aad(owner, version)
            )
        except (InvalidTag, ValueError) as exc:
            raise CustodyBroken(f"the sealed seed of {owner} v{version} does not open") from exc


def _context(owner: str, version: int) -> dict[str, str]:
    return {"purpose": "owner-seed", "owner": owner, "version": str(version)}


def _aad(owner: str, version: int) -> bytes:
    return f"owner-seed/{version}/{owner}".encode()


# --- issuers' keys from a secret store -----------------------------------------------------------


class StoredIssuerKeys(IssuerKeys):
    """The issuers' keys as JSON ({"DK1": "<base64 Ed25519 key>"}) in a Secrets Manager secret
    or an SSM SecureString, read on first use (so a function that never signs never reads it)."""

    def __init__(self, arn: str, client_for: Callable[[str], Any]) -> None:
        super().__init__()
        self._arn = arn
        self._client_for = client_for
        self._loaded = False
        self._load_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"StoredIssuerKeys({self._arn})"

    def key_for(self, grid_area: str) -> Ed25519PrivateKey:
        with self._load_lock:
            if not self._loaded:
                self._keys = IssuerKeys.from_json(self._fetch())._keys
                self._loaded = True
        return super().key_for(grid_area)

    def _fetch(self) -> str:
        try:
            if ":secretsmanager:" in self._arn:
                answer = self._client_for("secretsmanager").get_secret_value(SecretId=self._arn)
                return answer["SecretString"]
            return self._client_for("ssm").get_parameter(
                Name=ssm_parameter_name(self._arn), WithDecryption=True
            )["Parameter"]["Value"]
        except (ClientError, BotoCoreError) as exc:
            raise _unavailable(f"reading the issuers' keys from {self._arn}", exc) from exc


def ssm_parameter_name(arn: str) -> str:
    """arn:...:parameter/certs/issuer-keys -> /certs/issuer-keys; ...:parameter/keys -> keys."""
    name = arn.split(":parameter/", 1)[1]
    return "/" + name if "/" in name else name
