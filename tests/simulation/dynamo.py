"""The DynamoDB book under the simulation: the real `DynamoBook` on moto, in process.

What would be deployed is the DynamoDB book, so the simulation runs the use cases over it as
well as over the in-memory book. moto runs in process (`mock_aws`), with the table exactly as
infra/ declares it, one fresh table per run.

The checks read the book's whole state after almost every step. Scanning the table that often
would make a run slow, so `DynamoView` keeps a copy of what the table holds: every call that
writes reads back the items it may have changed (also when it failed: a conditional write
that lost still leaves the item as it is), straight from moto's store (through the AWS API,
moto's response serializer would take most of a run's time). Nothing but the book's calls
writes to the table, so the copy is the table. The owners' lists are read from the attributes
the owner index is keyed on.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Callable, Iterator
from typing import Any

import boto3
from moto import mock_aws
from moto.core.models import DEFAULT_ACCOUNT_ID
from moto.dynamodb.models import dynamodb_backends
from moto.dynamodb.models.dynamo_type import DynamoType

from chalicelib.adapters.dynamo import DynamoBook, _certificate_from, command_from
from chalicelib.domain import Certificate, Command, SliceRef

TABLE = "simulation-book"
REGION = "eu-west-1"


@contextlib.contextmanager
def moto_table() -> Iterator[Any]:
    """A DynamoDB client on a fresh in-process moto, with the book's table of infra/."""
    from devstack.motoserver import (
        _install_fast_attribute_values,
        _install_fast_query,
        _install_lookup_caches,
    )
    from devstack.resources import table_definition

    # moto's generic response serializer takes a quarter of a run, it sorts the whole table for
    # every Query, and it looks up what never changes on every request; the embedded stack's
    # shortcuts give the same answers (tests/test_motoserver.py proves each of them).
    _install_fast_attribute_values()
    _install_fast_query()
    _install_lookup_caches()
    for key in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_DYNAMODB"):
        os.environ.pop(key, None)
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    with mock_aws():
        client = _client()
        client.create_table(TableName=TABLE, **table_definition())
        yield client


@functools.cache
def _client() -> Any:
    """One client per process: building one takes longer than many runs' calls, and moto
    answers any client while it mocks (each run's `mock_aws` starts from an empty store)."""
    return boto3.Session(region_name=REGION).client("dynamodb")


