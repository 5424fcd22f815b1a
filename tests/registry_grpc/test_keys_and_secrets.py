"""Owner and issuer keys, and the sealed per-slice secrets."""

from __future__ import annotations

import base64
import json

import boto3
import pytest
from bip_utils import Bip32Secp256k1
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import given
from hypothesis import strategies as st
from moto import mock_aws

from chalicelib import composition
from chalicelib.ports import DependencyDown
from chalicelib.registry import keys
from chalicelib.registry.keys import ExtendedPrivateKey, IssuerKeys, SandboxOwnerKeys
from chalicelib.registry.secrets import (
    KmsSecretBox,
    LocalSecretBox,
    MemoryDataKeys,
    SecretUnreadable,
    SliceSecret,
    TableDataKeys,
    open_slice,
    seal_slice,
    slice_context,
)
from tests.conftest import settings

SEED = bytes.fromhex("000102030405060708090a0b0c0d0e0f")
TABLE = settings().table_name


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


@given(
    quantity=st.integers(0, 2**64 - 1),
    blinding=st.integers(0, 2**256 - 1),
    owner_key=st.binary(min_size=0, max_size=65),
    path=st.lists(st.integers(0, 2**31 - 1), max_size=6).map(tuple),
)
def test_a_packed_slice_secret_reads_back_exactly(quantity, blinding, owner_key, path) -> None:
    secret = SliceSecret(quantity, blinding, owner_key, path)
    assert SliceSecret.from_bytes(secret.to_bytes()) == secret


def test_a_packed_slice_secret_is_half_the_json_one_and_damage_reads_as_unreadable() -> None:
    packed = SECRET.to_bytes()
    assert len(packed) < 90
    for broken in (b"", packed[:20], packed[:-1], b"\x02" + packed[1:], packed + b"x"):
        with pytest.raises(SecretUnreadable):
            SliceSecret.from_bytes(broken)


def test_a_secret_sealed_as_json_before_the_packed_form_still_opens() -> None:
    key = bytes(32)
    plaintext = json.dumps(
        {"m": 1234, "r": SECRET.blinding.to_bytes(32, "little").hex(), "k": "02" * 33, "p": [5, 6]}
    ).encode()
    nonce = bytes(12)
    context = slice_context("cert-1", "slice-1").encode()
    blob = base64.b64encode(nonce + AESGCM(key).encrypt(nonce, plaintext, context)).decode()
    assert open_slice(LocalSecretBox(key), "cert-1", "slice-1", f"l1.{blob}") == SECRET


@pytest.fixture
def aws_table(aws):
    """The book's table as infra/ defines it (DATAKEY# items live beside the book's), and a
    KMS key."""
    kms = aws.client("kms")
    yield aws.client("dynamodb"), kms, kms.create_key()["KeyMetadata"]["KeyId"]


def test_kms_sealing_names_its_data_key_kept_once_in_the_table(aws_table) -> None:
    db, kms, key_id = aws_table
    first = KmsSecretBox(kms, key_id, TableDataKeys(db, TABLE))
    sealed = [seal_slice(first, "c", f"s{i}", SECRET) for i in range(3)]
    refs = {s.split(".")[1] for s in sealed}
    assert len(refs) == 1 and all(s.startswith("k2.") for s in sealed)
    stored = [i["pk"]["S"] for i in db.scan(TableName=TABLE)["Items"]]
    assert stored == [f"DATAKEY#{refs.pop()}"]  # one put per cold start
    # What a certificate's item carries per slice: far under the ~500 characters of k1.
    embedded = seal_slice(KmsSecretBox(kms, key_id), "c", "s0", SECRET)
    assert len(sealed[0]) < 170 < len(embedded)
    later = KmsSecretBox(kms, key_id, TableDataKeys(db, TABLE))  # another Lambda instance
    assert all(open_slice(later, "c", f"s{i}", s) == SECRET for i, s in enumerate(sealed))
    with pytest.raises(SecretUnreadable):
        open_slice(later, "c", "s0", sealed[1])
    # The first KMS form, which carries its encrypted data key, still opens.
    assert open_slice(later, "c", "s0", embedded) == SECRET


