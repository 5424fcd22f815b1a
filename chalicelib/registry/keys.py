"""The keys that sign registry transactions: issuers' Ed25519 keys and owners' secp256k1 keys.

Who signs what (REGISTRY.md): the issuer of a grid area signs Issued and Withdrawn with Ed25519
over the serialized header; the owner of a slice signs Sliced, Transferred, Allocated and
Claimed with secp256k1 ECDSA over SHA-256 of the serialized header, DER-encoded.

Owner keys follow BIP32 with non-hardened derivation only, because that is what lets someone
who holds just an owner's extended *public* key (a sender) derive the key a new slice will be
owned by, while only the owner can derive the private key that spends it. The derivation is
written here on coincurve (libsecp256k1) rather than taken from a wallet library, because it
is a few lines of HMAC and point addition and the Lambda package stays small; the tests check
it against bip_utils, an independent implementation.

How an owner id maps to keys (our decision, REGISTRY.md leaves it open):

- every owner has one BIP32 master key. In the sandbox its seed is HMAC-SHA512 of a root secret
  from settings and the owner id (`SandboxOwnerKeys`): nothing per owner has to be stored, and
  the root secret is the one thing to protect. Deployed stages hold each owner's random seed in
  custody under KMS instead (`custody.KmsOwnerKeys`); owners' own wallets would be a third
  implementation of the `OwnerKeys` port.
- every slice gets its own key, at the non-hardened path m/a/b under its owner's master, where
  a and b are the first two 31-bit words of SHA-256("slice-key/" + slice id). The path is
  stored (sealed) with the slice, so it never has to be recomputed by this rule; two words make
  two slices of one owner sharing a key (harmless, only less private) practically impossible.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from coincurve import PrivateKey, PublicKey
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

HARDENED = 2**31
SECP256K1_ORDER = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141


class InvalidKey(ValueError):
    """Bytes that are not a key of the expected kind."""


# --- BIP32, non-hardened ---------------------------------------------------------------------


@dataclass(frozen=True)
class ExtendedPublicKey:
    key: bytes  # 33-byte compressed point
    chain_code: bytes

    def child(self, index: int) -> ExtendedPublicKey:
        """CKDpub: K_i = parse256(I_L)*G + K, with I = HMAC-SHA512(c, ser_P(K) || ser32(i))."""
        il, ir = _ckd(self.chain_code, self.key, index)
        return ExtendedPublicKey(PublicKey(self.key).add(il).format(compressed=True), ir)

    def derive(self, path: tuple[int, ...]) -> ExtendedPublicKey:
        key = self
        for index in path:
            key = key.child(index)
        return key


@dataclass(frozen=True)
class ExtendedPrivateKey:
    secret: bytes  # 32 bytes
    chain_code: bytes

    def __repr__(self) -> str:  # never print key material
        return "ExtendedPrivateKey(<secret>)"

    @classmethod
    def from_seed(cls, seed: bytes) -> ExtendedPrivateKey:
        digest = hmac.new(b"Bitcoin seed", seed, hashlib.sha512).digest()
        if not 0 < int.from_bytes(digest[:32], "big") < SECP256K1_ORDER:
            raise InvalidKey("this seed gives no valid master key")  # probability ~2^-127
        return cls(digest[:32], digest[32:])

    @property
    def public(self) -> ExtendedPublicKey:
        return ExtendedPublicKey(self.public_key, self.chain_code)

    @property
    def public_key(self) -> bytes:
        return PrivateKey(self.secret).public_key.format(compressed=True)

    def child(self, index: int) -> ExtendedPrivateKey:
        """CKDpriv for a non-hardened index: k_i = parse256(I_L) + k (mod n), I as in CKDpub,
        so that the child's public key is exactly what CKDpub gives from the parent's."""
        il, ir = _ckd(self.chain_code, self.public_key, index)
        return ExtendedPrivateKey(PrivateKey(self.secret).add(il).secret, ir)

    def derive(self, path: tuple[int, ...]) -> ExtendedPrivateKey:
        key = self
        for index in path:
            key = key.child(index)
        return key


def _ckd(chain_code: bytes, public_key: bytes, index: int) -> tuple[bytes, bytes]:
    if not 0 <= index < HARDENED:
        raise ValueError("only non-hardened derivation (index < 2^31) is used for owner keys")
    digest = hmac.new(chain_code, public_key + struct.pack(">I", index), hashlib.sha512).digest()
    if int.from_bytes(digest[:32], "big") >= SECP256K1_ORDER:
        # BIP32 says: skip to the next index. It happens with probability ~2^-127; refusing
        # keeps the path stored with a slice the path of its key.
        raise InvalidKey(f"BIP32 index {index} is invalid for this key")
    return digest[:32], digest[32:]


def slice_key_path(slice_id: str) -> tuple[int, int]:
    """The derivation path (two non-hardened indices) of the key that owns a slice."""
    digest = hashlib.sha256(b"slice-key/" + slice_id.encode()).digest()
    first, second = struct.unpack(">II", digest[:8])
    return first % HARDENED, second % HARDENED


class OwnerKeys:
    """The port: an owner's BIP32 master keys. Sandbox implementation below; custody on AWS in
    custody.py, whose paths start with the seed version (m/<version>/a/b)."""

    def slice_path(self, owner: str, slice_id: str) -> tuple[int, ...]:
        """The path of the key a new slice of this owner gets (stored sealed with the slice)."""
        return slice_key_path(slice_id)

    def master(
        self, owner: str, path: tuple[int, ...] = ()
    ) -> ExtendedPrivateKey:  # pragma: no cover - a port
        """The master key under which `path` (a stored slice path; () for a new one) lies."""
        raise NotImplementedError

    def public_master(self, owner: str, path: tuple[int, ...] = ()) -> ExtendedPublicKey:
        """The master's extended public key: all that giving a new slice to an owner needs.
        Custody answers it without opening the owner's seed."""
        return self.master(owner, path).public


