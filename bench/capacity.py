"""Count the AWS calls the code makes and compute the DynamoDB capacity they consume.

moto does not report consumed capacity reliably, so the units are computed here from the
requests and the stored items, by DynamoDB's published rules:

- Item size: attribute names (UTF-8 bytes) + values. String: UTF-8 bytes; Number: about
  (significant digits / 2) + 1 bytes; Binary: bytes; Boolean and Null: 1 byte; List and Map:
  3 bytes + 1 byte per element + the elements (map keys count like attribute names); sets:
  the sum of their elements.
- Writes: 1 WCU per 1 KB (rounded up per item, minimum 1). PutItem and UpdateItem are charged
  on the larger of the item before and after; DeleteItem on the deleted item; a write whose
  condition fails on the existing item (or 1). Transactional writes count twice.
- Global secondary indexes: each index entry the write creates, changes or removes is a write
  of its own (1 WCU per 1 KB of the index entry: its projected attributes with the table and
  index keys; the 100 bytes DynamoDB adds per index entry are storage overhead and are not
  counted here). A key change in the index is a delete plus a put. A write that changes no
  attribute the index projects costs the index nothing.
- Reads: 1 RCU per 4 KB strongly consistent, half eventually consistent. GetItem and each
  BatchGetItem key is rounded up per item, a missing item still costs the minimum; a Query
  (always eventually consistent on a GSI) is charged on the total size of the items it
  evaluated (before FilterExpression and ProjectionExpression), rounded up once per call.

To know the item before and after a write, and what a Query evaluated, the meter reads the
table with a shadow client of its own, whose calls are not counted. Everything is hooked on
the boto3 Session before the service builds its clients, so it counts whatever clients the
service makes, without knowing where they live.
"""

from __future__ import annotations

import contextlib
import math
import threading
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

WRITE_UNIT = 1024
READ_UNIT = 4096
SQS_CHUNK = 64 * 1024
WRITES = {"PutItem", "UpdateItem", "DeleteItem", "BatchWriteItem", "TransactWriteItems"}
READS = {"GetItem", "BatchGetItem", "Query", "Scan", "TransactGetItems"}
# Counted (calls only, no capacity) besides DynamoDB and SQS: custody's KMS data keys and
# Decrypts, the issuers' keys read from a secret store, the reconciler's fan-out.
COUNTED_SERVICES = ("dynamodb", "sqs", "kms", "secretsmanager", "ssm", "lambda")
# What "small writes" (issue 16) move out of the items whose state changes, into items written
# once: a command's build (its transactions and sealed secrets), which the DynamoDB book keeps
# in an item of its own (sk BUILT#...) since 2026-11-29, and the sealed secrets of a
# certificate's slices, which it does not yet: the "with small writes" figures are what the
# second would add. The attributes still count for an item written before the split.
WRITE_ONCE_ATTRIBUTES = ("transactions", "sealed_slices", "sealed_attributes")
BUILT_PREFIX = "BUILT#"  # the sort key of a command's build: written once already
SEALED = "secret"
# An owner's sealed seed (registry/custody.py), read and put by the worker, and opened (a KMS
# call under the seed's encryption context) where the owner signs: counted apart
# ("dynamodb.GetItem (seed)", "kms.Decrypt (seed)") to show what custody costs.
SEED_SUFFIX = " (seed)"
SEED_PURPOSE = "owner-seed"
WRITE_ONCE_KEY_BYTES = 60  # the keys of such an item (pk, sk: names and values)


# --- item sizes ---------------------------------------------------------------------------------


def _number_size(text: str) -> int:
    digits = text.lstrip("+-").lower().split("e")[0].replace(".", "").strip("0")
    return math.ceil(max(len(digits), 1) / 2) + 1


def value_size(value: dict[str, Any]) -> int:
    """Size in bytes of one DynamoDB-typed attribute value ({"S": ...}, {"N": ...}, ...)."""
    ((kind, v),) = value.items()
    if kind == "S":
        return len(v.encode())
    if kind == "N":
        return _number_size(str(v))
    if kind == "B":
        return len(v)
    if kind in ("BOOL", "NULL"):
        return 1
    if kind == "L":
        return 3 + sum(1 + value_size(e) for e in v)
    if kind == "M":
        return 3 + sum(1 + len(k.encode()) + value_size(e) for k, e in v.items())
    if kind == "SS":
        return sum(len(e.encode()) for e in v)
    if kind == "NS":
        return sum(_number_size(str(e)) for e in v)
    if kind == "BS":
        return sum(len(e) for e in v)
    raise ValueError(f"unknown DynamoDB type {kind}")


