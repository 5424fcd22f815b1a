"""The book in one DynamoDB table. Every guard is a single-item conditional write.

Items (pk / sk):
- CERT#<certificate id> / CERT: the certificate with all its slices in one item, so that every
  change to a certificate is one atomic write. The id is derived from (GSRN, type, start), so
  "issued once" is `attribute_not_exists(pk)` on this put.
- CMD#<command id> / CMD: the command, which is also the outbox. Its id is derived from
  (caller, Idempotency-Key), so the put's `attribute_not_exists(pk)` is the idempotency guard.
  Index `by_caller` (caller#kind, created_at#id; issues caller#issue#<shard>), keys only,
  serves each caller's own commands (every kind) and the transfer and claim lists; index
  `open_commands` (OPEN#<shard>, created_at#id), sparse and keys-only, holds the commands that
  are not terminal, for the reconciler and the operators.
- Index `by_expiry_day` (`<period start day>#<shard>`), sparse: the certificates that can still
  expire. The shard (crc32 of the id) spreads one day's certificates over partitions: at Danish
  volume a day's issuance would pass one key's 1,000 WCU/s. Items written before the shard
  (a bare day) are still swept by the unsharded listing.
- CMD#<command id> / BUILT#<created_at>: the command's transactions and sealed secrets, put
  once when it is first built and never written again ("small writes"): every later write of
  the command item (a state change) is then charged on a few hundred
  bytes instead of kilobytes of proofs. The command item says `built`; the sort key names
  the command's incarnation (its created_at), so that a command forgotten after a failed send
  and accepted again under the same id never inherits a build left by the first one.
- CMD#<command id> / RECEIVED: a committed transfer as its receiver sees it (by_caller index).
- OWNER#<owner> / HOLD#<period start>#<certificate id>: the owner holds or held slices of that
  certificate. Serves the owner's list and aggregates, newest period first, with no Scan.
- FEED#<owner> / CERT#<certificate id>: the owner's view of that certificate as it last
  changed (`_mark_changed`); index `changes` (FEED#<owner>#certificates, <time of the
  change>#<id>), keys only, is the owner's change feed, whose items are then read by key.
  Commands of the listed kinds are in that index too (FEED#<caller>#<kind>), and so are
  RECEIVED items. A write that keeps an item's place (a listed command's SENDING and SENT)
  costs the index nothing. See `_changes` for why a feed holds back its newest seconds.

No TransactWriteItems on the hot path: it costs twice the write units on AWS, and in moto its
cost grows with the table. Multi-item changes are ordered so that a crash between two writes
leaves a state the worker or the reconciler finishes (see usecases.accept and usecases.process).
"""

from __future__ import annotations

import base64
import contextlib
import json
import threading
import uuid
import zlib
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, date, datetime, timedelta
from typing import Any

from boto3.dynamodb.types import TypeDeserializer, TypeSerializer
from botocore.exceptions import BotoCoreError, ClientError

from chalicelib import domain
from chalicelib.adapters import changes, positions
from chalicelib.domain import (
    Certificate,
    CertificateStatus,
    Command,
    CommandKind,
    CommandStatus,
    Slice,
    SliceRef,
    SliceState,
)
from chalicelib.ports import (
    CertificateMoved,
    CommandQuery,
    DependencyDown,
    DuplicateCommand,
    HoldingQuery,
    Page,
    StaleCommand,
    Transition,
)

_serializer = TypeSerializer()
_deserializer = TypeDeserializer()
_THROTTLED = frozenset(
    {
        "ProvisionedThroughputExceededException",
        "ThrottlingException",
        "RequestLimitExceeded",
        "InternalServerError",
        "ServiceUnavailable",
    }
)
_OPTIMISTIC_RETRIES = 8
_LISTED_KINDS = frozenset({CommandKind.TRANSFER, CommandKind.CLAIM})  # GET /v1/transfers, /claims
_ISSUE_SHARDS = 8  # partitions of an issuer's issues in by_caller (8,000 writes a second)
_OWN_ROUNDS = 10  # reads of the caller's partitions for one page of GET /v1/commands


def _to_item(values: dict[str, Any]) -> dict[str, Any]:
    return {k: _serializer.serialize(v) for k, v in values.items()}


def _from_item(item: dict[str, Any]) -> dict[str, Any]:
    return {k: _plain(_deserializer.deserialize(v)) for k, v in item.items()}


def _plain(value: Any) -> Any:
    """DynamoDB numbers come back as Decimal; ours are all integers."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if type(value).__name__ == "Decimal":
        return int(value)
    return value


def _condition_failed(error: ClientError) -> bool:
    return error.response["Error"]["Code"] in (
        "ConditionalCheckFailedException",
        "TransactionCanceledException",
    )


def _refused_record(certificate_id: str, error: ClientError) -> Exception:
    """A write refused for what it carries (an item over 400 KB is a ValidationException) is
    no lost race: retrying it changes nothing. Throttling and outages stay DependencyDown."""
    if error.response["Error"]["Code"] != "ValidationException":
        return _translate(error)
    return domain.RuleViolation(
        f"DynamoDB refused certificate {certificate_id}'s record (an item holds at most "
        f"400 KB): {error.response['Error'].get('Message', '')}",
        subject=certificate_id,
    )


def _translate(error: Exception) -> Exception:
    """AWS trouble the client did not cause becomes DependencyDown (503 with Retry-After)."""
    if isinstance(error, BotoCoreError):
        return DependencyDown(f"DynamoDB unreachable: {error}")
    if isinstance(error, ClientError) and error.response["Error"]["Code"] in _THROTTLED:
        return DependencyDown(f"DynamoDB busy: {error.response['Error']['Code']}")
    if isinstance(error, ClientError) and "backfilling" in error.response["Error"].get(
        "Message", ""
    ):
        # An index added by an upgrade is read before DynamoDB has filled it (docs/DEPLOY.md).
        return DependencyDown("an index of the book is still being built")
    return error


def _encode_cursor(key: dict[str, Any] | None) -> str | None:
    if not key:
        return None
    return base64.urlsafe_b64encode(json.dumps(key).encode()).decode()


def _bad_cursor() -> domain.RuleViolation:
    return domain.RuleViolation("the cursor is not one this service gave out", field="cursor")


def _decode_cursor(cursor: str | None, shape: dict[str, str | None]) -> dict[str, Any] | None:
    """The key a cursor of ours names. Only a key with exactly the attributes of `shape`, all
    strings, and in the partition the query reads (the values `shape` fixes) passes: anything
    else makes DynamoDB (or boto3) fail the query, which would answer what a client sent with
    a 500 or a 503, or start the query in another owner's partition."""
    if cursor is None:
        return None
    try:
        key = json.loads(base64.urlsafe_b64decode(cursor.encode()))
    except ValueError as exc:
        raise _bad_cursor() from exc
    if not (
        isinstance(key, dict)
        and set(key) == set(shape)
        and all(
            isinstance(v, dict) and list(v) == ["S"] and isinstance(v["S"], str)
            for v in key.values()
        )
        and all(fixed is None or key[name]["S"] == fixed for name, fixed in shape.items())
    ):
        raise _bad_cursor()
    return key


def _cert_key(certificate_id: str) -> dict[str, Any]:
    return {"pk": {"S": f"CERT#{certificate_id}"}, "sk": {"S": "CERT"}}


