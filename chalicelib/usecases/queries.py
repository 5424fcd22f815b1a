"""Reads of the book, with owner isolation (I7) applied in one place.

A caller sees their own commands and the certificates in which they hold or held slices, and
only their own slices of those. Issuers and operators see every certificate by role. What a
caller may not see reads exactly like what does not exist.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, datetime, timedelta
from typing import Literal

from chalicelib import domain
from chalicelib.domain import (
    Actor,
    Certificate,
    CertificateType,
    Command,
    CommandKind,
    Role,
    SliceState,
)
from chalicelib.ports import Book, ChangeFeeds, CommandQuery, HoldingQuery, Page
from chalicelib.registry import attributes
from chalicelib.registry.secrets import SecretBox, SecretUnreadable

Granularity = Literal["hour", "day", "week", "month"]
# An aggregate reads at most this many certificates; a wider one asks the caller to narrow.
MAX_AGGREGATE_CERTIFICATES = 20_000


def sees_everything(actor: Actor) -> bool:
    return bool(actor.roles & {Role.ISSUER, Role.OPERATOR})


def command(book: Book, actor: Actor, command_id: str) -> Command:
    found = book.get_command(command_id)
    if found is None or not (found.caller == actor.owner or Role.OPERATOR in actor.roles):
        raise domain.NotFound(f"command {command_id} not found", subject=command_id)
    return found


def certificate(book: Book, actor: Actor, certificate_id: str) -> Certificate:
    found = book.get_certificate(certificate_id)
    if found is None or not (
        sees_everything(actor)
        or actor.owner in found.owners()
        or (found.owner == actor.owner and found.status == domain.CertificateStatus.ISSUING)
    ):
        raise domain.NotFound(f"certificate {certificate_id} not found", subject=certificate_id)
    return found


def attribute_salts(box: SecretBox, cert: Certificate) -> dict[str, bytes]:
    """The salts of the certificate's hashed attributes, opened: for its owners' eyes only.
    A salt that does not open (sealed under a key this stage no longer has) is left out:
    the owner still sees the value, only cannot prove it, and the read does not fail."""
    opened = {}
    for key, hashed in cert.hashed_attributes.items():
        try:
            opened[key] = attributes.open_salt(box, cert.certificate_id, key, hashed.salt)
        except SecretUnreadable:
            continue
    return opened


def certificates(book: Book, query: HoldingQuery) -> Page[Certificate]:
    return book.holdings(query)


def commands(
    book: Book, actor: Actor, kind: CommandKind, limit: int, cursor: str | None
) -> Page[Command]:
    return book.commands_of(actor.owner, kind, limit, cursor)


def own_commands(book: Book, actor: Actor, query: CommandQuery) -> Page[Command]:
    """The commands the caller made, whatever their role: only an owner's own (I7)."""
    if query.caller != actor.owner:
        raise domain.NotFound("no such list", subject=query.caller)
    return book.own_commands(query)


def certificate_changes(
    feeds: ChangeFeeds, actor: Actor, since: datetime, cursor: str | None, limit: int
) -> Page[Certificate]:
    """The caller's change feed: certificates whose view changed for them (their own slices,
    or the certificate itself), whatever their role: a feed is always an owner's own."""
    return feeds.certificate_changes(actor.owner, since, cursor, limit)


def command_changes(
    feeds: ChangeFeeds,
    actor: Actor,
    kind: CommandKind,
    since: datetime,
    cursor: str | None,
    limit: int,
) -> Page[Command]:
    return feeds.command_changes(actor.owner, kind, since, cursor, limit)


def bucket_of(moment: datetime, granularity: Granularity) -> datetime:
    moment = moment.astimezone(UTC)
    match granularity:
        case "hour":
            return moment.replace(minute=0, second=0, microsecond=0)
        case "day":
            return moment.replace(hour=0, minute=0, second=0, microsecond=0)
        case "week":  # ISO weeks start on Monday
            day = moment.replace(hour=0, minute=0, second=0, microsecond=0)
            return day - timedelta(days=day.weekday())
        case "month":
            return moment.replace(day=1, hour=0, minute=0, second=0, microsecond=0)


def aggregate(
    book: Book,
    owner: str,
    granularity: Granularity,
    type_: CertificateType | None,
    start: datetime | None,
    end: datetime | None,
) -> list[tuple[datetime, int, int]]:
    """Sums of the owner's available quantity per time bucket: (bucket start, Wh, count)."""
    totals: dict[datetime, list[int]] = defaultdict(lambda: [0, 0])
    cursor, seen = None, 0
    while True:
        page = book.holdings(
            HoldingQuery(owner=owner, type=type_, start=start, end=end, limit=500, cursor=cursor)
        )
        for cert in page.items:
            available = sum(
                s.quantity_wh
                for s in cert.slices.values()
                if s.owner == owner and s.state == SliceState.AVAILABLE
            )
            if available:
                bucket = totals[bucket_of(cert.period.start, granularity)]
                bucket[0] += available
                bucket[1] += 1
        seen += len(page.items)
        if seen > MAX_AGGREGATE_CERTIFICATES:
            raise domain.RuleViolation(
                f"the range covers more than {MAX_AGGREGATE_CERTIFICATES} certificates; "
                "narrow it with start and end",
                field="start",
            )
        cursor = page.next_cursor
        if cursor is None:
            break
    return [(b, q, n) for b, (q, n) in sorted(totals.items())]