class DynamoView:
    """The DynamoDB book, with the state the checks read kept beside it (see the module)."""

    def __init__(self, client: Any) -> None:
        self.real = DynamoBook(client, TABLE)
        self._client = client
        self.commands: dict[str, Command] = {}
        self.certificates: dict[str, Certificate] = {}
        self._receipts: set[str] = set()
        self._owner_lists: dict[str, frozenset[str]] | None = None
        self._table = dynamodb_backends[DEFAULT_ACCOUNT_ID][REGION].get_table(TABLE)

    def _stored(self, pk: str, sk: str) -> dict[str, Any] | None:
        """The item as moto stores it, in the AWS API's form."""
        item = self._table.items.get(DynamoType({"S": pk}), {}).get(DynamoType({"S": sk}))
        return None if item is None else item.to_json()["Attributes"]

    # What passes straight to the real book: the reads, and the writes of what the checks do
    # not read (leases, audits). Anything else must be wrapped below to read back what it
    # wrote: an unwrapped write leaves the copy stale, and the next refresh of that item then
    # blames whoever touched it next (a refused request "changing" a certificate).
    _PASSED = frozenset(
        {
            "get_command",
            "commands_of",
            "own_commands",
            "open_commands",
            "settled_commands",
            "get_certificate",
            "get_certificates",
            "expiring_certificates",
            "holdings",
            "certificate_changes",
            "command_changes",
            "audits",
            "acquire_lease",
            "release_lease",
            "add_audit",
            # the stranded list: its own item, which the checks read through the book
            "note_stranded",
            "stranded_commands",
        }
    )

    def __getattr__(self, name: str) -> Any:
        if name not in self._PASSED:
            raise AttributeError(
                f"DynamoView does not know DynamoBook.{name}: wrap it if it writes what the "
                "checks read, else add it to _PASSED"
            )
        return getattr(self.real, name)

    # --- writes: each reads back what it may have changed ----------------------------------

    def _command(self, command_id: str) -> None:
        item = self._stored(f"CMD#{command_id}", "CMD")
        if item is None:
            self.commands.pop(command_id, None)
            return
        # Its build, in an item of its own (small writes), put before the item says `built`.
        build = self._stored(f"CMD#{command_id}", f"BUILT#{item['created_at']['S']}")
        self.commands[command_id] = command_from(item, build)

    def _certificate(self, certificate_id: str) -> None:
        item = self._stored(f"CERT#{certificate_id}", "CERT")
        if item is None:
            self.certificates.pop(certificate_id, None)
        else:
            self.certificates[certificate_id] = _certificate_from(item)

    def _then(self, call: Callable[[], Any], *refresh: Callable[[], None]) -> Any:
        try:
            return call()
        finally:
            for read in refresh:
                read()

    def add_command(self, command: Command) -> None:
        cid = command.command_id
        return self._then(lambda: self.real.add_command(command), lambda: self._command(cid))

    def transition(self, command_id: str, change: Any) -> Command:
        return self._then(
            lambda: self.real.transition(command_id, change), lambda: self._command(command_id)
        )

    def forget_command(self, command: Command) -> bool:
        cid = command.command_id
        return self._then(lambda: self.real.forget_command(command), lambda: self._command(cid))

    def keep_command(self, command_id: str) -> Any:
        return self._then(
            lambda: self.real.keep_command(command_id), lambda: self._command(command_id)
        )

    def note_receipt(self, command: Command) -> None:
        self.real.note_receipt(command)
        self._receipts.add(command.command_id)

    def add_certificate(self, certificate: Certificate) -> None:
        cid = certificate.certificate_id
        self._owner_lists = None
        return self._then(
            lambda: self.real.add_certificate(certificate), lambda: self._certificate(cid)
        )

    def reserve(self, ref: SliceRef, command_id: str, caller: str, at_least_wh: int) -> Any:
        return self._then(
            lambda: self.real.reserve(ref, command_id, caller, at_least_wh),
            lambda: self._certificate(ref.certificate_id),
        )

    def update_certificate(
        self, certificate_id: str, change: Any, snapshot: Certificate | None = None
    ) -> Certificate:
        return self._then(
            lambda: self.real.update_certificate(certificate_id, change, snapshot),
            lambda: self._certificate(certificate_id),
        )

    def update_certificate_at(
        self, certificate_id: str, version: int, change: Callable[[Certificate], Certificate]
    ) -> Certificate:
        return self._then(
            lambda: self.real.update_certificate_at(certificate_id, version, change),
            lambda: self._certificate(certificate_id),
        )

    def mark_reconciled(self, command_id: str) -> None:
        return self._then(
            lambda: self.real.mark_reconciled(command_id), lambda: self._command(command_id)
        )

    def note_unsettled(self, command_id: str, for_operator: str | None = None) -> None:
        return self._then(
            lambda: self.real.note_unsettled(command_id, for_operator),
            lambda: self._command(command_id),
        )

    def add_holding(self, owner: str, certificate: Certificate) -> None:
        self._owner_lists = None
        self.real.add_holding(owner, certificate)

    # --- the owners' lists, from the owner index's keys ------------------------------------

    @property
    def _holdings(self) -> dict[str, frozenset[str]]:
        """Each owner -> the certificates the owner index lists for them (the index is keyed
        on `owner_pk`: certificates' own items, for the owner they were issued to, and the
        holding items of the owners who received slices)."""
        if self._owner_lists is None:
            lists: dict[str, set[str]] = {}
            for item in self._table.all_items():
                owner = item.attrs.get("owner_pk")
                if owner is None:
                    continue
                certificate = item.attrs.get("certificate_id") or item.attrs["pk"]
                lists.setdefault(owner.value.removeprefix("OWNER#"), set()).add(
                    certificate.value.removeprefix("CERT#")
                )
            self._owner_lists = {owner: frozenset(ids) for owner, ids in lists.items()}
        return self._owner_lists