def _command_key(command_id: str, sk: str = "CMD") -> dict[str, Any]:
    return {"pk": {"S": f"CMD#{command_id}"}, "sk": {"S": sk}}


def _holding_sk(cert: Certificate) -> str:
    return f"HOLD#{cert.period.start.isoformat()}#{cert.certificate_id}"


def expiry_key(cert: Certificate, shards: int) -> str:
    """The expiry index's partition key: the period's start day and a shard of the id."""
    shard = zlib.crc32(cert.certificate_id.encode()) % shards
    return f"{cert.period.start.date().isoformat()}#{shard}"


def _certificate_from(item: dict[str, Any]) -> Certificate:
    values = _from_item(item)
    for slice_id, stored in values.get("slices", {}).items():
        stored.setdefault("slice_id", slice_id)  # kept once, as the map's key
    return Certificate.model_validate(values)


def _view_snapshot(cert: Certificate, owner: str, previous_form: bool = False) -> str:
    """An owner's view of a certificate as their feed mark holds it: without what the mark's
    key and version say already (the certificate's id and version; each slice's id, and its
    owner, who is the feed's), for a mark is rewritten at every change of the view and charged
    per started KB. `previous_form`: whole, as the code before this read it (an upgrade)."""
    view = domain.view_of(cert, owner)
    if previous_form:
        return view.model_dump_json(exclude_none=True)
    values = view.model_dump(
        mode="json",
        exclude_none=True,
        exclude={"certificate_id", "version", "applied", "slices"},
    )
    _drop_empty(values, ("hashed_attributes",))
    values["slices"] = {
        slice_id: s.model_dump(mode="json", exclude_none=True, exclude={"slice_id", "owner"})
        for slice_id, s in view.slices.items()
    }
    return json.dumps(values, separators=(",", ":"))


def _view_from(item: dict[str, Any]) -> Certificate:
    """`_view_snapshot` read back whole (a mark written before it, whole already, too)."""
    values = json.loads(item["certificate"]["S"])
    owner = item["pk"]["S"].removeprefix("FEED#")
    values.setdefault("certificate_id", item["sk"]["S"].removeprefix("CERT#"))
    values.setdefault("version", int(item["feed_version"]["N"]))
    for slice_id, s in values.get("slices", {}).items():
        s.setdefault("slice_id", slice_id)
        s.setdefault("owner", owner)
    return Certificate.model_validate(values)


def _slice_value(s: Slice, previous_form: bool = False) -> dict[str, Any]:
    """A slice as the certificate's item holds it, under its id: every write of a
    certificate is charged per started KB, and a slice's id in it again took 45 bytes.
    `previous_form`: with its id, as the code before this read it (an upgrade)."""
    return s.model_dump(
        mode="json", exclude_none=True, exclude=set() if previous_form else {"slice_id"}
    )


def _by_caller_pk(caller: str, kind: CommandKind, command_id: str) -> str:
    """Issues spread over shards: an issuer's bulk issuance would pass one index key's
    1,000 write units a second. Transfers and claims keep their one key (GET /v1/transfers)."""
    if kind == CommandKind.ISSUE:
        return f"{caller}#{kind.value}#{zlib.crc32(command_id.encode()) % _ISSUE_SHARDS}"
    return f"{caller}#{kind.value}"


# What a build adds to a command, kept in its BUILT item (see the module's docstring).
_BUILT_FIELDS = ("transactions", "sealed_slices", "sealed_attributes")
_BUILT_CACHE = 4096  # builds kept per book (a container): written once, so never stale


def _built_key(command_id: str, created_at: str) -> dict[str, Any]:
    return _command_key(command_id, f"BUILT#{created_at}")


def _built_key_of(item: dict[str, Any]) -> dict[str, Any]:
    return {"pk": item["pk"], "sk": {"S": f"BUILT#{item['created_at']['S']}"}}


def _incarnation(item: dict[str, Any]) -> tuple[str, str]:
    """Whose build a command item's is: its key and created_at (see BUILT# above)."""
    return item["pk"]["S"], item["created_at"]["S"]


def _build_fields(built: dict[str, Any]) -> dict[str, Any]:
    """The command's fields a BUILT item holds."""
    return {k: v for k, v in _from_item(built).items() if k in _BUILT_FIELDS}


def command_from(item: dict[str, Any], build: dict[str, Any] | None) -> Command:
    """The command of a CMD or RECEIVED item and its build (the BUILT item's fields, or the
    item itself), which it must have if the item says `built`."""
    values = _from_item(item)
    if values.pop("built", None):
        if build is None:  # put before the item said so: a book that lost data
            raise RuntimeError(f"the build of command {item['pk']['S']} is missing")
        values.update(_build_fields(build) if "pk" in build else build)
    command = Command.model_validate(values)
    # A RECEIVED item is the receiver's copy: the slice they got, not the one the sender spent.
    return domain.as_received(command) if item["sk"]["S"] == "RECEIVED" else command


def _built(command: Command) -> dict[str, Any]:
    """What the command's BUILT item holds."""
    values = command.model_dump(mode="json", include=set(_BUILT_FIELDS), exclude_none=True)
    return {k: v for k, v in values.items() if v}


def _unbuilt(command: Command) -> dict[str, Any]:
    """The command's own item: without its build, which only `built` mentions."""
    values = command.model_dump(mode="json", exclude_none=True, exclude=set(_BUILT_FIELDS))
    if _built(command):
        values["built"] = True
    # Every transition of a command rewrites its item, and a claim's sits near 1 KB.
    _drop_empty(values, ("slices", "quantities_wh", "stranded", "unsettled_passes"))
    return values


def _drop_empty(values: dict[str, Any], names: tuple[str, ...]) -> None:
    """Leave out the fields named that hold their empty default (an empty list or map, 0):
    absent reads as the default, and every write of an item is charged per started KB."""
    for name in names:
        if not values.get(name):
            values.pop(name, None)