def item_size(item: dict[str, Any] | None) -> int:
    if not item:
        return 0
    return sum(len(name.encode()) + value_size(v) for name, v in item.items())


def write_once_size(item: dict[str, Any] | None) -> int:
    """Bytes of an item that small writes would keep in items of their own: the command's
    stored transactions and sealed slices (whole attributes) and every sealed slice secret
    nested in the item (a certificate's slices), with their names."""
    if not item:
        return 0
    size = 0
    for name, value in item.items():
        if name in WRITE_ONCE_ATTRIBUTES:
            size += len(name.encode()) + value_size(value)
        else:
            size += _nested_secrets(value)
    return size


def _is_build(item: dict[str, Any] | None) -> bool:
    return bool(item) and item.get("sk", {}).get("S", "").startswith(BUILT_PREFIX)


def without_write_once(item: dict[str, Any] | None) -> dict[str, Any] | None:
    """The item as small writes would keep it: no write-once parts (write_once_size)."""
    if not item:
        return item
    return {k: _strip(v) for k, v in item.items() if k not in WRITE_ONCE_ATTRIBUTES}


def _strip(value: dict[str, Any]) -> dict[str, Any]:
    ((kind, v),) = value.items()
    if kind == "M":
        return {"M": {k: _strip(e) for k, e in v.items() if k != SEALED}}
    if kind == "L":
        return {"L": [_strip(e) for e in v]}
    return value


def _nested_secrets(value: dict[str, Any]) -> int:
    ((kind, v),) = value.items()
    if kind == "M":
        return sum(
            (1 + len(k.encode()) + value_size(e)) if k == SEALED else _nested_secrets(e)
            for k, e in v.items()
        )
    if kind == "L":
        return sum(_nested_secrets(e) for e in v)
    return 0


def write_units(size: int) -> int:
    return max(1, math.ceil(size / WRITE_UNIT))


def read_units(size: int, consistent: bool) -> float:
    units = max(1, math.ceil(size / READ_UNIT))
    return float(units) if consistent else units / 2


# --- the table's shape --------------------------------------------------------------------------


@dataclass(frozen=True)
class Index:
    name: str
    keys: tuple[str, ...]
    projection: str  # ALL, KEYS_ONLY, INCLUDE
    include: tuple[str, ...] = ()

    def entry(self, item: dict[str, Any] | None, table_keys: tuple[str, ...]) -> dict | None:
        """The index entry of an item, or None when the item is not in the (sparse) index."""
        if not item or any(k not in item for k in self.keys):
            return None
        if self.projection == "ALL":
            return dict(item)
        wanted = set(self.keys) | set(table_keys) | set(self.include)
        return {k: v for k, v in item.items() if k in wanted}


@dataclass(frozen=True)
class TableShape:
    name: str
    keys: tuple[str, ...]
    indexes: tuple[Index, ...]

    @classmethod
    def describe(cls, client: Any, name: str) -> TableShape:
        table = client.describe_table(TableName=name)["Table"]
        indexes = tuple(
            Index(
                name=gsi["IndexName"],
                keys=tuple(k["AttributeName"] for k in gsi["KeySchema"]),
                projection=gsi["Projection"]["ProjectionType"],
                include=tuple(gsi["Projection"].get("NonKeyAttributes", ())),
            )
            for gsi in table.get("GlobalSecondaryIndexes", [])
        )
        return cls(name, tuple(k["AttributeName"] for k in table["KeySchema"]), indexes)

    def key_of(self, item: dict[str, Any]) -> dict[str, Any]:
        return {k: item[k] for k in self.keys}


def index_writes(
    index: Index, before: dict | None, after: dict | None, table_keys: tuple[str, ...]
) -> list[int]:
    """Write units of each index write that changing `before` into `after` costs."""
    old, new = index.entry(before, table_keys), index.entry(after, table_keys)
    if old is None and new is None:
        return []
    if old is None:
        return [write_units(item_size(new))]
    if new is None:
        return [write_units(item_size(old))]
    if any(old[k] != new[k] for k in index.keys):
        return [write_units(item_size(old)), write_units(item_size(new))]
    if old == new:
        return []
    return [write_units(max(item_size(old), item_size(new)))]


