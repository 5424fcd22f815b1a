"""Unknown paths and methods answer problem+json, 404 and 405, on the embedded stack's HTTP
front (devstack/gateway.py) as on API Gateway (the gateway responses of infra/), never the
gateway's 403 "Missing Authentication Token" nor http.server's 501 HTML."""

from __future__ import annotations

import http.client
import json
import threading
from collections.abc import Iterator

import pytest

import app as app_module
from devstack import gateway
from devstack.resources import template

PROBLEM_JSON = "application/problem+json"


@pytest.fixture
def server(moto_services) -> Iterator[tuple[str, int]]:
    app_module.use_services(moto_services)
    served = gateway.local_server(app_module.app, "127.0.0.1", 0)
    served.server.RequestHandlerClass.log_message = lambda *_a, **_k: None
    thread = threading.Thread(target=served.server.serve_forever, daemon=True)
    thread.start()
    yield served.server.server_address[:2]
    served.shutdown()
    thread.join(5)
    served.server.server_close()
    app_module.use_services(None)


def ask(server, method: str, path: str):
    connection = http.client.HTTPConnection(*server, timeout=10)
    connection.request(method, path)
    answer = connection.getresponse()
    body = answer.read()
    connection.close()
    return answer.status, dict(answer.getheaders()), body


@pytest.mark.parametrize("method", ["GET", "POST", "DELETE", "TRACE"])
@pytest.mark.parametrize("path", ["/", "/nope", "/v1/nope/deeper", "/v1/certificates/x/y/z"])
def test_an_unknown_path_is_a_404_problem(server, method, path):
    status, headers, body = ask(server, method, path)
    assert status == 404
    assert headers["Content-Type"] == PROBLEM_JSON
    problem = json.loads(body)
    assert problem["status"] == 404 and problem["instance"] == path


@pytest.mark.parametrize(
    "method, path, allowed",
    [
        ("DELETE", "/v1/certificates", "GET, POST"),
        ("PUT", "/v1/claims", "GET, POST"),
        ("PATCH", "/v1/certificates/some-id", "GET"),
        ("GET", "/v1/certificates/some-id/withdraw", "POST"),
        ("TRACE", "/v1/certificates", "GET, POST"),
        ("CONNECT", "/v1/health", "GET"),
        ("POST", "/v1/openapi.json", "GET"),
    ],
)
def test_another_method_on_a_path_of_ours_is_a_405_problem_naming_the_allowed(
    server, method, path, allowed
):
    status, headers, body = ask(server, method, path)
    assert status == 405
    assert headers["Content-Type"] == PROBLEM_JSON
    assert headers["Allow"] == allowed
    assert json.loads(body)["status"] == 405


def test_api_gateway_answers_unknown_paths_and_methods_with_a_404_problem():
    responses = template()["Resources"]["RestAPI"]["Properties"]["DefinitionBody"][
        "x-amazon-apigateway-gateway-responses"
    ]
    missing = responses["MISSING_AUTHENTICATION_TOKEN"]
    assert missing["statusCode"] == "404"
    assert missing["responseParameters"]["gatewayresponse.header.Content-Type"] == (
        f"'{PROBLEM_JSON}'"
    )
    for response in responses.values():
        problem = json.loads(response["responseTemplates"]["application/json"])
        assert problem["status"] == int(response["statusCode"])
        assert {"type", "title", "status", "detail"} <= set(problem)
