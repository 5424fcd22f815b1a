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

Public halves: giving an owner a new slice (an issuance, the receiving side of a transfer, the
parts of a slice) needs only the master's extended public key, from which non-hardened paths
derive the slice's public key. Opening the seed for it would cost a KMS Decrypt per command
(a container rarely sees an owner twice while its cache holds) and would put a private key
in memory that nothing signs with. So each seed item also holds its master's public key and
chain code, sealed (AES-256-GCM, the owner and version as associated data) under one data key
of the deployment, `CUSTODY#owner-public-keys / V#1`, wrapped by the same KMS key with its own
encryption context: a container opens that once (one Decrypt) and then every owner's public
half without KMS. Sealed rather than stored in clear, because a public half swapped in the
table would hand new slices to another key, and a chain code together with one leaked slice
key gives the master's private key. A seed stored before this gets its sealed public half the
first time it is opened.

Items: SEED#<owner> / V#<version>, with the wrapped data key, nonce|ciphertext of the seed and
nonce|ciphertext of the public half; CUSTODY#owner-public-keys / V#1, the wrapped data key that
seals the public halves.
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
from chalicelib.registry.keys import (
    ExtendedPrivateKey,
    ExtendedPublicKey,
    IssuerKeys,
    OwnerKeys,
    slice_key_path,
)

SEED_BYTES = 32
_MAX_CACHED = 10_000


class CustodyUnavailable(DependencyDown):
    """KMS, the table or the secret store did not answer: nothing was signed or sent, and the
    command can be tried again later."""


class CustodyBroken(Exception):
    """A stored seed that does not open (another owner's item, or a damaged one): never
    replaced by a new seed, which would strand the owner's slices; an operator must look."""


def unavailable(what: str, error: Exception) -> CustodyUnavailable:
    """KMS or the table did not answer (also the slice secrets' data keys, secrets.py)."""
    if isinstance(error, ClientError):
        code = error.response.get("Error", {}).get("Code", "?")
        return CustodyUnavailable(f"{what}: {code}")
    return CustodyUnavailable(f"{what}: {type(error).__name__}")


