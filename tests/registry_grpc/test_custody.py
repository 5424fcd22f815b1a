"""Owners' keys in custody (KMS envelope encryption, seeds in the book's table) and issuers'
keys from a secret store, on moto's KMS, DynamoDB, Secrets Manager and SSM."""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError, EndpointConnectionError
from moto import mock_aws

from chalicelib.domain import CertificateType, CommandStatus, SliceState
from chalicelib.ports import DependencyDown
from chalicelib.registry.builder import ProtoTransactionBuilder
from chalicelib.registry.custody import (
    CustodyBroken,
    CustodyUnavailable,
    KmsOwnerKeys,
    StoredIssuerKeys,
    ssm_parameter_name,
)
from chalicelib.registry.keys import IssuerKeys
from chalicelib.registry.protocodec import BookSliceDirectory, ProtoCodec
from chalicelib.registry.secrets import DataKeys, KmsSecretBox, TableDataKeys, open_slice
from chalicelib.usecases.process import Outcome
from tests.conftest import settings
from tests.registry_grpc.pipeline import REGISTRY, ProtoPipeline

TABLE = "certificates-book"


@pytest.fixture
def aws() -> Iterator[boto3.Session]:
    for key in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_DYNAMODB", "AWS_ENDPOINT_URL_SQS"):
        os.environ.pop(key, None)
    with mock_aws():
        session = boto3.Session(
            region_name="eu-west-1", aws_access_key_id="testing", aws_secret_access_key="testing"
        )
        from devstack import resources

        resources.create(session.client("dynamodb"), session.client("sqs"), settings())
        yield session


@pytest.fixture
def key(aws) -> str:
    return aws.client("kms").create_key()["KeyMetadata"]["Arn"]


def custody(aws: boto3.Session, key: str, **kwargs: Any) -> KmsOwnerKeys:
    """Owner keys as one Lambda container builds them: its own clients, its own cache."""
    return KmsOwnerKeys(aws.client("dynamodb"), TABLE, aws.client("kms"), key, **kwargs)


def seed_items(aws: boto3.Session) -> list[dict[str, Any]]:
    items = aws.client("dynamodb").scan(TableName=TABLE)["Items"]
    return [i for i in items if i["pk"]["S"].startswith("SEED#")]


# --- the adapter ---------------------------------------------------------------------------------


def test_two_owners_get_different_keys_made_on_first_use(aws, key) -> None:
    owners = custody(aws, key)
    assert seed_items(aws) == []
    alice, bob = owners.master("alice"), owners.master("bob")
    assert alice.secret != bob.secret and alice.chain_code != bob.chain_code
    assert sorted((i["pk"]["S"], i["sk"]["S"]) for i in seed_items(aws)) == [
        ("SEED#alice", "V#1"),
        ("SEED#bob", "V#1"),
    ]


def test_one_owner_gets_the_same_key_from_two_containers(aws, key) -> None:
    first, second = custody(aws, key), custody(aws, key)
    assert first.master("alice") == second.master("alice")
    path = first.slice_path("alice", "some-slice")
    assert first.master("alice", path).derive(path) == second.master("alice", path).derive(path)
    assert len(seed_items(aws)) == 1


def test_two_first_uses_at_once_agree_on_one_seed(aws, key) -> None:
    """Both containers find no seed and both make one; the conditional put lets the first
    win, and the second reads and uses the winner's. (Interleaved by hand: moto's DynamoDB
    does not make a conditional put atomic across threads, as DynamoDB does.)"""
    first, second = custody(aws, key), custody(aws, key)
    read, masters = first._read, {}

    def read_then_lose_the_race(owner, version):
        found = read(owner, version)  # nothing yet...
        first._read = read
        masters["second"] = second.master(owner)  # ...and meanwhile the other one puts its seed
        return found

    first._read = read_then_lose_the_race
    masters["first"] = first.master("alice")
    assert masters["first"] == masters["second"]
    assert len(seed_items(aws)) == 1


