"""The `Registry` port over HTTP, for the simulator served by devstack/registry_server.py.

It runs in the embedded stack and in a sandbox stage on Lambda, so it is standard library only.
Its one hard job is to sort every failure of a send into the right kind, because the worker
acts on that kind: `RegistryUnavailable` means "certainly not sent, send the same bytes again
later"; `RegistryAmbiguous` means "maybe applied, never send again blindly" (IN_DOUBT). A wrong
"unavailable" makes a double send (invariant I1), a wrong "ambiguous" only costs a resolution.
So when in doubt, it is ambiguous.

It uses http.client (what urllib.request runs on) rather than urllib.request, because
urllib.request wraps a failure to connect and a failure while writing the request in the same
URLError; connecting first, on its own, is what tells "nothing left this machine" apart.
"""

from __future__ import annotations

import base64
import binascii
import http.client
import json
import ssl
import urllib.parse
from collections.abc import Sequence
from typing import Any

from chalicelib.registry.envelope import transaction_id_of
from chalicelib.registry.port import (
    QueriesNotSupported,
    Receipt,
    RegistryAmbiguous,
    RegistryRefused,
    RegistryUnavailable,
    TransactionStatus,
)

# Answers that say the request never got as far as the registry's rules: a URL or credentials
# to fix. Nothing was applied, and the same bytes may go once the configuration is right.
_NOT_REACHED = {401, 403, 404, 405, 407, 408}


class RegistryProtocolError(Exception):
    """The registry refused the request as a whole (a 4xx) or answered a query with something
    this client does not understand: a bug or a misconfiguration, not a fault to retry."""


