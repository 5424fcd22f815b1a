"""The HTTP API end to end: chalice.test.Client over moto, every endpoint of
chalicelib.api.handlers.ENDPOINTS, happy and unhappy paths, headers, idempotency, owner
isolation, roles, the OpenAPI document, and bad input on every write leaving the book (the
whole DynamoDB table) and the queue exactly as they were."""

from __future__ import annotations

import dataclasses
import json
import os
import string
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import boto3
import hypothesis
import jwt
import pytest
from botocore.exceptions import EndpointConnectionError
from chalice.test import Client
from hypothesis import given
from hypothesis import strategies as st
from moto import mock_aws

import app as app_module
import chalicelib
from chalicelib import composition
from chalicelib.adapters.dynamo import DynamoBook
from chalicelib.adapters.sqs import SqsCommandQueue
from chalicelib.api import openapi
from chalicelib.api.auth import mint_token
from chalicelib.api.handlers import ENDPOINTS
from chalicelib.api.models import ID_MAX_LENGTH
from chalicelib.domain import CommandStatus
from chalicelib.ports import Transition
from chalicelib.usecases import process
from devstack import resources
from tests.builders import ISSUER, T0, commit_issue, gsrn, queue_depth, table_snapshot
from tests.conftest import SECRET, Clock, settings, token

pytestmark = [pytest.mark.e2e, pytest.mark.moto]

PROBLEM_JSON = "application/problem+json"
# The operations this module drives end to end. A new endpoint fails the drift test below until
# it is exercised here too.
EXERCISED = {
    "issue_certificate",
    "issue_batch",
    "slice_certificate",
    "transfer",
    "claim",
    "withdraw",
    "get_command",
    "list_commands",
    "get_certificate",
    "list_certificates",
    "aggregate",
    "list_transfers",
    "list_claims",
    "health",
    "stuck_commands",
    "resolve_command",
    "reconcile_now",
    "matching_report",  # in tests/test_api_views.py, with the change feeds
}
HOUR = "2026-06-01T10:00:00+00:00"


# --- a client that speaks the contract --------------------------------------------------------


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: Any

    @property
    def is_problem(self) -> bool:
        return (
            self.headers.get("Content-Type") == PROBLEM_JSON
            and isinstance(self.body, dict)
            and self.body.get("status") == self.status
            and {"type", "title", "detail"} <= set(self.body)
        )


def bearer(owner: str | None, *roles: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token(owner, *roles)}"} if owner else {}


class Api:
    """Requests as a client sends them: JSON, a bearer token, an Idempotency-Key on writes."""

    def __init__(self, client: Client, services: composition.Services, aws) -> None:
        self.client = client
        self.services = services
        self.book = services.book
        self.dynamodb = aws.client("dynamodb")
        self.sqs = aws.client("sqs")
        self.queue_url = self.sqs.get_queue_url(QueueName=services.settings.queue_name)["QueueUrl"]
        self._keys = 0

    def post(
        self,
        path: str,
        body: Any = None,
        *,
        who: str | None = "alice",
        roles: tuple[str, ...] = (),
        key: str | None = "auto",
        headers: dict[str, str] | None = None,
        raw: bytes | str | None = None,
    ) -> Answer:
        if key == "auto":
            self._keys += 1
            key = f"key-{self._keys}"
        sent = {**bearer(who, *roles), "Content-Type": "application/json"}
        if key is not None:
            sent["Idempotency-Key"] = key
        sent.update(headers or {})
        sent = {k: v for k, v in sent.items() if v is not None}
        data = raw if raw is not None else json.dumps(body if body is not None else {})
        return self._answer(self.client.http.post(path, headers=sent, body=data))

    def get(self, path: str, *, who: str | None = "alice", roles: tuple[str, ...] = ()):
        return self._answer(self.client.http.get(path, headers=bearer(who, *roles)))

    @staticmethod
    def _answer(response) -> Answer:
        body = json.loads(response.body) if response.body else None
        return Answer(response.status_code, dict(response.headers), body)

    # the book as a whole, to prove a request changed nothing
    def snapshot(self) -> tuple[list[dict[str, Any]], int]:
        table = table_snapshot(self.dynamodb, self.services.settings.table_name)
        return table, queue_depth(self.sqs, self.queue_url)

    # set-up through the API, and the worker's part written straight into the book
    def issue(self, **fields: Any) -> Answer:
        answer = self.post("/v1/certificates", issue_body(**fields), who=ISSUER, roles=("issuer",))
        assert answer.status == 202, answer.body
        return answer

    def active(self, **fields: Any) -> tuple[str, str]:
        """An ACTIVE certificate (as if the registry had issued it): (certificate, slice)."""
        command_id = self.issue(**fields).body["command_id"]
        cert = commit_issue(self.book, command_id, self.services.clock())
        (slice_id,) = cert.slices
        return cert.certificate_id, slice_id


def issue_body(
    *,
    n: int = 1,
    owner: str = "alice",
    type: str = "production",
    grid_area: str = "DK1",
    start: str = HOUR,
    minutes: int = 60,
    quantity_wh: int = 1000,
    attributes: dict[str, str] | None = None,
) -> dict[str, Any]:
    begin = datetime.fromisoformat(start)
    return {
        "type": type,
        "gsrn": gsrn(n),
        "grid_area": grid_area,
        "start": begin.isoformat(),
        "end": (begin + timedelta(minutes=minutes)).isoformat(),
        "quantity_wh": quantity_wh,
        "owner": owner,
        "attributes": {"technology": "T010000", "fuel": "F01010000", **(attributes or {})},
    }


@pytest.fixture
def api(moto_services, aws) -> Iterator[Api]:
    app_module.use_services(moto_services)
    with Client(app_module.app) as client:
        yield Api(client, moto_services, aws)
    app_module.use_services(None)


@dataclass
class World:
    """Alice: production P and consumption C in DK1 at 10:00, consumption D in DK2 at 10:00;
    bob: production B in DK1 at 11:00. All of 1000 Wh in one slice each, and ACTIVE."""

    P: tuple[str, str]
    C: tuple[str, str]
    D: tuple[str, str]
    B: tuple[str, str]


@pytest.fixture
def world(api) -> World:
    return world_of(api)


def world_of(api: Api) -> World:
    return World(
        P=api.active(n=1),
        C=api.active(n=2, type="consumption"),
        D=api.active(n=3, type="consumption", grid_area="DK2"),
        B=api.active(n=4, owner="bob", start="2026-06-01T11:00:00+00:00"),
    )


def ref(pair: tuple[str, str]) -> dict[str, str]:
    return {"certificate_id": pair[0], "slice_id": pair[1]}


def transfer_body(pair, receiver="bob", quantity_wh=1000) -> dict[str, Any]:
    return {**ref(pair), "receiver": receiver, "quantity_wh": quantity_wh}


def claim_body(production, consumption, quantity_wh=1000) -> dict[str, Any]:
    return {"production": ref(production), "consumption": ref(consumption), "quantity_wh": 1000}


def accepted(answer: Answer, kind: str) -> dict[str, Any]:
    assert answer.status == 202, answer.body
    assert answer.headers["Content-Type"] == "application/json"
    assert answer.headers["Location"] == f"/v1/commands/{answer.body['command_id']}"
    assert answer.body["kind"] == kind and answer.body["status"] == "ACCEPTED"
    return answer.body


# --- identity ---------------------------------------------------------------------------------


def forged_tokens() -> dict[str, str]:
    now = int(datetime.now().timestamp())
    return {
        "missing": "",
        "not-bearer": "Basic YWxpY2U6c2VjcmV0",
        "empty-bearer": "Bearer ",
        "not-a-jwt": "Bearer not-a-jwt",
        "other-secret": "Bearer " + mint_token("another-secret-that-is-long-enough-!!", "alice"),
        "expired": "Bearer " + mint_token(SECRET, "alice", lifetime_s=-60),
        "unsigned": "Bearer "
        + jwt.encode({"sub": "alice", "exp": now + 60}, None, algorithm="none"),
        "no-expiry": "Bearer " + jwt.encode({"sub": "alice"}, SECRET, algorithm="HS256"),
        "no-subject": "Bearer " + jwt.encode({"exp": now + 60}, SECRET, algorithm="HS256"),
        "roles-not-a-list": "Bearer "
        + jwt.encode({"sub": "alice", "exp": now + 60, "roles": "issuer"}, SECRET, "HS256"),
    }