# --- the meter ----------------------------------------------------------------------------------


@dataclass
class Tally:
    """Calls and units of one phase."""

    calls: Counter = field(default_factory=Counter)  # "dynamodb.PutItem" -> n
    wcu_table: float = 0.0
    wcu_index: Counter = field(default_factory=Counter)  # index name -> units
    rcu: float = 0.0
    sqs_requests: int = 0  # billed SQS requests (64 KB chunks)
    sqs_messages: int = 0  # messages sent/received/deleted
    failed_conditions: int = 0
    # Table WCU if the write-once parts lived in items of their own (write_once_size): each
    # write charged on the rest of the item, plus one put of each new write-once part.
    wcu_table_small: float = 0.0
    wcu_index_small: Counter = field(default_factory=Counter)
    written_bytes: int = 0  # sum over table writes of the item size charged (the larger)
    write_once_bytes: int = 0  # of which write-once parts (transactions, sealed secrets)
    table_writes: int = 0

    @property
    def wcu(self) -> float:
        return self.wcu_table + sum(self.wcu_index.values())

    @property
    def aws_calls(self) -> int:
        return sum(self.calls.values())

    def add(self, other: Tally) -> None:
        self.calls.update(other.calls)
        self.wcu_table += other.wcu_table
        self.wcu_index.update(other.wcu_index)
        self.rcu += other.rcu
        self.sqs_requests += other.sqs_requests
        self.sqs_messages += other.sqs_messages
        self.failed_conditions += other.failed_conditions
        self.wcu_table_small += other.wcu_table_small
        self.wcu_index_small.update(other.wcu_index_small)
        self.written_bytes += other.written_bytes
        self.write_once_bytes += other.write_once_bytes
        self.table_writes += other.table_writes

    def scaled(self, factor: float) -> dict[str, Any]:
        return {
            "aws_calls": self.aws_calls * factor,
            "calls": {k: v * factor for k, v in sorted(self.calls.items())},
            "wcu": self.wcu * factor,
            "wcu_table": self.wcu_table * factor,
            "wcu_index": {k: v * factor for k, v in sorted(self.wcu_index.items())},
            "rcu": self.rcu * factor,
            "sqs_requests": self.sqs_requests * factor,
            "sqs_messages": self.sqs_messages * factor,
            "failed_conditions": self.failed_conditions * factor,
            "wcu_table_small": self.wcu_table_small * factor,
            "wcu_small": (self.wcu_table_small + sum(self.wcu_index_small.values())) * factor,
            "wcu_index_small": {k: v * factor for k, v in sorted(self.wcu_index_small.items())},
            "written_bytes": self.written_bytes * factor,
            "write_once_bytes": self.write_once_bytes * factor,
            "table_writes": self.table_writes * factor,
        }


