"""Schemathesis against /v1/openapi.json: no 5xx, answers that match the schema, no crash.

How it runs offline and in-process: schemathesis speaks WSGI, and Chalice's own test client
(chalice.local.LocalGateway, the local API Gateway behind `chalice local` and
`chalice.test.Client`) runs the real routes,
so a small WSGI adapter in front of that client is all it takes: no server, no port, no
network. The services behind it are the in-memory book and queue with the registry simulator;
every request carries a valid bearer token with the issuer and operator roles (and so reaches
every operation); schemathesis makes up the rest, valid and invalid, within a bounded number
of examples per operation (FUZZ_EXAMPLES widens it).
"""

from __future__ import annotations

import base64
import os
import urllib.parse
from collections.abc import Callable, Iterable, Iterator
from http import HTTPStatus
from typing import Any

import pytest
import schemathesis
from chalice import Chalice
from chalice.config import Config
from chalice.local import LocalGateway, LocalGatewayException
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

import app as app_module
from chalicelib import composition
from chalicelib.adapters.memory import InMemoryBook, InMemoryQueue
from chalicelib.api.auth import SharedSecretVerifier
from chalicelib.registry.sandbox.simulator import RegistrySimulator, SimulatorConfig
from tests.conftest import SECRET, token
from tests.conftest import settings as service_settings

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "25"))
AUTH = {"Authorization": "Bearer " + token("fuzzer", "issuer", "operator")}


def wsgi(app: Chalice) -> Callable[[dict[str, Any], Callable], Iterable[bytes]]:
    """The Chalice app behind its local API Gateway (as `chalice local` and
    `chalice.test.Client` run it), as a WSGI application."""
    gateway = LocalGateway(app, Config())

    def application(environ: dict[str, Any], start_response: Callable) -> Iterator[bytes]:
        # PATH_INFO arrives decoded; the gateway parses a URL, where a decoded '#' or '?'
        # would cut the path short (and reach another route).
        path = urllib.parse.quote(environ.get("PATH_INFO") or "/", safe="/")
        if environ.get("QUERY_STRING"):
            path += "?" + environ["QUERY_STRING"]
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = environ["wsgi.input"].read(length) if length else b""
        headers = {
            name[5:].replace("_", "-").lower(): value
            for name, value in environ.items()
            if name.startswith("HTTP_")
        }
        if environ.get("CONTENT_TYPE"):
            headers["content-type"] = environ["CONTENT_TYPE"]
        try:
            answer = gateway.handle_request(environ["REQUEST_METHOD"], path, headers, body)
        except LocalGatewayException as refused:  # API Gateway's own answers (403, 404 route)
            status, out_headers, out = refused.CODE, refused.headers, refused.body or b""
        else:
            status, out_headers = answer["statusCode"], answer["headers"]
            out = answer["body"] or b""
            if answer.get("isBase64Encoded"):
                out = base64.b64decode(out)
        start_response(
            f"{status} {HTTPStatus(status).phrase}",
            [(name, str(value)) for name, value in out_headers.items()],
        )
        yield out if isinstance(out, bytes) else out.encode()

    return application


@pytest.fixture(scope="module", autouse=True)
def in_memory_services() -> Iterator[None]:
    app_module.use_services(
        composition.Services(
            settings=service_settings(),
            book=InMemoryBook(),
            queue=InMemoryQueue(),
            verifier=SharedSecretVerifier(SECRET),
            registry=RegistrySimulator(SimulatorConfig(commit_delay_s=0.0)),
        )
    )
    yield
    app_module.use_services(None)


schema = schemathesis.openapi.from_wsgi("/v1/openapi.json", wsgi(app_module.app))


@schema.parametrize()
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,  # the same requests on every run: a CI failure replays locally
)
def test_no_request_crashes_a_handler_or_breaks_the_contract(case: schemathesis.Case) -> None:
    case.call_and_validate(
        headers=AUTH,
        checks=[
            not_a_server_error,
            status_code_conformance,
            content_type_conformance,
            response_schema_conformance,
        ],
    )
