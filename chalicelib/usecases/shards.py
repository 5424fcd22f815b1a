"""The reconciler scaled out: one pass per shard of the open-commands and expiry indexes.

A whole-book pass settles at most `max_commands` a minute, a few per second, far below the
Danish rate. Each shard's pass lists only its shard of the open-commands index and the expiry
shards that belong to it, and holds a lease of its own (`reconciler#<shard>`), so the shards
run side by side in separate invocations and two passes of one shard never work at once. The
pass itself is the `Reconciler`'s, unchanged: a shard is only a narrower view of the book.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from datetime import date, datetime
from typing import Any

from chalicelib.domain import Command
from chalicelib.ports import Book
from chalicelib.usecases.reconcile import LEASE, Reconciler, Report


class ShardOfBook:
    """The book as one reconciler shard sees it: its listings narrowed to the shard; every
    other call goes to the book unchanged."""

    def __init__(self, book: Book, shard: int) -> None:
        self._book = book
        self.shard = shard

    def open_commands(self, created_before: datetime, limit: int) -> list[Command]:
        return self._book.open_commands(created_before, limit, shard=self.shard)

    def settled_commands(self, limit: int) -> list[Command]:
        return self._book.settled_commands(limit, shard=self.shard)

    def expiring_certificates(self, day: date, limit: int) -> list[str]:
        return self._book.expiring_certificates(day, limit, shard=self.shard)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._book, name)


def for_shard(reconciler: Reconciler, shard: int) -> Reconciler:
    """The reconciler of one shard: the same pass over the shard's view, under its own lease."""
    return dataclasses.replace(
        reconciler, book=ShardOfBook(reconciler.book, shard), lease=f"{LEASE}#{shard}"
    )


def shards_of(book: Book) -> int:
    return int(getattr(book, "shards", 1))


def run_shard(reconciler: Reconciler, shard: int) -> Report:
    """One shard's pass (the handler of one fan-out message)."""
    if not 0 <= shard < shards_of(reconciler.book):
        raise ValueError(f"no shard {shard}: the book has {shards_of(reconciler.book)}")
    return for_shard(reconciler, shard).run()


def fan_out(shards: int, send: Callable[[int], None]) -> int:
    """The schedule's work: one message (or invocation) per shard. Returns how many."""
    for shard in range(shards):
        send(shard)
    return shards
