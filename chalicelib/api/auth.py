"""Who is calling: bearer JWTs turned into an Actor.

Locally and in tests, HS256 tokens signed with a shared secret from settings; on deployed
stages, tokens from an OIDC issuer (e.g. Cognito) verified with the issuer's JWKS. Claims:
`sub` is the caller's owner id, `roles` may hold "issuer" and "operator".
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any, Protocol

import jwt

from chalicelib.domain import Actor, Role
from chalicelib.ports import DependencyDown


class Unauthorized(Exception):
    """No token, or one that does not verify (401)."""


class TokenVerifier(Protocol):
    def verify(self, token: str) -> dict[str, Any]: ...


class SharedSecretVerifier:
    def __init__(self, secret: str) -> None:
        self._secret = secret

    def verify(self, token: str) -> dict[str, Any]:
        return jwt.decode(
            token, self._secret, algorithms=["HS256"], options={"require": ["sub", "exp"]}
        )


class OidcVerifier:
    """Verifies tokens of an OIDC issuer by its published keys (cached by PyJWKClient).

    A JWKS endpoint that cannot be reached is the service's outage (503, retry), not every
    caller's bad token (401); its fetch gives up well inside the API's own timeout. The claim
    that carries roles is configurable (Cognito puts groups in `cognito:groups`)."""

    def __init__(
        self,
        issuer: str,
        audience: str,
        jwks_url: str | None = None,
        *,
        timeout_s: float = 3.0,
        leeway_s: int = 45,
        roles_claim: str = "roles",
        grid_areas_claim: str = "grid_areas",
    ) -> None:
        self._issuer = issuer
        self._audience = audience
        self._leeway_s = leeway_s
        self._roles_claim = roles_claim
        self._grid_areas_claim = grid_areas_claim
        self._keys = jwt.PyJWKClient(
            jwks_url or issuer.rstrip("/") + "/.well-known/jwks.json",
            cache_keys=True,
            timeout=timeout_s,
        )

    def verify(self, token: str) -> dict[str, Any]:
        try:
            key = self._keys.get_signing_key_from_jwt(token)
        except jwt.PyJWKClientConnectionError as exc:
            raise DependencyDown("the token issuer's keys (JWKS) cannot be fetched") from exc
        claims = jwt.decode(
            token,
            key.key,
            algorithms=["RS256", "ES256"],
            audience=self._audience,
            issuer=self._issuer,
            leeway=self._leeway_s,
            options={"require": ["sub", "exp", "iss"]},
        )
        claims["roles"] = claims.get(self._roles_claim) or []
        # An issuer's token names its grid areas; a token without them may issue in none.
        claims["grid_areas"] = claims.get(self._grid_areas_claim) or []
        return claims


def actor_from(authorization: str | None, verifier: TokenVerifier) -> Actor:
    if not authorization:
        raise Unauthorized("an Authorization: Bearer token is required")
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("the Authorization header must be 'Bearer <token>'")
    try:
        claims = verifier.verify(token.strip())
    except jwt.PyJWTError as exc:
        raise Unauthorized(f"the token does not verify: {exc}") from exc
    subject = claims.get("sub")
    if not isinstance(subject, str) or not subject or len(subject) > 128:
        raise Unauthorized("the token names no owner (sub)")
    roles = claims.get("roles") or []
    if not isinstance(roles, list):
        raise Unauthorized("the token's roles must be a list")
    known = {r.value for r in Role}
    areas = claims.get("grid_areas")
    if areas is not None and not (
        isinstance(areas, list) and all(isinstance(a, str) for a in areas)
    ):
        raise Unauthorized("the token's grid_areas must be a list of grid areas")
    return Actor(
        owner=subject,
        roles=frozenset(Role(r) for r in roles if r in known),
        grid_areas=None if areas is None else frozenset(areas),
    )


def mint_token(
    secret: str,
    owner: str,
    roles: Iterable[str] = (),
    lifetime_s: int = 12 * 3600,
    grid_areas: Iterable[str] | None = None,
) -> str:
    """An HS256 token for local use and tests (the embedded stack prints some at start)."""
    now = int(time.time())
    claims = {"sub": owner, "roles": list(roles), "iat": now, "exp": now + lifetime_s}
    if grid_areas is not None:
        claims["grid_areas"] = list(grid_areas)
    return jwt.encode(claims, secret, algorithm="HS256")
