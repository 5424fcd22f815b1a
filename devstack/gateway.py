"""The embedded stack's HTTP front: Chalice's local server, answering as infra/ makes API
Gateway answer. An unknown path is a 404 problem+json (not the gateway's 403 "Missing
Authentication Token"), and TRACE or CONNECT a 405 problem+json (not http.server's 501 HTML);
a path of ours with another method is the app's own 405 (app.py). It also serves the
operators' page, GET /ops."""

from __future__ import annotations

import json
from typing import Any

from chalice.config import Config
from chalice.local import (
    ChaliceRequestHandler,
    ForbiddenError,
    LocalChalice,
    LocalDevServer,
    LocalGatewayException,
    RouteMatcher,
    create_local_server,
)

from chalicelib.api.http import HttpResponse, no_such_path, not_allowed


class ProblemRequestHandler(ChaliceRequestHandler):
    def _send_error_response(self, error: LocalGatewayException) -> None:
        # We use no API Gateway authorizer: the local gateway's only 403 is "no such route".
        if isinstance(error, ForbiddenError):
            self._send_answer(no_such_path(self.path.split("?")[0]))
        else:
            super()._send_error_response(error)

    def _refuse(self) -> None:
        # These carry no body we read; close the connection rather than guess at one.
        self.close_connection = True
        app = self.local_gateway._app_object
        path = self.path.split("?")[0]
        try:
            route = RouteMatcher(list(app.routes)).match_route(path).route
        except ValueError:
            self._send_answer(no_such_path(path))
            return
        allowed = [m for m, e in app.routes[route].items() if e.view_name != "method_not_allowed"]
        self._send_answer(not_allowed(self.command, sorted(allowed)))

    do_TRACE = do_CONNECT = _refuse

    def __getattr__(self, name: str) -> Any:
        # http.server answers a method it has no do_<METHOD> for (QUERY, PROPFIND...) with a
        # 501 HTML page: every other method is refused like TRACE.
        if name.startswith("do_"):
            return self._refuse
        raise AttributeError(name)

    def do_GET(self) -> None:
        page = getattr(self.server, "ops_page", None)
        if page is not None and self.path.split("?")[0] == "/ops":
            self._send_http_response(
                200,
                {"Content-Type": "text/html; charset=utf-8", "Cache-Control": "no-store"},
                page.render(),
            )
        else:
            self._generic_handle()

    def _send_answer(self, answer: HttpResponse) -> None:
        headers: dict[str, Any] = dict(answer.headers)
        self._send_http_response(answer.status, headers, json.dumps(answer.body))


def local_server(app: Any, host: str, port: int, ops_page: Any = None) -> LocalDevServer:
    """Chalice's threaded local server for `app` with the handler above, and the operators'
    page at /ops when one is given (devstack/ops_page.py)."""
    if not isinstance(app, LocalChalice):
        # Swaps the app's class for chalice's thread-safe one, once per process; the server
        # this binds is closed at once (chalice has no other way to make the swap).
        create_local_server(app, Config(), host, 0).server.server_close()
    server = LocalDevServer(app, Config(), host, port, handler_cls=ProblemRequestHandler)
    server.server.ops_page = ops_page
    return server
