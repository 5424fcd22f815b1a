"""The API as the CLI sees it: JSON over urllib.request.

Every failure becomes one of two errors, because the exit code depends on which it is: the API
answered and refused (`ApiError`, with its problem+json), or no usable answer came back at all
(`Unavailable`: refused connection, timeout, an answer that is not JSON).
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from http import HTTPStatus
from http.client import HTTPException
from typing import Any

REQUEST_TIMEOUT_S = 30.0


class Unavailable(Exception):
    """No usable answer from the API: it is down, unreachable, or too slow."""

    may_have_arrived = True  # False when the connection was refused: nothing was sent


class ApiError(Exception):
    """The API answered 4xx or 5xx; `problem` is its problem+json body (RFC 9457)."""

    def __init__(self, status: int, problem: dict[str, Any], retry_after: str | None = None):
        self.status = status
        self.problem = problem
        self.retry_after = retry_after
        super().__init__(self.line())

    def line(self) -> str:
        text = f"error {describe_problem(self.problem, self.status)}"
        if self.retry_after:
            text += f" (retry after {self.retry_after} s)"
        return text


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def describe_problem(problem: dict[str, Any], status: int | None = None) -> str:
    """`409 Conflict: slice ... is reserved (field: message)` from a problem+json body."""
    status = problem.get("status") or status or 0
    title = problem.get("title") or _phrase(status)
    # Chalice's own answers (an unknown route, say) carry `message` instead of `detail`.
    detail = problem.get("detail") or problem.get("message") or ""
    text = f"{status} {title}" + (f": {detail}" if detail else "")
    fields = [
        e["field"] if e.get("message") in (None, detail) else f"{e['field']}: {e['message']}"
        for e in problem.get("errors") or []
        if isinstance(e, dict) and e.get("field") and e["field"] not in detail
    ]
    if fields:
        text += f" ({'; '.join(fields)})"
    return text


@dataclass(frozen=True)
class Client:
    url: str
    token: str | None = None
    timeout_s: float = REQUEST_TIMEOUT_S

    def get(self, path: str, query: dict[str, Any] | None = None) -> Any:
        return self._send("GET", path + _query_string(query), None, {})

    def post(self, path: str, body: Any, idempotency_key: str | None = None) -> Any:
        headers = {"Content-Type": "application/json"}
        if idempotency_key is not None:
            headers["Idempotency-Key"] = idempotency_key
        return self._send("POST", path, json.dumps(body).encode(), headers)

    def _send(self, method: str, path: str, data: bytes | None, headers: dict[str, str]) -> Any:
        headers = {"Accept": "application/json, application/problem+json", **headers}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        request = urllib.request.Request(
            self.url.rstrip("/") + path, data=data, headers=headers, method=method
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as answer:
                return self._json(answer.read())
        except urllib.error.HTTPError as exc:
            with exc:
                raw = exc.read()
            raise ApiError(
                exc.code, _problem(raw, exc.code), exc.headers.get("Retry-After")
            ) from None
        except urllib.error.URLError as exc:
            raise self._unreachable(exc.reason) from None
        except TimeoutError:
            raise Unavailable(
                f"the API at {self.url} did not answer within {self.timeout_s:g} s"
            ) from None
        except (HTTPException, ConnectionError) as exc:
            raise self._unreachable(exc) from None

    def _unreachable(self, reason: object) -> Unavailable:
        if isinstance(reason, ConnectionRefusedError):
            refused = Unavailable(f"cannot reach the API at {self.url}: is `make run` running?")
            refused.may_have_arrived = False
            return refused
        if isinstance(reason, TimeoutError):
            return Unavailable(f"the API at {self.url} did not answer within {self.timeout_s:g} s")
        return Unavailable(f"cannot reach the API at {self.url}: {reason}")

    def _json(self, raw: bytes) -> Any:
        if not raw:
            return {}
        try:
            return json.loads(raw)
        except ValueError:
            raise Unavailable(
                f"the API at {self.url} answered with something that is not JSON"
            ) from None


def _problem(raw: bytes, status: int) -> dict[str, Any]:
    try:
        body = json.loads(raw)
    except ValueError:
        body = None
    if isinstance(body, dict):
        return body
    text = raw.decode("utf-8", "replace").strip().splitlines()
    return {"status": status, "detail": text[0][:200] if text else ""}


def _query_string(query: dict[str, Any] | None) -> str:
    pairs = {k: v for k, v in (query or {}).items() if v is not None}
    return "?" + urllib.parse.urlencode(pairs) if pairs else ""
