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
  cold start from GenerateDataKey, its KMS-encrypted form stored in every sealed secret, and
  Decrypt once per data key when opening (cached), so KMS is not called once per slice.

Sealed form: "l1.<base64 nonce|ciphertext>" (local) or
"k1.<base64 encrypted data key>.<base64 nonce|ciphertext>" (KMS).
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import threading
from dataclasses import dataclass
from typing import Any, Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

LOCAL_PREFIX = "l1"
KMS_PREFIX = "k1"


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

    def to_bytes(self) -> bytes:
        return json.dumps(
            {
                "m": self.quantity,
                "r": self.blinding.to_bytes(32, "little").hex(),
                "k": self.owner_key.hex(),
                "p": list(self.path),
            },
            separators=(",", ":"),
        ).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> SliceSecret:
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
    def seal(self, plaintext: bytes, context: str) -> str: ...

    def open(self, sealed: str, context: str) -> bytes: ...


def seal_slice(box: SecretBox, certificate_id: str, slice_id: str, secret: SliceSecret) -> str:
    return box.seal(secret.to_bytes(), slice_context(certificate_id, slice_id))


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
    """AES-256-GCM under a key from settings (32 bytes)."""

    def __init__(self, key: bytes) -> None:
        if len(key) != 32:
            raise ValueError("the secrets key must be 32 bytes (base64 in settings)")
        self._key = key

    def __repr__(self) -> str:
        return "LocalSecretBox(<key>)"

    def seal(self, plaintext: bytes, context: str) -> str:
        return f"{LOCAL_PREFIX}.{_encrypt(self._key, plaintext, context)}"

    def open(self, sealed: str, context: str) -> bytes:
        prefix, _, blob = sealed.partition(".")
        if prefix != LOCAL_PREFIX:
            raise SecretUnreadable("not a locally sealed secret")
        return _decrypt(self._key, blob, context)


class KmsSecretBox:
    """Envelope encryption under a KMS key. `kms` is a boto3 KMS client."""

    def __init__(self, kms: Any, key_id: str) -> None:
        self._kms = kms
        self._key_id = key_id
        self._lock = threading.Lock()
        self._current: tuple[bytes, str] | None = None  # (data key, its encrypted form, b64)
        self._opened: dict[str, bytes] = {}

    def __repr__(self) -> str:
        return f"KmsSecretBox({self._key_id})"

    def seal(self, plaintext: bytes, context: str) -> str:
        key, wrapped = self._data_key()
        return f"{KMS_PREFIX}.{wrapped}.{_encrypt(key, plaintext, context)}"

    def open(self, sealed: str, context: str) -> bytes:
        parts = sealed.split(".")
        if len(parts) != 3 or parts[0] != KMS_PREFIX:
            raise SecretUnreadable("not a KMS-sealed secret")
        return _decrypt(self._unwrap(parts[1]), parts[2], context)

    def _data_key(self) -> tuple[bytes, str]:
        with self._lock:
            if self._current is None:
                answer = self._kms.generate_data_key(KeyId=self._key_id, KeySpec="AES_256")
                wrapped = _b64(answer["CiphertextBlob"])
                self._current = (answer["Plaintext"], wrapped)
                self._opened[wrapped] = answer["Plaintext"]
            return self._current

    def _unwrap(self, wrapped: str) -> bytes:
        with self._lock:
            found = self._opened.get(wrapped)
        if found is None:
            answer = self._kms.decrypt(CiphertextBlob=_unb64(wrapped), KeyId=self._key_id)
            found = answer["Plaintext"]
            with self._lock:
                self._opened[wrapped] = found
        return found