def test_the_health_check_needs_no_token_and_names_each_dependency(api):
    answer = api.get("/v1/health", who=None)
    assert answer.status == 200
    assert answer.body == {
        "status": "ok",
        "stage": "local",
        "version": chalicelib.__version__,
        "dependencies": {"dynamodb": "ok", "sqs": "ok", "registry": "ok"},
    }


def test_the_health_check_shows_a_registry_in_an_outage(api):
    api.services.registry.configure(outages=((0.0, 1e9),))
    answer = api.get("/v1/health", who=None)
    assert answer.body["status"] == "degraded"
    assert answer.body["dependencies"]["registry"] == "down: RegistryUnavailable"


def test_the_health_check_reports_a_dependency_that_is_down(api):
    def down():
        raise EndpointConnectionError(endpoint_url="https://sqs")

    api.services.health_checks["sqs"] = down
    answer = api.get("/v1/health", who=None)
    assert answer.status == 200
    assert answer.body["status"] == "degraded"
    assert answer.body["dependencies"]["sqs"].startswith("down")


# --- issue ------------------------------------------------------------------------------------


def test_an_issuer_issues_a_certificate_and_its_command_and_certificate_can_be_read(api):
    answer = api.post("/v1/certificates", issue_body(), who=ISSUER, roles=("issuer",))
    body = accepted(answer, "issue")
    command = api.get(f"/v1/commands/{body['command_id']}", who=ISSUER)
    assert command.status == 200
    assert command.body["status"] == "ACCEPTED"
    assert command.body["certificate_id"] == body["certificate_id"]
    assert command.body["created_at"] == command.body["updated_at"]
    cert = api.get(f"/v1/certificates/{body['certificate_id']}")
    assert cert.status == 200
    assert (cert.body["status"], cert.body["slices"], cert.body["quantity_wh"]) == (
        "issuing",
        [],
        1000,
    )
    assert api.snapshot()[1] == 1  # queued


def test_the_same_key_and_body_answer_the_same_command(api):
    first = api.post("/v1/certificates", issue_body(), who=ISSUER, roles=("issuer",), key="k")
    again = api.post("/v1/certificates", issue_body(), who=ISSUER, roles=("issuer",), key="k")
    assert again.status == 202
    assert again.body == first.body
    assert again.headers["Location"] == first.headers["Location"]


def test_the_same_key_with_another_body_is_409_and_changes_nothing(api):
    api.post("/v1/certificates", issue_body(), who=ISSUER, roles=("issuer",), key="k")
    before = api.snapshot()
    answer = api.post("/v1/certificates", issue_body(n=9), who=ISSUER, roles=("issuer",), key="k")
    assert answer.status == 409 and answer.is_problem
    assert answer.body["errors"][0]["field"] == "Idempotency-Key"
    assert api.snapshot() == before


def test_the_same_key_used_by_another_caller_is_another_command(api):
    first = api.post("/v1/certificates", issue_body(n=1), who=ISSUER, roles=("issuer",), key="k")
    other = api.post("/v1/certificates", issue_body(n=2), who="iss-2", roles=("issuer",), key="k")
    assert other.status == 202 and other.body["command_id"] != first.body["command_id"]


@pytest.mark.parametrize(
    ("key", "status"),
    [(None, 400), ("", 400), ("k" * 129, 400), ("k" * 128, 202), ("clé", 400), ("a\tb", 400)],
    ids=["missing", "empty", "129", "128", "not-ascii", "tab"],
)
def test_an_idempotency_key_is_1_to_128_printable_characters(api, key, status):
    answer = api.post(
        "/v1/certificates",
        issue_body(),
        who=ISSUER,
        roles=("issuer",),
        key=None,
        headers={} if key is None else {"Idempotency-Key": key},
    )
    assert answer.status == status, answer.body
    if status == 400:
        assert answer.is_problem
        assert answer.body["errors"][0]["field"] == "Idempotency-Key"


def test_the_same_certificate_issued_under_another_key_is_409(api):
    api.issue()
    before = api.snapshot()
    answer = api.post("/v1/certificates", issue_body(), who=ISSUER, roles=("issuer",), key="k2")
    assert answer.status == 409 and answer.is_problem
    assert api.snapshot() == before


def test_a_queue_that_cannot_be_reached_still_answers_202_and_keeps_the_command(api, aws):
    api.services.queue = SqsCommandQueue(aws.client("sqs"), api.queue_url + "-gone")
    body = accepted(
        api.post("/v1/certificates", issue_body(), who=ISSUER, roles=("issuer",)), "issue"
    )
    assert api.book.get_command(body["command_id"]).status == CommandStatus.ACCEPTED
    assert api.snapshot()[1] == 0


class Unreachable:
    """A DynamoDB client whose every call fails to connect."""

    def __getattr__(self, operation: str):
        def call(**_: Any):
            raise EndpointConnectionError(endpoint_url="https://dynamodb.eu-west-1.amazonaws.com")

        return call


def test_a_book_that_cannot_be_reached_is_503_with_retry_after_on_writes_and_reads(api, world):
    before = api.snapshot()
    api.services.book = DynamoBook(Unreachable(), api.services.settings.table_name)
    for answer in (
        api.post("/v1/certificates", issue_body(n=7), who=ISSUER, roles=("issuer",)),
        api.post("/v1/transfers", transfer_body(world.P)),
        api.get(f"/v1/certificates/{world.P[0]}"),
        api.get("/v1/certificates"),
    ):
        assert answer.status == 503 and answer.is_problem
        assert int(answer.headers["Retry-After"]) > 0
    assert api.snapshot() == before


# --- batch ------------------------------------------------------------------------------------


def test_a_batch_answers_one_command_per_certificate_and_an_error_per_refused_item(api):
    items = [issue_body(n=1), {**issue_body(n=2), "gsrn": "123"}, issue_body(n=3), {"type": 1}]
    answer = api.post(
        "/v1/certificates/batch", {"certificates": items}, who=ISSUER, roles=("issuer",)
    )
    assert answer.status == 202, answer.body
    assert (answer.body["accepted"], answer.body["refused"]) == (2, 2)
    by_index = {item["index"]: item for item in answer.body["commands"]}
    assert by_index[0]["command"]["kind"] == "issue"
    assert by_index[1]["error"]["status"] == 422
    assert by_index[1]["error"]["errors"][0]["field"] == "gsrn"
    assert by_index[3]["error"]["status"] == 422
    assert api.snapshot()[1] == 2


@pytest.mark.parametrize(
    "bad",
    [{"type": "wind"}, {"type": 1}, {"quantity_wh": "much"}, {"start": "noon"}, {"owner": None}],
    ids=["type-unknown", "type-not-a-string", "quantity", "start", "owner"],
)
def test_a_batch_item_with_a_bad_field_is_422_naming_it_like_its_rule_violations(api, bad):
    """Every item-level refusal of a batch is 422 with the field named (problem+json), whether
    the field is mistyped or breaks a rule; only the batch's own shape is 400."""
    items = [{**issue_body(n=1), **bad}, {**issue_body(n=2), "gsrn": "123"}]
    before = api.snapshot()
    answer = api.post(
        "/v1/certificates/batch", {"certificates": items}, who=ISSUER, roles=("issuer",)
    )
    assert answer.status == 202, answer.body
    errors = [item["error"] for item in answer.body["commands"]]
    assert [e["status"] for e in errors] == [422, 422]
    assert [e["errors"][0]["field"] for e in errors] == [next(iter(bad)), "gsrn"]
    assert all(e["type"] and e["title"] and e["detail"] for e in errors)
    assert api.snapshot() == before  # nothing recorded


