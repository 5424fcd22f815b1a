"""The HTTP edge: one request shape, one table from errors to problem+json, one dispatcher.

Every handler runs inside `dispatch`, which authenticates, checks the body's size and type,
parses it with the endpoint's model, and turns every error into an RFC 9457 answer. Nothing a
client sends can become a 500: only a fault of ours can, and it never carries a traceback.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

from pydantic import BaseModel, ValidationError

from chalicelib import domain
from chalicelib.api.auth import Unauthorized, actor_from
from chalicelib.api.models import ID_MAX_LENGTH, ID_PATTERN, Problem, ProblemField
from chalicelib.domain import Actor, Role
from chalicelib.ports import DependencyDown

log = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"
RETRY_AFTER_S = "5"


class BadRequest(domain.DomainError):
    """Malformed: not JSON, missing or mistyped fields, a bad header (400)."""


class PayloadTooLarge(domain.DomainError):
    pass


class UnsupportedMediaType(domain.DomainError):
    pass


# The one table from errors to HTTP answers.
_STATUS_OF: list[tuple[type[Exception], int]] = [
    (BadRequest, 400),
    (Unauthorized, 401),
    (domain.Forbidden, 403),
    (domain.NotFound, 404),
    (domain.Conflict, 409),
    (PayloadTooLarge, 413),
    (UnsupportedMediaType, 415),
    (domain.RuleViolation, 422),
    (DependencyDown, 503),
]


@dataclass(frozen=True)
class HttpRequest:
    method: str
    path: str
    headers: Mapping[str, str]  # lower-case names
    query: Mapping[str, str] = field(default_factory=dict)
    body: bytes = b""
    path_params: Mapping[str, str] = field(default_factory=dict)

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())


@dataclass(frozen=True)
class HttpResponse:
    status: int
    body: Any  # JSON-ready
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Endpoint:
    """One operation of the contract; the OpenAPI document is generated from these."""

    method: str
    path: str
    summary: str
    response: type[BaseModel]
    status: int = 200
    request: type[BaseModel] | None = None
    role: Role | None = None
    authenticated: bool = True
    idempotent_write: bool = False  # takes an Idempotency-Key
    query: tuple[str, ...] = ()


@dataclass(frozen=True)
class Call:
    """What a handler receives: who calls, the parsed body, and the raw request."""

    actor: Actor
    body: Any
    request: HttpRequest


def problem(
    status: int,
    detail: str,
    *,
    instance: str | None = None,
    errors: list[ProblemField] | None = None,
) -> Problem:
    phrase = HTTPStatus(status).phrase
    return Problem(
        type=f"urn:problem:certificates:{phrase.lower().replace(' ', '-')}",
        title=phrase,
        status=status,
        detail=detail,
        instance=instance,
        errors=errors,
    )


def problem_of(error: Exception, instance: str | None = None) -> Problem:
    for kind, status in _STATUS_OF:
        if isinstance(error, kind):
            errors = None
            if isinstance(error, domain.DomainError) and error.field:
                errors = [ProblemField(field=error.field, message=error.detail)]
            # `instance` names what the error concerns: a certificate, slice or command id.
            subject = getattr(error, "subject", None)
            return problem(status, str(error), errors=errors, instance=instance or subject)
    raise error


def _answer(problem_body: Problem, retry_after_s: int | None = None) -> HttpResponse:
    headers = {"Content-Type": PROBLEM_JSON}
    if problem_body.status == 503:
        headers["Retry-After"] = RETRY_AFTER_S
    if retry_after_s is not None:  # a request still being processed (409)
        headers["Retry-After"] = str(retry_after_s)
    return HttpResponse(problem_body.status, problem_body.model_dump(exclude_none=True), headers)


def _fields_of(error: ValidationError) -> list[ProblemField]:
    return [
        ProblemField(field=".".join(str(p) for p in e["loc"]) or "body", message=e["msg"])
        for e in error.errors(include_url=False)
    ]


def parse_body(request: HttpRequest, model: type[BaseModel], limit: int) -> BaseModel:
    if len(request.body) > limit:
        raise PayloadTooLarge(f"the body is over {limit // 1024} KiB")
    content_type = (request.header("content-type") or "").split(";")[0].strip().lower()
    if not request.body and not content_type and model.model_fields == {}:
        return model()
    if content_type != "application/json":
        raise UnsupportedMediaType("the body must be sent as Content-Type: application/json")
    try:
        raw = json.loads(request.body or b"null")
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest(f"the body is not valid JSON: {exc}") from exc
    except RecursionError as exc:  # json nests by recursion: "[[[[..." fits in 256 KiB
        raise BadRequest("the body nests too deeply") from exc
    if not isinstance(raw, dict):
        raise BadRequest("the body must be a JSON object")
    if _nests_deeper(raw, MAX_JSON_DEPTH):
        raise BadRequest("the body nests too deeply")
    return model.model_validate(raw)


# Our bodies nest 4 deep. A free-form part (a batch's items) nested some hundreds deep would
# pass json.loads but fail pydantic's serializer later, as a 500.
MAX_JSON_DEPTH = 32


def _nests_deeper(value: Any, limit: int) -> bool:
    pending = [(value, 1)]
    while pending:
        node, depth = pending.pop()
        if isinstance(node, dict | list):
            if depth > limit:
                return True
            pending += [
                (child, depth + 1) for child in (node.values() if isinstance(node, dict) else node)
            ]
    return False


# What idempotency_key accepts, as the OpenAPI document declares it.
IDEMPOTENCY_KEY_PATTERN = r"^[\x20-\x7e]{1,128}$"


def idempotency_key(request: HttpRequest) -> str:
    key = request.header("idempotency-key")
    if key is None:
        raise BadRequest("an Idempotency-Key header is required", field="Idempotency-Key")
    if not 1 <= len(key) <= 128 or not key.isprintable() or not key.isascii():
        raise BadRequest(
            "an Idempotency-Key is 1 to 128 printable characters", field="Idempotency-Key"
        )
    return key


_PATH_ID = re.compile(ID_PATTERN)


def check_path_ids(path_params: Mapping[str, str]) -> None:
    """Ids in a path bounded as in a body, before anything reads the book with them: on AWS an
    over-long key is a validation error on reads too (moto checks writes only)."""
    for name, value in path_params.items():
        if not 1 <= len(value) <= ID_MAX_LENGTH or not _PATH_ID.match(value):
            raise BadRequest(
                f"{name} is 1 to {ID_MAX_LENGTH} ASCII letters, digits, '-', '.', '_' or '~'",
                field=name,
            )


Handler = Callable[[Call], HttpResponse]


def dispatch(
    endpoint: Endpoint,
    handler: Handler,
    request: HttpRequest,
    verifier: Any,
    max_body_bytes: int,
    request_id: str | None = None,
) -> HttpResponse:
    try:
        actor = (
            actor_from(request.header("authorization"), verifier)
            if endpoint.authenticated
            else Actor(owner="anonymous")
        )
        if endpoint.role is not None:
            actor.require(endpoint.role)
        check_path_ids(request.path_params)
        body = (
            parse_body(request, endpoint.request, max_body_bytes)
            if endpoint.request is not None
            else None
        )
        return handler(Call(actor=actor, body=body, request=request))
    except ValidationError as exc:
        return _answer(
            problem(400, "the request has missing or malformed fields", errors=_fields_of(exc))
        )
    except (domain.DomainError, Unauthorized, DependencyDown) as exc:
        return _answer(problem_of(exc), getattr(exc, "retry_after_s", None))
    except Exception:
        # A fault of ours. Logged with its traceback here, answered without it.
        log.exception("unhandled error", extra={"path": request.path, "request_id": request_id})
        return _answer(problem(500, "an internal error occurred; it has been logged"))


def json_response(
    model: BaseModel, status: int = 200, headers: dict[str, str] | None = None
) -> HttpResponse:
    return HttpResponse(
        status,
        model.model_dump(mode="json", exclude_none=True),
        {"Content-Type": "application/json", **(headers or {})},
    )


def not_allowed(method: str, allowed: list[str]) -> HttpResponse:
    """405 for a method a path of ours does not take, with the ones it does."""
    answer = _answer(problem(405, f"{method} is not allowed here; allowed: {', '.join(allowed)}"))
    answer.headers["Allow"] = ", ".join(allowed)
    return answer


def no_such_path(path: str) -> HttpResponse:
    """404 for a path that is not part of the API (the gateway's own answer otherwise)."""
    return _answer(problem(404, "no such path in this API (see /v1/openapi.json)", instance=path))
