"""Hourly matching: how much of a consumer's consumption its claims cover, bucket by bucket.

A claim exists so that a consumer can show which hours of its consumption were covered by
renewable production. The report reads the caller's certificates in a range and their claims:
per bucket (hour, day or month, UTC) the consumption they hold, the part matched by claimed
production, the rest unmatched, and the production they hold but have not claimed. Over the
range: the totals, the hourly matching score (matched / consumption with every hour matched on
its own, as the EnergyTag matching standard counts it: claims are of equal periods, so no hour
lends to another), and the matched production by technology and fuel where attributes say.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Literal

from chalicelib import domain
from chalicelib.domain import (
    Certificate,
    CertificateType,
    CommandKind,
    CommandStatus,
    SliceState,
)
from chalicelib.ports import Book, HoldingQuery
from chalicelib.usecases.queries import MAX_AGGREGATE_CERTIFICATES, bucket_of

Granularity = Literal["hour", "day", "month"]
MAX_BUCKETS = 24 * 366  # a year of hours
# The caller's consumption: what they hold of it, claimed or not (not what they gave away).
_HELD = frozenset({SliceState.AVAILABLE, SliceState.RESERVED, SliceState.CLAIMED})
TECHNOLOGY, FUEL = "technology", "fuel"


@dataclass
class Bucket:
    start: datetime
    consumption_wh: int = 0
    matched_wh: int = 0
    unclaimed_production_wh: int = 0

    @property
    def unmatched_wh(self) -> int:
        return self.consumption_wh - self.matched_wh

    @property
    def coverage(self) -> float | None:
        """Matched share of consumption, 0 to 1; None without consumption."""
        return self.matched_wh / self.consumption_wh if self.consumption_wh else None


@dataclass
class Report:
    granularity: Granularity
    start: datetime
    end: datetime
    buckets: list[Bucket]
    total: Bucket
    hourly_matching_score: float | None
    # (technology, fuel) -> matched Wh; "unknown" where the production's attributes do not say
    by_source: dict[tuple[str, str], int] = field(default_factory=dict)


def next_bucket(moment: datetime, granularity: Granularity) -> datetime:
    if granularity == "hour":
        return moment + timedelta(hours=1)
    if granularity == "day":
        return moment + timedelta(days=1)
    return (moment.replace(day=28) + timedelta(days=4)).replace(day=1)


def bucket_starts(start: datetime, end: datetime, granularity: Granularity) -> list[datetime]:
    """Every bucket the range [start, end) touches, so that empty hours show as empty."""
    starts, moment = [], bucket_of(start, granularity)
    while moment < end:
        starts.append(moment)
        if len(starts) > MAX_BUCKETS:
            raise domain.RuleViolation(
                f"the range has more than {MAX_BUCKETS} buckets; narrow it or take a coarser "
                "granularity",
                field="end",
            )
        moment = next_bucket(moment, granularity)
    return starts


def _held_certificates(book: Book, owner: str, start: datetime, end: datetime) -> list[Certificate]:
    found: list[Certificate] = []
    cursor = None
    while True:
        page = book.holdings(
            HoldingQuery(owner=owner, start=start, end=end, limit=500, cursor=cursor)
        )
        found += page.items
        if len(found) > MAX_AGGREGATE_CERTIFICATES:
            raise domain.RuleViolation(
                f"the range covers more than {MAX_AGGREGATE_CERTIFICATES} certificates; "
                "narrow it with start and end",
                field="start",
            )
        cursor = page.next_cursor
        if cursor is None:
            return found


def _committed_claims(book: Book, owner: str) -> list[domain.Command]:
    claims: list[domain.Command] = []
    cursor = None
    while True:
        page = book.commands_of(owner, CommandKind.CLAIM, 100, cursor)
        claims += [c for c in page.items if c.status == CommandStatus.COMMITTED]
        cursor = page.next_cursor
        if cursor is None or len(claims) > MAX_AGGREGATE_CERTIFICATES:
            return claims


def matching(
    book: Book, owner: str, start: datetime, end: datetime, granularity: Granularity
) -> Report:
    if end <= start:
        raise domain.RuleViolation("end must be after start", field="end")
    buckets = {s: Bucket(start=s) for s in bucket_starts(start, end, granularity)}
    hours: dict[datetime, Bucket] = defaultdict(lambda: Bucket(start=start))
    held = {c.certificate_id: c for c in _held_certificates(book, owner, start, end)}
    for cert in held.values():
        bucket = buckets[bucket_of(cert.period.start, granularity)]
        mine = [s for s in cert.slices.values() if s.owner == owner]
        if cert.type == CertificateType.CONSUMPTION:
            wh = sum(s.quantity_wh for s in mine if s.state in _HELD)
            bucket.consumption_wh += wh
            hours[bucket_of(cert.period.start, "hour")].consumption_wh += wh
        else:
            bucket.unclaimed_production_wh += sum(
                s.quantity_wh for s in mine if s.state == SliceState.AVAILABLE
            )
    # Matched: the caller's committed claims on consumption in the range, with the production
    # each was claimed against (for its technology and fuel).
    claims = [c for c in _committed_claims(book, owner) if c.slices[1].certificate_id in held]
    production = {
        c.certificate_id: c
        for c in book.get_certificates([c.slices[0].certificate_id for c in claims])
    }
    # What the book shows claimed bounds what claims say: a claim undone since (the issuer
    # withdrew its production) no longer covers anything.
    claimed_in_book = {
        cid: sum(
            s.quantity_wh
            for s in cert.slices.values()
            if s.owner == owner and s.state == SliceState.CLAIMED
        )
        for cid, cert in held.items()
    }
    by_source: dict[tuple[str, str], int] = defaultdict(int)
    for claim in claims:
        consumed = held[claim.slices[1].certificate_id]
        wh = min(claim.quantity_wh or 0, claimed_in_book[consumed.certificate_id])
        claimed_in_book[consumed.certificate_id] -= wh
        buckets[bucket_of(consumed.period.start, granularity)].matched_wh += wh
        hours[bucket_of(consumed.period.start, "hour")].matched_wh += wh
        source = production.get(claim.slices[0].certificate_id)
        attributes = source.attributes if source else {}
        by_source[(attributes.get(TECHNOLOGY, "unknown"), attributes.get(FUEL, "unknown"))] += wh
    ordered = [buckets[s] for s in sorted(buckets)]
    total = Bucket(
        start=start,
        consumption_wh=sum(b.consumption_wh for b in ordered),
        matched_wh=sum(b.matched_wh for b in ordered),
        unclaimed_production_wh=sum(b.unclaimed_production_wh for b in ordered),
    )
    # Hour by hour, matched beyond an hour's consumption counts for nothing.
    hourly = sum(min(h.matched_wh, h.consumption_wh) for h in hours.values())
    score = hourly / total.consumption_wh if total.consumption_wh else None
    return Report(
        granularity=granularity,
        start=start,
        end=end,
        buckets=ordered,
        total=total,
        hourly_matching_score=score,
        by_source=dict(sorted(by_source.items())),
    )
