"""Hashed attributes in the upstream salted form, over real gRPC against the verifying
simulator (issue 15).

Upstream facts these hold us to (project-origin repositories):
- stamp src/ProjectOrigin.Stamp.Server/Helpers/Registry.cs (BuildIssuedEvent): a hashed
  attribute's value is Convert.ToBase64String(SHA256(UTF8(key + value + certificateId +
  Convert.ToHexString(salt)))), and AssetIdHash is not set ("to be removed").
- stamp .../Services/REST/v1/CertificatesController.cs: the salt is Guid.NewGuid()
  .ToByteArray(), 16 random bytes, per attribute per certificate.
- wallet src/ProjectOrigin.Vault/Models/WalletAttribute.cs (GetHashedValue): the same
  formula, which the wallet checks (CommandHandlers/VerifySliceCommandHandler.cs) before it
  keeps a hashed attribute; one that does not match is dropped.
- verifier_electricity src/ProjectOrigin.Electricity/Verifiers/Issued.cs checks neither the
  attributes nor asset_id_hash; Models/GranularCertificate.cs GetAttribute finds an
  attribute by key ignoring case whatever its type, and Rules/IsTrial.cs compares the values
  exactly (equal, or one missing and the other "false"), so a HASHED IsTrial compares by
  its hash.
"""

from __future__ import annotations

import base64
import hashlib

import pytest

from chalicelib import domain
from chalicelib.domain import CertificateType
from chalicelib.registry import attributes, protocodec
from chalicelib.registry.builder import AttributeHasher, ProtoTransactionBuilder
from chalicelib.registry.port import TransactionStatus
from chalicelib.registry.proto.project_origin.electricity.v1 import electricity_pb2 as el
from chalicelib.registry.secrets import LocalSecretBox, SecretUnreadable
from chalicelib.usecases import queries
from tests.registry_grpc.pipeline import REGISTRY, ProtoPipeline
from tests.registry_grpc.test_verifier import _built, _claim_built

COMMITTED, FAILED = TransactionStatus.COMMITTED, TransactionStatus.FAILED


@pytest.fixture
def p():
    pipeline = ProtoPipeline(grpc=True)
    pipeline.builder = ProtoTransactionBuilder(
        REGISTRY,
        pipeline.issuers,
        pipeline.owner_keys,
        pipeline.box,
        AttributeHasher(frozenset({"address", "IsTrial"}), pipeline.box),
    )
    pipeline.worker = pipeline.make_worker()
    yield pipeline
    pipeline.close()


def _send(p: ProtoPipeline, data: bytes):
    (receipt,) = p.client.send([data])
    p.vclock.advance(2)
    return p.client.status(receipt.transaction_id)


def _issued_event(p: ProtoPipeline, certificate_id: str) -> el.IssuedEvent:
    (first, *_) = p.client.stream(certificate_id)
    parsed = protocodec.parse(first)
    assert parsed.payload_type == protocodec.ISSUED
    return parsed.event


def test_the_hash_is_upstreams_formula_on_a_worked_vector() -> None:
    # Computed by the rule above, spelled out: key + value + the id as a .NET Guid prints it
    # (lowercase) + the salt in upper-case hex, UTF-8, SHA-256, standard base64.
    salt = bytes(range(16))
    certificate_id = "0b8e4d6a-3c2f-4b71-8d3e-9a5c1e2f4b60"
    text = "addressSome road 1234" + certificate_id + "000102030405060708090A0B0C0D0E0F"
    expected = base64.b64encode(hashlib.sha256(text.encode()).digest()).decode()
    assert expected == "ETYxleTu42TzEP0+/Ko5ZNobcGXcI4M/49HIhMjM7vc="
    assert attributes.hashed_value("address", "Some road 1234", certificate_id, salt) == expected
    # an id in upper case is the same Guid upstream: the same hash
    assert (
        attributes.hashed_value("address", "Some road 1234", certificate_id.upper(), salt)
        == expected
    )
    assert attributes.hashed_value("address", "Some road 1235", certificate_id, salt) != expected
    assert len(attributes.new_salt()) == attributes.SALT_BYTES == 16