def test_a_retry_while_the_first_request_may_still_run_is_told_when_to_send_it_again(
    api, world, monkeypatch
):
    """The first send recorded the command and stopped before its reservation (a function
    that timed out). Until it is surely over (the API function's timeout), a retry changes
    nothing and says when to come back (409, Retry-After); after that, it finishes the
    command."""
    from chalicelib.usecases import holds

    body = {"certificate_id": world.P[0], "slice_id": world.P[1], "receiver": "bob"}
    body["quantity_wh"] = 1000

    def stops(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("the function timed out")

    monkeypatch.setattr(holds, "take", stops)
    assert api.post("/v1/transfers", body, key="overlap").status == 500
    monkeypatch.undo()
    before = api.snapshot()
    api.services.clock.advance(10)
    again = api.post("/v1/transfers", body, key="overlap")
    timeout = api.services.settings.lambda_timeout_s
    assert again.status == 409, again.body
    assert "still being processed" in again.body["detail"]
    assert again.headers["Retry-After"] == str(int(timeout) + 1 - 10)  # + the clocks' margin
    assert api.snapshot() == before
    api.services.clock.advance(timeout)
    later = api.post("/v1/transfers", body, key="overlap")
    assert later.status == 202 and later.body["command_id"] == again.body["instance"]


def test_a_replayed_batch_answers_the_same_commands(api):
    body = {"certificates": [issue_body(n=1), issue_body(n=2)]}
    first = api.post("/v1/certificates/batch", body, who=ISSUER, roles=("issuer",), key="b")
    again = api.post("/v1/certificates/batch", body, who=ISSUER, roles=("issuer",), key="b")
    assert again.status == 202 and again.body == first.body


# --- slice ------------------------------------------------------------------------------------


def test_the_owner_slices_a_slice_and_it_shows_as_reserved(api, world):
    answer = api.post(
        f"/v1/certificates/{world.P[0]}/slices",
        {"slice_id": world.P[1], "quantities_wh": [250, 750]},
    )
    accepted(answer, "slice")
    cert = api.get(f"/v1/certificates/{world.P[0]}").body
    assert [(s["slice_id"], s["state"]) for s in cert["slices"]] == [(world.P[1], "reserved")]


def test_a_reserved_slice_cannot_be_sliced_again(api, world):
    api.post(
        f"/v1/certificates/{world.P[0]}/slices", {"slice_id": world.P[1], "quantities_wh": [1, 999]}
    )
    answer = api.post(
        f"/v1/certificates/{world.P[0]}/slices", {"slice_id": world.P[1], "quantities_wh": [2, 998]}
    )
    assert answer.status == 409 and answer.is_problem


# --- transfer ---------------------------------------------------------------------------------


def test_the_owner_transfers_a_whole_slice(api, world):
    body = accepted(api.post("/v1/transfers", transfer_body(world.P)), "transfer")
    assert body["certificate_id"] == world.P[0]
    view = api.get(f"/v1/commands/{body['command_id']}").body
    assert (view["receiver"], view["quantity_wh"], view["slices"]) == ("bob", 1000, [ref(world.P)])


def test_the_owner_transfers_part_of_a_slice(api, world):
    accepted(api.post("/v1/transfers", transfer_body(world.P, quantity_wh=1)), "transfer")


def test_a_reserved_slice_cannot_be_transferred_twice(api, world):
    accepted(api.post("/v1/transfers", transfer_body(world.P, "bob")), "transfer")
    before = api.snapshot()
    answer = api.post("/v1/transfers", transfer_body(world.P, "carol"))
    assert answer.status == 409 and answer.is_problem
    assert answer.body["instance"] == world.P[1]
    assert api.snapshot() == before


def test_a_caller_lists_its_own_commands_of_every_kind_by_status_and_time(api, world):
    """GET /v1/commands: an issuer follows its issues without an id in hand; an owner sees
    its slices and transfers, not the issues made for it; filters by kind, status, time."""
    sent = accepted(api.post("/v1/transfers", transfer_body(world.P)), "transfer")
    issued = api.get("/v1/commands?kind=issue&limit=100", who=ISSUER, roles=("issuer",)).body
    assert len(issued["items"]) == 4 and issued.get("next_cursor") is None  # the world's four
    assert {c["kind"] for c in issued["items"]} == {"issue"}
    assert {c["status"] for c in issued["items"]} == {"COMMITTED"}
    pages, cursor = [], None
    while True:  # two at a time, each once
        query = "?limit=2" + (f"&cursor={cursor}" if cursor else "")
        body = api.get(f"/v1/commands{query}", who=ISSUER, roles=("issuer",)).body
        pages += [c["command_id"] for c in body["items"]]
        cursor = body.get("next_cursor")
        if cursor is None:
            break
    assert pages == [c["command_id"] for c in issued["items"]]
    mine = api.get("/v1/commands").body["items"]
    assert [(c["kind"], c["command_id"]) for c in mine] == [("transfer", sent["command_id"])]
    assert api.get("/v1/commands?status=COMMITTED").body["items"] == []
    assert len(api.get("/v1/commands?status=ACCEPTED&kind=transfer").body["items"]) == 1
    created = datetime.fromisoformat(mine[0]["created_at"])
    after = urllib.parse.quote((created + timedelta(seconds=1)).isoformat())
    at = urllib.parse.quote(created.isoformat())
    assert api.get(f"/v1/commands?created_after={after}").body["items"] == []
    assert len(api.get(f"/v1/commands?created_after={at}").body["items"]) == 1
    assert api.get(f"/v1/commands?created_before={at}").body["items"] == []
    for bad, status in [
        ("kind=sell", 400),
        ("status=DONE", 400),
        ("created_after=2026-01-01T00:00:00", 400),  # no time zone
        ("limit=0", 400),
        ("cursor=not-a-cursor", 422),
        (f"cursor={api.get('/v1/transfers?limit=1').body.get('next_cursor') or 'e30='}", 422),
    ]:
        answer = api.get(f"/v1/commands?{bad}")
        assert (answer.status, answer.is_problem) == (status, True), (bad, answer.body)


def test_a_receivers_transfer_list_names_the_sender_the_slice_received_and_the_commit_time(
    api, world
):
    body = accepted(api.post("/v1/transfers", transfer_body(world.P, quantity_wh=400)), "transfer")
    command = api.book.get_command(body["command_id"])
    committed_at = T0 + timedelta(minutes=5)
    process.apply_outcome(api.book, command, committed_at=committed_at)
    api.book.transition(
        command.command_id,
        Transition(CommandStatus.ACCEPTED, CommandStatus.COMMITTED, committed_at),
    )
    (received,) = api.get("/v1/transfers", who="bob").body["items"]
    (sent,) = api.get("/v1/transfers").body["items"]
    bobs_slice = api.get(f"/v1/certificates/{world.P[0]}", who="bob").body["slices"][0]
    assert received["sender"] == sent["sender"] == "alice"
    assert received["slices"] == [
        {"certificate_id": world.P[0], "slice_id": bobs_slice["slice_id"]}
    ]
    assert sent["slices"] == [{"certificate_id": world.P[0], "slice_id": world.P[1]}]
    assert received["updated_at"] == sent["updated_at"]
    assert datetime.fromisoformat(received["updated_at"]) == committed_at


def test_a_committed_transfer_shows_each_owner_only_their_own_slices(api, world):
    body = accepted(api.post("/v1/transfers", transfer_body(world.P, quantity_wh=400)), "transfer")
    command = api.book.get_command(body["command_id"])
    process.apply_outcome(api.book, command)
    api.book.transition(
        command.command_id, Transition(CommandStatus.ACCEPTED, CommandStatus.COMMITTED, T0)
    )
    bobs = api.get(f"/v1/certificates/{world.P[0]}", who="bob").body["slices"]
    assert [(s["owner"], s["quantity_wh"], s["state"]) for s in bobs] == [("bob", 400, "available")]
    alices = api.get(f"/v1/certificates/{world.P[0]}").body["slices"]
    assert sorted((s["owner"], s["quantity_wh"], s["state"]) for s in alices) == [
        ("alice", 400, "transferred"),
        ("alice", 600, "available"),
    ]
    issuers = api.get(f"/v1/certificates/{world.P[0]}", who=ISSUER, roles=("issuer",)).body
    assert len(issuers["slices"]) == 3
    assert [c["command_id"] for c in api.get("/v1/transfers", who="bob").body["items"]] == [
        command.command_id
    ]
    assert [c["certificate_id"] for c in api.get("/v1/certificates", who="bob").body["items"]] == [
        world.B[0],  # 11:00
        world.P[0],  # 10:00
    ]


# --- claim ------------------------------------------------------------------------------------


def test_the_owner_claims_production_against_consumption(api, world):
    body = accepted(api.post("/v1/claims", claim_body(world.P, world.C)), "claim")
    assert body["certificate_id"] == world.P[0]
    for pair in (world.P, world.C):
        (only,) = api.get(f"/v1/certificates/{pair[0]}").body["slices"]
        assert only["state"] == "reserved"
    listed = api.get("/v1/claims").body["items"]
    assert [c["command_id"] for c in listed] == [body["command_id"]]
    assert api.get("/v1/claims", who="bob").body["items"] == []


def test_a_claim_of_a_trial_production_against_a_real_consumption_is_422_and_changes_nothing(
    api, world
):
    # The registry refuses such an allocation ("not of the same trial type"), but only after
    # our production allocation may have committed: refused here, before anything is recorded.
    trial = api.active(n=5, attributes={"isTrial": "TRUE"})
    before = api.snapshot()
    answer = api.post("/v1/claims", claim_body(trial, world.C))
    assert answer.status == 422 and answer.is_problem
    assert "trial type" in answer.body["detail"]
    assert api.snapshot() == before
    # Upstream compares the values exactly ("TRUE" is not "true"), keys ignoring case.
    spelled_otherwise = api.active(n=7, type="consumption", attributes={"IsTrial": "true"})
    answer = api.post("/v1/claims", claim_body(trial, spelled_otherwise))
    assert answer.status == 422 and "trial type" in answer.body["detail"]
    also_trial = api.active(n=6, type="consumption", attributes={"IsTrial": "TRUE"})
    accepted(api.post("/v1/claims", claim_body(trial, also_trial)), "claim")


def test_a_claim_that_could_land_after_a_certificate_expires_is_422(api, world):
    days = api.services.settings.certificate_expiry_days
    start = (api.services.clock() - timedelta(days=days, hours=-1)).replace(
        minute=0, second=0, microsecond=0
    )
    old = api.active(n=5, type="consumption", start=start.isoformat())
    before = api.snapshot()
    answer = api.post("/v1/claims", claim_body(world.P, old))
    assert answer.status == 422 and answer.is_problem
    assert "expires before the claim" in answer.body["detail"]
    assert api.snapshot() == before


# --- withdraw ---------------------------------------------------------------------------------


def test_an_issuer_withdraws_a_certificate_and_its_slices_cannot_be_spent_meanwhile(api, world):
    accepted(
        api.post(f"/v1/certificates/{world.P[0]}/withdraw", {}, who=ISSUER, roles=("issuer",)),
        "withdraw",
    )
    answer = api.post("/v1/transfers", transfer_body(world.P))
    assert answer.status == 409 and answer.is_problem


def test_a_withdrawal_may_be_sent_without_a_body(api, world):
    answer = api.post(
        f"/v1/certificates/{world.P[0]}/withdraw",
        who=ISSUER,
        roles=("issuer",),
        raw=b"",
        headers={"Content-Type": None},
    )
    accepted(answer, "withdraw")


# --- reads and owner isolation ----------------------------------------------------------------


def test_a_command_reads_for_its_caller_and_operators_and_as_404_for_anyone_else(api, world):
    command_id = accepted(api.post("/v1/transfers", transfer_body(world.P)), "transfer")[
        "command_id"
    ]
    assert api.get(f"/v1/commands/{command_id}").status == 200
    assert api.get(f"/v1/commands/{command_id}", who="op", roles=("operator",)).status == 200
    for who, roles in (("bob", ()), ("mallory", ()), (ISSUER, ("issuer",))):
        answer = api.get(f"/v1/commands/{command_id}", who=who, roles=roles)
        assert answer.status == 404 and answer.is_problem
    missing = api.get("/v1/commands/no-such-command")
    assert (
        missing.status == 404
        and missing.body["detail"].replace("no-such-command", command_id)
        == api.get(f"/v1/commands/{command_id}", who="bob").body["detail"]
    )


def test_the_owners_certificates_are_listed_newest_period_first_and_paged(api, world):
    late = api.active(n=5, start="2026-06-01T12:00:00+00:00")
    everything = api.get("/v1/certificates").body
    assert everything.get("next_cursor") is None
    starts = [c["start"] for c in everything["items"]]
    assert starts == sorted(starts, reverse=True)
    assert everything["items"][0]["certificate_id"] == late[0]
    assert {c["certificate_id"] for c in everything["items"]} == {
        late[0],
        world.P[0],
        world.C[0],
        world.D[0],
    }
    seen, cursor = [], None
    while True:
        page = api.get("/v1/certificates?limit=1" + (f"&cursor={cursor}" if cursor else "")).body
        seen += [c["certificate_id"] for c in page["items"]]
        cursor = page.get("next_cursor")
        if not cursor:
            break
    assert seen == [c["certificate_id"] for c in everything["items"]]


def test_the_certificate_list_filters_by_type_grid_area_and_period(api, world):
    def ids(query: str) -> set[str]:
        answer = api.get(f"/v1/certificates?{query}")
        assert answer.status == 200, answer.body
        return {c["certificate_id"] for c in answer.body["items"]}

    assert ids("type=production") == {world.P[0]}
    assert ids("grid_area=DK2") == {world.D[0]}
    assert ids("type=consumption&grid_area=DK1") == {world.C[0]}
    assert ids("start=2026-06-01T10:00:00Z&end=2026-06-01T11:00:00Z") == {
        world.P[0],
        world.C[0],
        world.D[0],
    }
    assert ids("start=2026-06-01T10:15:00Z") == set()
    # the same moments written in another zone
    assert ids("start=2026-06-01T12:00:00%2B02:00&end=2026-06-01T12:15:00%2B02:00") == {
        world.P[0],
        world.C[0],
        world.D[0],
    }
    assert ids("type=production") and not ids("type=production&grid_area=DK2")


def test_the_aggregate_sums_the_owners_available_quantity_per_bucket(api, world):
    api.active(n=5, start="2026-06-01T10:15:00+00:00", minutes=15, quantity_wh=5)
    hourly = api.get("/v1/certificates/aggregate?granularity=hour&type=production").body
    assert hourly["buckets"] == [
        {"start": "2026-06-01T10:00:00Z", "quantity_wh": 1005, "certificates": 2}
    ]
    accepted(api.post("/v1/transfers", transfer_body(world.P)), "transfer")  # now reserved
    daily = api.get("/v1/certificates/aggregate?granularity=day").body
    assert daily["buckets"] == [
        {"start": "2026-06-01T00:00:00Z", "quantity_wh": 2005, "certificates": 3}
    ]
    assert api.get("/v1/certificates/aggregate?granularity=month", who="bob").body["buckets"] == [
        {"start": "2026-06-01T00:00:00Z", "quantity_wh": 1000, "certificates": 1}
    ]


def test_transfers_list_the_callers_transfers_newest_first_with_a_cursor(api, world):
    second = api.active(n=6)
    made = []
    for pair in (world.P, second):
        api.services.clock.advance(60)
        made.append(accepted(api.post("/v1/transfers", transfer_body(pair)), "transfer"))
    first_page = api.get("/v1/transfers?limit=1").body
    assert [c["command_id"] for c in first_page["items"]] == [made[1]["command_id"]]
    rest = api.get(f"/v1/transfers?limit=1&cursor={first_page['next_cursor']}").body
    assert [c["command_id"] for c in rest["items"]] == [made[0]["command_id"]]
    assert api.get("/v1/transfers", who="bob").body["items"] == []  # nothing received yet
    assert api.get("/v1/transfers?limit=0").status == 400


# --- operations -------------------------------------------------------------------------------


def test_an_operator_lists_the_commands_that_are_stuck(api, world):
    command_id = accepted(api.post("/v1/transfers", transfer_body(world.P)), "transfer")[
        "command_id"
    ]

    def stuck(query: str) -> list[str]:
        answer = api.get(f"/v1/ops/commands?{query}", who="op", roles=("operator",))
        assert answer.status == 200, answer.body
        return [c["command_id"] for c in answer.body["items"]]

    api.services.clock.advance(1)  # open commands are those created before now
    assert command_id in stuck("status=ACCEPTED")
    assert stuck("status=IN_DOUBT") == []
    assert stuck("status=ACCEPTED&older_than_s=3600") == []
    api.services.clock.advance(7200)
    assert command_id in stuck("status=ACCEPTED&older_than_s=3600")


def in_doubt_transfer(api: Api, pair) -> str:
    command_id = accepted(api.post("/v1/transfers", transfer_body(pair)), "transfer")["command_id"]
    for current, target in (
        (CommandStatus.ACCEPTED, CommandStatus.SENDING),
        (CommandStatus.SENDING, CommandStatus.IN_DOUBT),
    ):
        api.book.transition(command_id, Transition(current, target, T0, changes={"error": "?"}))
    return command_id


def test_an_operator_resolves_an_in_doubt_command_as_committed(api, world):
    command_id = in_doubt_transfer(api, world.P)
    answer = api.post(
        f"/v1/ops/commands/{command_id}/resolve",
        {"outcome": "committed", "reason": "the registry shows it"},
        who="op",
        roles=("operator",),
        key=None,
    )
    assert answer.status == 200, answer.body
    assert answer.body["status"] == "COMMITTED"
    (bobs,) = api.get(f"/v1/certificates/{world.P[0]}", who="bob").body["slices"]
    assert (bobs["quantity_wh"], bobs["state"]) == (1000, "available")


def test_an_operator_resolves_an_in_doubt_command_as_rejected_and_the_slice_is_free(api, world):
    command_id = in_doubt_transfer(api, world.P)
    answer = api.post(
        f"/v1/ops/commands/{command_id}/resolve",
        {"outcome": "rejected", "reason": "the registry never saw it"},
        who="op",
        roles=("operator",),
    )
    assert answer.status == 200 and answer.body["status"] == "REJECTED"
    assert "never saw it" in answer.body["error"]
    (only,) = api.get(f"/v1/certificates/{world.P[0]}").body["slices"]
    assert only["state"] == "available"
    again = api.post(
        f"/v1/ops/commands/{command_id}/resolve",
        {"outcome": "rejected", "reason": "twice"},
        who="op",
        roles=("operator",),
    )
    assert again.status == 409 and again.is_problem


def test_an_operator_runs_a_reconciliation_pass_that_re_drives_a_lost_message(api):
    working = api.services.queue
    api.services.queue = SqsCommandQueue(api.sqs, api.queue_url + "-gone")
    command_id = accepted(
        api.post("/v1/certificates", issue_body(), who=ISSUER, roles=("issuer",)), "issue"
    )["command_id"]
    api.services.queue = working
    assert api.snapshot()[1] == 0  # the message is lost; the command is the outbox
    api.services.clock.advance(api.services.settings.redrive_after_s + 1)
    answer = api.post("/v1/ops/reconcile", {}, who="op", roles=("operator",), key=None)
    assert answer.status == 200, answer.body
    assert answer.body["actions"].get("redriven") == 1
    assert answer.body["complete"] is True
    assert api.snapshot()[1] == 1
    assert api.book.get_command(command_id).status == CommandStatus.ACCEPTED


# --- the OpenAPI document ---------------------------------------------------------------------


def served_document(api: Api) -> dict[str, Any]:
    answer = api.get("/v1/openapi.json", who=None)
    assert answer.status == 200
    assert answer.headers["Content-Type"] == "application/json"
    return answer.body


def _refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref":
                yield value
            else:
                yield from _refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from _refs(value)


# --- bad input on every write leaves the book and the queue as they were ----------------------


@dataclass(frozen=True)
class Write:
    path: str
    body: dict[str, Any]
    who: str = "alice"
    roles: tuple[str, ...] = ()
    idempotent: bool = True
    expects: int = 202


def writes(world: World) -> dict[str, Write]:
    """A valid request of every write of the API, for the world above."""
    issuer, operator = dict(who=ISSUER, roles=("issuer",)), dict(who="op", roles=("operator",))
    return {
        "issue": Write("/v1/certificates", issue_body(n=50), **issuer),
        "batch": Write("/v1/certificates/batch", {"certificates": [issue_body(n=51)]}, **issuer),
        "slice": Write(
            f"/v1/certificates/{world.P[0]}/slices",
            {"slice_id": world.P[1], "quantities_wh": [400, 600]},
        ),
        "transfer": Write("/v1/transfers", transfer_body(world.P)),
        "claim": Write("/v1/claims", claim_body(world.P, world.C)),
        "withdraw": Write(f"/v1/certificates/{world.P[0]}/withdraw", {}, **issuer),
        "resolve": Write(
            "/v1/ops/commands/no-such-command/resolve",
            {"outcome": "rejected", "reason": "checked"},
            idempotent=False,
            expects=404,
            **operator,
        ),
        "reconcile": Write("/v1/ops/reconcile", {}, idempotent=False, expects=200, **operator),
    }


WRITES = ["issue", "batch", "slice", "transfer", "claim", "withdraw", "resolve", "reconcile"]
IDEMPOTENT_WRITES = WRITES[:6]

# Broken requests any write must refuse: (how the request is broken, expected status).
TRANSPORT = {
    "no-token": 401,
    "other-secret": 401,
    "expired-token": 401,
    "no-content-type": 415,
    "text-plain": 415,
    "form-encoded": 415,
    "invalid-json": 400,
    "not-utf8": 400,
    "json-array": 400,
    "json-string": 400,
    "json-null": 400,
    "deeply-nested": 400,
    "over-256-kib": 413,
}
KEYS = {"no-key": 400, "empty-key": 400, "key-too-long": 400, "key-with-newline": 400}


def broken(api: Api, write: Write, how: str) -> Answer:
    body = json.dumps(write.body)
    headers: dict[str, str | None] = {}
    who = write.who
    raw: str | bytes = body
    key: str | None = "auto" if write.idempotent else None
    match how:
        case "no-token":
            who = None
        case "other-secret":
            headers["Authorization"] = "Bearer " + mint_token("x" * 40, write.who, write.roles)
        case "expired-token":
            headers["Authorization"] = "Bearer " + mint_token(
                SECRET, write.who, write.roles, lifetime_s=-1
            )
        case "no-content-type":
            headers["Content-Type"] = None
        case "text-plain":
            headers["Content-Type"] = "text/plain"
        case "form-encoded":
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        case "invalid-json":
            raw = body[:-1]
        case "not-utf8":
            raw = b'{"a": "\xff\xfe"}'
        case "json-array":
            raw = json.dumps([write.body])
        case "json-string":
            raw = json.dumps("{}")
        case "json-null":
            raw = "null"
        case "deeply-nested":
            raw = "[" * 50_000 + "]" * 50_000
        case "over-256-kib":
            raw = json.dumps({**write.body, "padding": "x" * (256 * 1024)})
        case "no-key":
            key = None
        case "empty-key":
            key, headers["Idempotency-Key"] = None, ""
        case "key-too-long":
            key = "k" * 129
        case "key-with-newline":
            key = "line\nbreak"
    return api.post(write.path, who=who, roles=write.roles, key=key, headers=headers, raw=raw)


def assert_refused_without_a_trace(api: Api, send, status: int) -> Answer:
    before = api.snapshot()
    answer = send()
    assert answer.status == status, answer.body
    assert answer.is_problem, answer
    assert api.snapshot() == before
    return answer


@pytest.mark.parametrize("write", WRITES)
def test_each_write_takes_its_valid_request(api, world, write):
    spec = writes(world)[write]
    answer = api.post(
        spec.path,
        spec.body,
        who=spec.who,
        roles=spec.roles,
        key="auto" if spec.idempotent else None,
    )
    assert answer.status == spec.expects, answer.body


def other_body(world: World, write: str) -> tuple[str, dict[str, Any]]:
    """The same write with another body (or, for a withdrawal, on another certificate)."""
    spec = writes(world)[write]
    match write:
        case "issue":
            return spec.path, issue_body(n=60)
        case "batch":
            return spec.path, {"certificates": [issue_body(n=61)]}
        case "slice":
            return spec.path, {"slice_id": world.P[1], "quantities_wh": [500, 500]}
        case "transfer":
            return spec.path, transfer_body(world.P, receiver="carol")
        case "claim":
            return spec.path, claim_body(world.P, world.C, 999) | {"quantity_wh": 999}
        case _:
            return f"/v1/certificates/{world.D[0]}/withdraw", {}


@pytest.mark.parametrize("write", IDEMPOTENT_WRITES)
def test_a_reused_idempotency_key_with_another_body_is_409_and_changes_nothing(api, world, write):
    spec = writes(world)[write]
    first = api.post(spec.path, spec.body, who=spec.who, roles=spec.roles, key="reused")
    assert first.status == 202, first.body
    path, body = other_body(world, write)
    before = api.snapshot()
    answer = api.post(path, body, who=spec.who, roles=spec.roles, key="reused")
    assert api.snapshot() == before
    # A batch too is refused whole, before any of its items is recorded.
    assert answer.status == 409 and answer.is_problem


def nested(depth: int) -> list[Any]:
    value: list[Any] = []
    for _ in range(depth):
        value = [value]
    return value


def _without(body: dict[str, Any], field: str) -> dict[str, Any]:
    return {k: v for k, v in body.items() if k != field}


def field_cases(world: World) -> dict[str, tuple[str, Any, int]]:
    """Bad bodies per write: (write, body, status). World-dependent, hence built per test."""
    issue = issue_body(n=70)
    transfer = transfer_body(world.P)
    claim = claim_body(world.P, world.C)
    slice_ = {"slice_id": world.P[1], "quantities_wh": [400, 600]}
    cases: dict[str, tuple[str, Any, int]] = {}
    for field in ("type", "gsrn", "grid_area", "start", "end", "quantity_wh", "owner"):
        cases[f"issue-without-{field}"] = ("issue", _without(issue, field), 400)
    cases |= {
        "issue-extra-field": ("issue", {**issue, "colour": "green"}, 400),
        "issue-type-unknown": ("issue", {**issue, "type": "storage"}, 400),
        "issue-gsrn-number": ("issue", {**issue, "gsrn": 571234567890123456}, 400),
        "issue-gsrn-17-digits": ("issue", {**issue, "gsrn": "57123456789012345"}, 422),
        "issue-gsrn-letters": ("issue", {**issue, "gsrn": "57123456789012345X"}, 422),
        "issue-grid-area-lowercase": ("issue", {**issue, "grid_area": "dk1"}, 400),
        "issue-owner-empty": ("issue", {**issue, "owner": ""}, 400),
        "issue-owner-control-char": ("issue", {**issue, "owner": "al\nice"}, 400),
        "issue-quantity-zero": ("issue", {**issue, "quantity_wh": 0}, 422),
        "issue-quantity-negative": ("issue", {**issue, "quantity_wh": -1}, 422),
        "issue-quantity-2^32": ("issue", {**issue, "quantity_wh": 2**32}, 422),
        "issue-quantity-huge": ("issue", {**issue, "quantity_wh": 10**40}, 422),
        "issue-quantity-float": ("issue", {**issue, "quantity_wh": 10.5}, 400),
        # 10.0 is an integer to JSON Schema (the OpenAPI document): it is taken as 10.
        "issue-quantity-string": ("issue", {**issue, "quantity_wh": "10"}, 400),
        "issue-quantity-bool": ("issue", {**issue, "quantity_wh": True}, 400),
        "issue-start-naive": ("issue", {**issue, "start": "2026-06-01T10:00:00"}, 400),
        "issue-start-not-a-time": ("issue", {**issue, "start": "ten o'clock"}, 400),
        "issue-period-2h": ("issue", issue_body(n=70, minutes=120), 422),
        "issue-period-10min": ("issue", issue_body(n=70, minutes=10), 422),
        "issue-period-backwards": ("issue", issue_body(n=70, minutes=-60), 422),
        "issue-start-misaligned": (
            "issue",
            issue_body(n=70, start="2026-06-01T10:05:00+00:00"),
            422,
        ),
        "issue-attributes-list": ("issue", {**issue, "attributes": ["a"]}, 400),
        "issue-attribute-number": ("issue", {**issue, "attributes": {"a": 1}}, 400),
        "issue-too-many-attributes": (
            "issue",
            {**issue, "attributes": {f"k{i}": "v" for i in range(33)}},
            400,
        ),
        "issue-already-issued": ("issue", issue_body(n=1), 409),
        "batch-without-certificates": ("batch", {}, 400),
        "batch-empty": ("batch", {"certificates": []}, 400),
        "batch-101": ("batch", {"certificates": [issue] * 101}, 400),
        "batch-not-a-list": ("batch", {"certificates": issue}, 400),
        "batch-items-not-objects": ("batch", {"certificates": [1, "a"]}, 400),
        "batch-item-nested-deeply": ("batch", {"certificates": [{"a": nested(300)}]}, 400),
        "slice-without-slice-id": ("slice", _without(slice_, "slice_id"), 400),
        "slice-without-quantities": ("slice", _without(slice_, "quantities_wh"), 400),
        "slice-quantities-not-a-list": ("slice", {**slice_, "quantities_wh": 1000}, 400),
        "slice-quantities-strings": ("slice", {**slice_, "quantities_wh": ["400", "600"]}, 400),
        "slice-quantities-bools": ("slice", {**slice_, "quantities_wh": [True, 999]}, 400),
        "slice-quantities-empty": ("slice", {**slice_, "quantities_wh": []}, 400),
        "slice-quantities-short": ("slice", {**slice_, "quantities_wh": [400, 500]}, 422),
        "slice-quantities-over": ("slice", {**slice_, "quantities_wh": [400, 601]}, 422),
        "slice-one-part": ("slice", {**slice_, "quantities_wh": [1000]}, 422),
        "slice-zero-part": ("slice", {**slice_, "quantities_wh": [0, 1000]}, 422),
        "slice-negative-part": ("slice", {**slice_, "quantities_wh": [-1, 1001]}, 422),
        "slice-over-32-bits": ("slice", {**slice_, "quantities_wh": [2**32, 1000 - 2**32]}, 422),
        "slice-101-parts": ("slice", {**slice_, "quantities_wh": [1] * 101}, 400),
        "slice-unknown-slice": ("slice", {**slice_, "slice_id": "no-such-slice"}, 404),
        "slice-someone-elses": (
            "slice@B",
            {"slice_id": world.B[1], "quantities_wh": [1, 999]},
            404,
        ),
        "slice-unknown-certificate": ("slice@nowhere", slice_, 404),
        "transfer-without-receiver": ("transfer", _without(transfer, "receiver"), 400),
        "transfer-without-quantity": ("transfer", _without(transfer, "quantity_wh"), 400),
        "transfer-quantity-zero": ("transfer", {**transfer, "quantity_wh": 0}, 422),
        "transfer-quantity-negative": ("transfer", {**transfer, "quantity_wh": -1}, 422),
        "transfer-quantity-2^32": ("transfer", {**transfer, "quantity_wh": 2**32}, 422),
        "transfer-quantity-bool": ("transfer", {**transfer, "quantity_wh": True}, 400),
        "transfer-quantity-float": ("transfer", {**transfer, "quantity_wh": 1.5}, 400),
        "transfer-more-than-the-slice": ("transfer", {**transfer, "quantity_wh": 1001}, 409),
        "transfer-to-self": ("transfer", {**transfer, "receiver": "alice"}, 422),
        "transfer-receiver-empty": ("transfer", {**transfer, "receiver": ""}, 400),
        "transfer-unknown-certificate": ("transfer", {**transfer, "certificate_id": "nope"}, 404),
        "transfer-unknown-slice": ("transfer", {**transfer, "slice_id": "nope"}, 404),
        "transfer-someone-elses": ("transfer", transfer_body(world.B, receiver="carol"), 404),
        "transfer-id-too-long": ("transfer", {**transfer, "slice_id": "s" * 65}, 400),
        "claim-without-consumption": ("claim", _without(claim, "consumption"), 400),
        "claim-consumption-not-an-object": ("claim", {**claim, "consumption": "C"}, 400),
        "claim-quantity-zero": ("claim", {**claim, "quantity_wh": 0}, 422),
        "claim-quantity-2^32": ("claim", {**claim, "quantity_wh": 2**32}, 422),
        "claim-quantity-string": ("claim", {**claim, "quantity_wh": "1000"}, 400),
        "claim-more-than-the-slices": ("claim", {**claim, "quantity_wh": 1001}, 409),
        "claim-grid-areas-differ": ("claim", claim_body(world.P, world.D), 422),
        "claim-sides-swapped": ("claim", claim_body(world.C, world.P), 422),
        "claim-one-certificate": ("claim", claim_body(world.P, world.P), 422),
        "claim-someone-elses-production": ("claim", claim_body(world.B, world.C), 404),
        "claim-unknown-consumption": (
            "claim",
            {**claim, "consumption": {"certificate_id": world.C[0], "slice_id": "nope"}},
            404,
        ),
        "withdraw-with-fields": ("withdraw", {"reason": "x"}, 400),
        "withdraw-unknown-certificate": ("withdraw@nowhere", {}, 404),
        "withdraw-by-the-owner": ("withdraw-as-owner", {}, 403),
        "resolve-without-outcome": ("resolve", {"reason": "x"}, 400),
        "resolve-unknown-outcome": ("resolve", {"outcome": "maybe", "reason": "x"}, 400),
        "resolve-empty-reason": ("resolve", {"outcome": "committed", "reason": ""}, 400),
        "resolve-unknown-command": ("resolve", {"outcome": "committed", "reason": "x"}, 404),
        "reconcile-with-fields": ("reconcile", {"now": "please"}, 400),
    }
    return cases


FIELD_CASES = list(field_cases(World(("p", "ps"), ("c", "cs"), ("d", "ds"), ("b", "bs"))))


def test_a_slice_of_a_certificate_still_being_issued_is_409_for_its_owner(api):
    certificate_id = api.issue(n=80).body["certificate_id"]
    assert_refused_without_a_trace(
        api,
        lambda: api.post(
            f"/v1/certificates/{certificate_id}/slices", {"slice_id": "s", "quantities_wh": [1, 2]}
        ),
        409,
    )


def test_a_withdrawal_of_a_certificate_still_being_issued_is_409(api):
    certificate_id = api.issue(n=81).body["certificate_id"]
    assert_refused_without_a_trace(
        api,
        lambda: api.post(
            f"/v1/certificates/{certificate_id}/withdraw", {}, who=ISSUER, roles=("issuer",)
        ),
        409,
    )


def test_a_spent_slice_cannot_be_spent_again(api, world):
    command_id = accepted(api.post("/v1/transfers", transfer_body(world.P)), "transfer")[
        "command_id"
    ]
    command = api.book.get_command(command_id)
    process.apply_outcome(api.book, command)
    for send in (
        lambda: api.post("/v1/transfers", transfer_body(world.P, receiver="carol")),
        lambda: api.post("/v1/claims", claim_body(world.P, world.C)),
        lambda: api.post(
            f"/v1/certificates/{world.P[0]}/slices",
            {"slice_id": world.P[1], "quantities_wh": [1, 999]},
        ),
    ):
        answer = assert_refused_without_a_trace(api, send, 409)
        assert "transferred" in answer.body["detail"]


@pytest.fixture(scope="class")
def shared() -> Iterator[tuple[Api, World]]:
    """One book for every request that must change nothing (each test proves that itself with
    a snapshot of the whole table and the queue, before and after), so that hundreds of them
    need not build the world again. Class-scoped: moto's mock is process-wide, and this one
    must be gone before the next test's own mock starts."""
    for key in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_DYNAMODB", "AWS_ENDPOINT_URL_SQS"):
        os.environ.pop(key, None)
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    with mock_aws():
        session = boto3.Session(region_name="eu-west-1")
        resources.create(session.client("dynamodb"), session.client("sqs"), settings())
        services = composition.build(settings(), session=session)
        services.clock = Clock()
        app_module.use_services(services)
        with Client(app_module.app) as client:
            api = Api(client, services, session)
            yield api, world_of(api)
        app_module.use_services(None)


class TestRequestsThatChangeNothing:
    """Reads, refusals and the contract document, on one shared book."""

    @pytest.fixture(autouse=True)
    def _services(self, shared):
        app_module.use_services(shared[0].services)

    @pytest.mark.parametrize("case", list(forged_tokens()))
    def test_a_missing_bad_or_expired_token_is_401_on_reads(self, shared, case):
        api = shared[0]
        authorization = forged_tokens()[case]
        headers = {"Authorization": authorization} if authorization else {}
        answer = Api._answer(api.client.http.get("/v1/certificates", headers=headers))
        assert answer.status == 401 and answer.is_problem

    def test_issuing_needs_the_issuer_role(self, shared):
        api = shared[0]
        before = api.snapshot()
        answer = api.post("/v1/certificates", issue_body(), who="alice", roles=("operator",))
        assert answer.status == 403 and answer.is_problem
        assert api.snapshot() == before

    def test_someone_elses_certificate_reads_exactly_like_a_missing_one(self, shared):
        api, world = shared
        foreign = api.get(f"/v1/certificates/{world.P[0]}", who="bob")
        missing = api.get("/v1/certificates/no-such-certificate", who="bob")
        assert foreign.status == missing.status == 404
        assert foreign.is_problem and missing.is_problem
        assert foreign.body["detail"].replace(world.P[0], "X") == missing.body["detail"].replace(
            "no-such-certificate", "X"
        )

    @pytest.mark.parametrize(
        ("query", "status"),
        [
            ("limit=0", 400),
            ("limit=101", 400),
            ("limit=ten", 400),
            ("type=solar", 400),
            ("start=yesterday", 400),
            ("start=2026-06-01T10:00:00", 400),
            ("colour=green", 400),
            ("cursor=not-a-cursor", 422),
            ("cursor=eyJ4IjoxfQ==", 422),
            ("cursor=WzEsMl0=", 422),
        ],
    )
    def test_a_bad_certificate_list_query_is_a_problem_not_a_crash(self, shared, query, status):
        api = shared[0]
        answer = api.get(f"/v1/certificates?{query}")
        assert answer.status == status, answer.body
        assert answer.is_problem

    @pytest.mark.parametrize("query", ["", "granularity=year", "granularity=hour&start=today"])
    def test_a_bad_aggregate_query_is_400(self, shared, query):
        api = shared[0]
        answer = api.get(f"/v1/certificates/aggregate?{query}")
        assert answer.status == 400 and answer.is_problem

    @pytest.mark.parametrize(
        "query",
        [
            "older_than_s=-1",
            "older_than_s=nan",
            "older_than_s=inf",
            "older_than_s=1e300",
            "limit=0",
        ],
    )
    def test_a_bad_stuck_commands_query_is_400(self, shared, query):
        api = shared[0]
        answer = api.get(f"/v1/ops/commands?{query}", who="op", roles=("operator",))
        assert answer.status == 400 and answer.is_problem

    @pytest.mark.parametrize("roles", [(), ("issuer",)])
    def test_operations_need_the_operator_role(self, shared, roles):
        api = shared[0]
        answer = api.get("/v1/ops/commands", who="alice", roles=roles)
        assert answer.status == 403 and answer.is_problem
        before = api.snapshot()
        for path in ("/v1/ops/reconcile", "/v1/ops/commands/any/resolve"):
            answer = api.post(path, {"outcome": "rejected", "reason": "no"}, who="a", roles=roles)
            assert answer.status == 403 and answer.is_problem
        assert api.snapshot() == before

    def test_every_route_of_the_app_is_in_the_openapi_document_and_nothing_else(self, shared):
        api = shared[0]
        document = served_document(api)
        routes = {
            (path, method.lower())
            for path, methods in app_module.app.routes.items()
            for method, entry in methods.items()
            if entry.view_name != "method_not_allowed"  # app.py: the 405s of other methods
        }
        documented = {(path, method) for path, ops in document["paths"].items() for method in ops}
        assert routes == documented

    def test_every_registered_endpoint_is_exercised_end_to_end_here(self, shared):
        assert set(ENDPOINTS) == EXERCISED

    def test_every_registered_endpoint_has_a_route(self, shared):
        routes = {
            (path, method)
            for path, methods in app_module.app.routes.items()
            for method, entry in methods.items()
            if entry.view_name != "method_not_allowed"  # app.py: the 405s of other methods
        }
        for name, (endpoint, _) in ENDPOINTS.items():
            assert (endpoint.path, endpoint.method) in routes, name
        assert len(routes) == len(ENDPOINTS) + 1  # and the document itself

    def test_the_openapi_document_is_valid_and_every_ref_has_its_component(self, shared):
        api = shared[0]
        from openapi_spec_validator import validate

        document = served_document(api)
        assert document == json.loads(json.dumps(openapi.document()))
        schemas = document["components"]["schemas"]
        refs = set(_refs(document))
        assert refs
        for target in refs:
            assert target.startswith("#/components/schemas/"), target
            assert target.removeprefix("#/components/schemas/") in schemas, target
        validate(document)

    def test_the_openapi_document_states_the_rules_of_each_operation(self, shared):
        api = shared[0]
        document = served_document(api)
        for _, (endpoint, _) in ENDPOINTS.items():
            operation = document["paths"][endpoint.path][endpoint.method.lower()]
            headers = {p["name"] for p in operation["parameters"] if p["in"] == "header"}
            assert ("Idempotency-Key" in headers) == endpoint.idempotent_write, endpoint.path
            assert ("401" in operation["responses"]) == endpoint.authenticated, endpoint.path
            assert str(endpoint.status) in operation["responses"]
            for code, response in operation["responses"].items():
                if code.startswith(("4", "5")):
                    assert list(response["content"]) == [PROBLEM_JSON]

    @pytest.mark.parametrize("how", list(TRANSPORT))
    @pytest.mark.parametrize("write", WRITES)
    def test_a_broken_request_is_refused_and_changes_nothing(self, shared, write, how):
        api, world = shared
        spec = writes(world)[write]
        assert_refused_without_a_trace(api, lambda: broken(api, spec, how), TRANSPORT[how])

    @pytest.mark.parametrize("how", list(KEYS))
    @pytest.mark.parametrize("write", IDEMPOTENT_WRITES)
    def test_a_write_without_a_good_idempotency_key_is_400_and_changes_nothing(
        self, shared, write, how
    ):
        api, world = shared
        spec = writes(world)[write]
        answer = assert_refused_without_a_trace(api, lambda: broken(api, spec, how), KEYS[how])
        assert answer.body["errors"][0]["field"] == "Idempotency-Key"

    @pytest.mark.parametrize("case", FIELD_CASES)
    def test_bad_fields_are_refused_with_the_right_status_and_change_nothing(self, shared, case):
        api, world = shared
        write, body, status = field_cases(world)[case]
        target, _, variant = write.partition("@")
        target = target.removesuffix("-as-owner")
        spec = writes(world)[target]
        path, who, roles = spec.path, spec.who, spec.roles
        if variant == "B":
            path = f"/v1/certificates/{world.B[0]}/slices"
        elif variant == "nowhere":
            path = path.replace(world.P[0], "no-such-certificate")
        if write == "withdraw-as-owner":
            who, roles = "alice", ()
        answer = assert_refused_without_a_trace(
            api,
            lambda: api.post(
                path, body, who=who, roles=roles, key="auto" if spec.idempotent else None
            ),
            status,
        )
        if status in (400, 422) and write != "batch":
            assert answer.body.get("errors"), answer.body  # names the field that is wrong


# --- ids in paths and bodies: bounded before the book is touched ---------------------------------


class _UntouchableBook:
    """Fails the request if anything reads or writes the book with the path's id."""

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"the book was called ({name}) before the path id was checked")


