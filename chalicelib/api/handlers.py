"""The operations of the public API: each parses, makes one call, and answers.

Every function here is registered with its `Endpoint`, and app.py routes to them; the OpenAPI
document is generated from the same registrations (chalicelib.api.openapi).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta

from pydantic import BaseModel, Field, ValidationError

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
from chalicelib.ports import HoldingQuery
from chalicelib.usecases import accept, queries, reconcile

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
            services.book, services.queue, _accept_request(services, call), call.body.to_spec()
        )
    )


def _issue_spec(raw: dict) -> domain.IssueSpec | domain.DomainError:
    try:
        return m.IssueRequest.model_validate(raw).to_spec()
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        field = ".".join(str(p) for p in first["loc"]) or "body"
        return BadRequest(f"{field}: {first['msg']}", field=field)
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
        services.book, services.queue, _accept_request(services, call), specs
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


class _CertificateQuery(BaseModel):
    type: CertificateType | None = None
    grid_area: str | None = None
    start: datetime | None = None
    end: datetime | None = None
    limit: int = 50
    cursor: str | None = None


class _PageQuery(BaseModel):
    limit: int = 50
    cursor: str | None = None


class _AggregateQuery(BaseModel):
    granularity: queries.Granularity
    type: CertificateType | None = None
    start: datetime | None = None
    end: datetime | None = None


class _StuckQuery(BaseModel):
    status: CommandStatus | None = None
    # finite and at most ~30 years, or `now - older_than_s` overflows into a 500
    older_than_s: float = Field(default=0, allow_inf_nan=False, le=1e9)
    limit: int = 100


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
    return json_response(m.CertificateView.of(cert, viewer))


@operation(
    Endpoint(
        "GET",
        "/v1/certificates",
        "Your certificates, newest period first",
        m.CertificatePage,
        query=("type", "grid_area", "start", "end", "limit", "cursor"),
    )
)
def list_certificates(services: Services, call: Call) -> HttpResponse:
    q: _CertificateQuery = _query(call, _CertificateQuery)
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
            items=[m.CertificateView.of(c, call.actor.owner) for c in page.items],
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


def _command_page(services: Services, call: Call, kind: CommandKind) -> HttpResponse:
    q: _PageQuery = _query(call, _PageQuery)
    page = queries.commands(services.book, call.actor, kind, _limit(q.limit), q.cursor)
    return json_response(
        m.CommandPage(items=[m.CommandView.of(c) for c in page.items], next_cursor=page.next_cursor)
    )


@operation(
    Endpoint(
        "GET",
        "/v1/transfers",
        "Your transfers, sent and received",
        m.CommandPage,
        query=("limit", "cursor"),
    )
)
def list_transfers(services: Services, call: Call) -> HttpResponse:
    return _command_page(services, call, CommandKind.TRANSFER)


@operation(Endpoint("GET", "/v1/claims", "Your claims", m.CommandPage, query=("limit", "cursor")))
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
        m.Health(status=status, stage=services.settings.stage, dependencies=states)
    )


# --- operations -------------------------------------------------------------------------------


@operation(
    Endpoint(
        "GET",
        "/v1/ops/commands",
        "Commands that are stuck",
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
    found = [
        c
        for c in services.book.open_commands(now + _INCLUSIVE, limit=1000)
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
            services.book, services.queue, call.actor, command_id, body.reason, services.clock()
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
        )
    )
