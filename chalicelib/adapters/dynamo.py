"""The book in one DynamoDB table. Every guard is a single-item conditional write.

Items (pk / sk):
- CERT#<certificate id> / CERT: the certificate with all its slices in one item, so that every
  change to a certificate is one atomic write. The id is derived from (GSRN, type, start), so
  "issued once" is `attribute_not_exists(pk)` on this put.
- CMD#<command id> / CMD: the command, which is also the outbox. Its id is derived from
  (caller, Idempotency-Key), so the put's `attribute_not_exists(pk)` is the idempotency guard.
  Index `by_caller` (caller#kind, created_at#id) serves the transfer and claim lists; index
  `open_commands` (OPEN#<shard>, created_at#id), sparse and keys-only, holds the commands that
  are not terminal, for the reconciler and the operators.
- CMD#<command id> / RECEIVED: a committed transfer as its receiver sees it (by_caller index).
- OWNER#<owner> / HOLD#<period start>#<certificate id>: the owner holds or held slices of that
  certificate. Serves the owner's list and aggregates, newest period first, with no Scan.

No TransactWriteItems on the hot path: it costs twice the write units on AWS, and in moto its
cost grows with the table. Multi-item changes are ordered so that a crash between two writes
leaves a state the worker or the reconciler finishes (see usecases.accept and usecases.process).
"""

from __future__ import annotations

import base64
import contextlib
import json
import uuid
import zlib
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, date, datetime
from typing import Any

from boto3.dynamodb.types import TypeDeserializer, TypeSerializer
from botocore.exceptions import BotoCoreError, ClientError

