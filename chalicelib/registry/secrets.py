"""The per-slice secrets, sealed so that a read of the book does not reveal them.

With real crypto a slice's quantity is hidden in the registry as a Pedersen commitment; to
spend the slice its owner must prove things about it, which needs the quantity m and the
blinding factor r (REGISTRY.md: losing r makes the slice unspendable), and must sign with the
slice's key, found by its BIP32 path. Those live in the book with the slice, sealed:

- `SliceSecret` is what one slice needs: (m, r), the owner's public key for the slice and its
  derivation path. Its repr shows neither m nor r, so it cannot end up in a log line by accident.
- A `SecretBox` seals it to a string, bound to the slice it belongs to (AES-256-GCM with the
  certificate and slice ids as associated data, so a sealed secret copied onto another slice
  does not open). `LocalSecretBox` takes its key from settings (embedded stack, tests, a
  sandbox); `KmsSecretBox` does envelope encryption under a KMS key on AWS: one data key per
  cold start from GenerateDataKey, and Decrypt once per data key when opening (cached), so KMS
  is not called once per slice.

Sealed secrets are small on purpose: one rides in its certificate's item, whose every write is
charged per started KB. So the secret is packed (not JSON), and a KMS data key's encrypted form
(about 180 bytes from KMS) is stored once in an item of its own, `DataKeys`, which each sealed
secret names by a short reference: about 170 characters a slice instead of 470-560.

Sealed form: "l1.<base64 nonce|ciphertext>" (local), "k2.<data key reference>.<base64
nonce|ciphertext>" (KMS, the encrypted data key in `DataKeys`); still opened: the first KMS
form "k1.<base64 encrypted data key>.<base64 nonce|ciphertext>" and JSON plaintexts.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from botocore.exceptions import BotoCoreError, ClientError
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from chalicelib.registry.custody import unavailable

LOCAL_PREFIX = "l1"
KMS_PREFIX = "k1"  # the encrypted data key in the sealed secret (opened, no longer written)
KMS_REF_PREFIX = "k2"  # the data key named by a reference into `DataKeys`

_PACKED = 1  # the first byte of a packed SliceSecret (a JSON one starts with "{")
_HEAD = struct.Struct(">BQ32sB")  # form, quantity, blinding, length of the owner's key


class SecretUnreadable(Exception):
    """A sealed secret that does not open: another key, another slice, or damaged."""


@dataclass(frozen=True)
class SliceSecret:
    quantity: int
    blinding: int
    owner_key: bytes  # compressed secp256k1 public key that owns the slice in the registry
    path: tuple[int, ...]  # BIP32 non-hardened path of that key under its owner's master

    def __repr__(self) -> str:
        return f"SliceSecret(<hidden>, owner_key={self.owner_key.hex()[:12]}..)"

    def to_bytes(self, packed: bool = True) -> bytes:
        """Packed: 1 | quantity (8) | blinding (32, little-endian) | key length | key |
        path length | path (4 each): about 85 bytes, where JSON took about 170. Not packed:
        the first form, JSON, which code before the packed form reads (an upgrade's first
        deploy seals so: `Settings.write_previous_forms`)."""
        if not packed:
            return json.dumps(
                {
                    "m": self.quantity,
                    "r": self.blinding.to_bytes(32, "little").hex(),
                    "k": self.owner_key.hex(),
                    "p": list(self.path),
                },
                separators=(",", ":"),
            ).encode()
        return (
            _HEAD.pack(
                _PACKED,
                self.quantity,
                self.blinding.to_bytes(32, "little"),
                len(self.owner_key),
            )
            + self.owner_key
            + struct.pack(f">B{len(self.path)}I", len(self.path), *self.path)
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> SliceSecret:
        if data[:1] == b"{":
            return cls._from_json(data)
        try:
            form, quantity, blinding, key_length = _HEAD.unpack_from(data)
            owner_key = data[_HEAD.size : _HEAD.size + key_length]
            rest = data[_HEAD.size + key_length :]
            path = struct.unpack(f">{rest[0]}I", rest[1:])
        except (struct.error, IndexError) as exc:
            raise SecretUnreadable("not a slice secret") from exc
        if form != _PACKED or len(owner_key) != key_length:
            raise SecretUnreadable("not a slice secret")
        return cls(quantity, int.from_bytes(blinding, "little"), owner_key, path)

    @classmethod
    def _from_json(cls, data: bytes) -> SliceSecret:
        """The first form, still in the book for slices sealed before the packed one."""
        try:
            raw = json.loads(data)
            return cls(
                quantity=int(raw["m"]),
                blinding=int.from_bytes(bytes.fromhex(raw["r"]), "little"),
                owner_key=bytes.fromhex(raw["k"]),
                path=tuple(int(i) for i in raw["p"]),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise SecretUnreadable("not a slice secret") from exc


def slice_context(certificate_id: str, slice_id: str) -> str:
    """What a slice's sealed secret is bound to."""
    return f"slice/{certificate_id}/{slice_id}"