class Meter:
    """Hooks boto3 Sessions: every DynamoDB and SQS call of every client made from them is
    counted under the current phase and the session's channel, with its capacity."""

    def __init__(self, shadow_session: Any) -> None:
        self._shadow_session = shadow_session
        self._shadow_client: Any = None  # made on first use: inside the mock, not before it
        self._shapes: dict[str, TableShape] = {}
        self.tallies: dict[str, Tally] = defaultdict(Tally)
        self.phase = "setup"
        # Clients used from several threads at once (parallel puts): a tally's sums are
        # read-modify-writes, which would lose some of the calls counted at the same moment.
        self._lock = threading.Lock()

    def attach(self, session: Any, channel: str) -> None:
        """Count the calls of every client later made from `session` under `channel`."""

        def after(**kwargs: Any) -> None:
            self._after(channel=channel, **kwargs)

        for service in COUNTED_SERVICES:
            session.events.register(f"before-parameter-build.{service}", self._before)
            session.events.register(f"after-call.{service}", after)

    def tally(self, phase: str, channel: str) -> Tally:
        return self.tallies[f"{phase}|{channel}"]

    @contextlib.contextmanager
    def measuring(self, phase: str) -> Iterator[None]:
        previous, self.phase = self.phase, phase
        try:
            yield
        finally:
            self.phase = previous

    @property
    def _shadow(self) -> Any:
        if self._shadow_client is None:
            self._shadow_client = self._shadow_session.client("dynamodb")
        return self._shadow_client

    def _shape(self, table: str) -> TableShape:
        if table not in self._shapes:
            self._shapes[table] = TableShape.describe(self._shadow, table)
        return self._shapes[table]

    def _read(self, table: str, key: dict[str, Any]) -> dict[str, Any] | None:
        return self._shadow.get_item(TableName=table, Key=key, ConsistentRead=True).get("Item")

    # --- hooks ---------------------------------------------------------------------------

    def _before(self, params: dict[str, Any], model: Any, context: dict, **_: Any) -> None:
        context["bench_params"] = params
        if model.service_model.service_name != "dynamodb":
            return
        if model.name in WRITES:
            context["bench_before"] = [
                (table, key, self._read(table, key))
                for table, key in self._write_keys(model.name, params)
            ]

    def _after(self, **kwargs: Any) -> None:
        with self._lock:
            self._count(**kwargs)

    def _count(
        self, http_response: Any, parsed: dict, model: Any, context: dict, channel: str, **_: Any
    ) -> None:
        service = model.service_model.service_name
        op = model.name
        tally = self.tally(self.phase, channel)
        ok = http_response.status_code < 300
        params = context.get("bench_params") or {}
        key = params.get("Key") or params.get("Item") or {}
        seed = str(key.get("pk", {}).get("S", "")).startswith("SEED#") or (
            (params.get("EncryptionContext") or {}).get("purpose") == SEED_PURPOSE
        )
        tally.calls[f"{service}.{op}" + (SEED_SUFFIX if seed else "")] += 1
        if service == "sqs":
            self._sqs(tally, op, params, parsed)
            return
        if op in WRITES:
            self._writes(tally, op, ok, context["bench_before"], parsed)
        elif op in READS and ok:
            self._reads(tally, op, params, parsed)

    # --- SQS --------------------------------------------------------------------------------

    @staticmethod
    def _sqs(tally: Tally, op: str, params: dict, parsed: dict) -> None:
        # Each 64 KB chunk of a request's payload is one billed request.
        if op == "SendMessage":
            payload = len(params.get("MessageBody", "").encode())
        elif op == "SendMessageBatch":
            payload = sum(len(e.get("MessageBody", "").encode()) for e in params["Entries"])
        elif op == "ReceiveMessage":
            payload = sum(len(m.get("Body", "").encode()) for m in parsed.get("Messages", []))
        else:
            payload = 0
        tally.sqs_requests += max(1, math.ceil(payload / SQS_CHUNK))
        if op == "ReceiveMessage":
            tally.sqs_messages += len(parsed.get("Messages", []))
        elif op in ("DeleteMessageBatch", "SendMessageBatch"):
            tally.sqs_messages += len(parsed.get("Successful", []))
        elif op in ("SendMessage", "DeleteMessage"):
            tally.sqs_messages += 1

    # --- DynamoDB writes ---------------------------------------------------------------------

    def _write_keys(self, op: str, params: dict[str, Any]) -> list[tuple[str, dict]]:
        if op == "PutItem":
            return [(params["TableName"], self._shape(params["TableName"]).key_of(params["Item"]))]
        if op in ("UpdateItem", "DeleteItem"):
            return [(params["TableName"], params["Key"])]
        if op == "BatchWriteItem":
            keys = []
            for table, requests in params["RequestItems"].items():
                for request in requests:
                    if "PutRequest" in request:
                        keys.append(
                            (table, self._shape(table).key_of(request["PutRequest"]["Item"]))
                        )
                    else:
                        keys.append((table, request["DeleteRequest"]["Key"]))
            return keys
        if op == "TransactWriteItems":
            keys = []
            for entry in params["TransactItems"]:
                ((kind, body),) = entry.items()
                table = body["TableName"]
                key = body["Item"] if kind == "Put" else body["Key"]
                keys.append((table, self._shape(table).key_of(key)))
            return keys
        return []

    def _writes(self, tally: Tally, op: str, ok: bool, before: list, parsed: dict) -> None:
        factor = 2 if op == "TransactWriteItems" else 1
        for table, key, old in before:
            new = self._read(table, key) if ok else None
            if _is_build(old) or _is_build(new):
                # Apart and written once already: the same units with or without small writes.
                charged = max(item_size(old), item_size(new))
                tally.wcu_table += factor * write_units(charged)
                tally.wcu_table_small += factor * write_units(charged)
                if ok:
                    tally.table_writes += 1
                    tally.written_bytes += charged
                    tally.write_once_bytes += charged
                else:
                    tally.failed_conditions += 1
                continue
            if not ok:  # a failed condition is charged on the existing item (or 1)
                tally.wcu_table += factor * write_units(item_size(old))
                small = item_size(old) - write_once_size(old)
                tally.wcu_table_small += factor * write_units(small)
                tally.failed_conditions += 1
                continue
            shape = self._shape(table)
            tally.wcu_table += factor * write_units(max(item_size(old), item_size(new)))
            once_old, once_new = write_once_size(old), write_once_size(new)
            charged = max(item_size(old), item_size(new))
            tally.table_writes += 1
            tally.written_bytes += charged
            tally.write_once_bytes += max(once_old, once_new) if charged else 0
            rest = max(item_size(old) - once_old, item_size(new) - once_new)
            tally.wcu_table_small += factor * write_units(rest)
            if once_new > once_old:  # new write-once parts: one put of an item of their own
                own = once_new - once_old + WRITE_ONCE_KEY_BYTES
                tally.wcu_table_small += factor * write_units(own)
            small_old, small_new = without_write_once(old), without_write_once(new)
            for index in shape.indexes:
                for units in index_writes(index, old, new, shape.keys):
                    tally.wcu_index[index.name] += factor * units
                for units in index_writes(index, small_old, small_new, shape.keys):
                    tally.wcu_index_small[index.name] += factor * units

    # --- DynamoDB reads ----------------------------------------------------------------------

    def _reads(self, tally: Tally, op: str, params: dict | None, parsed: dict) -> None:
        if op == "GetItem":
            item = parsed.get("Item")
            if item is not None and (
                "ProjectionExpression" in params or "AttributesToGet" in params
            ):
                item = self._read(params["TableName"], params["Key"])
            tally.rcu += read_units(item_size(item), bool(params.get("ConsistentRead")))
        elif op == "BatchGetItem":
            for table, request in params["RequestItems"].items():
                consistent = bool(request.get("ConsistentRead"))
                found = {
                    tuple(sorted((k, str(v)) for k, v in self._shape(table).key_of(i).items())): i
                    for i in parsed.get("Responses", {}).get(table, [])
                }
                for key in request["Keys"]:
                    item = found.get(tuple(sorted((k, str(v)) for k, v in key.items())))
                    if item is not None and "ProjectionExpression" in request:
                        item = self._read(table, key)
                    tally.rcu += read_units(item_size(item), consistent)
        elif op in ("Query", "Scan"):
            evaluated = self._evaluated(op, params, parsed)
            consistent = bool(params.get("ConsistentRead")) and "IndexName" not in params
            tally.rcu += read_units(sum(item_size(i) for i in evaluated), consistent)

    def _evaluated(self, op: str, params: dict, parsed: dict) -> list[dict]:
        """The items a Query or Scan read, before its filter and projection: the same call
        again through the shadow client without them."""
        if not any(k in params for k in ("FilterExpression", "ProjectionExpression", "Select")):
            return parsed.get("Items", [])
        again = {
            k: v
            for k, v in params.items()
            if k not in ("FilterExpression", "ProjectionExpression", "Select")
        }
        names = again.get("ExpressionAttributeNames")
        values = again.get("ExpressionAttributeValues")
        # Drop the placeholders only the removed expressions used (DynamoDB refuses unused ones).
        used = " ".join(str(again.get(k, "")) for k in ("KeyConditionExpression",))
        if names:
            again["ExpressionAttributeNames"] = {k: v for k, v in names.items() if k in used}
            if not again["ExpressionAttributeNames"]:
                del again["ExpressionAttributeNames"]
        if values:
            again["ExpressionAttributeValues"] = {k: v for k, v in values.items() if k in used}
            if not again["ExpressionAttributeValues"]:
                del again["ExpressionAttributeValues"]
        answer = getattr(self._shadow, "query" if op == "Query" else "scan")(**again)
        return answer.get("Items", [])
