"""The operations of the public API: each parses, makes one call, and answers.

Every function here is registered with its `Endpoint`, and app.py routes to them; the OpenAPI
document is generated from the same registrations (chalicelib.api.openapi).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Annotated

from pydantic import BaseModel, Field, ValidationError

import chalicelib
from chalicelib import composition, domain
from chalicelib.api import models as m
from chalicelib.api.http import (
    BadRequest,
    Call,
    Endpoint,
    HttpResponse,
    idempotency_key,
    json_response,
    problem_of,
)
from chalicelib.composition import Services
from chalicelib.domain import CertificateType, CommandKind, CommandStatus, Role
from chalicelib.ports import CommandQuery, HoldingQuery
from chalicelib.usecases import accept, matching, queries, reconcile

ENDPOINTS: dict[str, tuple[Endpoint, Callable[[Services, Call], HttpResponse]]] = {}


def operation(endpoint: Endpoint):
    def register(fn: Callable[[Services, Call], HttpResponse]):
        ENDPOINTS[fn.__name__] = (endpoint, fn)
        return fn

    return register


def _accept_request(services: Services, call: Call) -> accept.Request:
    body = call.body.model_dump(mode="json") if call.body is not None else {}
    return accept.Request(
        actor=call.actor,
        idempotency_key=idempotency_key(call.request),
        body_hash=domain.request_hash([call.request.path, body]),
        now=services.clock(),
        attempt_timeout=timedelta(seconds=services.settings.lambda_timeout_s),
    )


def _accepted(command: domain.Command) -> HttpResponse:
    return json_response(
        m.CommandAccepted.of(command), 202, {"Location": f"/v1/commands/{command.command_id}"}
    )


# --- writes -----------------------------------------------------------------------------------


@operation(
    Endpoint(
        "POST",
        "/v1/certificates",
        "Issue a certificate",
        m.CommandAccepted,
        202,
        request=m.IssueRequest,
        role=Role.ISSUER,
        idempotent_write=True,
    )
)
def issue_certificate(services: Services, call: Call) -> HttpResponse:
    return _accepted(
        accept.issue(
            services.book,
            services.queue,
            _accept_request(services, call),
            call.body.to_spec(),
            registry_of=services.settings.registry_of_grid_area,
        )
    )


def _issue_spec(raw: dict) -> domain.IssueSpec | domain.DomainError:
    try:
        return m.IssueRequest.model_validate(raw).to_spec()
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        field = ".".join(str(p) for p in first["loc"]) or "body"
        # 422 like the item's rule violations: the batch is well-formed, this item is not
        # one that can be issued (only the batch's own shape is a 400).
        return domain.RuleViolation(f"{field}: {first['msg']}", field=field)
    except domain.DomainError as exc:
        return exc


@operation(
    Endpoint(
        "POST",
        "/v1/certificates/batch",
        "Issue up to 100 certificates",
        m.BatchAccepted,
        202,
        request=m.BatchIssueRequest,
        role=Role.ISSUER,
        idempotent_write=True,
    )
)
def issue_batch(services: Services, call: Call) -> HttpResponse:
    specs = [_issue_spec(raw) for raw in call.body.certificates]
    results = accept.issue_batch(
        services.book,
        services.queue,
        _accept_request(services, call),
        specs,
        registry_of=services.settings.registry_of_grid_area,
    )
    answers = [
        m.BatchItemAnswer(index=r.index, command=m.CommandAccepted.of(r.command))
        if r.command
        else m.BatchItemAnswer(index=r.index, error=problem_of(r.error))
        for r in results
    ]
    accepted = sum(1 for a in answers if a.command)
    return json_response(
        m.BatchAccepted(commands=answers, accepted=accepted, refused=len(answers) - accepted), 202
    )


@operation(
    Endpoint(
        "POST",
        "/v1/certificates/{certificate_id}/slices",
        "Slice one of your slices into parts",
        m.CommandAccepted,
        202,
        request=m.SliceRequest,
        idempotent_write=True,
    )
)
def slice_certificate(services: Services, call: Call) -> HttpResponse:
    ref = domain.SliceRef(
        certificate_id=call.request.path_params["certificate_id"], slice_id=call.body.slice_id
    )
    return _accepted(
        accept.slice_certificate(
            services.book,
            services.queue,
            _accept_request(services, call),
            ref,
            call.body.quantities_wh,
        )
    )


@operation(
    Endpoint(
        "POST",
        "/v1/transfers",
        "Transfer a slice, or part of one",
        m.CommandAccepted,
        202,
        request=m.TransferRequest,
        idempotent_write=True,
    )
)
def transfer(services: Services, call: Call) -> HttpResponse:
    body: m.TransferRequest = call.body
    domain.check_quantity(body.quantity_wh)
    return _accepted(
        accept.transfer(
            services.book,
            services.queue,
            _accept_request(services, call),
            body.ref(),
            body.receiver,
            body.quantity_wh,
        )
    )


@operation(
    Endpoint(
        "POST",
        "/v1/claims",
        "Claim production against consumption",
        m.CommandAccepted,
        202,
        request=m.ClaimRequest,
        idempotent_write=True,
    )
)
def claim(services: Services, call: Call) -> HttpResponse:
    body: m.ClaimRequest = call.body
    domain.check_quantity(body.quantity_wh)
    return _accepted(
        accept.claim(
            services.book,
            services.queue,
            _accept_request(services, call),
            body.production.ref(),
            body.consumption.ref(),
            body.quantity_wh,
            expiry=timedelta(days=services.settings.certificate_expiry_days),
            expiry_margin=timedelta(hours=services.settings.claim_expiry_margin_hours),
            boundary=services.settings.matching_boundary,
        )
    )


@operation(
    Endpoint(
        "POST",
        "/v1/certificates/{certificate_id}/withdraw",
        "Withdraw a certificate",
        m.CommandAccepted,
        202,
        request=m.EmptyRequest,
        role=Role.ISSUER,
        idempotent_write=True,
    )
)
def withdraw(services: Services, call: Call) -> HttpResponse:
    return _accepted(
        accept.withdraw(
            services.book,
            services.queue,
            _accept_request(services, call),
            call.request.path_params["certificate_id"],
        )
    )


# --- reads ------------------------------------------------------------------------------------


def _query(call: Call, model: type[BaseModel]) -> BaseModel:
    unknown = set(call.request.query) - set(model.model_fields)
    if unknown:
        raise BadRequest(f"unknown query parameter {sorted(unknown)[0]}", field=sorted(unknown)[0])
    return model.model_validate(dict(call.request.query))


# Query parameters as the OpenAPI document declares them (chalicelib.api.openapi): what these
# models refuse is a 400 with the field, and the document says so beforehand.
Limit = Annotated[int, Field(ge=1, le=100, description="Items per page, 1 to 100.")]
Cursor = Annotated[
    str,
    Field(
        min_length=1,
        max_length=2048,
        pattern=r"^[A-Za-z0-9_=-]+$",
        description="The next_cursor of the previous page, as it was given.",
    ),
]
Moment = m.Moment


class _CertificateQuery(BaseModel):
    type: CertificateType | None = None
    grid_area: m.GridArea | None = None
    start: Moment | None = None
    end: Moment | None = None
    limit: Limit = 50
    cursor: Cursor | None = None
    # makes it the change feed (queries.certificate_changes)
    updated_since: Moment | None = None


class _PageQuery(BaseModel):
    limit: Limit = 50
    cursor: Cursor | None = None
    updated_since: Moment | None = None


class _AggregateQuery(BaseModel):
    granularity: queries.Granularity
    type: CertificateType | None = None
    start: Moment | None = None
    end: Moment | None = None


class _StuckQuery(BaseModel):
    status: CommandStatus | None = None
    # finite and at most ~30 years, or `now - older_than_s` overflows into a 500
    older_than_s: float = Field(default=0, allow_inf_nan=False, ge=0, le=1e9)
    limit: int = Field(default=100, ge=1, le=1000)


# open_commands takes commands created strictly before a time; "up to now" includes now.
_INCLUSIVE = timedelta(seconds=1)


def _limit(value: int, most: int = 100) -> int:
    if not 1 <= value <= most:
        raise BadRequest(f"limit is from 1 to {most}", field="limit")
    return value


def _aware(value: datetime | None, field: str) -> datetime | None:
    if value is not None and value.tzinfo is None:
        raise BadRequest(f"{field} must carry a time zone (UTC)", field=field)
    return value


class _OwnCommandsQuery(BaseModel):
    kind: CommandKind | None = None
    status: CommandStatus | None = None
    created_after: Moment | None = None
    created_before: Moment | None = None
    limit: Limit = 50
    cursor: Cursor | None = None


@operation(
    Endpoint(
        "GET",
        "/v1/commands",
        "The commands you made, of every kind (or one), newest first; filter by status and "
        "by creation time (created_after inclusive, created_before exclusive). A page may hold "
        "fewer than limit: follow next_cursor until there is none",
        m.CommandPage,
        query=("kind", "status", "created_after", "created_before", "limit", "cursor"),
    )
)
def list_commands(services: Services, call: Call) -> HttpResponse:
    q: _OwnCommandsQuery = _query(call, _OwnCommandsQuery)
    page = queries.own_commands(
        services.book,
        call.actor,
        CommandQuery(
            caller=call.actor.owner,
            kinds=frozenset({q.kind}) if q.kind else None,
            statuses=frozenset({q.status}) if q.status else None,
            created_after=_aware(q.created_after, "created_after"),
            created_before=_aware(q.created_before, "created_before"),
            limit=_limit(q.limit),
            cursor=q.cursor,
        ),
    )
    return json_response(
        m.CommandPage(items=[m.CommandView.of(c) for c in page.items], next_cursor=page.next_cursor)
    )


@operation(Endpoint("GET", "/v1/commands/{command_id}", "The status of a command", m.CommandView))
def get_command(services: Services, call: Call) -> HttpResponse:
    return json_response(
        m.CommandView.of(
            queries.command(services.book, call.actor, call.request.path_params["command_id"])
        )
    )


@operation(
    Endpoint(
        "GET",
        "/v1/certificates/{certificate_id}",
        "A certificate with your slices",
        m.CertificateView,
    )
)
def get_certificate(services: Services, call: Call) -> HttpResponse:
    cert = queries.certificate(
        services.book, call.actor, call.request.path_params["certificate_id"]
    )
    viewer = None if queries.sees_everything(call.actor) else call.actor.owner
    salts = None
    if viewer is not None and cert.hashed_attributes:  # an owner: they may reveal the values
        salts = queries.attribute_salts(composition.secret_box_for(services), cert)
    return json_response(m.CertificateView.of(cert, viewer, salts, _registry(services)))


@operation(
    Endpoint(
        "GET",
        "/v1/certificates",
        "Your certificates, newest period first; with updated_since, what changed for you "
        "since then, oldest change first (follow next_cursor); a certificate is in the feed "
        "once issued",
        m.CertificatePage,
        query=("type", "grid_area", "start", "end", "limit", "cursor", "updated_since"),
    )
)
def list_certificates(services: Services, call: Call) -> HttpResponse:
    q: _CertificateQuery = _query(call, _CertificateQuery)
    if q.updated_since is not None:
        page = queries.certificate_changes(
            services.book,
            call.actor,
            _aware(q.updated_since, "updated_since"),
            q.cursor,
            _limit(q.limit),
        )
        # The list's filters narrow the feed too; the cursor moves past what they leave out.
        wanted = [
            c
            for c in page.items
            if (q.type is None or c.type == q.type)
            and (q.grid_area is None or c.grid_area == q.grid_area)
            and (q.start is None or c.period.start >= q.start)
            and (q.end is None or c.period.start < q.end)
        ]
        return json_response(
            m.CertificatePage(
                items=[
                    m.CertificateView.of(c, call.actor.owner, None, _registry(services))
                    for c in wanted
                ],
                next_cursor=page.next_cursor,
            )
        )
    page = queries.certificates(
        services.book,
        HoldingQuery(
            owner=call.actor.owner,
            type=q.type,
            grid_area=q.grid_area,
            start=_aware(q.start, "start"),
            end=_aware(q.end, "end"),
            limit=_limit(q.limit),
            cursor=q.cursor,
        ),
    )
    return json_response(
        m.CertificatePage(
            items=[
                m.CertificateView.of(c, call.actor.owner, None, _registry(services))
                for c in page.items
            ],
            next_cursor=page.next_cursor,
        )
    )


@operation(
    Endpoint(
        "GET",
        "/v1/certificates/aggregate",
        "Your available quantity per time bucket",
        m.Aggregate,
        query=("granularity", "type", "start", "end"),
    )
)
def aggregate(services: Services, call: Call) -> HttpResponse:
    q: _AggregateQuery = _query(call, _AggregateQuery)
    rows = queries.aggregate(
        services.book,
        call.actor.owner,
        q.granularity,
        q.type,
        _aware(q.start, "start"),
        _aware(q.end, "end"),
    )
    return json_response(
        m.Aggregate(
            granularity=q.granularity,
            type=q.type,
            buckets=[m.Bucket(start=b, quantity_wh=wh, certificates=n) for b, wh, n in rows],
        )
    )


class _MatchingQuery(BaseModel):
    start: Moment
    end: Moment
    granularity: matching.Granularity = "hour"


@operation(
    Endpoint(
        "GET",
        "/v1/reports/matching",
        "How much of your consumption your claims cover, per hour, day or month",
        m.MatchingReport,
        query=("start", "end", "granularity"),
    )
)
def matching_report(services: Services, call: Call) -> HttpResponse:
    q: _MatchingQuery = _query(call, _MatchingQuery)
    report = matching.matching(
        services.book,
        call.actor.owner,
        _aware(q.start, "start"),
        _aware(q.end, "end"),
        q.granularity,
    )
    score = report.hourly_matching_score
    return json_response(
        m.MatchingReport(
            granularity=report.granularity,
            start=report.start,
            end=report.end,
            buckets=[m.MatchingBucket.of(b) for b in report.buckets],
            total=m.MatchingBucket.of(report.total),
            hourly_matching_score_pct=None if score is None else round(100 * score, 2),
            by_source=[
                m.MatchedSource(technology=t, fuel=f, matched_wh=wh)
                for (t, f), wh in report.by_source.items()
            ],
        )
    )


def _command_page(services: Services, call: Call, kind: CommandKind) -> HttpResponse:
    q: _PageQuery = _query(call, _PageQuery)
    if q.updated_since is not None:
        page = queries.command_changes(
            services.book,
            call.actor,
            kind,
            _aware(q.updated_since, "updated_since"),
            q.cursor,
            _limit(q.limit),
        )
    else:
        page = queries.commands(services.book, call.actor, kind, _limit(q.limit), q.cursor)
    return json_response(
        m.CommandPage(items=[m.CommandView.of(c) for c in page.items], next_cursor=page.next_cursor)
    )


@operation(
    Endpoint(
        "GET",
        "/v1/transfers",
        "Your transfers, sent and received; with updated_since, those that changed since, "
        "oldest change first (follow next_cursor)",
        m.CommandPage,
        query=("limit", "cursor", "updated_since"),
    )
)
def list_transfers(services: Services, call: Call) -> HttpResponse:
    return _command_page(services, call, CommandKind.TRANSFER)


@operation(
    Endpoint(
        "GET",
        "/v1/claims",
        "Your claims; with updated_since, those that changed since, oldest change first",
        m.CommandPage,
        query=("limit", "cursor", "updated_since"),
    )
)
def list_claims(services: Services, call: Call) -> HttpResponse:
    return _command_page(services, call, CommandKind.CLAIM)


@operation(
    Endpoint("GET", "/v1/health", "The state of each dependency", m.Health, authenticated=False)
)
def health(services: Services, call: Call) -> HttpResponse:
    states = {}
    for name, check in services.health_checks.items():
        try:
            check()
            states[name] = "ok"
        except Exception as exc:  # whatever a dependency raises, it is down
            states[name] = f"down: {type(exc).__name__}"
    status = "ok" if all(v == "ok" for v in states.values()) else "degraded"
    return json_response(
        m.Health(
            status=status,
            stage=services.settings.stage,
            version=chalicelib.__version__,
            dependencies=states,
        )
    )


# --- operations -------------------------------------------------------------------------------


@operation(
    Endpoint(
        "GET",
        "/v1/ops/commands",
        "Commands that are stuck, and claims that stranded an allocation",
        m.CommandPage,
        role=Role.OPERATOR,
        query=("status", "older_than_s", "limit"),
    )
)
def stuck_commands(services: Services, call: Call) -> HttpResponse:
    q: _StuckQuery = _query(call, _StuckQuery)
    if q.older_than_s < 0:
        raise BadRequest("older_than_s is not negative", field="older_than_s")
    now = services.clock()
    cutoff = now - timedelta(seconds=q.older_than_s)
    # Open commands, then claims that stranded an allocation (REJECTED, for good).
    found = [
        c
        for c in services.book.open_commands(now + _INCLUSIVE, limit=1000)
        + [s for s in services.book.stranded_commands(limit=1000) if s.is_terminal]
        if (q.status is None or c.status == q.status) and c.updated_at <= cutoff
    ]
    return json_response(
        m.CommandPage(items=[m.CommandView.of(c) for c in found[: _limit(q.limit, 1000)]])
    )


@operation(
    Endpoint(
        "POST",
        "/v1/ops/commands/{command_id}/resolve",
        "Resolve an IN_DOUBT command as committed or rejected",
        m.CommandView,
        request=m.ResolveRequest,
        role=Role.OPERATOR,
    )
)
def resolve_command(services: Services, call: Call) -> HttpResponse:
    body: m.ResolveRequest = call.body
    command_id = call.request.path_params["command_id"]
    if body.outcome == "not_sent":
        command = reconcile.resend_by_operator(
            services.book,
            services.queue,
            call.actor,
            command_id,
            body.reason,
            services.clock(),
            registry=services.registry,
            codec=composition.codec_for(services),
        )
    else:
        command = reconcile.resolve_by_operator(
            services.book,
            services.queue,
            composition.worker(services),
            call.actor,
            command_id,
            body.outcome == "committed",
            body.reason,
            registry=services.registry,
            codec=composition.codec_for(services),
        )
    return json_response(m.CommandView.of(command))


@operation(
    Endpoint(
        "POST",
        "/v1/ops/reconcile",
        "Run one reconciliation pass now",
        m.ReconcileReport,
        request=m.EmptyRequest,
        role=Role.OPERATOR,
    )
)
def reconcile_now(services: Services, call: Call) -> HttpResponse:
    report = composition.reconciler(services).run()
    return json_response(
        m.ReconcileReport(
            started_at=report.started_at,
            finished_at=report.finished_at or report.started_at,
            actions=dict(report.actions),
            complete=report.complete,
            unsettled=report.unsettled,
            failed_phases=report.failed_phases,
        )
    )


# The query model of each operation that takes query parameters: the OpenAPI document
# declares each parameter with the constraints its model enforces.
QUERY_MODELS: dict[str, type[BaseModel]] = {
    "list_certificates": _CertificateQuery,
    "aggregate": _AggregateQuery,
    "list_commands": _OwnCommandsQuery,
    "list_transfers": _PageQuery,
    "list_claims": _PageQuery,
    "stuck_commands": _StuckQuery,
    "matching_report": _MatchingQuery,
}


def _registry(services: Services) -> str:
    """The registry a certificate recorded before federation is in: the service's one."""
    return services.settings.default_registry
