"""A certificate is one DynamoDB item, and an item holds at most 400 KB. With real registry
crypto each slice carries a KMS-sealed secret (~560 bytes in its first form, which slices
sealed before the packed one still carry; ~170 now): at the slice cap of 500 a typical
certificate measures ~417 KiB. The slices a command makes are written after the registry took
it, so the limit is enforced at accept (422, nothing recorded), and a write DynamoDB refuses
for its size is never taken for a lost optimistic race (no retries, no 503)."""

from __future__ import annotations

import uuid

import pytest

from chalicelib import domain
from chalicelib.domain import RuleViolation, Slice, SliceState
from chalicelib.usecases import accept
from tests.builders import API_TIMEOUT, T0, put_active
from tests.test_api import api  # noqa: F401  (the fixture)

WORST_OWNER = "\u4e00" * 128  # 128 characters, 3 bytes each in UTF-8
SEALED = "k1." + "A" * 248 + "." + "B" * 304  # the length of a KMS-sealed slice secret


def _worst_slice(i: int) -> Slice:
    return Slice(
        slice_id=str(uuid.uuid5(uuid.NAMESPACE_URL, f"s{i}")),
        owner=WORST_OWNER,
        quantity_wh=2**32 - 1,
        state=SliceState.RESERVED,
        reserved_by=str(uuid.uuid4()),
        registry_ref="R" * 64,
        secret=SEALED,
    )


def _grown_while_the_rule_allows(cert: domain.Certificate) -> domain.Certificate:
    """Add the largest slices the rules allow, one by one, as far as accept lets them come."""
    slices, applied = dict(cert.slices), list(cert.applied)
    i = 0
    while True:
        grown = cert.model_copy(update={"slices": slices, "applied": tuple(applied)})
        try:
            domain.check_slice_room(grown, 1)
        except RuleViolation:
            return grown
        new = _worst_slice(i)
        slices[new.slice_id] = new
        applied.append(str(uuid.uuid4()))
        i += 1


def test_a_certificate_grown_as_far_as_accept_allows_is_stored_by_dynamodb(moto_services):
    book = moto_services.book
    cert = put_active(book)
    grown = _grown_while_the_rule_allows(cert)
    assert len(grown.slices) > 200  # the budget leaves room for real use

    stored = book.update_certificate(cert.certificate_id, lambda _: grown)

    assert len(stored.slices) == len(grown.slices)
    assert book.get_certificate(cert.certificate_id).slices == grown.slices


def test_slicing_past_the_record_budget_is_refused_at_accept_and_nothing_is_recorded(api):  # noqa: F811
    cert_id, slice_id = api.active()
    full = _grown_while_the_rule_allows(api.book.get_certificate(cert_id))
    # keep alice's own slice spendable: it is the one she slices
    slices = {**full.slices, slice_id: api.book.get_certificate(cert_id).slices[slice_id]}
    api.book.update_certificate(
        cert_id, lambda c: c.model_copy(update={"slices": slices, "applied": full.applied})
    )
    before = api.snapshot()

    answer = api.post(
        f"/v1/certificates/{cert_id}/slices", {"slice_id": slice_id, "quantities_wh": [400, 600]}
    )

    assert answer.status == 422 and answer.is_problem, answer.body
    assert "400 KB" in answer.body["detail"]
    assert api.snapshot() == before


def test_a_record_dynamodb_refuses_for_its_size_is_a_rule_violation_after_one_attempt(
    moto_services,
):
    book = moto_services.book
    cert = put_active(book)
    puts = []
    book._db.meta.events.register("before-call.dynamodb.PutItem", lambda **kw: puts.append(1))
    too_big = {s.slice_id: s for s in map(_worst_slice, range(600))}

    with pytest.raises(RuleViolation, match="400 KB"):
        book.update_certificate(
            cert.certificate_id, lambda c: c.model_copy(update={"slices": too_big})
        )
    assert len(puts) == 1  # not retried as if it had lost a race
    assert book.get_certificate(cert.certificate_id).slices == cert.slices


def test_accept_refuses_with_the_record_budget_before_reserving(moto_services):
    cert = put_active(moto_services.book)
    (slice_id,) = cert.slices
    full = _grown_while_the_rule_allows(cert)
    mine = cert.slices[slice_id]
    moto_services.book.update_certificate(
        cert.certificate_id,
        lambda c: c.model_copy(
            update={"slices": {**full.slices, slice_id: mine}, "applied": full.applied}
        ),
    )
    request = accept.Request(
        actor=domain.Actor(owner=mine.owner),
        idempotency_key="k",
        body_hash=domain.request_hash("b"),
        now=T0,
        attempt_timeout=API_TIMEOUT,
    )
    ref = domain.SliceRef(certificate_id=cert.certificate_id, slice_id=slice_id)
    with pytest.raises(RuleViolation, match="400 KB"):
        accept.slice_certificate(
            moto_services.book, moto_services.queue, request, ref, [1, mine.quantity_wh - 1]
        )
    assert moto_services.book.get_certificate(cert.certificate_id).slices[slice_id] == mine