class SandboxOwnerKeys(OwnerKeys):
    """One master seed per owner, HMAC-SHA512(root secret, owner id): nothing to store."""

    def __init__(self, root_secret: bytes) -> None:
        if len(root_secret) < 32:
            raise ValueError("the owner keys' root secret must hold at least 32 bytes")
        self._root = root_secret
        self._cache: dict[str, ExtendedPrivateKey] = {}

    def __repr__(self) -> str:
        return "SandboxOwnerKeys(<secret>)"

    def master(self, owner: str, path: tuple[int, ...] = ()) -> ExtendedPrivateKey:
        found = self._cache.get(owner)
        if found is None:
            seed = hmac.new(self._root, b"owner/" + owner.encode(), hashlib.sha512).digest()
            found = self._cache[owner] = ExtendedPrivateKey.from_seed(seed)
        return found


# --- owner signatures: secp256k1 ECDSA over SHA-256 of the header, DER -----------------------


def sign_as_owner(secret: bytes, header: bytes) -> bytes:
    # coincurve hashes the message with SHA-256 and signs the digest (RFC 6979 nonce, low S).
    return PrivateKey(secret).sign(header, hasher=lambda data: hashlib.sha256(data).digest())


def parse_owner_key(content: bytes) -> PublicKey:
    try:
        return PublicKey(bytes(content))
    except (ValueError, TypeError) as exc:
        raise InvalidKey("not a secp256k1 public key") from exc


def signed_by_owner(public_key: bytes, signature: bytes, header: bytes) -> bool:
    try:
        return parse_owner_key(public_key).verify(
            bytes(signature), header, hasher=lambda data: hashlib.sha256(data).digest()
        )
    except (InvalidKey, ValueError, TypeError):
        return False  # a malformed DER signature is an invalid one


# --- issuer signatures: Ed25519 over the header ----------------------------------------------


class IssuerKeys:
    """The issuers' Ed25519 signing keys, one per grid area (settings on a real stage)."""

    def __init__(
        self,
        keys: Mapping[str, Ed25519PrivateKey] | None = None,
        derive: Callable[[str], Ed25519PrivateKey] | None = None,
    ) -> None:
        self._keys = dict(keys or {})
        self._derive = derive

    def __repr__(self) -> str:
        return f"IssuerKeys(grid areas {sorted(self._keys)})"

    @classmethod
    def from_json(cls, text: str) -> IssuerKeys:
        """{"DK1": "<base64 of a 32-byte Ed25519 private key>", ...}"""
        try:
            raw = json.loads(text)
            keys = {
                area: Ed25519PrivateKey.from_private_bytes(base64.b64decode(value, validate=True))
                for area, value in raw.items()
            }
        except (ValueError, TypeError, AttributeError) as exc:
            raise InvalidKey("issuer keys must be a JSON object of base64 Ed25519 keys") from exc
        return cls(keys)

    @classmethod
    def sandbox(cls, root_secret: bytes) -> IssuerKeys:
        """Any grid area's key, derived from a root secret: for the simulator and tests."""

        def derive(area: str) -> Ed25519PrivateKey:
            seed = hmac.new(root_secret, b"issuer/" + area.encode(), hashlib.sha256).digest()
            return Ed25519PrivateKey.from_private_bytes(seed)

        return cls(derive=derive)

    def key_for(self, grid_area: str) -> Ed25519PrivateKey:
        found = self._keys.get(grid_area)
        if found is None and self._derive is not None:
            found = self._keys[grid_area] = self._derive(grid_area)
        if found is None:
            raise KeyError(f"no issuer key for grid area {grid_area}")
        return found

    def public_keys(self, grid_area: str) -> list[bytes]:
        """What a verifier of this grid area accepts (raw 32-byte keys)."""
        try:
            key = self.key_for(grid_area)
        except KeyError:
            return []
        return [key.public_key().public_bytes_raw()]

    def sign(self, grid_area: str, header: bytes) -> bytes:
        return self.key_for(grid_area).sign(header)


def signed_by_issuer(public_keys: list[bytes], signature: bytes, header: bytes) -> bool:
    for raw in public_keys:
        try:
            Ed25519PublicKey.from_public_bytes(raw).verify(bytes(signature), header)
            return True
        except (InvalidSignature, ValueError):
            continue
    return False
