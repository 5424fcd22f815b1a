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


class _Partitions:
    """Of one table, for each global secondary index (by its partition key attribute), the
    keys of the items under each partition key value. Built from every item at the first Query
    of the index, then kept up to date by each write of an item (_install_fast_query)."""

    def __init__(self, table: Any) -> None:
        self.table = table
        self.attribute = {
            index.name: next(k["AttributeName"] for k in index.schema if k["KeyType"] == "HASH")
            for index in table.global_indexes
        }
        self.keys: dict[str, dict[Any, set[tuple[Any, Any]]]] = {i: {} for i in self.attribute}
        self.value: dict[str, dict[tuple[Any, Any], Any]] = {i: {} for i in self.attribute}
        for item in _every_item(table):
            self.place((item.hash_key, item.range_key), item)

    def place(self, key: tuple[Any, Any], item: Any) -> None:
        """The item now stored under `key` (None: none is)."""
        for index, attribute in self.attribute.items():
            new = item.attrs.get(attribute) if item is not None else None
            old = self.value[index].get(key)
            if old is new or (old is not None and new is not None and old == new):
                continue
            if old is not None:
                under = self.keys[index][old]
                under.discard(key)
                if not under:
                    del self.keys[index][old]
            if new is None:
                self.value[index].pop(key, None)
            else:
                self.keys[index].setdefault(new, set()).add(key)
                self.value[index][key] = new

    def items(self, index: str, value: Any) -> list[Any]:
        found = (_item_at(self.table, key) for key in self.keys[index].get(value, ()))
        return [item for item in found if item is not None]


def _every_item(table: Any) -> list[Any]:
    if not table.range_key_attr:
        return list(table.items.values())
    return [item for by_range in table.items.values() for item in by_range.values()]


def _every_item_under(table: Any, hash_key: Any) -> list[Any]:
    stored = table.items.get(hash_key)
    if stored is None:
        return []
    return list(stored.values()) if table.range_key_attr else [stored]


def _item_at(table: Any, key: tuple[Any, Any]) -> Any:
    hash_key, range_key = key
    stored = table.items.get(hash_key)
    if stored is None or not table.range_key_attr:
        return stored
    return stored.get(range_key)


def _install_fast_query() -> None:
    """moto answers every Query by looking at every item of the table (`Table.query` over
    `all_items()`), sorted first, then sorts what matched again: O(N log N) per Query, which the
    reconciler's many index listings pay at every pass, and which made a pass over a book of
    100,000 certificates outlast the clients' read timeout. Here a Query looks at its partition
    only: of the table, the items under its partition key; of a global secondary index, those
    under the index's partition key value (`_Partitions`, kept up to date by every put, update
    and delete of an item). moto still checks each of them against the whole key condition and
    sorts the matches, so the answers are the ones it gives without this; the first sort
    decided nothing (the matches are sorted again on keys that are unique), so they come
    unsorted. A TransactWriteItems (a table restored whole when it fails) has its tables'
    indexes built again at their next Query."""
    from moto.dynamodb.models import DynamoDBBackend
    from moto.dynamodb.models.dynamo_type import DynamoType
    from moto.dynamodb.models.table import Table

    if getattr(Table, "_certs_fast_query", False):
        return
    generic_query, sorted_items = Table.query, Table.all_items
    generic_put, generic_delete = Table.put_item, Table.delete_item
    generic_update, generic_transact = (
        DynamoDBBackend.update_item,
        DynamoDBBackend.transact_write_items,
    )
    in_query = threading.local()

    def partitions(table: Any, build: bool) -> _Partitions | None:
        # Kept on the table: it lives and goes with it (a test's or a simulation's tables)
        found = table.__dict__.get("_certs_partitions")
        if found is None and build:
            found = table._certs_partitions = _Partitions(table)
        return found

    def all_items(self: Any) -> list[Any]:
        candidates = getattr(in_query, "candidates", None)
        if candidates is None:
            return sorted_items(self)
        return candidates(self)

    @functools.wraps(generic_query)
    def query(self: Any, hash_key: Any, *args: Any, **kwargs: Any) -> Any:
        index_name = args[6] if len(args) > 6 else kwargs.get("index_name")
        conditions = kwargs.get("hash_key_conditions") or []
        if index_name is None and hash_key is not None:
            in_query.candidates = lambda table: _every_item_under(table, hash_key)
        elif index_name is not None and len(conditions) == 1:
            (attribute, value), found = conditions[0], partitions(self, build=True)
            if found.attribute.get(index_name) == attribute:
                in_query.candidates = lambda _table: found.items(index_name, value)
            else:
                in_query.candidates = _every_item
        else:
            in_query.candidates = _every_item
        try:
            return generic_query(self, hash_key, *args, **kwargs)
        finally:
            in_query.candidates = None

    def put_item(self: Any, *args: Any, **kwargs: Any) -> Any:
        item = generic_put(self, *args, **kwargs)
        if (found := partitions(self, build=False)) is not None:
            found.place((item.hash_key, item.range_key), item)
        return item

    def delete_item(self: Any, hash_key: Any, range_key: Any) -> Any:
        try:
            return generic_delete(self, hash_key, range_key)
        finally:
            if (found := partitions(self, build=False)) is not None:
                found.place((hash_key, range_key), _item_at(self, (hash_key, range_key)))

    def update_item(self: Any, table_name: str, key: dict[str, Any], *args: Any, **kw: Any) -> Any:
        try:
            return generic_update(self, table_name, key, *args, **kw)
        finally:  # updated in place, or created, or neither (its condition failed)
            table = self.tables.get(table_name)
            if table is not None and (found := partitions(table, build=False)) is not None:
                hash_key = DynamoType(key[table.hash_key_attr])
                range_key = DynamoType(key[table.range_key_attr]) if table.range_key_attr else None
                found.place((hash_key, range_key), _item_at(table, (hash_key, range_key)))

    def transact_write_items(self: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return generic_transact(self, *args, **kwargs)
        finally:  # rare here: every index is built again at its next Query
            for table in self.tables.values():
                table.__dict__.pop("_certs_partitions", None)

    Table.all_items, Table.query = all_items, query
    Table.put_item, Table.delete_item = put_item, delete_item
    DynamoDBBackend.update_item = update_item
    DynamoDBBackend.transact_write_items = transact_write_items
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