def test_an_issue_carries_salted_hashes_and_no_asset_id_hash_and_the_book_keeps_the_salts(p):
    production, _ = p.issued(attributes={"address": "Some road 1", "technology": "T010000"})
    again, _ = p.issued(attributes={"address": "Some road 1"}, hour=1)
    event = _issued_event(p, production)
    assert event.asset_id_hash == b""  # upstream's issuer leaves it empty: a GSRN hash reverses
    by_key = {a.key: a for a in event.attributes}
    assert by_key["technology"].type == el.CLEARTEXT
    assert by_key["technology"].value == "T010000"
    assert by_key["address"].type == el.HASHED

    cert = p.book.get_certificate(production)
    assert cert is not None and set(cert.hashed_attributes) == {"address"}
    hashed = cert.hashed_attributes["address"]
    salt = attributes.open_salt(p.box, production, "address", hashed.salt)
    assert len(salt) == 16
    # What an upstream wallet recomputes before it keeps the attribute:
    assert by_key["address"].value == hashed.registry_value
    assert hashed.registry_value == attributes.hashed_value(
        "address", "Some road 1", production, salt
    )
    # A salt per attribute per certificate: the same value hashes otherwise elsewhere.
    other = p.book.get_certificate(again)
    assert other is not None
    assert other.hashed_attributes["address"].registry_value != hashed.registry_value
    with pytest.raises(SecretUnreadable):  # a sealed salt copied onto another certificate
        attributes.open_salt(p.box, again, "address", hashed.salt)


def _pair(p: ProtoPipeline, production_attributes=None, consumption_attributes=None, hour=0):
    production = p.issued(quantity=500, attributes=production_attributes, hour=hour)
    consumption = p.issued(
        quantity=500,
        hour=hour,
        gsrn="571313000000000002",
        type_=CertificateType.CONSUMPTION,
        attributes=consumption_attributes,
    )
    return production, consumption


def test_a_hashed_istrial_against_none_is_refused_as_upstream_refuses_it(p) -> None:
    # Upstream GetAttribute reads a HASHED IsTrial too, and its hash is not "false":
    # "Certificate {p} and {c} are not of the same trial type". Before, our simulator read
    # CLEARTEXT attributes only and let the pair through.
    production, consumption = _pair(p, production_attributes={"IsTrial": "false"})
    allocate_production, *_ = _claim_built(p, production, consumption)
    receipt = _send(p, allocate_production)
    assert receipt.status == FAILED, receipt
    assert receipt.message == (
        f"certificate {production[0]} and {consumption[0]} are not of the same trial type"
    )
    # ... and the service refuses the claim before anything is recorded (422 at accept):
    certs = {c: p.book.get_certificate(c) for c in (production[0], consumption[0])}
    with pytest.raises(domain.RuleViolation, match="trial type"):
        domain.check_claim_pair(certs[production[0]], certs[consumption[0]])


def test_istrial_values_compare_exactly_as_upstream(p) -> None:
    # Upstream Rules/IsTrial.Match: keys ignore case, values do not ("TRUE" is not "true").
    p.builder = ProtoTransactionBuilder(REGISTRY, p.issuers, p.owner_keys, p.box)
    p.worker = p.make_worker()  # IsTrial in CLEARTEXT here
    production, consumption = _pair(
        p, production_attributes={"IsTrial": "TRUE"}, consumption_attributes={"istrial": "true"}
    )
    allocate_production, *_ = _claim_built(p, production, consumption)
    receipt = _send(p, allocate_production)
    assert receipt.status == FAILED, receipt
    assert "not of the same trial type" in receipt.message, receipt.message


def test_an_issue_with_any_hashed_value_and_an_empty_asset_id_hash_commits(p) -> None:
    # Upstream's Issued verifier checks neither: a hashed value not in our form still commits.
    (tx,) = _built(p, p.issue(attributes={"address": "Some road 1"}))
    parsed = protocodec.parse(tx)
    event = parsed.event
    del event.attributes[:]
    event.attributes.append(el.Attribute(key="address", value="not base64 at all", type=el.HASHED))
    event.asset_id_hash = b""
    payload = event.SerializeToString(deterministic=True)
    header = parsed.transaction.header
    header.payload_sha512 = hashlib.sha512(payload).digest()
    forged = protocodec.serialize(
        header, p.issuers.sign("DK1", protocodec.header_bytes(header)), payload
    )
    assert _send(p, forged).status == COMMITTED


def test_an_owner_reads_the_salts_that_open_and_a_salt_that_does_not_is_left_out(p) -> None:
    production, _ = p.issued(attributes={"address": "Some road 1", "IsTrial": "false"})
    cert = p.book.get_certificate(production)
    assert cert is not None
    salts = queries.attribute_salts(p.box, cert)
    assert set(salts) == {"address", "IsTrial"}
    # One sealed under another key (or damaged): the read goes on without it.
    foreign = attributes.seal_salt(LocalSecretBox(bytes(32)), production, "address", b"s" * 16)
    hashed = dict(cert.hashed_attributes)
    hashed["address"] = hashed["address"].model_copy(update={"salt": foreign})
    damaged = cert.model_copy(update={"hashed_attributes": hashed})
    assert set(queries.attribute_salts(p.box, damaged)) == {"IsTrial"}