# Each route with an id in its path, and a body that would pass its model.
_PATH_ID_ROUTES = [
    ("GET", "/v1/certificates/{}", None),
    ("GET", "/v1/commands/{}", None),
    ("POST", "/v1/certificates/{}/slices", {"slice_id": "s", "quantities_wh": [1, 2]}),
    ("POST", "/v1/certificates/{}/withdraw", {}),
    ("POST", "/v1/ops/commands/{}/resolve", {"outcome": "rejected", "reason": "r"}),
]
_ID_CHARS = string.ascii_letters + string.digits + "-._~"
_bad_ids = st.one_of(
    # too long, of characters that are otherwise fine (DynamoDB refuses keys over 2 KB on reads
    # too; SQS refuses group ids over 128 characters)
    st.text(_ID_CHARS, min_size=ID_MAX_LENGTH + 1, max_size=4000),
    # short, with a character outside the id alphabet (SQS group ids are ASCII only)
    st.builds(
        lambda head, bad, tail: head + bad + tail,
        st.text(_ID_CHARS, max_size=20),
        st.characters(exclude_characters=_ID_CHARS),
        st.text(_ID_CHARS, max_size=20),
    ),
)


@pytest.fixture
def api_without_book(moto_services, aws) -> Iterator[Api]:
    untouchable = dataclasses.replace(moto_services, book=_UntouchableBook())
    app_module.use_services(untouchable)
    with Client(app_module.app) as client:
        yield Api(client, untouchable, aws)
    app_module.use_services(None)


