"""Owner and issuer keys, and the sealed per-slice secrets."""

from __future__ import annotations

import base64
import json

import boto3
import pytest
from bip_utils import Bip32Secp256k1
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from moto import mock_aws

from chalicelib.registry import keys
from chalicelib.registry.keys import ExtendedPrivateKey, IssuerKeys, SandboxOwnerKeys
from chalicelib.registry.secrets import (
    KmsSecretBox,
    LocalSecretBox,
    SecretUnreadable,
    SliceSecret,
    open_slice,
    seal_slice,
)

SEED = bytes.fromhex("000102030405060708090a0b0c0d0e0f")


@pytest.mark.parametrize("path", [(0,), (1, 2), (2**31 - 1, 7, 1_000_000)])
def test_our_bip32_derivation_matches_bip_utils(path) -> None:
    ours = ExtendedPrivateKey.from_seed(SEED).derive(path)
    theirs = Bip32Secp256k1.FromSeed(SEED).DerivePath("m/" + "/".join(map(str, path)))
    assert ours.secret == theirs.PrivateKey().Raw().ToBytes()
    assert ours.public_key == theirs.PublicKey().RawCompressed().ToBytes()
    assert ours.chain_code == theirs.ChainCode().ToBytes()


def test_a_sender_derives_a_slice_key_from_the_public_master_alone() -> None:
    master = SandboxOwnerKeys(b"x" * 32).master("bob")
    path = keys.slice_key_path("some-slice")
    assert master.public.derive(path).key == master.derive(path).public_key


def test_hardened_derivation_is_refused() -> None:
    with pytest.raises(ValueError):
        ExtendedPrivateKey.from_seed(SEED).child(2**31)


def test_owners_get_different_keys_and_each_slice_its_own() -> None:
    owners = SandboxOwnerKeys(b"x" * 32)
    alice, bob = owners.master("alice"), owners.master("bob")
    assert alice.public_key != bob.public_key
    assert keys.slice_key_path("a") != keys.slice_key_path("b")
    assert alice.secret.hex() not in repr(alice) + repr(owners)


def test_an_owner_signature_verifies_only_for_its_key_and_header() -> None:
    key = SandboxOwnerKeys(b"x" * 32).master("alice").derive((1, 2))
    other = SandboxOwnerKeys(b"x" * 32).master("bob").derive((1, 2))
    signature = keys.sign_as_owner(key.secret, b"header")
    assert signature[0] == 0x30  # DER SEQUENCE
    assert keys.signed_by_owner(key.public_key, signature, b"header")
    assert not keys.signed_by_owner(key.public_key, signature, b"headeR")
    assert not keys.signed_by_owner(other.public_key, signature, b"header")
    assert not keys.signed_by_owner(key.public_key, b"\x30\x02junk", b"header")
    assert not keys.signed_by_owner(b"not a key", signature, b"header")


def test_issuer_keys_come_per_grid_area_from_settings_json() -> None:
    dk1 = Ed25519PrivateKey.generate()
    raw = dk1.private_bytes_raw()
    issuers = IssuerKeys.from_json(json.dumps({"DK1": base64.b64encode(raw).decode()}))
    signature = issuers.sign("DK1", b"header")
    assert keys.signed_by_issuer(issuers.public_keys("DK1"), signature, b"header")
    assert issuers.public_keys("DK2") == []
    with pytest.raises(KeyError):
        issuers.sign("DK2", b"header")
    sandbox = IssuerKeys.sandbox(b"y" * 32)
    assert not keys.signed_by_issuer(sandbox.public_keys("DK1"), signature, b"header")
    with pytest.raises(keys.InvalidKey):
        IssuerKeys.from_json('{"DK1": "not base64!"}')


SECRET = SliceSecret(quantity=1234, blinding=2**200 + 17, owner_key=b"\x02" * 33, path=(5, 6))


def test_a_sealed_slice_secret_opens_only_for_its_own_slice() -> None:
    box = LocalSecretBox(bytes(32))
    sealed = seal_slice(box, "cert-1", "slice-1", SECRET)
    assert "1234" not in sealed and str(SECRET.blinding) not in sealed
    assert open_slice(box, "cert-1", "slice-1", sealed) == SECRET
    with pytest.raises(SecretUnreadable):
        open_slice(box, "cert-1", "slice-2", sealed)
    with pytest.raises(SecretUnreadable):
        open_slice(LocalSecretBox(bytes([1]) * 32), "cert-1", "slice-1", sealed)
    with pytest.raises(SecretUnreadable):
        open_slice(box, "cert-1", "slice-1", sealed[:-4] + "AAAA")


def test_a_slice_secret_never_shows_its_quantity_or_blinding_in_a_repr() -> None:
    shown = repr(SECRET)
    assert "1234" not in shown and str(SECRET.blinding) not in shown
    assert "key" not in repr(LocalSecretBox(bytes(32))).replace("<key>", "")


def test_kms_sealing_uses_one_data_key_per_cold_start_and_opens_across_them() -> None:
    with mock_aws():
        kms = boto3.client("kms", region_name="eu-west-1")
        key_id = kms.create_key()["KeyMetadata"]["KeyId"]
        first = KmsSecretBox(kms, key_id)
        sealed = [seal_slice(first, "c", f"s{i}", SECRET) for i in range(3)]
        assert len({s.split(".")[1] for s in sealed}) == 1  # one wrapped data key
        later = KmsSecretBox(kms, key_id)  # another Lambda instance
        assert all(open_slice(later, "c", f"s{i}", s) == SECRET for i, s in enumerate(sealed))
        with pytest.raises(SecretUnreadable):
            open_slice(later, "c", "s0", sealed[1])