def test_the_table_item_alone_reveals_nothing_of_the_seed(aws, key) -> None:
    owners = custody(aws, key)
    master = owners.master("alice")
    assert owners.public_master("alice") == master.public
    [item] = seed_items(aws)
    stored = json.dumps(
        [
            {k: base64.b64encode(bytes(v["B"])).decode() if "B" in v else v for k, v in i.items()}
            for i in aws.client("dynamodb").scan(TableName=TABLE)["Items"]
        ]
    )
    for secret in (master.secret, master.chain_code, master.public_key):
        assert base64.b64encode(secret).decode() not in stored
        assert secret.hex() not in stored
    # Without that KMS key the seed does not open (here: KMS of another region, which does not
    # hold it), and a container that cannot open it does not replace it either.
    elsewhere = KmsOwnerKeys(
        aws.client("dynamodb"), TABLE, aws.client("kms", region_name="us-east-1"), key
    )
    with pytest.raises((CustodyUnavailable, CustodyBroken)):
        elsewhere.master("alice")
    assert seed_items(aws) == [item]


def test_a_seed_copied_onto_another_owner_does_not_open(aws, key) -> None:
    custody(aws, key).master("alice")
    [item] = seed_items(aws)
    aws.client("dynamodb").put_item(TableName=TABLE, Item={**item, "pk": {"S": "SEED#mallory"}})
    with pytest.raises(CustodyBroken):
        custody(aws, key).master("mallory")


class CountingKms:
    """A container's KMS client that notes each call and what it was for."""

    def __init__(self, kms: Any) -> None:
        self._kms, self.calls, self.opened = kms, [], []

    def decrypt(self, **kw: Any) -> Any:
        self.calls.append(("decrypt", kw["EncryptionContext"]["purpose"]))
        self.opened.append(kw["EncryptionContext"])
        return self._kms.decrypt(**kw)

    def generate_data_key(self, **kw: Any) -> Any:
        self.calls.append(("generate_data_key", kw["EncryptionContext"]["purpose"]))
        return self._kms.generate_data_key(**kw)


def counting(owners: KmsOwnerKeys) -> CountingKms:
    owners._kms = CountingKms(owners._kms)
    return owners._kms


def test_opened_keys_are_cached_for_a_bounded_time(aws, key) -> None:
    now = [0.0]
    owners = custody(aws, key, cache_s=300, monotonic=lambda: now[0])
    calls = counting(owners).calls
    custody(aws, key).master("alice")  # made by another container
    owners.master("alice")
    owners.master("alice")
    now[0] = 299
    owners.master("alice")
    assert calls == [("decrypt", "owner-seed")]
    now[0] = 301
    owners.master("alice")
    assert calls == [("decrypt", "owner-seed")] * 2


# --- public halves: a new slice for an owner without opening the owner's seed ------------------


def test_a_new_slice_for_an_owner_opens_no_seed(aws, key) -> None:
    """The sending side signs (its seed is opened); the receiving side, an issuance's owner or a
    transfer's receiver, only needs the public half: a container opens the custody's key for
    public halves once, and then no owner's seed at all."""
    maker = custody(aws, key)
    masters = {owner: maker.master(owner) for owner in ("alice", "bob", "carol")}
    owners = custody(aws, key)
    calls = counting(owners).calls
    for owner, master in masters.items():
        path = owners.slice_path(owner, f"slice-of-{owner}")
        assert owners.public_master(owner, path) == master.public
        assert owners.public_master(owner, path).derive(path) == master.derive(path).public
    assert calls == [("decrypt", "owner-public-keys")]
    # a new owner's first use makes its seed and seals its public half: still no seed opened
    dave = owners.public_master("dave")
    assert calls[1:] == [("generate_data_key", "owner-seed")]
    assert custody(aws, key).master("dave").public == dave


def test_public_halves_are_cached_for_a_bounded_time(aws, key) -> None:
    custody(aws, key).master("alice")
    now = [0.0]
    owners = custody(aws, key, cache_s=300, monotonic=lambda: now[0])
    reads = []
    get_item = owners._db.get_item
    owners._db = type("Db", (), {"get_item": lambda _, **kw: reads.append(kw) or get_item(**kw)})()
    owners.public_master("alice")
    now[0] = 299
    owners.public_master("alice")
    assert [r["Key"]["pk"]["S"] for r in reads] == ["SEED#alice", "CUSTODY#owner-public-keys"]
    now[0] = 301
    owners.public_master("alice")
    assert [r["Key"]["pk"]["S"] for r in reads][2:] == ["SEED#alice"]


