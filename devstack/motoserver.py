"""moto's DynamoDB and SQS servers for the embedded stack: moto, with five costs taken off the
hot path and a server that keeps connections open. What moto answers is unchanged.

Profiled under `make run` load (bench/README.md, section 3), moto spent its time on work that
does not depend on the request:

- Answers. moto 5 writes every answer through a generic serializer that walks the botocore
  output shape member by member. A DynamoDB item is a tree of AttributeValue unions (ten
  members each, each looked up under several aliases), so echoing an item back cost more
  than the update itself: ~40 % of the DynamoDB server's CPU. moto keeps items in their wire
  form already (`{"S": "..."}`, `{"N": "12"}`, `{"M": {...}}`), which the serializer would
  reproduce value for value; this copies that form through. Binary values (`B`, `BS`) still
  take the serializer's path, which encodes them.
- Retention checks. moto's SQS checks each message it sends or receives against the queue's
  retention period by computing every queue attribute, three of which count the messages in
  the queue: with a backlog of a few hundred messages each SendMessage cost ~15 ms. This
  reads the one attribute it needs.
- The clock. Every visibility check asks for the time through datetime arithmetic (three
  datetime objects per message per scan); a server has no frozen clock, so `time.time()`
  gives the same number.
- Queries. moto answers every Query, of the table or of an index, by sorting every item of
  the table first, then sorting what matched: O(N log N) per Query, and the reconciler lists
  its indexes many times a pass. Within a Query the items come unsorted (the matches are still
  sorted, on keys that are unique, so the answer and its pages are the same).
- Routing. For every request moto lists its own package directory (a `listdir` and ~60
  `stat`s, under the lock all requests take); the list cannot change while it runs.
- Lookups that depend only on their input. For every request moto lists the handler class's
  methods with `inspect.getmembers` (a few hundred attributes), parses the UpdateExpression
  twice (once to check it, once to apply it), and its SQS converts each attribute name from
  camelCase afresh for every message it describes. These are remembered: a class's methods
  do not change, an expression's parse tree is only read (the validator works on a deep copy),
  and a name's conversion is a pure function of the name.
- Connections. moto's werkzeug server closes the connection after every answer (and starts a
  thread per connection); waitress keeps them open, with a fixed pool of threads.

Only the embedded stack's servers run this; the tests' in-process moto does not.
`tests/test_motoserver.py` checks that the answers are the ones moto gives without it.

One change is about correctness, not speed, and the tests' in-process moto takes it too
(`make_atomic`): DynamoDB evaluates a request's conditions and applies its writes as one step;
moto reads, checks and writes without a lock, so two threads of a server (or of a test) can both
pass one condition. Serving one DynamoDB request at a time, and one SQS request at a time except
while a long poll waits, gives moto the atomicity of the real services.

    python -m devstack.motoserver -H 127.0.0.1 -p 5000
"""

from __future__ import annotations

import argparse
import functools
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from typing import Any

# moto is imported in the functions that change it: the stack's own process only starts
# servers (`start`) and does not need moto loaded.

_BINARY = frozenset({"B", "BS"})


def _wire_form(value: Any) -> bool:
    """An AttributeValue already as DynamoDB's JSON protocol writes it, with no binary."""
    if not isinstance(value, dict) or len(value) != 1:
        return False
    ((kind, inner),) = value.items()
    if kind in _BINARY:
        return False
    if kind == "M":
        return isinstance(inner, dict) and all(_wire_form(v) for v in inner.values())
    if kind == "L":
        return isinstance(inner, list) and all(_wire_form(v) for v in inner)
    return True


def _install_fast_attribute_values() -> None:
    """Copy wire-form AttributeValues through the JSON serializer."""
    from moto.core import serialize

    cls = serialize.BaseJSONSerializer
    if getattr(cls, "_certs_fast_attribute_values", False):
        return
    generic = cls._serialize_type_structure

    def _serialize_type_structure(self, serialized, value, shape, key):
        if key and shape.name == "AttributeValue" and _wire_form(value):
            self._default_serialize(serialized, value, shape, key)
            return
        generic(self, serialized, value, shape, key)

    cls._serialize_type_structure = _serialize_type_structure
    cls._certs_fast_attribute_values = True


def _install_fast_query() -> None:
    """moto answers every Query by first sorting every item of the table (`Table.query` over
    `all_items()`), then sorts what matched again: O(N log N) per Query, which the reconciler's
    many index listings pay at every pass. Within a Query the first sort decides nothing (the
    matches are sorted again on keys that are unique), so there the items come unsorted."""
    from moto.dynamodb.models.table import Table

    if getattr(Table, "_certs_fast_query", False):
        return
    generic_query, sorted_items = Table.query, Table.all_items
    in_query = threading.local()

    def all_items(self: Any) -> list[Any]:
        if not getattr(in_query, "active", False):
            return sorted_items(self)
        if not self.range_key_attr:
            return list(self.items.values())
        return [item for by_range in self.items.values() for item in by_range.values()]

    @functools.wraps(generic_query)
    def query(self: Any, *args: Any, **kwargs: Any) -> Any:
        in_query.active = True
        try:
            return generic_query(self, *args, **kwargs)
        finally:
            in_query.active = False

    Table.all_items, Table.query = all_items, query
    Table._certs_generic_query = generic_query
    Table._certs_fast_query = True


