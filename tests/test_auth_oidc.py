"""OIDC tokens: an unreachable JWKS is the service's outage (503), not every caller's 401; the
clock-skew leeway; the roles claim as configured (Cognito's groups)."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from chalicelib.api.auth import OidcVerifier, Unauthorized, actor_from
from chalicelib.api.http import problem_of
from chalicelib.domain import Actor, Forbidden, Role
from chalicelib.ports import DependencyDown
from chalicelib.usecases import accept
from devstack.stack import free_port

ISSUER = "https://id.example.invalid"
KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _jwks() -> bytes:
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(KEY.public_key()))
    return json.dumps({"keys": [{**jwk, "kid": "k1", "use": "sig", "alg": "RS256"}]}).encode()


@pytest.fixture
def jwks_url():
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(_jwks())

        def log_message(self, *_args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/jwks.json"
    server.shutdown()


def _token(**claims) -> str:
    now = int(time.time())
    body = {"sub": "alice", "iss": ISSUER, "aud": "certs", "iat": now, "exp": now + 60, **claims}
    return jwt.encode(body, KEY, algorithm="RS256", headers={"kid": "k1"})


def test_an_unreachable_jwks_is_a_503_not_a_401() -> None:
    verifier = OidcVerifier(ISSUER, "certs", f"http://127.0.0.1:{free_port()}/jwks.json")
    with pytest.raises(DependencyDown) as down:
        actor_from("Bearer " + _token(), verifier)
    assert problem_of(down.value).status == 503


def test_a_token_a_little_past_its_expiry_passes_within_the_leeway(jwks_url) -> None:
    now = int(time.time())
    verifier = OidcVerifier(ISSUER, "certs", jwks_url, leeway_s=45)
    assert verifier.verify(_token(exp=now - 20))["sub"] == "alice"
    with pytest.raises(Unauthorized):
        actor_from("Bearer " + _token(exp=now - 120), verifier)


def test_roles_come_from_the_configured_claim(jwks_url) -> None:
    cognito = OidcVerifier(ISSUER, "certs", jwks_url, roles_claim="cognito:groups")
    token = "Bearer " + _token(**{"cognito:groups": ["operator"], "roles": ["issuer"]})
    assert actor_from(token, cognito).roles == frozenset({Role.OPERATOR})
    assert actor_from(token, OidcVerifier(ISSUER, "certs", jwks_url)).roles == frozenset(
        {Role.ISSUER}
    )


def test_an_issuers_token_names_its_grid_areas_and_may_not_issue_elsewhere(jwks_url) -> None:
    verifier = OidcVerifier(ISSUER, "certs", jwks_url)
    dk1 = actor_from("Bearer " + _token(roles=["issuer"], grid_areas=["DK1"]), verifier)
    assert dk1.grid_areas == frozenset({"DK1"})
    nowhere = actor_from("Bearer " + _token(roles=["issuer"]), verifier)
    assert nowhere.grid_areas == frozenset()  # an OIDC token without the claim: no area


def test_issue_and_withdraw_outside_the_tokens_grid_areas_are_403_and_change_nothing() -> None:
    from tests.pipeline import Pipeline

    p = Pipeline()
    cert, _ = p.issued(grid_area="DK1")
    dk2 = Actor(owner="issuer-dk2", roles=frozenset({Role.ISSUER}), grid_areas=frozenset({"DK2"}))
    before = (len(p.book.commands), p.queue.sent)
    spec = p.book.get_command(next(iter(p.book.commands))).issue
    with pytest.raises(Forbidden) as refused:
        accept.issue(
            p.book,
            p.queue,
            p.request(dk2),
            spec.model_copy(update={"gsrn": "5713130" + "0" * 10 + "9"}),
        )
    assert problem_of(refused.value).status == 403
    with pytest.raises(Forbidden):
        accept.withdraw(p.book, p.queue, p.request(dk2), cert)
    assert (len(p.book.commands), p.queue.sent) == before
    dk1 = dk2.model_copy(update={"grid_areas": frozenset({"DK1"})})
    assert accept.withdraw(p.book, p.queue, p.request(dk1), cert).kind.value == "withdraw"