@pytest.mark.parametrize("tamper", ["copied_from_another_owner", "flipped_bit"])
def test_a_public_half_changed_in_the_table_does_not_open(aws, key, tamper) -> None:
    """Whoever can write the table but not use the KMS key cannot redirect an owner's new
    slices to a key of their own."""
    maker = custody(aws, key)
    maker.master("alice"), maker.master("mallory")
    db = aws.client("dynamodb")
    items = {i["pk"]["S"]: i for i in seed_items(aws)}
    sealed = bytes(items["SEED#mallory"]["sealed_xpub"]["B"])
    if tamper == "flipped_bit":
        sealed = bytes(items["SEED#alice"]["sealed_xpub"]["B"])
        sealed = sealed[:-1] + bytes([sealed[-1] ^ 1])
    db.put_item(TableName=TABLE, Item={**items["SEED#alice"], "sealed_xpub": {"B": sealed}})
    with pytest.raises(CustodyBroken, match="public key of alice"):
        custody(aws, key).public_master("alice")


def test_a_seed_stored_without_its_public_half_gets_it_once(aws, key) -> None:
    """Seeds made before public halves were sealed: the first container that needs one opens
    the seed and stores the sealed half; after that no container opens the seed for it."""
    master = custody(aws, key).master("alice")
    db = aws.client("dynamodb")
    [item] = seed_items(aws)
    del item["sealed_xpub"]
    db.put_item(TableName=TABLE, Item=item)
    first = custody(aws, key)
    first_calls = counting(first).calls
    assert first.public_master("alice") == master.public
    assert ("decrypt", "owner-seed") in first_calls
    [item] = seed_items(aws)
    assert "sealed_xpub" in item
    second = custody(aws, key)
    second_calls = counting(second).calls
    assert second.public_master("alice") == master.public
    assert second_calls == [("decrypt", "owner-public-keys")]


def test_two_containers_making_the_key_of_public_halves_at_once_agree_on_one(aws, key) -> None:
    """Both find no key and both make one; the conditional put lets one win and the other
    uses the winner's, so a public half sealed by either opens in both."""
    first, second = custody(aws, key), custody(aws, key)
    make = first._data_key

    def make_while_the_other_puts_its_own(context, what):
        made = make(context, what)
        if context["purpose"] == "owner-public-keys":
            second.public_master("bob")  # the other container makes its key and puts it first
        return made

    first._data_key = make_while_the_other_puts_its_own
    alice = first.public_master("alice")
    assert custody(aws, key).public_master("alice") == alice
    assert second.public_master("alice") == alice
    assert first.public_master("bob") == custody(aws, key).master("bob").public
    keys = [i for i in aws.client("dynamodb").scan(TableName=TABLE)["Items"]]
    assert sum(i["pk"]["S"] == "CUSTODY#owner-public-keys" for i in keys) == 1


def test_no_key_material_in_a_repr(aws, key) -> None:
    owners = custody(aws, key)
    master = owners.master("alice")
    for shown in (repr(owners), repr(master), str(owners)):
        assert master.secret.hex() not in shown and "alice" not in shown


def test_a_new_seed_version_applies_to_new_slice_paths_only(aws, key) -> None:
    v1, v2 = custody(aws, key, version=1), custody(aws, key, version=2)
    old_path, new_path = v1.slice_path("alice", "s"), v2.slice_path("alice", "s")
    assert old_path[0] == 1 and new_path[0] == 2 and old_path[1:] == new_path[1:]
    # the path names its version: the new container still opens the old slice's key
    assert v2.master("alice", old_path) == v1.master("alice", old_path)
    assert v2.master("alice", new_path) != v1.master("alice", old_path)
    assert sorted(i["sk"]["S"] for i in seed_items(aws)) == ["V#1", "V#2"]


# --- the whole flow, signed with keys in custody, verified by the simulator ----------------------