def _install_lookup_caches() -> None:
    """Remember what depends only on its input (module docstring: "Lookups")."""
    from moto.core import responses, utils
    from moto.dynamodb.parsing.expressions import UpdateExpressionParser
    from moto.sqs import models as sqs_models

    if getattr(responses, "_certs_lookup_caches", False):
        return
    responses.method_names_from_class = functools.lru_cache(maxsize=None)(
        utils.method_names_from_class
    )
    sqs_models.camelcase_to_underscores = functools.lru_cache(maxsize=4096)(
        utils.camelcase_to_underscores
    )
    parse = UpdateExpressionParser.make.__func__
    UpdateExpressionParser.make = classmethod(functools.lru_cache(maxsize=1024)(parse))
    responses._certs_lookup_caches = True


def _now_s(dt: Any = None) -> float:
    if dt is None:  # the hot path: every message of every scan
        return time.time()
    from moto.core.utils import unix_time

    return unix_time(dt)


def _now_ms(dt: Any = None) -> float:
    if dt is None:
        return time.time() * 1000.0
    from moto.core.utils import unix_time_millis

    return unix_time_millis(dt)


def _retained(self: Any, queue_name: str, message: Any) -> bool:
    period = self.get_queue(queue_name).message_retention_period
    return period + message.sent_timestamp / 1000 > _now_s()


def install() -> None:
    """The five changes to moto itself (idempotent)."""
    from moto import backends
    from moto.sqs import models as sqs_models

    _install_fast_attribute_values()
    _install_fast_query()
    _install_lookup_caches()
    if not isinstance(backends.list_of_moto_modules, functools.partial):
        modules = tuple(backends.list_of_moto_modules())
        backends.list_of_moto_modules = functools.partial(iter, modules)
    sqs_models.SQSBackend.is_message_valid_based_on_retention_period = _retained
    sqs_models.unix_time = _now_s
    sqs_models.unix_time_millis = _now_ms


_DYNAMODB = threading.Lock()
_SQS = threading.Lock()
_holds_sqs = threading.local()


def make_atomic() -> None:
    """Each DynamoDB request, and each SQS request, applied as one step, as AWS applies it
    (idempotent). The scope is the whole request: a TransactWriteItems or a FIFO receive touches
    several items or messages, and a read must not see a write half done. The one exception is
    a receive's long poll: it waits without the lock, so that a send can wake it."""
    from moto.dynamodb.responses import DynamoHandler
    from moto.sqs.models import Queue
    from moto.sqs.responses import SQSResponse

    if getattr(DynamoHandler, "_certs_atomic", False):
        return

    def one_at_a_time(lock: threading.Lock, handle):
        def call_action(self):
            with lock:
                return handle(self)

        return call_action

    def sqs_call_action(self):
        with _SQS:
            _holds_sqs.held = True
            try:
                return serve_sqs(self)
            finally:
                _holds_sqs.held = False

    def wait_for_messages(self, timeout):
        if not getattr(_holds_sqs, "held", False):
            return wait(self, timeout)
        _SQS.release()  # let sends (and other receives) in while this one waits
        try:
            return wait(self, timeout)
        finally:
            _SQS.acquire()

    serve_sqs, wait = SQSResponse.call_action, Queue.wait_for_messages
    DynamoHandler.call_action = one_at_a_time(_DYNAMODB, DynamoHandler.call_action)
    SQSResponse.call_action = sqs_call_action
    Queue.wait_for_messages = wait_for_messages
    DynamoHandler._certs_atomic = True


def start(host: str, port: int, timeout_s: float = 30) -> tuple[subprocess.Popen, str]:
    """A server process on host:port, once it answers; its URL."""
    # The server's stdin is a pipe only this process writes to: when this process ends, even
    # by SIGKILL, the kernel closes it, and the server, reading it, exits (--exit-with-stdin).
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "devstack.motoserver",
            "-H",
            host,
            "-p",
            str(port),
            "--exit-with-stdin",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://{host}:{port}"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"moto server exited with {process.returncode}")
        try:
            urllib.request.urlopen(url + "/moto-api/", timeout=1).close()
            return process, url
        except OSError:
            time.sleep(0.1)
    process.kill()
    process.wait()
    raise RuntimeError(f"moto server did not start within {timeout_s:g} s")


def _exit_at_end_of_stdin() -> None:
    # os.read, not sys.stdin: a daemon thread blocked in the buffered reader holds its lock,
    # and the interpreter aborts at shutdown (SIGTERM) when it cannot take it.
    while os.read(sys.stdin.fileno(), 4096):
        pass
    os._exit(0)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("-H", "--host", default="127.0.0.1")
    parser.add_argument("-p", "--port", type=int, default=5000)
    parser.add_argument(
        "--exit-with-stdin",
        action="store_true",
        help="exit when stdin closes (the parent ended): no orphan outlives its stack",
    )
    args = parser.parse_args(argv)
    if args.exit_with_stdin:
        threading.Thread(target=_exit_at_end_of_stdin, name="parent-watch", daemon=True).start()
    os.environ.setdefault("MOTO_PORT", str(args.port))
    install()
    make_atomic()
    import waitress
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    app = DomainDispatcherApplication(create_backend_app)
    # Long polls hold a thread each for up to 20 s: enough threads for the stack's pollers,
    # its API and worker clients, and a developer's own.
    waitress.serve(app, host=args.host, port=args.port, threads=24)


if __name__ == "__main__":
    main(sys.argv[1:])
