"""What owners' apps look at, through the HTTP API over moto: the change feeds of
certificates, transfers and claims (GET ...?updated_since=), and the hourly matching report
(GET /v1/reports/matching)."""

from __future__ import annotations

from collections.abc import Iterator
from urllib.parse import quote

import pytest
from chalice.test import Client

import app as app_module
from chalicelib import composition
from chalicelib.domain import CommandStatus
from chalicelib.ports import Transition
from chalicelib.usecases import process
from tests.builders import T0
from tests.conftest import settings
from tests.test_api import Api, accepted, ref, transfer_body, world_of

pytestmark = [pytest.mark.e2e, pytest.mark.moto]

SINCE = quote("2026-01-01T00:00:00+00:00")


@pytest.fixture
def api(aws, clock) -> Iterator[Api]:
    # No safety lag: these tests write, then read, in one thread.
    services = composition.build(settings(feed_lag_s=0), session=aws)
    services.clock = clock
    app_module.use_services(services)
    with Client(app_module.app) as client:
        yield Api(client, services, aws)
    app_module.use_services(None)


def follow(api: Api, path: str, who: str = "alice", cursor: str | None = None):
    """Everything a feed gives from its start (or the cursor), a page of one at a time."""
    items = []
    while True:
        query = f"updated_since={SINCE}&limit=1" + (f"&cursor={cursor}" if cursor else "")
        answer = api.get(f"{path}?{query}", who=who)
        assert answer.status == 200, answer.body
        assert answer.body["next_cursor"]
        items += answer.body["items"]
        if answer.body["next_cursor"] == cursor:
            return items, cursor
        cursor = answer.body["next_cursor"]


def test_the_certificate_feed_gives_each_change_of_mine_once_and_nothing_of_others(api):
    world = world_of(api)
    mine, cursor = follow(api, "/v1/certificates")
    assert {c["certificate_id"] for c in mine} == {world.P[0], world.C[0], world.D[0]}
    assert all(s["owner"] == "alice" for c in mine for s in c["slices"])
    bobs, bob_cursor = follow(api, "/v1/certificates", who="bob")
    assert [c["certificate_id"] for c in bobs] == [world.B[0]]
    # alice transfers P to bob: P comes again for both, reserved first for alice
    accepted(api.post("/v1/transfers", transfer_body(world.P)), "transfer")
    again, cursor = follow(api, "/v1/certificates", cursor=cursor)
    assert [(c["certificate_id"], c["slices"][0]["state"]) for c in again] == [
        (world.P[0], "reserved")
    ]
    assert follow(api, "/v1/certificates", cursor=cursor) == ([], cursor)
    # bob's view of P did not change (he holds nothing of it yet)
    assert follow(api, "/v1/certificates", who="bob", cursor=bob_cursor)[0] == []


def test_the_transfer_and_claim_feeds_give_the_callers_commands(api):
    world = world_of(api)
    sent = accepted(api.post("/v1/transfers", transfer_body(world.P)), "transfer")
    transfers, _ = follow(api, "/v1/transfers")
    assert [(c["command_id"], c["status"]) for c in transfers] == [(sent["command_id"], "ACCEPTED")]
    assert follow(api, "/v1/claims")[0] == []
    assert follow(api, "/v1/transfers", who="bob")[0] == []  # not received yet


@pytest.mark.parametrize(
    "query, status",
    [
        ("updated_since=0.5", 400),  # not RFC 3339 (pydantic alone takes it as Unix time)
        ("updated_since=yesterday", 400),
        ("updated_since=2026-01-01T00:00:00", 400),  # no time zone
        (f"updated_since={SINCE}&cursor=not-a-cursor", 422),
        (f"updated_since={SINCE}&cursor=WyIyMDI2IiwgIngiXQ==", 422),  # a list cursor
        (f"updated_since={SINCE}&limit=0", 400),
    ],
)
def test_a_bad_feed_query_is_a_problem(api, query, status):
    answer = api.get(f"/v1/certificates?{query}")
    assert answer.status == status, answer.body
    assert answer.is_problem