def custody_pipeline(
    aws: boto3.Session, key: str, version: int = 1, keys: DataKeys | None = None
) -> ProtoPipeline:
    """The proto flow as a deployed stage runs it: owners' seeds in custody, slice secrets
    sealed under KMS data keys kept in the book's table."""
    p = ProtoPipeline()
    p.owner_keys = custody(aws, key, version=version)
    p.box = KmsSecretBox(
        aws.client("kms"), key, keys or TableDataKeys(aws.client("dynamodb"), TABLE)
    )
    p.builder = ProtoTransactionBuilder(REGISTRY, p.issuers, p.owner_keys, p.box)
    p.codec = ProtoCodec(BookSliceDirectory(p.book, p.box))
    p.worker = p.make_worker()
    return p


def _available(p: ProtoPipeline, cert: str, owner: str = "alice") -> dict[int, str]:
    return {
        s.quantity_wh: s.slice_id
        for s in p.book.get_certificate(cert).slices.values()
        if s.state == SliceState.AVAILABLE and s.owner == owner
    }


def test_every_command_kind_signed_with_custody_keys_is_accepted_by_the_verifier(aws, key):
    p = custody_pipeline(aws, key)
    production, whole = p.issued(quantity=1000)
    consumption, used = p.issued(
        quantity=300, gsrn="571313000000000002", type_=CertificateType.CONSUMPTION
    )
    sliced = p.slice("alice", production, whole, [600, 400])
    p.run()
    parts = _available(p, production)
    transfer = p.transfer("alice", production, parts[400], "bob", 150)
    p.run()
    claim = p.claim("alice", (production, parts[600]), (consumption, used), 300)
    p.run()
    withdraw = p.withdraw(consumption)
    p.run()
    commands = [sliced, transfer, claim, withdraw]
    assert [p.command(c.command_id).status for c in commands] == [CommandStatus.COMMITTED] * 4
    assert {e.verdict.value for e in p.simulator.log()} == {"COMMITTED"}
    p.check_invariants()
    p.check_never_twice()
    assert p.reconcile()["drift_repaired"] == 0
    for s in p.book.get_certificate(production).slices.values():
        if s.is_live:  # every slice's key path names the seed version it came from
            assert open_slice(p.box, production, s.slice_id, s.secret).path[0] == 1
    assert {i["pk"]["S"] for i in seed_items(aws)} == {"SEED#alice", "SEED#bob"}


class _KeptOnSecondTry:
    """The book's table refusing the first data key a container would seal with."""

    def __init__(self, inner: TableDataKeys) -> None:
        self.inner, self.refused = inner, 0

    def put_once(self, ref: str, wrapped: bytes) -> bool:
        if not self.refused:
            self.refused += 1
            raise DependencyDown("storing a data key: the table did not answer")
        return self.inner.put_once(ref, wrapped)

    def get(self, ref: str) -> bytes | None:
        return self.inner.get(ref)


def test_a_data_key_the_table_cannot_keep_seals_nothing_and_the_issue_goes_through_later(aws, key):
    """A secret sealed under a data key that is not kept could never be opened: the build
    stops, nothing is stored or sent, and the message's next receive builds again."""
    keys = _KeptOnSecondTry(TableDataKeys(aws.client("dynamodb"), TABLE))
    p = custody_pipeline(aws, key, keys=keys)
    cert, slice_id = p.issued(quantity=1000)
    assert keys.refused == 1
    sealed = p.book.get_certificate(cert).slices[slice_id].secret
    assert sealed.startswith("k2.")
    another_container = KmsSecretBox(
        aws.client("kms"), key, TableDataKeys(aws.client("dynamodb"), TABLE)
    )
    assert open_slice(another_container, cert, slice_id, sealed).quantity == 1000
    assert len(p.simulator.log()) == 1
    p.check_never_twice()


def test_after_a_rotation_old_slices_stay_spendable_and_new_ones_use_the_new_seed(aws, key):
    p = custody_pipeline(aws, key, version=1)
    cert, whole = p.issued(quantity=1000)
    rotated = custody_pipeline(aws, key, version=2)
    p.owner_keys, p.builder = rotated.owner_keys, rotated.builder
    p.worker = p.make_worker()
    p.slice("alice", cert, whole, [700, 300])  # spends a v1 slice, makes v2 slices
    p.run()
    live = [s for s in p.book.get_certificate(cert).slices.values() if s.is_live]
    assert sorted(s.quantity_wh for s in live) == [300, 700]
    assert {open_slice(p.box, cert, s.slice_id, s.secret).path[0] for s in live} == {2}
    assert {e.verdict.value for e in p.simulator.log()} == {"COMMITTED"}


