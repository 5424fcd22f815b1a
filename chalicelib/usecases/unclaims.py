"""Unclaim: a withdrawn certificate gives the other side of each of its claims back.

When the issuer withdraws a certificate whose slices were claimed, the owners on the other
side of those claims may have their slices back: the registry accepts an `UnclaimedEvent` of
the claim's allocation on the side that is not withdrawn, signed by the claimed slice's owner.
The upstream wallet sends it when it learns of the withdrawal (it polls for them); we know the
moment the withdrawal commits, so the service sends it then, as a command of its own through
the same pipeline (guarded, sent once, settled by the reconciler like any other).

Exactly once: the unclaim's id is derived from the claim's, so recording it again (the worker
applying the withdrawal twice, a crash, the reconciler finishing the worker's work) finds the
record already there. Recording happens where a committed withdrawal is applied, before the
withdrawal is marked COMMITTED; sending it is the worker's next step, and the reconciler
re-drives one whose message was lost like any ACCEPTED command.
"""

from __future__ import annotations

from datetime import datetime

from chalicelib import domain
from chalicelib.domain import Command, CommandKind, SliceState
from chalicelib.ports import Book, DuplicateCommand


def record_unclaims(book: Book, withdrawal: Command, now: datetime) -> list[Command]:
    """The unclaims the committed `withdrawal` owes, recorded in the book (once each): those
    still to be sent, for the caller to queue."""
    if withdrawal.kind != CommandKind.WITHDRAW:
        return []
    withdrawn = book.get_certificate(withdrawal.certificate_id)
    if withdrawn is None:
        return []
    owed: list[Command] = []
    for claim_id in sorted(
        {
            s.claimed_by
            for s in withdrawn.slices.values()
            if s.state == SliceState.CLAIMED and s.claimed_by
        }
    ):
        claim = book.get_command(claim_id)
        if claim is None:
            continue
        others = [
            r.certificate_id for r in claim.slices if r.certificate_id != withdrawn.certificate_id
        ]
        other = book.get_certificate(others[0]) if others else None
        unclaim = domain.unclaim_for(claim, withdrawn, other, now) if other is not None else None
        if unclaim is None:
            continue
        try:
            book.add_command(unclaim)
        except DuplicateCommand as recorded:
            unclaim = recorded.existing
        if not unclaim.is_terminal:
            owed.append(unclaim)
    return owed