from chalicelib import domain
from chalicelib.domain import (
    Certificate,
    CertificateStatus,
    Command,
    CommandKind,
    CommandStatus,
    SliceRef,
    SliceState,
)
from chalicelib.ports import (
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


def _certificate_from(item: dict[str, Any]) -> Certificate:
    values = _from_item(item)
    return Certificate.model_validate(values)


def _command_from(item: dict[str, Any]) -> Command:
    return Command.model_validate(_from_item(item))


class DynamoBook:
    def __init__(self, client: Any, table_name: str, open_shards: int = 8) -> None:
        self._db = client
        self._table = table_name
        self._shards = open_shards

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

    def _batch_get(self, keys: list[dict[str, Any]]) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = []
        for start in range(0, len(keys), 100):  # BatchGetItem takes at most 100 keys
            pending: dict[str, Any] = {self._table: {"Keys": keys[start : start + 100]}}
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
        values = command.model_dump(mode="json", exclude_none=True)
        if not values.get("transactions"):
            values.pop("transactions", None)  # absent until built: see Transition.set_once
        values.update(pk=f"CMD#{command.command_id}", sk="CMD")
        if command.kind in _LISTED_KINDS:
            # Only transfers and claims are listed per caller: the other kinds stay out of the
            # index (a write unit each, and an issuer's issues would all land on one key).
            values.update(
                by_caller_pk=f"{command.caller}#{command.kind.value}",
                by_caller_sk=f"{command.created_at.isoformat()}#{command.command_id}",
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
        try:
            self._call(
                "put_item",
                Item=self._command_item(command),
                ConditionExpression="attribute_not_exists(pk)",
                ReturnValuesOnConditionCheckFailure="ALL_OLD",
            )
        except ClientError as exc:
            raise DuplicateCommand(_command_from(exc.response["Item"])) from exc

    def get_command(self, command_id: str) -> Command | None:
        item = self._get(_command_key(command_id))
        return _command_from(item) if item else None

    def transition(self, command_id: str, change: Transition) -> Command:
        expected = (
            (change.expected,)
            if isinstance(change.expected, CommandStatus)
            else tuple(change.expected)
        )
        for status in expected:
            domain.check_transition(status, change.target)
        # Serialize the changed fields through the model so types match what is stored.
        probe = Command.model_construct(**change.changes)
        dumped = probe.model_dump(mode="json", include=set(change.changes))
        sets = {**dumped, "status": change.target.value, "updated_at": change.now.isoformat()}
        names = {f"#f{i}": name for i, name in enumerate(sets)}
        values = {f":v{i}": value for i, value in enumerate(sets.values())}
        expression = "SET " + ", ".join(
            f"#f{i} = if_not_exists(#f{i}, :v{i})" if name in change.set_once else f"#f{i} = :v{i}"
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
            raise StaleCommand(_command_from(old) if old else None) from exc
        return _command_from(answer["Attributes"])

    def forget_command(self, command: Command) -> None:
        # If a worker took it meanwhile, the condition fails and the worker, finding the holds
        # missing, rejects it.
        with contextlib.suppress(ClientError):
            self._call(
                "delete_item",
                Key=_command_key(command.command_id),
                ConditionExpression="#status = :accepted AND attempts = :zero",
                ExpressionAttributeNames={"#status": "status"},
                ExpressionAttributeValues={":accepted": {"S": "ACCEPTED"}, ":zero": {"N": "0"}},
            )

    def note_receipt(self, command: Command) -> None:
        """Let the receiver of a committed transfer see it in their list."""
        assert command.receiver is not None
        values = command.model_dump(mode="json", exclude_none=True)
        values.update(
            pk=f"CMD#{command.command_id}",
            sk="RECEIVED",
            by_caller_pk=f"{command.receiver}#{command.kind.value}",
            by_caller_sk=f"{command.created_at.isoformat()}#{command.command_id}",
        )
        self._call("put_item", Item=_to_item(values))

    def commands_of(
        self, caller: str, kind: CommandKind, limit: int, cursor: str | None
    ) -> Page[Command]:
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
        items = [
            _command_from(found[(k["pk"]["S"], k["sk"]["S"])])
            for k in keys
            if (k["pk"]["S"], k["sk"]["S"]) in found
        ]
        return Page(items=items, next_cursor=_encode_cursor(answer.get("LastEvaluatedKey")))

    def open_commands(self, created_before: datetime, limit: int) -> list[Command]:
        return self._indexed(created_before, limit, lambda c: not c.is_terminal)

    def settled_commands(self, limit: int) -> list[Command]:
        return self._indexed(None, limit, lambda c: c.is_terminal)

    def _indexed(
        self, created_before: datetime | None, limit: int, wanted: Callable[[Command], bool]
    ) -> list[Command]:
        """Commands in the open-commands index (not terminal, or terminal and not yet
        reconciled), oldest first, that `wanted` accepts: up to `limit` from each shard."""
        found: list[Command] = []
        for shard in range(self._shards):
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
                mine += [c for c in map(_command_from, self._batch_get(keys)) if wanted(c)]
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
        values = cert.model_dump(mode="json", exclude_none=True)
        values.update(
            pk=f"CERT#{cert.certificate_id}",
            sk="CERT",
            # in the owner index for the owner it was issued to: no holding item
            owner_pk=f"OWNER#{cert.owner}",
            owner_sk=_holding_sk(cert),
        )
        if cert.status in (CertificateStatus.ISSUING, CertificateStatus.ACTIVE):
            # Sparse index of the certificates that can still expire, by the day they start.
            values["expiry_day"] = cert.period.start.date().isoformat()
        return _to_item(values)

    def add_certificate(self, certificate: Certificate) -> None:
        # A new identity is a put that finds no item. An identity whose issuance was rejected
        # may be issued again by another command: that put is conditioned on the version of
        # the rejected item, and carries the version on, so a writer still holding the
        # rejected certificate cannot overwrite the new one (its optimistic lock fails).
        condition: dict[str, Any] = {"ConditionExpression": "attribute_not_exists(pk)"}
        version = 1
        for _ in range(_OPTIMISTIC_RETRIES):
            try:
                self._call(
                    "put_item",
                    Item=self._certificate_item(
                        certificate.model_copy(update={"version": version})
                    ),
                    ReturnValuesOnConditionCheckFailure="ALL_OLD",
                    **condition,
                )
                return
            except ClientError as exc:
                existing = _certificate_from(exc.response["Item"])
            if existing.issue_command == certificate.issue_command:
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
            return domain.reserve(_certificate_from(old), ref, command_id, caller, at_least_wh)
        return _certificate_from(answer["Attributes"])

    def update_certificate(
        self,
        certificate_id: str,
        change: Callable[[Certificate], Certificate],
        snapshot: Certificate | None = None,
    ) -> Certificate:
        if snapshot is not None:
            patched = self._patch(snapshot, change(snapshot))
            if patched is not None:
                return patched
        for _ in range(_OPTIMISTIC_RETRIES):
            current = self.get_certificate(certificate_id)
            if current is None:
                raise domain.NotFound(
                    f"certificate {certificate_id} not found", subject=certificate_id
                )
            changed = change(current)
            if changed == current:
                return current
            changed = changed.model_copy(update={"version": current.version + 1})
            try:
                self._call(
                    "put_item",
                    Item=self._certificate_item(changed),
                    ConditionExpression="version = :seen",
                    ExpressionAttributeValues={":seen": {"N": str(current.version)}},
                )
                return changed
            except ClientError as exc:
                if not _condition_failed(exc):
                    raise _refused_record(certificate_id, exc) from exc
                continue  # someone wrote in between: read again and redo the change
        raise DependencyDown(f"certificate {certificate_id} is changing too often to update")

    def _patch(self, before: Certificate, after: Certificate) -> Certificate | None:
        """Write only what changed between `before` and `after`, in one conditional update
        whose condition is that every part it touches is still as in `before`. Parts it does
        not touch may have moved on (other slices, other commands): they are not overwritten.
        None when the parts moved, or the change is too large for one expression: the caller
        then reads and writes the whole item under the optimistic lock."""
        if after == before:
            return before
        sets, removes, conditions = [], [], []
        names: dict[str, str] = {"#slices": "slices", "#state": "state", "#owner": "owner"}
        values: dict[str, Any] = {":one": 1}
        for i, (slice_id, new) in enumerate(after.slices.items()):
            old = before.slices.get(slice_id)
            if old == new:
                continue
            names[f"#s{i}"] = slice_id
            values[f":s{i}"] = new.model_dump(mode="json", exclude_none=True)
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

    def expiring_certificates(self, day: date, limit: int) -> list[str]:
        answer = self._call(
            "query",
            IndexName="by_expiry_day",
            KeyConditionExpression="expiry_day = :day",
            ExpressionAttributeValues={":day": {"S": day.isoformat()}},
            Limit=limit,
        )
        return [item["pk"]["S"].removeprefix("CERT#") for item in answer.get("Items", [])]

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