def test_issuing_and_transferring_open_only_the_seeds_of_the_owners_who_sign(aws, key) -> None:
    """An issuance is signed by the issuer, a transfer by its sender: in a new container, the
    new slices' owners (the certificate's owner, the receiver) cost no seed Decrypt."""
    p = custody_pipeline(aws, key)
    cert, whole = p.issued(quantity=1000)
    custody(aws, key).master("bob")  # bob's seed exists already
    fresh = custody_pipeline(aws, key)
    kms = counting(fresh.owner_keys)
    p.owner_keys, p.builder = fresh.owner_keys, fresh.builder
    p.worker = p.make_worker()
    issued = p.issue(owner="carol", gsrn="571313000000000009")
    transfer = p.transfer("alice", cert, whole, "bob", 1000)
    p.run()
    assert p.command(issued.command_id).status == CommandStatus.COMMITTED
    assert p.command(transfer.command_id).status == CommandStatus.COMMITTED
    seeds_opened = [c["owner"] for c in kms.opened if c["purpose"] == "owner-seed"]
    assert seeds_opened == ["alice"]
    assert {e.verdict.value for e in p.simulator.log()} == {"COMMITTED"}


@pytest.mark.parametrize("fault", ["kms_down", "kms_unreachable"])
def test_a_kms_outage_is_retried_before_anything_is_sent(aws, key, fault) -> None:
    p = custody_pipeline(aws, key)
    kms = p.owner_keys._kms

    class Down:
        def __getattr__(self, name):
            def fail(**_kwargs):
                if fault == "kms_unreachable":
                    raise EndpointConnectionError(endpoint_url="https://kms.invalid")
                raise ClientError(
                    {"Error": {"Code": "KMSInternalException", "Message": "down"}}, name
                )

            return fail

    p.owner_keys._kms = Down()
    command = p.issue()
    batch = p.queue.receive()
    assert p.worker.process([m.delivery for m in batch]) == [Outcome.FAILED]
    p.queue.give_back(batch)
    held = p.command(command.command_id)
    assert held.status == CommandStatus.ACCEPTED and not held.transactions  # nothing half-built
    assert p.simulator.log() == []
    assert seed_items(aws) == []
    p.owner_keys._kms = kms
    p.run()
    assert p.command(command.command_id).status == CommandStatus.COMMITTED
    assert len(p.simulator.log()) == 1


# --- issuers' keys from a secret store -----------------------------------------------------------


ISSUER_JSON = json.dumps({"DK1": base64.b64encode(bytes(range(32))).decode()})
EXPECTED = IssuerKeys.from_json(ISSUER_JSON).public_keys("DK1")


def test_issuer_keys_come_from_a_secrets_manager_secret(aws) -> None:
    arn = aws.client("secretsmanager").create_secret(Name="issuers", SecretString=ISSUER_JSON)[
        "ARN"
    ]
    keys = StoredIssuerKeys(arn, aws.client)
    assert keys.public_keys("DK1") == EXPECTED
    assert keys.public_keys("DK2") == []
    assert "AAEC" not in repr(keys)


@pytest.mark.parametrize("name", ["/certs/issuer-keys", "issuer-keys"])
def test_issuer_keys_come_from_an_ssm_secure_string(aws, name) -> None:
    aws.client("ssm").put_parameter(Name=name, Value=ISSUER_JSON, Type="SecureString")
    arn = f"arn:aws:ssm:eu-west-1:123456789012:parameter{'' if name[0] == '/' else '/'}{name}"
    assert ssm_parameter_name(arn) == name
    assert StoredIssuerKeys(arn, aws.client).public_keys("DK1") == EXPECTED


def test_an_unreadable_issuer_secret_is_a_retryable_outage(aws) -> None:
    arn = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:missing-AbCdEf"
    with pytest.raises(CustodyUnavailable, match="ResourceNotFoundException"):
        StoredIssuerKeys(arn, aws.client).key_for("DK1")
