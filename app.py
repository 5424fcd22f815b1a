"""Chalice wiring: routes to handlers, queue messages to the worker, the schedule to the
reconciler. Nothing else lives here (see chalicelib/)."""

from __future__ import annotations

import json
import logging
import os
import sys
import uuid

from chalice import Chalice, Rate, Response

from chalicelib import composition, entrypoints, observability
from chalicelib.api import openapi
from chalicelib.api.handlers import ENDPOINTS
from chalicelib.api.http import HttpRequest, dispatch, not_allowed
from chalicelib.settings import Settings

app = Chalice(app_name="certificates-domain")
# Chalice would answer a wrong Content-Type itself, in its own format; we answer it as
# problem+json in chalicelib.api.http, so every route takes every type.
ANY = ["*/*"]

# Queue names are part of the deployed wiring, so they are read once, at import. At
# `chalice package` time Chalice puts the stage's environment_variables in os.environ before
# importing this module, so the worker's event source names the stage's CERTS_QUEUE_NAME.
_STAGE_SETTINGS = Settings()
MAX_RECEIVES = 10  # infra/resources.json: the command queue's redrive maxReceiveCount


def log_structured_lines_to_stdout() -> None:
    """In Lambda, the runtime's root logger drops INFO and prefixes every line with level, time
    and request id; CloudWatch extracts embedded metrics (the reconciler's counts, which the
    in-doubt alarm of infra/ watches) only from lines that are pure JSON. So our structured
    lines go to stdout as they are."""
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(message)s"))
    observability.log.addHandler(handler)
    observability.log.setLevel(logging.INFO)
    observability.log.propagate = False


if "AWS_LAMBDA_FUNCTION_NAME" in os.environ:
    log_structured_lines_to_stdout()

_services: composition.Services | None = None


def services() -> composition.Services:
    """The adapters, built once per cold start by the composition root."""
    global _services
    if _services is None:
        _services = composition.build()
    return _services


def use_services(replacement: composition.Services | None) -> None:
    """Tests and the embedded stack put their own services in place."""
    global _services
    _services = replacement


def serve(operation: str, **path_params: str) -> Response:
    endpoint, handler = ENDPOINTS[operation]
    current = app.current_request
    request = HttpRequest(
        method=current.method,
        path=endpoint.path.format(**path_params),
        headers={k.lower(): v for k, v in current.headers.items()},
        query=current.query_params or {},
        body=current.raw_body or b"",
        path_params=path_params,
    )
    svc = services()
    # API Gateway's id for the request (also in its access log); a fresh one locally.
    request_id = (current.context or {}).get("requestId") or str(uuid.uuid4())
    answer = dispatch(
        endpoint,
        lambda call: handler(svc, call),
        request,
        svc.verifier,
        svc.settings.max_body_bytes,
        request_id=request_id,
    )
    body = answer.body
    if answer.status >= 400 and isinstance(body, dict):
        body = {**body, "request_id": request_id}  # what a user quotes when reporting it
    headers = {**answer.headers, "X-Request-Id": request_id}
    return Response(body=json.dumps(body), headers=headers, status_code=answer.status)


@app.route("/v1/certificates", methods=["POST"], content_types=ANY)
def issue_certificate() -> Response:
    return serve("issue_certificate")


@app.route("/v1/certificates/batch", methods=["POST"], content_types=ANY)
def issue_batch() -> Response:
    return serve("issue_batch")


@app.route("/v1/certificates/{certificate_id}/slices", methods=["POST"], content_types=ANY)
def slice_certificate(certificate_id: str) -> Response:
    return serve("slice_certificate", certificate_id=certificate_id)


@app.route("/v1/transfers", methods=["POST"], content_types=ANY)
def transfer() -> Response:
    return serve("transfer")


@app.route("/v1/claims", methods=["POST"], content_types=ANY)
def claim() -> Response:
    return serve("claim")


@app.route("/v1/certificates/{certificate_id}/withdraw", methods=["POST"], content_types=ANY)
def withdraw(certificate_id: str) -> Response:
    return serve("withdraw", certificate_id=certificate_id)


@app.route("/v1/commands", methods=["GET"])
def list_commands() -> Response:
    return serve("list_commands")


@app.route("/v1/commands/{command_id}", methods=["GET"])
def get_command(command_id: str) -> Response:
    return serve("get_command", command_id=command_id)


@app.route("/v1/certificates", methods=["GET"])
def list_certificates() -> Response:
    return serve("list_certificates")


@app.route("/v1/certificates/aggregate", methods=["GET"])
def aggregate() -> Response:
    return serve("aggregate")


@app.route("/v1/certificates/{certificate_id}", methods=["GET"])
def get_certificate(certificate_id: str) -> Response:
    return serve("get_certificate", certificate_id=certificate_id)


@app.route("/v1/transfers", methods=["GET"])
def list_transfers() -> Response:
    return serve("list_transfers")


@app.route("/v1/claims", methods=["GET"])
def list_claims() -> Response:
    return serve("list_claims")


@app.route("/v1/reports/matching", methods=["GET"])
def matching_report() -> Response:
    return serve("matching_report")


@app.route("/v1/health", methods=["GET"])
def health() -> Response:
    return serve("health")


@app.route("/v1/ops/commands", methods=["GET"])
def stuck_commands() -> Response:
    return serve("stuck_commands")


@app.route("/v1/ops/commands/{command_id}/resolve", methods=["POST"], content_types=ANY)
def resolve_command(command_id: str) -> Response:
    return serve("resolve_command", command_id=command_id)


@app.route("/v1/ops/reconcile", methods=["POST"], content_types=ANY)
def reconcile_now() -> Response:
    return serve("reconcile_now")


@app.route("/v1/openapi.json", methods=["GET"])
def openapi_document() -> Response:
    return Response(
        body=json.dumps(openapi.document()), headers={"Content-Type": "application/json"}
    )


# Every other method on a path of ours answers 405 problem+json naming the allowed ones, here
# and on AWS (API Gateway sends a method it has no route for to its "missing authentication
# token" response; infra/ turns that into a 404 problem+json for unknown paths).
REFUSED_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")


def _refuse_other_methods() -> None:
    for path, entries in list(app.routes.items()):
        allowed = sorted(entries)
        refused = [m for m in REFUSED_METHODS if m not in entries]

        def method_not_allowed(_allowed: list[str] = allowed, **_path_params: str) -> Response:
            answer = not_allowed(app.current_request.method, _allowed)
            return Response(
                body=json.dumps(answer.body), headers=answer.headers, status_code=answer.status
            )

        app.route(path, methods=refused, content_types=ANY, name="method_not_allowed")(
            method_not_allowed
        )


_refuse_other_methods()


@app.on_sqs_message(queue=_STAGE_SETTINGS.queue_name, batch_size=10, name="worker")
def worker(event) -> dict:
    # Partial batch response: the records that must come back (see infra/ for the switch).
    svc = services()
    return entrypoints.handle_queue_event(
        event.to_dict(), composition.worker(svc), MAX_RECEIVES, composition.postpone(svc)
    )


@app.schedule(Rate(1, unit=Rate.MINUTES), name="reconciler")
def reconciler(event) -> dict:
    # The schedule fans out one invocation per shard, which come back here with their shard.
    svc = services()
    return entrypoints.handle_schedule(
        event.to_dict(), composition.reconciler(svc), composition.shard_fan_out(svc)
    )