class HttpRegistry:
    def __init__(self, base_url: str, timeout_s: float = 10.0, supports_queries: bool = False):
        parts = urllib.parse.urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {base_url!r}")
        self._https = parts.scheme == "https"
        self._host = parts.hostname
        self._port = parts.port
        self._prefix = parts.path.rstrip("/")
        self._timeout_s = timeout_s
        self._supports_queries = supports_queries

    @property
    def supports_queries(self) -> bool:
        return self._supports_queries

    def reachable(self) -> None:
        """For /v1/health: raises unless the registry answers its health path and is up."""
        status, raw = self._exchange("GET", "/v1/health", None)
        if status != 200 or json.loads(raw or b"{}").get("available") is False:
            raise RegistryUnavailable(f"registry health answered {status}")

    def send(self, transactions: Sequence[bytes]) -> list[Receipt]:
        if not transactions:
            return []
        body = {"transactions": [base64.b64encode(data).decode() for data in transactions]}
        status, raw = self._exchange("POST", "/v1/transactions", json.dumps(body).encode())
        if status == 200:
            ids = [transaction_id_of(data) for data in transactions]
            return _receipts(raw, ids)
        if status == 503:
            # The server's contract: 503 is answered before anything is received.
            raise RegistryUnavailable(f"registry unavailable: {_error(raw)}")
        if status == 429:
            raise RegistryUnavailable(f"registry is throttling: {_error(raw)}")
        if status in _NOT_REACHED:
            raise RegistryUnavailable(f"registry answered {status}: {_error(raw)}")
        if 400 <= status < 500:
            # The request was refused whole, before any transaction was looked at.
            raise RegistryRefused(f"registry refused the request ({status}): {_error(raw)}")
        # 500 may come from half way through applying a batch; 502 and 504 from a proxy that
        # may have forwarded it. Nobody can say it was not applied.
        raise RegistryAmbiguous(f"registry answered {status}: {_error(raw)}")

    def status(self, transaction_id: str) -> Receipt:
        path_id = transaction_id.replace("+", "-").replace("/", "_")  # URL-safe base64
        answer = self._query(f"/v1/transactions/{path_id}")
        try:
            return Receipt(
                transaction_id=answer["transaction_id"],
                status=TransactionStatus(answer["status"]),
                message=answer.get("message", ""),
            )
        except (KeyError, ValueError, TypeError) as exc:
            raise RegistryProtocolError(f"not a transaction status: {answer!r}") from exc

    def stream(self, certificate_id: str) -> list[bytes]:
        answer = self._query(f"/v1/streams/{urllib.parse.quote(certificate_id, safe='')}")
        try:
            return [base64.b64decode(item, validate=True) for item in answer["transactions"]]
        except (KeyError, TypeError, binascii.Error) as exc:
            raise RegistryProtocolError(f"not a stream of transactions: {answer!r}") from exc

    # --- inside ------------------------------------------------------------------------------

    def _query(self, path: str) -> dict[str, Any]:
        if not self._supports_queries:
            raise QueriesNotSupported("this registry is configured without queries")
        try:
            status, raw = self._exchange("GET", path, None)
        except RegistryAmbiguous as exc:
            # A query changes nothing: a broken one is simply not answered, ask again later.
            raise RegistryUnavailable(f"query failed: {exc}") from exc
        if status == 501:
            raise QueriesNotSupported(f"this registry answers no queries: {_error(raw)}")
        if status == 503 or status == 429 or status >= 500:
            raise RegistryUnavailable(f"registry answered {status}: {_error(raw)}")
        if status != 200:
            raise RegistryProtocolError(f"registry answered {status}: {_error(raw)}")
        try:
            answer = json.loads(raw)
        except ValueError as exc:
            raise RegistryUnavailable("registry answered a broken query response") from exc
        if not isinstance(answer, dict):
            raise RegistryProtocolError(f"registry answered {answer!r}")
        return answer

    def _exchange(self, method: str, path: str, body: bytes | None) -> tuple[int, bytes]:
        """One request on a fresh connection. Raises RegistryUnavailable if no connection
        was made, RegistryAmbiguous for any failure after the request started to leave."""
        connection = self._connection()
        try:
            try:
                connection.connect()
            except OSError as exc:
                # Refused, unreachable, unknown host, connect or TLS handshake timeout: no byte
                # of the request was written, so the registry cannot have seen it.
                raise RegistryUnavailable(f"cannot connect to the registry: {exc!r}") from exc
            try:
                headers = {"Content-Type": "application/json", "Connection": "close"}
                connection.request(method, self._prefix + path, body=body, headers=headers)
                response = connection.getresponse()
                raw = response.read()
            except (OSError, http.client.HTTPException) as exc:
                # Written in part or in full, then a timeout, a reset or an empty or truncated
                # answer: the registry may have applied it. A reset while writing is here too,
                # because the bytes before it may already have been read and acted on.
                raise RegistryAmbiguous(f"no answer from the registry: {exc!r}") from exc
            return response.status, raw
        finally:
            connection.close()

    def _connection(self) -> http.client.HTTPConnection:
        if self._https:
            return http.client.HTTPSConnection(
                self._host,
                self._port,
                timeout=self._timeout_s,
                context=ssl.create_default_context(),
            )
        return http.client.HTTPConnection(self._host, self._port, timeout=self._timeout_s)


def _receipts(raw: bytes, ids: list[str]) -> list[Receipt]:
    """The receipts of a 200, which must name exactly the sent transactions, in order. A 200
    that does not is a broken answer to a call that reached the registry: ambiguous."""
    try:
        items = json.loads(raw)["receipts"]
        receipts = [
            Receipt(item["transaction_id"], TransactionStatus(item["status"]), item["message"])
            for item in items
        ]
    except (ValueError, KeyError, TypeError) as exc:
        raise RegistryAmbiguous(f"broken answer from the registry: {raw[:200]!r}") from exc
    if [r.transaction_id for r in receipts] != ids:
        raise RegistryAmbiguous("the registry's receipts do not match the sent transactions")
    return receipts


def _error(raw: bytes) -> str:
    try:
        return str(json.loads(raw)["error"])
    except (ValueError, KeyError, TypeError):
        return raw[:200].decode(errors="replace")