class SecretBox(Protocol):
    # Whether slice secrets are sealed packed (else in the first form: JSON).
    packs: bool

    def seal(self, plaintext: bytes, context: str) -> str: ...

    def open(self, sealed: str, context: str) -> bytes: ...


def seal_slice(box: SecretBox, certificate_id: str, slice_id: str, secret: SliceSecret) -> str:
    return box.seal(secret.to_bytes(box.packs), slice_context(certificate_id, slice_id))


def open_slice(box: SecretBox, certificate_id: str, slice_id: str, sealed: str) -> SliceSecret:
    return SliceSecret.from_bytes(box.open(sealed, slice_context(certificate_id, slice_id)))


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _unb64(text: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise SecretUnreadable("not a sealed secret") from exc


def _encrypt(key: bytes, plaintext: bytes, context: str) -> str:
    nonce = os.urandom(12)  # random 96-bit nonces: safe far beyond 2^32 seals per key
    return _b64(nonce + AESGCM(key).encrypt(nonce, plaintext, context.encode()))


def _decrypt(key: bytes, blob: str, context: str) -> bytes:
    data = _unb64(blob)
    try:
        return AESGCM(key).decrypt(data[:12], data[12:], context.encode())
    except (InvalidTag, ValueError) as exc:
        raise SecretUnreadable("the secret does not open with this key for this slice") from exc


class LocalSecretBox:
    """AES-256-GCM under a key from settings (32 bytes). `packs`: see SecretBox."""

    def __init__(self, key: bytes, packs: bool = True) -> None:
        if len(key) != 32:
            raise ValueError("the secrets key must be 32 bytes (base64 in settings)")
        self._key = key
        self.packs = packs

    def __repr__(self) -> str:
        return "LocalSecretBox(<key>)"

    def seal(self, plaintext: bytes, context: str) -> str:
        return f"{LOCAL_PREFIX}.{_encrypt(self._key, plaintext, context)}"

    def open(self, sealed: str, context: str) -> bytes:
        prefix, _, blob = sealed.partition(".")
        if prefix != LOCAL_PREFIX:
            raise SecretUnreadable("not a locally sealed secret")
        return _decrypt(self._key, blob, context)


class DataKeys(Protocol):
    """Where the encrypted forms of the KMS data keys are kept, each under its reference."""

    def put_once(self, ref: str, wrapped: bytes) -> bool:
        """Store a new data key's encrypted form; False if the reference is taken."""
        ...

    def get(self, ref: str) -> bytes | None: ...


class MemoryDataKeys:
    def __init__(self) -> None:
        self._keys: dict[str, bytes] = {}

    def put_once(self, ref: str, wrapped: bytes) -> bool:
        return self._keys.setdefault(ref, wrapped) is wrapped

    def get(self, ref: str) -> bytes | None:
        return self._keys.get(ref)


class TableDataKeys:
    """The data keys in the book's table: DATAKEY#<ref> / KEY, one put per cold start that
    seals, one consistent read per container that opens a secret of another's key."""

    def __init__(self, dynamodb: Any, table: str) -> None:
        self._db = dynamodb
        self._table = table

    def put_once(self, ref: str, wrapped: bytes) -> bool:
        try:
            self._db.put_item(
                TableName=self._table,
                Item={**self._key(ref), "wrapped_key": {"B": wrapped}},
                ConditionExpression="attribute_not_exists(pk)",
            )
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "ConditionalCheckFailedException":
                return False
            raise unavailable("storing a data key", exc) from exc
        except BotoCoreError as exc:
            raise unavailable("storing a data key", exc) from exc
        return True

    def get(self, ref: str) -> bytes | None:
        try:
            item = self._db.get_item(
                TableName=self._table, Key=self._key(ref), ConsistentRead=True
            ).get("Item")
        except (ClientError, BotoCoreError) as exc:
            raise unavailable("reading a data key", exc) from exc
        return None if item is None else bytes(item["wrapped_key"]["B"])

    @staticmethod
    def _key(ref: str) -> dict[str, Any]:
        return {"pk": {"S": f"DATAKEY#{ref}"}, "sk": {"S": "KEY"}}


class KmsSecretBox:
    """Envelope encryption under a KMS key. `kms` is a boto3 KMS client; with `keys`, the
    data keys' encrypted forms are kept there and sealed secrets name them, packed (k2);
    without, each sealed secret carries its own, and slice secrets are JSON (k1: the first
    form, which code before k2 reads)."""

    def __init__(self, kms: Any, key_id: str, keys: DataKeys | None = None) -> None:
        self._kms = kms
        self._key_id = key_id
        self._keys = keys
        self.packs = keys is not None
        self._lock = threading.Lock()
        self._current: tuple[bytes, str] | None = None  # (data key, its reference or k1 form)
        self._opened: dict[str, bytes] = {}  # by reference (k2) or encrypted form (k1)

    def __repr__(self) -> str:
        return f"KmsSecretBox({self._key_id})"

    def seal(self, plaintext: bytes, context: str) -> str:
        key, named = self._data_key()
        prefix = KMS_PREFIX if self._keys is None else KMS_REF_PREFIX
        return f"{prefix}.{named}.{_encrypt(key, plaintext, context)}"

    def open(self, sealed: str, context: str) -> bytes:
        parts = sealed.split(".")
        if len(parts) != 3 or parts[0] not in (KMS_PREFIX, KMS_REF_PREFIX):
            raise SecretUnreadable("not a KMS-sealed secret")
        prefix, named, blob = parts
        if prefix == KMS_PREFIX:
            key = self._opened_key(named, lambda: _unb64(named))
        else:
            key = self._opened_key(named, lambda: self._stored(named))
        return _decrypt(key, blob, context)

    def _data_key(self) -> tuple[bytes, str]:
        with self._lock:
            if self._current is None:
                answer = self._kms.generate_data_key(KeyId=self._key_id, KeySpec="AES_256")
                plaintext, wrapped = answer["Plaintext"], answer["CiphertextBlob"]
                named = _b64(wrapped) if self._keys is None else self._store(wrapped)
                self._current = (plaintext, named)
                self._opened[named] = plaintext
            return self._current

    def _store(self, wrapped: bytes) -> str:
        """Keep a new data key's encrypted form before anything is sealed under it."""
        assert self._keys is not None
        while True:  # 72 random bits: a taken reference is all but impossible, never reused
            ref = base64.urlsafe_b64encode(os.urandom(9)).decode()
            if self._keys.put_once(ref, wrapped):
                return ref

    def _stored(self, ref: str) -> bytes:
        wrapped = None if self._keys is None else self._keys.get(ref)
        if wrapped is None:
            raise SecretUnreadable(f"no data key {ref} in the book")
        return wrapped

    def _opened_key(self, named: str, wrapped_of: Callable[[], bytes]) -> bytes:
        """The data key a sealed secret names, unwrapped by KMS once per container."""
        with self._lock:
            found = self._opened.get(named)
        if found is None:
            answer = self._kms.decrypt(CiphertextBlob=wrapped_of(), KeyId=self._key_id)
            found = answer["Plaintext"]
            with self._lock:
                self._opened[named] = found
        return found