class KmsOwnerKeys(OwnerKeys):
    """Owners' master keys from seeds sealed under a KMS key, kept in the book's table.

    `dynamodb` and `kms` are boto3 clients. Opened masters are cached for `cache_s` seconds
    (monotonic), so a busy owner costs one KMS Decrypt per container and period. Giving an
    owner a new slice (an issuance, a transfer's receiver) needs only the master's public half,
    which is stored beside the seed sealed under the custody's own data key (see the module
    docstring): it costs no KMS call once a container has opened that key."""

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
        self._publics: dict[tuple[str, int], tuple[ExtendedPublicKey, float]] = {}
        self._public_box: AESGCM | None = None

    def __repr__(self) -> str:  # never the cache: it holds private keys
        return f"KmsOwnerKeys({self._key_id}, version {self._version})"

    def slice_path(self, owner: str, slice_id: str) -> tuple[int, ...]:
        return (self._version, *slice_key_path(slice_id))

    def master(self, owner: str, path: tuple[int, ...] = ()) -> ExtendedPrivateKey:
        version = self._version_of(path)
        cached = self._cached(self._cache, (owner, version))
        if cached is not None:
            return cached
        return self._opened(owner, version, self._item(owner, version))

    def public_master(self, owner: str, path: tuple[int, ...] = ()) -> ExtendedPublicKey:
        version = self._version_of(path)
        opened = self._cached(self._cache, (owner, version))
        if opened is not None:
            return opened.public
        cached = self._cached(self._publics, (owner, version))
        if cached is not None:
            return cached
        item = self._item(owner, version)
        if "sealed_xpub" not in item:  # a seed stored before its public half was: open it once
            return self._opened(owner, version, item).public
        public = self._open_public(owner, version, bytes(item["sealed_xpub"]["B"]))
        self._remember(self._publics, (owner, version), public)
        return public

    def _version_of(self, path: tuple[int, ...]) -> int:
        if not path:
            return self._version
        if len(path) == 3:
            return path[0]
        raise domain.RuleViolation(
            f"key path of {len(path)} steps is not a path of an owner's key in custody"
        )

    def _cached(self, cache: dict[tuple[str, int], tuple[Any, float]], key: tuple[str, int]):
        with self._lock:
            found = cache.get(key)
        return found[0] if found is not None and found[1] > self._monotonic() else None

    def _remember(
        self, cache: dict[tuple[str, int], tuple[Any, float]], key: tuple[str, int], value: Any
    ) -> None:
        now = self._monotonic()
        with self._lock:
            if len(cache) >= _MAX_CACHED:
                live = {k: v for k, v in cache.items() if v[1] > now}
                cache.clear()
                if len(live) < _MAX_CACHED:
                    cache.update(live)
            cache[key] = (value, now + self._cache_s)

    def _opened(self, owner: str, version: int, item: dict[str, Any]) -> ExtendedPrivateKey:
        master = ExtendedPrivateKey.from_seed(self._open(owner, version, item))
        if "sealed_xpub" not in item:
            self._store_public(owner, version, master.public)
        self._remember(self._cache, (owner, version), master)
        return master

    # --- the seed: read, or made and put once -------------------------------------------------

    def _item(self, owner: str, version: int) -> dict[str, Any]:
        return self._read(owner, version) or self._create(owner, version)

    def _key(self, owner: str, version: int) -> dict[str, Any]:
        return {"pk": {"S": f"SEED#{owner}"}, "sk": {"S": f"V#{version}"}}

    def _read(self, owner: str, version: int) -> dict[str, Any] | None:
        return self._get(self._key(owner, version), "reading an owner's sealed seed")

    def _get(self, key: dict[str, Any], what: str) -> dict[str, Any] | None:
        try:
            answer = self._db.get_item(TableName=self._table, Key=key, ConsistentRead=True)
        except (ClientError, BotoCoreError) as exc:
            raise unavailable(what, exc) from exc
        return answer.get("Item")

    def _create(self, owner: str, version: int) -> dict[str, Any]:
        seed = os.urandom(SEED_BYTES)
        public = ExtendedPrivateKey.from_seed(seed).public
        data_key = self._data_key(_context(owner, version), "an owner's seed")
        nonce = os.urandom(12)
        sealed = nonce + AESGCM(data_key["Plaintext"]).encrypt(nonce, seed, _aad(owner, version))
        item = {
            **self._key(owner, version),
            "wrapped_key": {"B": data_key["CiphertextBlob"]},
            "sealed_seed": {"B": sealed},
            "kms_key": {"S": data_key.get("KeyId", self._key_id)},
            "sealed_xpub": {"B": self._seal_public(owner, version, public)},
        }
        # Two first uses at once: one put wins, and the loser reads and uses the winner's
        # seed, so an owner never has two seeds of one version.
        if self._put_once(item, "storing an owner's sealed seed"):
            return item
        won = self._read(owner, version)
        if won is None:  # pragma: no cover - the condition failed on an item that exists
            raise CustodyUnavailable("an owner's seed vanished after a lost put")
        return won

    def _put_once(self, item: dict[str, Any], what: str) -> bool:
        """Put an item that must never be replaced; False when one was there already."""
        return self._write_once(
            self._db.put_item, what, Item=item, ConditionExpression="attribute_not_exists(pk)"
        )

    def _write_once(self, write: Callable[..., Any], what: str, **request: Any) -> bool:
        """A conditional write of the table; False when its condition failed (another
        container wrote first), CustodyUnavailable when the table did not answer."""
        try:
            write(TableName=self._table, **request)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "ConditionalCheckFailedException":
                raise unavailable(what, exc) from exc
            return False
        except BotoCoreError as exc:
            raise unavailable(what, exc) from exc
        return True

    def _data_key(self, context: dict[str, str], what: str) -> dict[str, Any]:
        try:
            return self._kms.generate_data_key(
                KeyId=self._key_id, KeySpec="AES_256", EncryptionContext=context
            )
        except (ClientError, BotoCoreError) as exc:
            raise unavailable(f"KMS GenerateDataKey for {what}", exc) from exc

    def _unwrap(self, item: dict[str, Any], context: dict[str, str], what: str) -> bytes:
        try:
            answer = self._kms.decrypt(
                CiphertextBlob=bytes(item["wrapped_key"]["B"]),
                EncryptionContext=context,
                KeyId=self._key_id,
            )
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code")
            if code in {"InvalidCiphertextException", "IncorrectKeyException"}:
                raise CustodyBroken(f"{what} does not open") from exc
            raise unavailable(f"KMS Decrypt of {what}", exc) from exc
        except BotoCoreError as exc:
            raise unavailable(f"KMS Decrypt of {what}", exc) from exc
        return answer["Plaintext"]

    def _open(self, owner: str, version: int, item: dict[str, Any]) -> bytes:
        what = f"the sealed seed of {owner} v{version}"
        data_key = self._unwrap(item, _context(owner, version), what)
        sealed = bytes(item["sealed_seed"]["B"])
        try:
            return AESGCM(data_key).decrypt(sealed[:12], sealed[12:], _aad(owner, version))
        except (InvalidTag, ValueError) as exc:
            raise CustodyBroken(f"{what} does not open") from exc

    # --- the seed's public half, sealed under the custody's own data key ----------------------

    def _box(self) -> AESGCM:
        """The key that seals owners' public halves: one data key of the deployment, read and
        opened once per container (made and put once, by the first container that needs it)."""
        if self._public_box is not None:
            return self._public_box
        item = self._get(_PUBLIC_KEY_KEY, "reading the key of owners' public keys")
        if item is None:
            data_key = self._data_key(_PUBLIC_KEY_CONTEXT, "the key of owners' public keys")
            made = {
                **_PUBLIC_KEY_KEY,
                "wrapped_key": {"B": data_key["CiphertextBlob"]},
                "kms_key": {"S": data_key.get("KeyId", self._key_id)},
            }
            if self._put_once(made, "storing the key of owners' public keys"):
                self._public_box = AESGCM(data_key["Plaintext"])
                return self._public_box
            item = self._get(_PUBLIC_KEY_KEY, "reading the key of owners' public keys")
            if item is None:  # pragma: no cover - the condition failed on an item that exists
                raise CustodyUnavailable("the key of owners' public keys vanished after a lost put")
        plaintext = self._unwrap(item, _PUBLIC_KEY_CONTEXT, "the key of owners' public keys")
        self._public_box = AESGCM(plaintext)
        return self._public_box

    def _seal_public(self, owner: str, version: int, public: ExtendedPublicKey) -> bytes:
        nonce = os.urandom(12)
        plain = public.key + public.chain_code
        return nonce + self._box().encrypt(nonce, plain, _public_aad(owner, version))

    def _open_public(self, owner: str, version: int, sealed: bytes) -> ExtendedPublicKey:
        # Sealed, not merely stored: a public half swapped in the table would give new slices
        # to someone else's key, and the chain code with one leaked slice key gives the master.
        try:
            plain = self._box().decrypt(sealed[:12], sealed[12:], _public_aad(owner, version))
        except (InvalidTag, ValueError) as exc:
            raise CustodyBroken(f"the public key of {owner} v{version} does not open") from exc
        if len(plain) != 65:
            raise CustodyBroken(f"the public key of {owner} v{version} is {len(plain)} bytes")
        return ExtendedPublicKey(plain[:33], plain[33:])

    def _store_public(self, owner: str, version: int, public: ExtendedPublicKey) -> None:
        """Add the sealed public half to a seed stored without it (once; a race is harmless:
        both seal the same key)."""
        self._write_once(
            self._db.update_item,
            "storing an owner's sealed public key",
            Key=self._key(owner, version),
            UpdateExpression="SET sealed_xpub = :x",
            ConditionExpression="attribute_exists(pk) AND attribute_not_exists(sealed_xpub)",
            ExpressionAttributeValues={":x": {"B": self._seal_public(owner, version, public)}},
        )


_PUBLIC_KEY_KEY = {"pk": {"S": "CUSTODY#owner-public-keys"}, "sk": {"S": "V#1"}}
_PUBLIC_KEY_CONTEXT = {"purpose": "owner-public-keys"}


def _public_aad(owner: str, version: int) -> bytes:
    return f"owner-xpub/{version}/{owner}".encode()


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
            raise unavailable(f"reading the issuers' keys from {self._arn}", exc) from exc


def ssm_parameter_name(arn: str) -> str:
    """arn:...:parameter/certs/issuer-keys -> /certs/issuer-keys; ...:parameter/keys -> keys."""
    name = arn.split(":parameter/", 1)[1]
    return "/" + name if "/" in name else name