def test_a_secret_naming_a_data_key_not_in_the_book_is_unreadable(aws_table) -> None:
    db, kms, key_id = aws_table
    sealed = seal_slice(KmsSecretBox(kms, key_id, MemoryDataKeys()), "c", "s", SECRET)
    with pytest.raises(SecretUnreadable, match="no data key"):
        open_slice(KmsSecretBox(kms, key_id, TableDataKeys(db, TABLE)), "c", "s", sealed)
    with pytest.raises(SecretUnreadable):  # without a place for data keys, no k2 opens
        open_slice(KmsSecretBox(kms, key_id), "c", "s", sealed)


def test_sealing_stops_when_the_data_key_cannot_be_kept(aws_table) -> None:
    """A data key whose encrypted form is not stored would seal secrets no one could open."""
    _, kms, key_id = aws_table
    gone = boto3.client("dynamodb", region_name="eu-west-1")
    box = KmsSecretBox(kms, key_id, TableDataKeys(gone, "no-such-table"))
    with pytest.raises(DependencyDown, match="storing a data key"):
        seal_slice(box, "c", "s", SECRET)
    with pytest.raises(DependencyDown, match="reading a data key"):
        open_slice(box, "c", "s", "k2.AAAAAAAAAAAA.AAAA")


def test_a_taken_data_key_reference_is_never_reused() -> None:
    class Taken(MemoryDataKeys):
        def __init__(self) -> None:
            super().__init__()
            self.tries = 0

        def put_once(self, ref: str, wrapped: bytes) -> bool:
            self.tries += 1
            return self.tries > 1 and super().put_once(ref, wrapped)

    with mock_aws():
        kms = boto3.client("kms", region_name="eu-west-1")
        key_id = kms.create_key()["KeyMetadata"]["KeyId"]
        keys = Taken()
        box = KmsSecretBox(kms, key_id, keys)
        sealed = seal_slice(box, "c", "s", SECRET)
        assert keys.tries == 2 and keys.get(sealed.split(".")[1]) is not None


def _opened_as_the_first_form_did(key: bytes, sealed: str, context: str) -> dict:
    """How code before the packed form opened a secret: its AES-GCM blob, then JSON."""
    data = base64.b64decode(sealed.split(".")[-1])
    return json.loads(AESGCM(key).decrypt(data[:12], data[12:], context.encode()))


def test_an_upgrades_first_deploy_seals_what_the_old_code_reads(aws_table) -> None:
    """With write_previous_forms, new code seals as the old did (docs/DEPLOY.md, "Upgrading"):
    k1 with its encrypted data key in it, JSON inside; and opens it itself."""
    db, kms, key_id = aws_table
    context = slice_context("c", "s")
    local = LocalSecretBox(bytes(32), packs=False)
    sealed = seal_slice(local, "c", "s", SECRET)
    assert _opened_as_the_first_form_did(bytes(32), sealed, context)["m"] == SECRET.quantity
    assert open_slice(local, "c", "s", sealed) == SECRET
    first = composition.kms_secret_box(
        settings().model_copy(update={"secrets_kms_key_id": key_id, "write_previous_forms": True}),
        kms,
        db,
    )
    sealed = seal_slice(first, "c", "s", SECRET)
    wrapped = base64.b64decode(sealed.split(".")[1])  # the old code unwrapped this with KMS
    data_key = kms.decrypt(CiphertextBlob=wrapped, KeyId=key_id)["Plaintext"]
    assert sealed.startswith("k1.") and db.scan(TableName=TABLE)["Items"] == []
    assert _opened_as_the_first_form_did(data_key, sealed, context)["p"] == list(SECRET.path)
    later = composition.kms_secret_box(
        settings().model_copy(update={"secrets_kms_key_id": key_id}), kms, db
    )
    assert later.packs and open_slice(later, "c", "s", sealed) == SECRET
    assert seal_slice(later, "c", "s", SECRET).startswith("k2.")