def test_a_list_cursor_is_not_taken_as_a_feed_cursor_nor_the_other_way(api):
    world_of(api)
    listed = api.get("/v1/certificates?limit=1").body["next_cursor"]
    assert api.get(f"/v1/certificates?updated_since={SINCE}&cursor={listed}").status == 422
    fed = api.get(f"/v1/certificates?updated_since={SINCE}&limit=1").body["next_cursor"]
    assert api.get(f"/v1/certificates?cursor={fed}").status == 422


# --- hourly matching --------------------------------------------------------------------------


def commit(api: Api, answer) -> None:
    """The worker's part: the registry accepted it."""
    command = api.book.get_command(answer.body["command_id"])
    process.apply_outcome(api.book, command)
    api.book.transition(
        command.command_id, Transition(CommandStatus.ACCEPTED, CommandStatus.COMMITTED, T0)
    )


def test_matching_reports_coverage_per_hour_with_the_hourly_score_and_the_sources(api):
    # alice: consumption 1000 Wh at 10:00 and 11:00; production 600 Wh at 10:00 (solar) and
    # 700 Wh at 12:00; she claims 600 Wh of the 10:00 consumption with the solar production.
    c10 = api.active(n=1, type="consumption", start="2026-06-01T10:00:00+00:00")
    api.active(n=2, type="consumption", start="2026-06-01T11:00:00+00:00")
    p10 = api.active(n=3, start="2026-06-01T10:00:00+00:00", quantity_wh=600)
    api.active(n=4, start="2026-06-01T12:00:00+00:00", quantity_wh=700)
    claim = {"production": ref(p10), "consumption": ref(c10), "quantity_wh": 600}
    commit(api, api.post("/v1/claims", claim))
    answer = api.get(
        "/v1/reports/matching?start=2026-06-01T10:00:00Z&end=2026-06-01T13:00:00Z&granularity=hour"
    )
    assert answer.status == 200, answer.body
    rows = [
        (b["start"][11:16], b["consumption_wh"], b["matched_wh"], b["unmatched_wh"],
         b.get("coverage_pct"), b["unclaimed_production_wh"])
        for b in answer.body["buckets"]
    ]  # fmt: skip
    assert rows == [
        ("10:00", 1000, 600, 400, 60.0, 0),
        ("11:00", 1000, 0, 1000, 0.0, 0),
        ("12:00", 0, 0, 0, None, 700),
    ]
    total = answer.body["total"]
    assert (total["consumption_wh"], total["matched_wh"], total["coverage_pct"]) == (2000, 600, 30)
    assert answer.body["hourly_matching_score_pct"] == 30.0
    assert answer.body["by_source"] == [
        {"technology": "T010000", "fuel": "F01010000", "matched_wh": 600}
    ]
    # by day: one bucket with the same totals; bob sees nothing of alice's
    daily = api.get("/v1/reports/matching?start=2026-06-01T00:00:00Z&end=2026-06-02T00:00:00Z"
                    "&granularity=day").body  # fmt: skip
    assert [(b["consumption_wh"], b["matched_wh"]) for b in daily["buckets"]] == [(2000, 600)]
    bobs = api.get(
        "/v1/reports/matching?start=2026-06-01T00:00:00Z&end=2026-06-02T00:00:00Z&granularity=day",
        who="bob",
    ).body
    assert bobs["total"]["consumption_wh"] == 0 and bobs["by_source"] == []


@pytest.mark.parametrize(
    "query",
    [
        "start=2026-06-01T00:00:00Z",  # no end
        "end=2026-06-01T00:00:00Z",
        "start=2026-06-01T00:00:00&end=2026-06-02T00:00:00Z",  # no time zone
        "start=2026-06-02T00:00:00Z&end=2026-06-01T00:00:00Z",  # backwards
        "start=2026-06-01T00:00:00Z&end=2026-06-02T00:00:00Z&granularity=week",
        "start=2000-01-01T00:00:00Z&end=2026-01-01T00:00:00Z&granularity=hour",  # too many
        "start=2026-06-01T00:00:00Z&end=2026-06-02T00:00:00Z&colour=red",
    ],
)
def test_a_bad_matching_query_is_a_problem(api, query):
    answer = api.get(f"/v1/reports/matching?{query}")
    assert answer.status in (400, 422), answer.body
    assert answer.is_problem