@hypothesis.settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[hypothesis.HealthCheck.function_scoped_fixture],
)
@given(bad=_bad_ids, route=st.sampled_from(_PATH_ID_ROUTES))
def test_an_id_in_a_path_out_of_bounds_is_a_400_before_the_book_is_touched(
    api_without_book, bad, route
):
    method, template, body = route
    path = template.format(urllib.parse.quote(bad, safe=""))
    who = {"who": ISSUER, "roles": ("issuer", "operator")}
    answer = (
        api_without_book.get(path, **who)
        if method == "GET"
        else api_without_book.post(path, body, **who)
    )
    assert answer.status == 400, (path, answer.body)
    assert answer.is_problem
    assert answer.body["errors"][0]["field"] in {"certificate_id", "command_id"}
    assert queue_depth(api_without_book.sqs, api_without_book.queue_url) == 0


def test_a_path_id_at_the_limit_is_looked_up(api):
    longest = "c" * ID_MAX_LENGTH
    answer = api.get(f"/v1/certificates/{longest}")
    assert answer.status == 404 and answer.is_problem


@pytest.mark.parametrize(
    "bad", ["x" * (ID_MAX_LENGTH + 1), "caf\u00e9", "a b", "a/b", "a\x00b", "#"], ids=repr
)
def test_a_body_id_out_of_bounds_is_a_400_and_changes_nothing(api, world, bad):
    before = api.snapshot()
    moves = [
        {**transfer_body(world.P), "certificate_id": bad},
        {**transfer_body(world.P), "slice_id": bad},
        claim_body(world.P, (bad, world.C[1])),
    ]
    for path, body in zip(["/v1/transfers", "/v1/transfers", "/v1/claims"], moves, strict=True):
        answer = api.post(path, body)
        assert answer.status == 400 and answer.is_problem, (path, answer.body)
    answer = api.post(
        f"/v1/certificates/{world.P[0]}/slices", {"slice_id": bad, "quantities_wh": [1, 999]}
    )
    assert answer.status == 400 and answer.is_problem
    assert api.snapshot() == before


def test_every_error_carries_a_request_id_in_its_body_and_header(api):
    missing = api.get("/v1/commands/no-such-command")
    assert missing.status == 404
    assert missing.body["request_id"] == missing.headers["X-Request-Id"]
    unauthenticated = api.get("/v1/certificates", who=None)
    assert unauthenticated.status == 401
    assert unauthenticated.body["request_id"] == unauthenticated.headers["X-Request-Id"]
    assert unauthenticated.body["request_id"] != missing.body["request_id"]
    fine = api.get("/v1/health", who=None)
    assert fine.headers["X-Request-Id"] and "request_id" not in fine.body