class DynamoBook:
    def __init__(
        self,
        client: Any,
        table_name: str,
        open_shards: int = 8,
        expiry_shards: int = 8,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        feed_lag_s: float = 5.0,
        previous_forms: bool = False,
    ) -> None:
        """`previous_forms`: write certificates and feed marks as the code before their
        smaller forms read them (settings.write_previous_forms); both forms are read."""
        self._db = client
        self._previous_forms = previous_forms
        self._table = table_name
        self._shards = open_shards
        self._clock = clock  # stamps the change feeds at the moment of each write
        self._feed_lag = timedelta(seconds=feed_lag_s)
        self.shards = open_shards  # the reconciler's shards: one pass per open-commands shard
        self._expiry_shards = expiry_shards
        self._builds: OrderedDict[tuple[str, str], dict[str, Any]] = OrderedDict()
        self._builds_lock = threading.Lock()  # a book may serve threads (the embedded stack)

    # --- low-level calls, with AWS errors translated in one place ----------------------------

    def _call(self, operation: str, **kwargs: Any) -> dict[str, Any]:
        try:
            return getattr(self._db, operation)(TableName=self._table, **kwargs)
        except ClientError as exc:
            if _condition_failed(exc):
                raise
            raise _translate(exc) from exc
        except BotoCoreError as exc:
            raise _translate(exc) from exc

    def _get(self, key: dict[str, Any]) -> dict[str, Any] | None:
        return self._call("get_item", Key=key, ConsistentRead=True).get("Item")

    def _batch_get(
        self, keys: list[dict[str, Any]], consistent: bool = False
    ) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = []
        for start in range(0, len(keys), 100):  # BatchGetItem takes at most 100 keys
            batch = {"Keys": keys[start : start + 100], "ConsistentRead": consistent}
            pending: dict[str, Any] = {self._table: batch}
            while pending:
                try:
                    answer = self._db.batch_get_item(RequestItems=pending)
                except (ClientError, BotoCoreError) as exc:
                    raise _translate(exc) from exc
                found += answer["Responses"].get(self._table, [])
                pending = answer.get("UnprocessedKeys") or {}
        return found

    # --- commands ----------------------------------------------------------------------------

    def _command_item(self, command: Command) -> dict[str, Any]:
        values = _unbuilt(command)
        values.update(pk=f"CMD#{command.command_id}", sk="CMD")
        # Every kind is listed per caller (GET /v1/commands): one index write unit per
        # command, at this put only (the index holds keys, which never change).
        values.update(
            by_caller_pk=_by_caller_pk(command.caller, command.kind, command.command_id),
            by_caller_sk=positions.of(command),
        )
        if command.kind in _LISTED_KINDS:
            values.update(
                feed_pk=f"FEED#{command.caller}#{command.kind.value}",
                feed_sk=self._feed_position(command.command_id),
            )
        if not command.is_terminal:
            values.update(self._open_keys(command))
        return _to_item(values)

    def _open_keys(self, command: Command) -> dict[str, str]:
        shard = zlib.crc32(command.command_id.encode()) % self._shards
        return {
            "open_pk": f"OPEN#{shard}",
            "open_sk": f"{command.created_at.isoformat()}#{command.command_id}",
        }

    def add_command(self, command: Command) -> None:
        item = self._command_item(command)
        if "built" in item:  # built already (never so at accept): its build goes first
            self._put_built(command.command_id, item["created_at"]["S"], _built(command))
        try:
            self._call(
                "put_item",
                Item=item,
                ConditionExpression="attribute_not_exists(pk)",
                ReturnValuesOnConditionCheckFailure="ALL_OLD",
            )
        except ClientError as exc:
            raise DuplicateCommand(self._command_from(exc.response["Item"])) from exc

    def get_command(self, command_id: str) -> Command | None:
        # Its build is read by key when the item says `built` and it is not remembered: not
        # both in one Query, which costs the embedded stack's moto a sort of the whole table.
        item = self._get(_command_key(command_id))
        return self._command_from(item) if item else None

    # --- builds: written once, in items of their own -----------------------------------------

    def _put_built(self, command_id: str, created_at: str, fields: dict[str, Any]) -> bool:
        """Store a build of the command's incarnation unless one is stored; whether it was."""
        item = {**_built_key(command_id, created_at), **_to_item(fields)}
        try:
            self._call("put_item", Item=item, ConditionExpression="attribute_not_exists(pk)")
        except ClientError:
            return False
        return True

    def _keep_build(self, key: tuple[str, str], fields: dict[str, Any]) -> None:
        with self._builds_lock:
            self._builds[key] = fields
            self._builds.move_to_end(key)
            while len(self._builds) > _BUILT_CACHE:
                self._builds.popitem(last=False)

    def _commands_from(self, items: list[dict[str, Any]]) -> list[Command]:
        """Command (and RECEIVED) items as commands, their builds read in one batch."""
        self._read_builds(items)
        return [self._command_from(i) for i in items]

    def _read_builds(self, items: list[dict[str, Any]]) -> None:
        """Read, in one batch, the builds of the items that say `built` and are not remembered."""
        missing = {
            _incarnation(i): _built_key_of(i)
            for i in items
            if "built" in i and _incarnation(i) not in self._builds
        }
        if not missing:
            return
        found = {
            (b["pk"]["S"], b["sk"]["S"]): b
            for b in self._batch_get(list(missing.values()), consistent=True)
        }
        for incarnation, key in missing.items():
            built = found.get((key["pk"]["S"], key["sk"]["S"]))
            if built is not None:
                self._keep_build(incarnation, _build_fields(built))

    def _command_from(self, item: dict[str, Any]) -> Command:
        self._read_builds([item])  # from a write's answer, or an index: nothing if remembered
        return command_from(item, self._builds.get(_incarnation(item)))

    def transition(self, command_id: str, change: Transition) -> Command:
        expected = (
            (change.expected,)
            if isinstance(change.expected, CommandStatus)
            else tuple(change.expected)
        )
        for status in expected:
            domain.check_transition(status, change.target)
        # Serialize the changed fields through the model so types match what is stored.
        incarnation = {"created_at": change.created_at} if change.created_at else {}
        probe = Command.model_construct(**change.changes, **incarnation)
        dumped = probe.model_dump(mode="json", include=set(change.changes) | set(incarnation))
        created_at = dumped.pop("created_at", None)
        build = {k: v for k in _BUILT_FIELDS if (v := dumped.pop(k, None))}
        if build:  # stored apart, once (a build is never replaced); the item only says so
            if created_at is None:
                self._store_build(command_id, build)
            elif self._put_built(command_id, created_at, build):
                # The incarnation is known, so the put needs no read of the command: the
                # update's condition on created_at says whether it was this command's.
                self._keep_build((_command_key(command_id)["pk"]["S"], created_at), build)
            dumped["built"] = True
        sets = {**dumped, "status": change.target.value, "updated_at": change.now.isoformat()}
        if domain.moves_in_feed(change.target):
            # Its place in the caller's change feed (indexed for the listed kinds only).
            sets["feed_sk"] = self._feed_position(command_id)
        names = {f"#f{i}": name for i, name in enumerate(sets)}
        values = {f":v{i}": value for i, value in enumerate(sets.values())}
        expression = "SET " + ", ".join(
            f"#f{i} = if_not_exists(#f{i}, :v{i})"
            if name in change.set_once or name == "built"
            else f"#f{i} = :v{i}"
            for i, name in enumerate(sets)
        )
        if change.reconciled and change.target in domain.TERMINAL_STATUSES:
            expression += " REMOVE open_pk, open_sk"  # leaves the open-commands index now
        statuses = {f":s{i}": s.value for i, s in enumerate(expected)}
        condition = f"#status IN ({', '.join(statuses)})"
        names["#status"] = "status"
        values.update(statuses)
        if change.step is not None:
            condition += " AND #step = :step"
            names["#step"] = "step"
            values[":step"] = change.step
        if created_at is not None:
            condition += " AND created_at = :created_at"
            values[":created_at"] = created_at
        try:
            answer = self._call(
                "update_item",
                Key=_command_key(command_id),
                UpdateExpression=expression,
                ConditionExpression=condition,
                ExpressionAttributeNames=names,
                ExpressionAttributeValues=_to_item(values),
                ReturnValues="ALL_NEW",
                ReturnValuesOnConditionCheckFailure="ALL_OLD",
            )
        except ClientError as exc:
            old = exc.response.get("Item")
            raise StaleCommand(self._command_from(old) if old else None) from exc
        return self._command_from(answer["Attributes"])

    def _store_build(self, command_id: str, build: dict[str, Any]) -> None:
        """Put the build for the command as it is now, unless it has one (then that one stays,
        as `if_not_exists` kept the first build when it was an attribute). Before the command
        item says `built`: a crash in between leaves a build that the next guard uses."""
        current = self._get(_command_key(command_id))
        if current is None or "built" in current:
            return  # gone (the guard will say so), or built: the stored build stays
        if self._put_built(command_id, current["created_at"]["S"], build):
            self._keep_build(_incarnation(current), build)

    def forget_command(self, command: Command) -> bool:
        # Not if a worker or a retry took it on meanwhile (`keep_command`): then it stays.
        try:
            self._call(
                "delete_item",
                Key=_command_key(command.command_id),
                ConditionExpression=(
                    "#status = :accepted AND attempts = :zero AND attribute_not_exists(kept)"
                ),
                ExpressionAttributeNames={"#status": "status"},
                ExpressionAttributeValues={":accepted": {"S": "ACCEPTED"}, ":zero": {"N": "0"}},
            )
        except ClientError:  # its condition: a worker or a retry took it on, or it is gone
            return False
        return True

    def keep_command(self, command_id: str) -> CommandStatus | None:
        try:
            answer = self._call(
                "update_item",
                Key=_command_key(command_id),
                UpdateExpression="SET kept = :yes",
                ConditionExpression="attribute_exists(pk)",
                ExpressionAttributeValues={":yes": {"BOOL": True}},
                ReturnValues="ALL_NEW",
            )
        except ClientError:  # forgotten meanwhile
            return None
        return CommandStatus(answer["Attributes"]["status"]["S"])

    def note_receipt(self, command: Command) -> None:
        """Let the receiver of a committed transfer see it in their list."""
        assert command.receiver is not None
        values = _unbuilt(command)  # its build is the command's (same key, same created_at)
        values.update(
            pk=f"CMD#{command.command_id}",
            sk="RECEIVED",
            by_caller_pk=f"{command.receiver}#{command.kind.value}",
            by_caller_sk=f"{command.created_at.isoformat()}#{command.command_id}",
            feed_pk=f"FEED#{command.receiver}#{command.kind.value}",
            feed_sk=self._feed_position(command.command_id),
        )
        self._call("put_item", Item=_to_item(values))

    def commands_of(
        self, caller: str, kind: CommandKind, limit: int, cursor: str | None
    ) -> Page[Command]:
        if kind not in _LISTED_KINDS:
            return Page(items=[])  # the other kinds: own_commands
        args: dict[str, Any] = {
            "IndexName": "by_caller",
            "KeyConditionExpression": "by_caller_pk = :pk",
            "ExpressionAttributeValues": {":pk": {"S": f"{caller}#{kind.value}"}},
            "ScanIndexForward": False,
            "Limit": limit,
        }
        start = _decode_cursor(
            cursor,
            {
                "pk": None,
                "sk": None,
                "by_caller_pk": f"{caller}#{kind.value}",
                "by_caller_sk": None,
            },
        )
        if start:
            args["ExclusiveStartKey"] = start
        answer = self._call("query", **args)
        # The index holds keys only (a projection of whole commands would be written again
        # at every state change): the commands themselves come in one batch read, in order.
        keys = [{"pk": i["pk"], "sk": i["sk"]} for i in answer.get("Items", [])]
        found = {(i["pk"]["S"], i["sk"]["S"]): i for i in self._batch_get(keys)}
        in_order = [found.get((k["pk"]["S"], k["sk"]["S"])) for k in keys]
        items = self._commands_from([i for i in in_order if i is not None])
        return Page(items=items, next_cursor=_encode_cursor(answer.get("LastEvaluatedKey")))

    def own_commands(self, query: CommandQuery) -> Page[Command]:
        """Newest first across the caller's partitions of `by_caller` (one per kind, issues
        spread over _ISSUE_SHARDS): each is read from the cursor down, and only positions that
        every partition has been read to are final for this page. The status filter comes
        after the read (the index holds keys only), so a round may add less than a page; after
        _OWN_ROUNDS rounds the page is given short, with the cursor where it stopped."""
        low, high = positions.bounds(query)
        kinds = query.kinds or frozenset(CommandKind)
        partitions = [
            f"{query.caller}#{kind.value}#{shard}"
            for kind in sorted(kinds & {CommandKind.ISSUE})
            for shard in range(_ISSUE_SHARDS)
        ] + [f"{query.caller}#{kind.value}" for kind in sorted(kinds - {CommandKind.ISSUE})]
        found: list[Command] = []
        for _ in range(_OWN_ROUNDS):
            keys, floor = [], low
            for partition in partitions:
                answer = self._call(
                    "query",
                    IndexName="by_caller",
                    KeyConditionExpression=(
                        "by_caller_pk = :pk AND by_caller_sk BETWEEN :lo AND :hi"
                    ),
                    ExpressionAttributeValues=_to_item({":pk": partition, ":lo": low, ":hi": high}),
                    ScanIndexForward=False,
                    Limit=query.limit + 1,  # the cursor's own command may be the first
                )
                items = answer.get("Items", [])
                if "LastEvaluatedKey" in answer and items:
                    floor = max(floor, items[-1]["by_caller_sk"]["S"])
                keys += [
                    i for i in items if i["sk"]["S"] == "CMD" and i["by_caller_sk"]["S"] < high
                ]
            keys = sorted(
                (k for k in keys if k["by_caller_sk"]["S"] >= floor),
                key=lambda k: k["by_caller_sk"]["S"],
                reverse=True,
            )
            for start in range(0, len(keys), query.limit):
                chunk = keys[start : start + query.limit]
                got = {
                    f"CMD#{c.command_id}": c
                    for c in self._commands_from(
                        self._batch_get([{"pk": k["pk"], "sk": k["sk"]} for k in chunk])
                    )
                }
                for key in chunk:
                    command = got.get(key["pk"]["S"])
                    if command is not None and positions.matches(query, command):
                        found.append(command)
                        if len(found) == query.limit:
                            return Page(found, positions.encode(key["by_caller_sk"]["S"]))
            if floor == low:  # every partition was read to the end
                return Page(found)
            high = floor  # the next round reads below the positions this one settled
        return Page(found, positions.encode(high))

    def open_commands(
        self, created_before: datetime, limit: int, shard: int | None = None
    ) -> list[Command]:
        return self._indexed(created_before, limit, lambda c: not c.is_terminal, shard)

    def settled_commands(self, limit: int, shard: int | None = None) -> list[Command]:
        return self._indexed(None, limit, lambda c: c.is_terminal, shard)

    def _indexed(
        self,
        created_before: datetime | None,
        limit: int,
        wanted: Callable[[Command], bool],
        only: int | None = None,
    ) -> list[Command]:
        """Commands in the open-commands index (not terminal, or terminal and not yet
        reconciled), oldest first, that `wanted` accepts: up to `limit` from each shard (or
        from shard `only`)."""
        found: list[Command] = []
        for shard in range(self._shards) if only is None else (only,):
            condition, values = "open_pk = :pk", {":pk": {"S": f"OPEN#{shard}"}}
            if created_before is not None:
                condition += " AND open_sk < :before"
                values[":before"] = {"S": created_before.isoformat()}
            args: dict[str, Any] = {
                "IndexName": "open_commands",
                "KeyConditionExpression": condition,
                "ExpressionAttributeValues": values,
                "Limit": 100,
            }
            mine: list[Command] = []
            while len(mine) < limit:
                answer = self._call("query", **args)
                keys = [{"pk": i["pk"], "sk": i["sk"]} for i in answer.get("Items", [])]
                mine += [c for c in self._commands_from(self._batch_get(keys)) if wanted(c)]
                if "LastEvaluatedKey" not in answer:
                    break
                args["ExclusiveStartKey"] = answer["LastEvaluatedKey"]
            found += mine
        found.sort(key=lambda c: c.created_at)
        return found[:limit]

    def mark_reconciled(self, command_id: str) -> None:
        # Only a terminal command leaves the index; an open one must stay visible.
        with contextlib.suppress(ClientError):
            self._call(
                "update_item",
                Key=_command_key(command_id),
                UpdateExpression="REMOVE open_pk, open_sk",
                ConditionExpression="#status IN (:committed, :rejected)",
                ExpressionAttributeNames={"#status": "status"},
                ExpressionAttributeValues={
                    ":committed": {"S": "COMMITTED"},
                    ":rejected": {"S": "REJECTED"},
                },
            )

    def note_unsettled(self, command_id: str, for_operator: str | None = None) -> None:
        sets = ["unsettled_passes = if_not_exists(unsettled_passes, :zero) + :one"]
        values: dict[str, Any] = {
            ":zero": 0,
            ":one": 1,
            ":committed": "COMMITTED",
            ":rejected": "REJECTED",
        }
        if for_operator is not None:
            sets.append("#error = :error")
            values[":error"] = for_operator
        # Only an open command: a worker may have ended it since the pass listed it.
        with contextlib.suppress(ClientError):
            self._call(
                "update_item",
                Key=_command_key(command_id),
                UpdateExpression="SET " + ", ".join(sets),
                ConditionExpression=(
                    "attribute_exists(pk) AND NOT #status IN (:committed, :rejected)"
                ),
                ExpressionAttributeNames={
                    "#status": "status",
                    **({"#error": "error"} if for_operator is not None else {}),
                },
                ExpressionAttributeValues=_to_item(values),
            )

    # A claim that stranded an allocation is listed for operators by an item of its own under
    # the command's key, in the open-commands index's partition STRANDED: the reconciler
    # queries only the OPEN# partitions, and the command's own index keys stay the
    # reconciler's to remove. Rare by design, so one partition holds them all.
    _STRANDED = "STRANDED"

    def note_stranded(self, command: Command) -> None:
        self._call(
            "put_item",
            Item=_to_item(
                {
                    "pk": f"CMD#{command.command_id}",
                    "sk": self._STRANDED,
                    "open_pk": self._STRANDED,
                    "open_sk": f"{command.created_at.isoformat()}#{command.command_id}",
                }
            ),
        )

    def stranded_commands(self, limit: int) -> list[Command]:
        args: dict[str, Any] = {
            "IndexName": "open_commands",
            "KeyConditionExpression": "open_pk = :pk",
            "ExpressionAttributeValues": {":pk": {"S": self._STRANDED}},
            "Limit": min(limit, 100),
        }
        ids: list[str] = []
        while len(ids) < limit:
            answer = self._call("query", **args)
            ids += [i["pk"]["S"].removeprefix("CMD#") for i in answer.get("Items", [])]
            if "LastEvaluatedKey" not in answer:
                break
            args["ExclusiveStartKey"] = answer["LastEvaluatedKey"]
        found = {
            c.command_id: c
            for c in self._commands_from(self._batch_get([_command_key(i) for i in ids[:limit]]))
        }
        return [found[i] for i in ids[:limit] if i in found]

    # --- the reconciler's own records --------------------------------------------------------

    def acquire_lease(self, name: str, holder: str, now: datetime, until: datetime) -> bool:
        # Free, expired, or already ours: the one condition that lets exactly one holder in.
        try:
            self._call(
                "put_item",
                Item=_to_item(
                    {
                        "pk": f"LEASE#{name}",
                        "sk": "LEASE",
                        "holder": holder,
                        "until": until.isoformat(),
                    }
                ),
                ConditionExpression="attribute_not_exists(pk) OR #until < :now OR holder = :me",
                ExpressionAttributeNames={"#until": "until"},
                ExpressionAttributeValues={":now": {"S": now.isoformat()}, ":me": {"S": holder}},
            )
            return True
        except ClientError:
            return False

    def release_lease(self, name: str, holder: str) -> None:
        with contextlib.suppress(ClientError):
            self._call(
                "delete_item",
                Key={"pk": {"S": f"LEASE#{name}"}, "sk": {"S": "LEASE"}},
                ConditionExpression="holder = :me",
                ExpressionAttributeValues={":me": {"S": holder}},
            )

    def add_audit(self, certificate_id: str, at: datetime, entry: dict[str, Any]) -> None:
        self._call(
            "put_item",
            Item=_to_item(
                {
                    "pk": f"AUDIT#{certificate_id}",
                    "sk": f"{at.isoformat()}#{uuid.uuid4()}",
                    "at": at.isoformat(),
                    "entry": json.dumps(entry, default=str),
                }
            ),
        )

    def audits(self, certificate_id: str) -> list[dict[str, Any]]:
        answer = self._call(
            "query",
            KeyConditionExpression="pk = :pk",
            ExpressionAttributeValues={":pk": {"S": f"AUDIT#{certificate_id}"}},
        )
        return [
            {"at": i["at"]["S"], **json.loads(i["entry"]["S"])} for i in answer.get("Items", [])
        ]

    # --- certificates ------------------------------------------------------------------------

    def _certificate_item(self, cert: Certificate) -> dict[str, Any]:
        values = cert.model_dump(mode="json", exclude_none=True, exclude={"slices"})
        values["slices"] = {
            slice_id: _slice_value(s, self._previous_forms) for slice_id, s in cert.slices.items()
        }
        _drop_empty(values, ("applied", "hashed_attributes"))
        values.update(
            pk=f"CERT#{cert.certificate_id}",
            sk="CERT",
            # in the owner index for the owner it was issued to: no holding item
            owner_pk=f"OWNER#{cert.owner}",
            owner_sk=_holding_sk(cert),
        )
        if cert.status in (CertificateStatus.ISSUING, CertificateStatus.ACTIVE):
            # Sparse index of the certificates that can still expire, by the day they start.
            values["expiry_day"] = expiry_key(cert, self._expiry_shards)
        return _to_item(values)

    def add_certificate(self, certificate: Certificate) -> None:
        # A new identity is a put that finds no item. An identity whose issuance was rejected
        # may be issued again by another command: that put is conditioned on the version of
        # the rejected item, and carries the version on, so a writer still holding the
        # rejected certificate cannot overwrite the new one (its optimistic lock fails).
        condition: dict[str, Any] = {"ConditionExpression": "attribute_not_exists(pk)"}
        version = 1
        for _ in range(_OPTIMISTIC_RETRIES):
            stored = certificate.model_copy(update={"version": version})
            try:
                self._call(
                    "put_item",
                    Item=self._certificate_item(stored),
                    ReturnValuesOnConditionCheckFailure="ALL_OLD",
                    **condition,
                )
                self._mark_changed(stored, moved=domain.viewers(stored))  # every view is new
                return
            except ClientError as exc:
                existing = _certificate_from(exc.response["Item"])
            if existing.issue_command == certificate.issue_command:
                self._mark_changed(existing)  # finishes a write cut short after the put
                return  # a replay of the same issuance, even of a rejected one: it stays so
            if existing.status != CertificateStatus.REJECTED:
                raise domain.Conflict(
                    f"certificate {certificate.certificate_id} for this metering point, type "
                    "and period is already issued",
                    subject=certificate.certificate_id,
                )
            version = existing.version + 1
            condition = {
                "ConditionExpression": "version = :seen",
                "ExpressionAttributeValues": {":seen": {"N": str(existing.version)}},
            }
        raise DependencyDown(f"certificate {certificate.certificate_id} is changing too often")

    def get_certificate(self, certificate_id: str) -> Certificate | None:
        item = self._get(_cert_key(certificate_id))
        return _certificate_from(item) if item else None

    def get_certificates(self, certificate_ids: Sequence[str]) -> list[Certificate]:
        unique = list(dict.fromkeys(certificate_ids))
        found = {
            c.certificate_id: c
            for c in map(_certificate_from, self._batch_get([_cert_key(i) for i in unique]))
        }
        return [found[i] for i in unique if i in found]

    def reserve(self, ref: SliceRef, command_id: str, caller: str, at_least_wh: int) -> Certificate:
        # One conditional update: of all the commands racing for this slice, exactly one
        # finds it available. The others get the item back and the domain names the reason.
        try:
            answer = self._call(
                "update_item",
                Key=_cert_key(ref.certificate_id),
                UpdateExpression="SET slices.#s.#state = :reserved, slices.#s.reserved_by = :cmd,"
                " version = version + :one",
                ConditionExpression=(
                    "#status = :active AND attribute_not_exists(withdrawal)"
                    " AND slices.#s.#owner = :caller AND slices.#s.#state = :available"
                    " AND slices.#s.quantity_wh >= :least"
                ),
                ExpressionAttributeNames={
                    "#s": ref.slice_id,
                    "#state": "state",
                    "#owner": "owner",
                    "#status": "status",
                },
                ExpressionAttributeValues=_to_item(
                    {
                        ":reserved": SliceState.RESERVED.value,
                        ":cmd": command_id,
                        ":one": 1,
                        ":active": CertificateStatus.ACTIVE.value,
                        ":caller": caller,
                        ":available": SliceState.AVAILABLE.value,
                        ":least": at_least_wh,
                    }
                ),
                ReturnValues="ALL_NEW",
                ReturnValuesOnConditionCheckFailure="ALL_OLD",
            )
        except ClientError as exc:
            old = exc.response.get("Item")
            if not old:
                raise domain.NotFound(
                    f"certificate {ref.certificate_id} not found",
                    field="certificate_id",
                    subject=ref.certificate_id,
                ) from exc
            # Raises the precise reason, or returns when the slice is already ours (a replay).
            replayed = domain.reserve(_certificate_from(old), ref, command_id, caller, at_least_wh)
            self._mark_changed(replayed)
            return replayed
        reserved = _certificate_from(answer["Attributes"])
        self._mark_changed(reserved, moved={caller})  # their slice is now reserved
        return reserved

    def update_certificate(
        self,
        certificate_id: str,
        change: Callable[[Certificate], Certificate],
        snapshot: Certificate | None = None,
    ) -> Certificate:
        if snapshot is not None:
            changed = change(snapshot)
            patched = self._patch(snapshot, changed)
            if patched is not None:
                self._mark_changed(patched, moved=domain.viewers_of_change(snapshot, changed))
                return patched
        for _ in range(_OPTIMISTIC_RETRIES):
            current = self.get_certificate(certificate_id)
            if current is None:
                raise domain.NotFound(
                    f"certificate {certificate_id} not found", subject=certificate_id
                )
            changed = change(current)
            if changed == current:
                self._mark_changed(current)  # finishes a write cut short after the put
                return current
            changed = changed.model_copy(update={"version": current.version + 1})
            try:
                self._call(
                    "put_item",
                    Item=self._certificate_item(changed),
                    ConditionExpression="version = :seen",
                    ExpressionAttributeValues={":seen": {"N": str(current.version)}},
                )
                self._mark_changed(changed, moved=domain.viewers_of_change(current, changed))
                return changed
            except ClientError as exc:
                if not _condition_failed(exc):
                    raise _refused_record(certificate_id, exc) from exc
                continue  # someone wrote in between: read again and redo the change
        raise DependencyDown(f"certificate {certificate_id} is changing too often to update")

    def update_certificate_at(
        self, certificate_id: str, version: int, change: Callable[[Certificate], Certificate]
    ) -> Certificate:
        current = self.get_certificate(certificate_id)
        if current is None:
            raise domain.NotFound(f"certificate {certificate_id} not found", subject=certificate_id)
        if current.version != version:
            raise CertificateMoved(f"certificate {certificate_id} moved past {version}")
        changed = change(current)
        if changed == current:
            return current
        changed = changed.model_copy(update={"version": version + 1})
        try:
            self._call(
                "put_item",
                Item=self._certificate_item(changed),
                ConditionExpression="version = :seen",
                ExpressionAttributeValues={":seen": {"N": str(version)}},
            )
        except ClientError as exc:  # written since it was read: the caller looks again later
            raise CertificateMoved(f"certificate {certificate_id} moved past {version}") from exc
        # A repair is a change its owners follow in their feeds, as any other write.
        self._mark_changed(changed, moved=domain.viewers_of_change(current, changed))
        return changed

    def _patch(self, before: Certificate, after: Certificate) -> Certificate | None:
        """Write only what changed between `before` and `after`, in one conditional update
        whose condition is that every part it touches is still as in `before`. Parts it does
        not touch may have moved on (other slices, other commands): they are not overwritten.
        None when the parts moved, or the change is too large for one expression: the caller
        then reads and writes the whole item under the optimistic lock.

        `before` may hold only some of the certificate's slices (the queue message carries the
        slices its command names). A change of the certificate's status or withdrawal is a
        change of the whole certificate (a withdrawal spends every live slice), computed from
        every slice `before` has: so it holds only if the item has exactly those slices, as
        they were, and otherwise the whole item is read and changed."""
        if after == before:
            return before
        if any(slice_id not in after.slices for slice_id in before.slices):
            return None  # a slice removed: not what patches are for
        sets, removes = [], []
        names: dict[str, str] = {"#slices": "slices", "#state": "state", "#owner": "owner"}
        values: dict[str, Any] = {":one": 1}
        conditions = self._whole_as_in(before, after, names, values)
        for i, (slice_id, new) in enumerate(after.slices.items()):
            old = before.slices.get(slice_id)
            if old == new:
                continue
            names[f"#s{i}"] = slice_id
            values[f":s{i}"] = _slice_value(new, self._previous_forms)
            sets.append(f"#slices.#s{i} = :s{i}")
            if old is None:
                conditions.append(f"attribute_not_exists(#slices.#s{i})")
                continue
            values[f":ps{i}"] = old.state.value
            values[f":po{i}"] = old.owner
            conditions.append(f"#slices.#s{i}.#state = :ps{i} AND #slices.#s{i}.#owner = :po{i}")
            if old.reserved_by is None:
                conditions.append(f"attribute_not_exists(#slices.#s{i}.reserved_by)")
            else:
                values[f":pr{i}"] = old.reserved_by
                conditions.append(f"#slices.#s{i}.reserved_by = :pr{i}")
        if after.status != before.status:
            names["#status"] = "status"
            values[":st"], values[":pst"] = after.status.value, before.status.value
            sets.append("#status = :st")
            conditions.append("#status = :pst")
            if after.status not in (CertificateStatus.ISSUING, CertificateStatus.ACTIVE):
                removes.append("expiry_day")  # leaves the sparse expiry index
        if after.withdrawal != before.withdrawal:
            if after.withdrawal is None:
                removes.append("withdrawal")
            else:
                values[":wd"] = after.withdrawal
                sets.append("withdrawal = :wd")
            if before.withdrawal is None:
                conditions.append("attribute_not_exists(withdrawal)")
            else:
                values[":pwd"] = before.withdrawal
                conditions.append("withdrawal = :pwd")
        if after.hashed_attributes != before.hashed_attributes:
            if before.hashed_attributes:
                return None  # only an issuance gives them, once
            values[":ha"] = {
                k: v.model_dump(mode="json", exclude_none=True)
                for k, v in after.hashed_attributes.items()
            }
            values[":zero"] = 0
            sets.append("hashed_attributes = :ha")
            conditions.append(
                "(attribute_not_exists(hashed_attributes) OR size(hashed_attributes) = :zero)"
            )
        added = [c for c in after.applied if c not in before.applied]
        if added:
            values[":added"], values[":none"] = added, []
            sets.append("applied = list_append(if_not_exists(applied, :none), :added)")
            for j, command_id in enumerate(added):
                values[f":a{j}"] = command_id
                conditions.append(f"NOT contains(applied, :a{j})")
        if (
            after.model_copy(
                update={
                    "slices": before.slices,
                    "status": before.status,
                    "withdrawal": before.withdrawal,
                    "applied": before.applied,
                    "hashed_attributes": before.hashed_attributes,
                    "version": before.version,
                }
            )
            != before
        ):
            return None  # a change of another field: not what patches are for
        sets.append("version = version + :one")
        expression = "SET " + ", ".join(sets) + (" REMOVE " + ", ".join(removes) if removes else "")
        condition = " AND ".join(["attribute_exists(pk)", *conditions])
        if len(expression) + len(condition) > 3500:  # DynamoDB caps expressions at 4 KB
            return None
        try:
            answer = self._call(
                "update_item",
                Key=_cert_key(after.certificate_id),
                UpdateExpression=expression,
                ConditionExpression=condition,
                ExpressionAttributeNames={
                    k: v for k, v in names.items() if k in expression or k in condition
                },
                ExpressionAttributeValues=_to_item(values),
                ReturnValues="ALL_NEW",
            )
        except ClientError as exc:
            if not _condition_failed(exc):
                raise _refused_record(after.certificate_id, exc) from exc
            return None  # the parts moved meanwhile: read and decide again
        return _certificate_from(answer["Attributes"])

    @staticmethod
    def _whole_as_in(
        before: Certificate, after: Certificate, names: dict[str, str], values: dict[str, Any]
    ) -> list[str]:
        """The conditions of a patch that changes the whole certificate (its status or
        withdrawal): the item has exactly the slices of `before`, each in the state `before`
        has it (the changed ones are conditioned on more, by the caller)."""
        if after.status == before.status and after.withdrawal == before.withdrawal:
            return []
        values[":nslices"] = len(before.slices)
        conditions = ["size(#slices) = :nslices"]
        for i, (slice_id, old) in enumerate(before.slices.items()):
            if after.slices[slice_id] == old:
                names[f"#u{i}"] = slice_id
                values[f":us{i}"] = old.state.value
                conditions.append(f"#slices.#u{i}.#state = :us{i}")
        return conditions

    def expiring_certificates(self, day: date, limit: int, shard: int | None = None) -> list[str]:
        """Up to `limit` from each expiry shard the reconciler shard `shard` sweeps (every
        shard, and the unsharded keys of older items, when `shard` is None)."""
        if shard is None:
            keys = [day.isoformat()] + [f"{day}#{e}" for e in range(self._expiry_shards)]
        else:
            keys = [f"{day}#{e}" for e in range(shard, self._expiry_shards, self._shards)]
        found: list[str] = []
        for key in keys:
            answer = self._call(
                "query",
                IndexName="by_expiry_day",
                KeyConditionExpression="expiry_day = :day",
                ExpressionAttributeValues={":day": {"S": key}},
                Limit=limit,
            )
            found += [item["pk"]["S"].removeprefix("CERT#") for item in answer.get("Items", [])]
        return found

    def add_holding(self, owner: str, certificate: Certificate) -> None:
        if owner == certificate.owner:
            return  # the certificate's own item is in the owner index for its first owner
        self._call(
            "put_item",
            Item=_to_item(
                {
                    "pk": f"OWNER#{owner}",
                    "sk": _holding_sk(certificate),
                    "owner_pk": f"OWNER#{owner}",
                    "owner_sk": _holding_sk(certificate),
                    "certificate_id": certificate.certificate_id,
                    "type": certificate.type.value,
                    "grid_area": certificate.grid_area,
                }
            ),
        )

    def holdings(self, query: HoldingQuery) -> Page[Certificate]:
        # Sort keys hold UTC times as text: bounds given in another zone must be UTC too.
        low = f"HOLD#{query.start.astimezone(UTC).isoformat()}" if query.start else "HOLD#"
        high = f"HOLD#{query.end.astimezone(UTC).isoformat()}" if query.end else "HOLD$"
        values: dict[str, Any] = {":pk": f"OWNER#{query.owner}", ":low": low, ":high": high}
        filters, names = [], {}
        if query.type is not None:
            filters.append("#type = :type")
            names["#type"] = "type"
            values[":type"] = query.type.value
        if query.grid_area is not None:
            filters.append("grid_area = :area")
            values[":area"] = query.grid_area
        # The owner index: the certificates issued to the owner (their own items) and those
        # the owner received (holding items), in one key range, newest period first.
        args: dict[str, Any] = {
            "IndexName": "by_owner",
            "KeyConditionExpression": "owner_pk = :pk AND owner_sk BETWEEN :low AND :high",
            "ExpressionAttributeValues": _to_item(values),
            "ScanIndexForward": False,
        }
        if filters:
            args["FilterExpression"] = " AND ".join(filters)
            args["ExpressionAttributeNames"] = names
        start = _decode_cursor(
            query.cursor,
            {"pk": None, "sk": None, "owner_pk": f"OWNER#{query.owner}", "owner_sk": None},
        )
        if start and not low <= start["owner_sk"]["S"] <= high:
            raise _bad_cursor()  # DynamoDB refuses a start key outside the key condition
        ids: list[str] = []
        resume: dict[str, Any] | None = None
        owner_keys = ("pk", "sk", "owner_pk", "owner_sk")
        for item, after in self._query_pages(args, start, query.limit, owner_keys):
            ids.append(item["certificate_id"]["S"])
            resume = after
        # BETWEEN is inclusive, but "HOLD#<end>#<id>" sorts after "HOLD#<end>", so periods
        # starting exactly at `end` stay out, as the API promises.
        certs = self.get_certificates(ids)
        return Page(items=certs, next_cursor=_encode_cursor(resume))

    def _query_pages(
        self,
        args: dict[str, Any],
        start: dict[str, Any] | None,
        limit: int,
        key_names: tuple[str, ...] = ("pk", "sk"),
    ) -> Iterator[tuple[dict[str, Any], dict[str, Any] | None]]:
        """Items of a filtered query up to `limit`, each with the key to resume after it
        (None after the last item of the last page)."""
        count = 0
        while True:
            page_args = dict(args, Limit=limit - count)
            if start:
                page_args["ExclusiveStartKey"] = start
            answer = self._call("query", **page_args)
            items = answer.get("Items", [])
            more = answer.get("LastEvaluatedKey")
            for i, item in enumerate(items):
                count += 1
                last_of_all = i == len(items) - 1 and not more
                # the key to resume after this item: the table's key and the index's
                resume = {k: item[k] for k in key_names}
                yield item, None if last_of_all else resume
                if count >= limit:
                    return
            if not more:
                return
            start = more

    # --- change feeds --------------------------------------------------------------------------

    def _feed_position(self, item_id: str) -> str:
        return f"{changes.stamp(self._clock())}#{item_id}"

    def _mark_changed(self, stored: Certificate, moved: set[str] | None = None) -> None:
        """Bring each viewer's feed up to the certificate as stored: after every write of a
        certificate, and again on a replay, which repairs what a crash cut short between the
        write and these. Each viewer has one mark: their view of the certificate, the version
        it is of, and its position in their feed. A mark never goes back to an older version.
        When the viewer's view did not change, the mark takes the new version where it is; when
        it did, it moves to the end of the feed. So a mark read from the feed index is one
        state, given at one position, once.

        `moved`, the viewers whose view this write changed (`domain.viewers_of_change`), says
        which of the two each mark most likely needs, so that it is tried first: one write per
        viewer, not a refused update and then a put. A mark that is not as expected (a write
        cut short before it) is answered by the other."""
        for owner in sorted(domain.viewers(stored)):
            first = "move" if moved is not None and owner in moved else "keep"
            self._mark(stored, owner, domain.view_digest(stored, owner), first)

    def _mark(self, stored: Certificate, owner: str, digest: str, attempt: str) -> None:
        """One viewer's mark: "keep" updates it where it is if it shows the same view, "move"
        puts it at the end of the feed if it shows another view (or there is none). A refusal
        answers with the mark as it is, which says whether the other is due."""
        key = {"pk": {"S": f"FEED#{owner}"}, "sk": {"S": f"CERT#{stored.certificate_id}"}}
        snapshot = _view_snapshot(stored, owner, self._previous_forms)
        values = {":v": stored.version, ":d": digest}
        for _ in range(3):  # each refusal names the other; a third is a race lost: leave it
            try:
                if attempt == "keep":
                    self._call(
                        "update_item",
                        Key=key,
                        UpdateExpression="SET feed_version = :v, certificate = :c",
                        ConditionExpression="feed_version < :v AND view_digest = :d",
                        ExpressionAttributeValues=_to_item(values | {":c": snapshot}),
                        ReturnValuesOnConditionCheckFailure="ALL_OLD",
                    )
                else:
                    self._call(
                        "put_item",
                        Item=_to_item(
                            {
                                "pk": f"FEED#{owner}",
                                "sk": f"CERT#{stored.certificate_id}",
                                "feed_pk": f"FEED#{owner}#certificates",
                                "feed_sk": self._feed_position(stored.certificate_id),
                                "feed_version": stored.version,
                                "view_digest": digest,
                                "certificate": snapshot,
                            }
                        ),
                        ConditionExpression=(
                            "attribute_not_exists(pk) OR (feed_version < :v AND view_digest <> :d)"
                        ),
                        ExpressionAttributeValues=_to_item(values),
                        ReturnValuesOnConditionCheckFailure="ALL_OLD",
                    )
                return
            except ClientError as exc:
                if not _condition_failed(exc):
                    return  # the next write of the certificate (or its replay) marks it
                old = exc.response.get("Item")
                if old is not None and int(old["feed_version"]["N"]) >= stored.version:
                    return  # a newer state is marked already
                same_view = old is not None and old["view_digest"]["S"] == digest
                attempt = "keep" if same_view else "move"

    def _changes(
        self, feed: str, since: datetime | None, cursor: str | None, limit: int
    ) -> tuple[list[dict[str, Any]], str]:
        """The items of one feed after the start, up to `limit`, and the position after them.

        The index holds keys only, so that a change of an item that keeps its place (a listed
        command's SENDING and SENT) costs it nothing; the items are then read by key, strongly
        consistent, so that none is older than the place it was listed at. One that has moved
        on since (its place in the item is not the entry's) is left out here: it is given at
        its new place, further on, so a follower is given each state once and never one older
        than a state it was given. One that is gone is left out.

        The feed stops `feed_lag` short of now: a change is stamped just before its write
        reaches DynamoDB, and the index is eventually consistent, so the newest positions may
        still be filled in below ones already visible. Within the lag (which must exceed a
        write's time in flight, clock skew between writers and the index's delay) every
        position is final, so a client that moved past it has missed nothing."""
        after = changes.start_after(since, cursor)
        horizon = changes.stamp(self._clock() - self._feed_lag)
        args: dict[str, Any] = {
            "IndexName": "changes",
            "KeyConditionExpression": "feed_pk = :pk AND feed_sk > :after",
            "ExpressionAttributeValues": _to_item({":pk": feed, ":after": after or "0"}),
        }
        entries: list[dict[str, Any]] = []
        start = None
        while len(entries) < limit:
            page_args = dict(args, Limit=limit - len(entries))
            if start:
                page_args["ExclusiveStartKey"] = start
            answer = self._call("query", **page_args)
            page = answer.get("Items", [])
            fresh = [e for e in page if e["feed_sk"]["S"][: changes.STAMP_LENGTH] <= horizon]
            entries += fresh
            start = answer.get("LastEvaluatedKey")
            if len(fresh) < len(page) or not start:
                break  # at the horizon (the index is in order), or at the feed's end
        position = entries[-1]["feed_sk"]["S"] if entries else after
        keys = [{"pk": e["pk"], "sk": e["sk"]} for e in entries]
        found = {(i["pk"]["S"], i["sk"]["S"]): i for i in self._batch_get(keys, consistent=True)}
        items = [
            item
            for e in entries
            if (item := found.get((e["pk"]["S"], e["sk"]["S"]))) is not None
            and item.get("feed_sk") == e["feed_sk"]
        ]
        return items, position

    def certificate_changes(
        self, owner: str, since: datetime | None, cursor: str | None, limit: int
    ) -> Page[Certificate]:
        items, position = self._changes(f"FEED#{owner}#certificates", since, cursor, limit)
        # A mark holds the owner's view of the certificate as it last changed.
        views = [_view_from(i) for i in items]
        return Page(items=views, next_cursor=changes.encode(position))

    def command_changes(
        self, owner: str, kind: CommandKind, since: datetime | None, cursor: str | None, limit: int
    ) -> Page[Command]:
        items, position = self._changes(f"FEED#{owner}#{kind.value}", since, cursor, limit)
        return Page(items=self._commands_from(items), next_cursor=changes.encode(position))
