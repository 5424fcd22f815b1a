"""Hashed certificate attributes in the upstream salted form, and their sealed salts.

A HASHED attribute's value in the registry is base64(SHA-256(UTF-8(key + value +
certificate_id + HEX(salt)))), with the certificate id in its canonical lowercase UUID text
and the salt in upper-case hex: the upstream issuing service builds it so, and the upstream
wallet accepts a hashed attribute it is told about only when this recomputes to the value
in the registry (it drops it otherwise). The salt is random, one per attribute per
certificate (upstream: 16 bytes), so that a small value space cannot be reversed by hashing
every candidate. Whoever holds value and salt can show the value is the one the registry
holds: we keep the salt sealed in the book (the slice secrets' box, bound to the certificate
and key), so the certificate's owners can reveal it.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import uuid

from chalicelib.registry.secrets import SecretBox, SecretUnreadable

SALT_BYTES = 16  # upstream's issuer takes Guid.NewGuid().ToByteArray()


def hashed_value(key: str, value: str, certificate_id: str, salt: bytes) -> str:
    """The registry's value of a hashed attribute."""
    # Upstream formats the id as a .NET Guid (lowercase, hyphens) and the salt with
    # Convert.ToHexString (upper case): both are part of the hashed text.
    text = key + value + str(uuid.UUID(certificate_id)) + salt.hex().upper()
    return base64.b64encode(hashlib.sha256(text.encode("utf-8")).digest()).decode()


def new_salt() -> bytes:
    return secrets.token_bytes(SALT_BYTES)


def salt_context(certificate_id: str, key: str) -> str:
    """What an attribute's sealed salt is bound to: it opens for that certificate and key."""
    return f"attribute/{certificate_id}/{key}"


def seal_salt(box: SecretBox, certificate_id: str, key: str, salt: bytes) -> str:
    return box.seal(salt, salt_context(certificate_id, key))


def open_salt(box: SecretBox, certificate_id: str, key: str, sealed: str) -> bytes:
    salt = box.open(sealed, salt_context(certificate_id, key))
    if not salt:
        raise SecretUnreadable("not an attribute salt")
    return salt
