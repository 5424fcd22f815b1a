"""The clients of the simulation: issuers and owners sending valid, conflicting and invalid
requests through the HTTP API, retrying after a lost answer, replaying and misusing keys.

A client picks its targets the way a real one does after reading its certificates: from the
book. Most requests are meant to succeed; the rest are the mistakes and races real clients
make (a foreign or spent slice, parts that do not add up, a key reused for another body).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from chalicelib.domain import CertificateStatus, CertificateType, SliceState

if TYPE_CHECKING:
    from tests.simulation.world import Answer, ApiCall, World

GSRNS = tuple(f"5713130000000000{i:02d}" for i in range(1, 7))
DAY = datetime(2026, 6, 1, tzinfo=UTC)
# Starts and lengths (minutes) of the periods issued: few, so that identities collide and
# claims find partners.
PERIODS = ((10, 0, 60), (10, 0, 15), (10, 15, 15), (11, 0, 60))
GRID_AREAS = ("DK1", "DK1", "DK2")
ISSUER = "issuer-dk"


@dataclass
class Sent:
    call: ApiCall
    answer: Answer | None


def _another_body(body: Any) -> Any:
    """The same request with one meaningful field changed, or None if there is none."""
    if not isinstance(body, dict):
        return None
    changed = copy.deepcopy(body)
    if isinstance(changed.get("quantity_wh"), int):
        changed["quantity_wh"] += 1
    elif isinstance(changed.get("quantities_wh"), list) and len(changed["quantities_wh"]) > 1:
        changed["quantities_wh"] = [*changed["quantities_wh"][1:], changed["quantities_wh"][0]]
    else:
        return None
    return None if changed == body else changed


def _iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


class Clients:
    def __init__(self, world: World) -> None:
        self.world = world
        self.keys = 0
        self.unanswered: list[ApiCall] = []  # the API died before answering
        self.answered: list[Sent] = []
        self.accepted: list[tuple[ApiCall, dict[str, Any]]] = []  # every 202 command

    # --- helpers ----------------------------------------------------------------------------

    @property
    def rng(self):
        return self.world.rng

    def key(self) -> str:
        self.keys += 1
        return f"k{self.keys}"

    def slices(self, owner: str | None = None, states=(SliceState.AVAILABLE,), type_=None):
        """(certificate, slice) pairs of the book, in the book's order."""
        found = []
        for cert in self.world.book.certificates.values():
            if type_ is not None and cert.type != type_:
                continue
            for s in cert.slices.values():
                if (owner is None or s.owner == owner) and s.state in states:
                    found.append((cert, s))
        return found

    def pick_slice(self, caller: str, type_=None) -> tuple[str, str, int, str]:
        """(certificate id, slice id, quantity, what kind of pick) for a request by `caller`:
        mostly one of theirs that is available, sometimes one that must be refused."""
        rng = self.rng
        roll = rng.random()
        mine = [
            p for p in self.slices(caller, type_=type_) if p[0].status == CertificateStatus.ACTIVE
        ]
        if roll < 0.75 and mine:
            cert, s = rng.choice(mine)
            return cert.certificate_id, s.slice_id, s.quantity_wh, "own"
        if roll < 0.85:
            foreign = [p for p in self.slices(type_=type_) if p[1].owner != caller]
            if foreign:
                cert, s = rng.choice(foreign)
                return cert.certificate_id, s.slice_id, s.quantity_wh, "foreign"
        if roll < 0.95:
            spent = self.slices(
                caller,
                states=(
                    SliceState.RESERVED,
                    SliceState.SLICED,
                    SliceState.TRANSFERRED,
                    SliceState.CLAIMED,
                    SliceState.WITHDRAWN,
                ),
                type_=type_,
            )
            if spent:
                cert, s = rng.choice(spent)
                return cert.certificate_id, s.slice_id, s.quantity_wh, f"{s.state.value}"
        certs = list(self.world.book.certificates)
        certificate_id = rng.choice(certs) if certs else "no-such-certificate"
        return certificate_id, f"unknown-{rng.randrange(1000)}", 100, "unknown"

    # --- requests ---------------------------------------------------------------------------

    def issue_body(self) -> tuple[dict[str, Any], str]:
        rng = self.rng
        hour, minute, length = rng.choice(PERIODS)
        start = DAY + timedelta(hours=hour, minutes=minute)
        body = {
            "type": rng.choice(["production", "consumption"]),
            "gsrn": rng.choice(GSRNS),
            "grid_area": rng.choice(GRID_AREAS),
            "start": _iso(start),
            "end": _iso(start + timedelta(minutes=length)),
            "quantity_wh": rng.choice([rng.randint(1, 5000), rng.randint(1, 5000), 2**32 - 1]),
            "owner": rng.choice(["alice", "bob", "carol"]),
            "attributes": {"technology": "T010000"},
        }
        intent = "issue"
        if rng.random() < 0.15:
            match rng.randrange(6):
                case 0:
                    body["gsrn"], intent = "12345", "issue.bad-gsrn"
                case 1:
                    body["quantity_wh"], intent = rng.choice([0, -5, 2**32]), "issue.bad-quantity"
                case 2:
                    body["end"], intent = _iso(start + timedelta(hours=2)), "issue.long-period"
                case 3:
                    body["start"], intent = _iso(start + timedelta(minutes=7)), "issue.off-quarter"
                case 4:
                    body["colour"], intent = "green", "issue.extra-field"
                case _:
                    body["quantity_wh"], intent = "1000", "issue.string-quantity"
        return body, intent

    def issue(self) -> ApiCall:
        from tests.simulation.world import ApiCall

        body, intent = self.issue_body()
        actor = ISSUER if self.rng.random() < 0.95 else "alice"
        if actor != ISSUER:
            intent = "issue.not-issuer"
        return ApiCall("issue_certificate", actor, {}, body, self.key(), intent)

    def issue_batch(self) -> ApiCall:
        from tests.simulation.world import ApiCall

        bodies = [self.issue_body()[0] for _ in range(self.rng.randint(1, 3))]
        return ApiCall(
            "issue_batch", ISSUER, {}, {"certificates": bodies}, self.key(), "issue-batch"
        )

    def slice(self, caller: str, pick: tuple[str, str, int, str] | None = None) -> ApiCall:
        from tests.simulation.world import ApiCall

        rng = self.rng
        certificate_id, slice_id, quantity, picked = pick or self.pick_slice(caller)
        intent = f"slice.{picked}"
        if quantity >= 3 and rng.random() < 0.85:
            cuts = sorted(rng.sample(range(1, quantity), rng.randint(1, min(3, quantity - 1))))
            parts = [b - a for a, b in zip([0, *cuts], [*cuts, quantity], strict=True)]
        else:
            parts, intent = (
                rng.choice([[quantity], [quantity, 1], [0, quantity], [quantity + 1, -1]]),
                intent + ".bad-parts",
            )
        return ApiCall(
            "slice_certificate",
            caller,
            {"certificate_id": certificate_id},
            {"slice_id": slice_id, "quantities_wh": parts},
            self.key(),
            intent,
        )

    def transfer(self, caller: str, pick: tuple[str, str, int, str] | None = None) -> ApiCall:
        from tests.simulation.world import ApiCall

        rng = self.rng
        certificate_id, slice_id, quantity, picked = pick or self.pick_slice(caller)
        receiver = rng.choice([o for o in ("alice", "bob", "carol") if o != caller])
        roll = rng.random()
        if roll < 0.45:
            amount, how = quantity, "whole"
        elif roll < 0.85 and quantity > 1:
            amount, how = rng.randint(1, quantity - 1), "part"
        else:
            amount, how = rng.choice([0, quantity + 1, -1, 2**32]), "bad-quantity"
        if rng.random() < 0.05:
            receiver, how = caller, "to-self"
        return ApiCall(
            "transfer",
            caller,
            {},
            {
                "certificate_id": certificate_id,
                "slice_id": slice_id,
                "receiver": receiver,
                "quantity_wh": amount,
            },
            self.key(),
            f"transfer.{how}.{picked}",
        )

    def claim(self, caller: str) -> ApiCall:
        from tests.simulation.world import ApiCall

        rng = self.rng
        production = self.pick_slice(caller, CertificateType.PRODUCTION)
        consumption = self.pick_slice(caller, CertificateType.CONSUMPTION)
        # Prefer a consumption slice that matches the production side.
        book = self.world.book
        prod_cert = book.get_certificate(production[0])
        if prod_cert is not None and rng.random() < 0.8:
            partners = [
                (c, s)
                for c, s in self.slices(caller, type_=CertificateType.CONSUMPTION)
                if c.status == CertificateStatus.ACTIVE
                and _pairs_up(prod_cert, c, self.world.settings.matching_boundary)
            ]
            if partners:
                c, s = rng.choice(partners)
                consumption = (c.certificate_id, s.slice_id, s.quantity_wh, "own")
        most = min(production[2], consumption[2])
        roll = rng.random()
        if roll < 0.5:
            amount, how = most, "equal"
        elif roll < 0.9 and most > 1:
            amount, how = rng.randint(1, most - 1), "part"
        else:
            amount, how = rng.choice([0, most + 1, 2**32]), "bad-quantity"
        if rng.random() < 0.03:
            consumption, how = production, "same-certificate"
        return ApiCall(
            "claim",
            caller,
            {},
            {
                "production": {"certificate_id": production[0], "slice_id": production[1]},
                "consumption": {"certificate_id": consumption[0], "slice_id": consumption[1]},
                "quantity_wh": amount,
            },
            self.key(),
            f"claim.{how}.{production[3]}.{consumption[3]}",
        )

    def withdraw(self) -> ApiCall:
        from tests.simulation.world import ApiCall

        rng = self.rng
        certs = list(self.world.book.certificates)
        certificate_id = rng.choice(certs) if certs and rng.random() < 0.9 else "no-such"
        actor = ISSUER if rng.random() < 0.9 else rng.choice(["alice", "bob"])
        return ApiCall(
            "withdraw",
            actor,
            {"certificate_id": certificate_id},
            {},
            self.key(),
            "withdraw" if actor == ISSUER else "withdraw.not-issuer",
        )

    def claim_or_withdraw_claimed(self) -> ApiCall:
        """What makes unclaims: the withdrawal of a claimed certificate when there is one, else
        a claim that can commit, else a certificate to claim against (all from the seed's
        unclaim generator)."""
        from tests.simulation.world import ApiCall

        rng, book = self.world.unclaim_rng, self.world.book
        claimed = sorted(
            c.certificate_id
            for c in book.certificates.values()
            if c.status == CertificateStatus.ACTIVE
            and any(s.state == SliceState.CLAIMED for s in c.slices.values())
        )
        if claimed and rng.random() < 0.5:
            return ApiCall(
                "withdraw",
                ISSUER,
                {"certificate_id": rng.choice(claimed)},
                {},
                self.key(),
                "withdraw.claimed",
            )
        pairs = [
            (pc, ps, cc, cs)
            for pc, ps in self.slices("alice", type_=CertificateType.PRODUCTION)
            for cc, cs in self.slices("alice", type_=CertificateType.CONSUMPTION)
            if CertificateStatus.ACTIVE == pc.status == cc.status
            and _pairs_up(pc, cc, self.world.settings.matching_boundary)
        ]
        if pairs:
            pc, ps, cc, cs = pairs[rng.randrange(len(pairs))]
            amount = min(ps.quantity_wh, cs.quantity_wh)
            return ApiCall(
                "claim",
                "alice",
                {},
                {
                    "production": {"certificate_id": pc.certificate_id, "slice_id": ps.slice_id},
                    "consumption": {"certificate_id": cc.certificate_id, "slice_id": cs.slice_id},
                    "quantity_wh": amount if rng.random() < 0.5 else rng.randint(1, amount),
                },
                self.key(),
                "claim.to-unclaim",
            )
        body = {
            "type": rng.choice(["production", "consumption"]),
            "gsrn": rng.choice(GSRNS),
            "grid_area": "DK1",
            "start": _iso(DAY + timedelta(hours=10)),
            "end": _iso(DAY + timedelta(hours=11)),
            "quantity_wh": rng.randint(1, 5000),
            "owner": "alice",
            "attributes": {"technology": "T010000"},
        }
        return ApiCall("issue_certificate", ISSUER, {}, body, self.key(), "issue.to-claim")

    def read(self) -> ApiCall:
        from tests.simulation.world import ApiCall

        rng = self.rng
        viewer = rng.choice(["alice", "bob", "carol"])
        certs = list(self.world.book.certificates)
        if certs and rng.random() < 0.7:
            return ApiCall(
                "get_certificate", viewer, {"certificate_id": rng.choice(certs)}, intent="read"
            )
        return ApiCall("list_certificates", viewer, intent="read")

    # --- what a client does next ------------------------------------------------------------

    def act(self, depth: int = 0) -> None:
        world = self.world
        if world.in_flight and world.overlap_rng.random() < world.overlap_p:
            # The client of a request still running gave up waiting and sends it again.
            call = copy.deepcopy(world.overlap_rng.choice(world.in_flight))
            world.stats["api.overlapping_retries"] += 1
            self.send(call, depth, retry=True)
            return
        rng = self.rng
        roll = rng.random()
        if self.unanswered and roll < 0.15:
            # No answer came: send the same request again, with the same key.
            call = self.unanswered.pop(rng.randrange(len(self.unanswered)))
            self.send(call, depth, retry=True)
            return
        if self.answered and roll < 0.22:
            self.replay(rng.choice(self.answered), depth)
            return
        caller = rng.choice(["alice", "bob", "carol"])
        make = rng.choices(
            [
                self.issue,
                self.issue_batch,
                lambda: self.slice(caller),
                lambda: self.transfer(caller),
                lambda: self.claim(caller),
                self.withdraw,
                self.read,
            ],
            weights=[24, 3, 18, 22, 16, 4, 6],
        )[0]
        self.send(make(), depth)

    def act_on(self, certificate_id: str, depth: int) -> bool:
        """An owner of one of the certificate's available slices transfers or slices it now;
        False when it has none (or is not active), or the request was not accepted."""
        cert = self.world.book.get_certificate(certificate_id)
        if cert is None or cert.status != CertificateStatus.ACTIVE:
            return False
        available = [s for s in cert.slices.values() if s.state == SliceState.AVAILABLE]
        if not available:
            return False
        s = self.rng.choice(available)
        pick = (certificate_id, s.slice_id, s.quantity_wh, "own")
        make = self.transfer if self.rng.random() < 0.7 else self.slice
        answer = self.send(make(s.owner, pick), depth)
        return answer is not None and answer.status == 202

    def replay(self, first: Sent, depth: int) -> None:
        """The same key again: with the same body (a replay), or with another (a misuse)."""
        call = first.call
        if call.key is None or first.answer is None or first.answer.status != 202:
            return
        if self.rng.random() < 0.5:
            again = self.send(copy.deepcopy(call), depth)
            if again is not None:
                self.world.checks.replayed(self.world, first, again)
            return
        changed = copy.deepcopy(call)
        changed.body = _another_body(call.body)
        if changed.body is None:
            return
        changed.intent = call.intent + ".reused-key"
        again = self.send(changed, depth)
        if again is not None and again.status == 202:
            self.world.violate(
                "API-key-reuse",
                f"{call.operation}: key {call.key} reused with another body was accepted: "
                f"{again.body}",
            )

    def send(self, call: ApiCall, depth: int, retry: bool = False) -> Answer | None:
        world = self.world
        reading = call.operation in ("get_certificate", "list_certificates")
        world.stats["reads" if reading else "commands"] += 1
        if retry:
            world.stats["api.retries"] += 1
        answer = world.call_api(call, depth)
        if answer is None:
            if call.key is not None and self.rng.random() < 0.8:
                self.unanswered.append(call)
            return None
        sent = Sent(call, answer)
        if answer.status == 409 and "still being processed" in str(answer.body.get("detail")):
            world.stats["api.told_to_wait"] += 1
            self.unanswered.append(call)  # the first send is still at work: send it again later
            return answer
        if call.key is not None:
            self.answered.append(sent)
        if answer.status == 202:
            world.checks.accepted(world, call, answer)
        if reading:
            world.checks.read_isolated(world, call, answer)
        return answer


def _pairs_up(production, consumption, boundary) -> bool:
    """A claim's pair as accept checks it (domain.check_claim_pair): grid areas the matching
    boundary allows (one, without a boundary), and one period inside the other."""
    a, b = production.grid_area, consumption.grid_area
    matched = a == b or any(a in group and b in group for group in boundary.values())
    return matched and (
        production.period.contains(consumption.period)
        or consumption.period.contains(production.period)
    )
