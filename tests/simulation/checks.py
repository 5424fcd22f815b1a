"""The invariants of DESIGN.md (I1-I7) and the promises of the API, as the simulation checks
them: some at every step, some on each answer, the rest once the world is quiet."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from chalicelib import domain
from chalicelib.adapters.memory import InMemoryBook
from chalicelib.domain import CertificateStatus, Command, CommandKind, CommandStatus, SliceState
from chalicelib.registry.builder import allocation_id_for
from chalicelib.registry.envelope import transaction_id_of

if TYPE_CHECKING:
    from tests.simulation.client import Sent
    from tests.simulation.world import Answer, ApiCall, SqsFifo, World


# --- "a refused request changed nothing" ------------------------------------------------------


@dataclass(frozen=True)
class BookState:
    commands: dict[str, Command]
    certificates: dict[str, domain.Certificate]
    holdings: dict[str, frozenset[str]]
    receipts: frozenset[str]
    queued: int


def book_state(book: InMemoryBook, queue: SqsFifo) -> BookState:
    # The models are frozen: copying the dicts keeps the state as it is now.
    return BookState(
        dict(book.commands),
        dict(book.certificates),
        {owner: frozenset(ids) for owner, ids in book._holdings.items()},
        frozenset(book._receipts),
        queue.sent,
    )


def _unversioned(cert: domain.Certificate) -> domain.Certificate:
    # The version is the optimistic lock's counter: a reserve-then-release bumps it twice and
    # changes nothing anyone can see.
    return cert.model_copy(update={"version": 0})


def changes(before: BookState, book: InMemoryBook, queue: SqsFifo) -> list[str]:
    after = book_state(book, queue)
    found = []
    for cid in sorted(set(before.commands) | set(after.commands)):
        old, new = before.commands.get(cid), after.commands.get(cid)
        if old is not new and old != new:
            found.append(f"command {cid}: {_status(old)} -> {_status(new)}")
    for cid in sorted(set(before.certificates) | set(after.certificates)):
        old, new = before.certificates.get(cid), after.certificates.get(cid)
        if old is new:
            continue
        if old is None or new is None or _unversioned(old) != _unversioned(new):
            found.append(f"certificate {cid}")
    if before.holdings != after.holdings:
        found.append("the holdings")
    if before.receipts != after.receipts:
        found.append("the receipts")
    if before.queued != after.queued:
        found.append(f"the queue ({after.queued - before.queued} message(s) sent)")
    return found


def _status(command: Command | None) -> str:
    return "absent" if command is None else command.status.value


# --- holds ---------------------------------------------------------------------------------


def holds_of(book: InMemoryBook, command: Command) -> list[str]:
    """What `command` still holds in the book."""
    held = []
    for certificate_id in command.certificate_ids():
        cert = book.get_certificate(certificate_id)
        if cert is None:
            continue
        for s in cert.slices.values():
            if s.reserved_by == command.command_id:
                held.append(f"slice {s.slice_id} of {certificate_id} is still reserved")
        if cert.withdrawal == command.command_id:
            held.append(f"{certificate_id} is still marked as being withdrawn")
        if (
            command.kind == CommandKind.ISSUE
            and cert.issue_command == command.command_id
            and cert.status == CertificateStatus.ISSUING
        ):
            held.append(f"{certificate_id} is still issuing")
    return held


# --- answers -------------------------------------------------------------------------------


def _accepted_items(call: ApiCall, answer: Answer) -> list[dict[str, Any]]:
    if call.operation == "issue_batch":
        return [item["command"] for item in answer.body["commands"] if item.get("command")]
    return [answer.body]


def accepted(world: World, call: ApiCall, answer: Answer) -> None:
    """A 202 names a command that is in the book, of the kind asked for."""
    for item in _accepted_items(call, answer):
        world.clients.accepted.append((call, item))
        command = world.book.get_command(item["command_id"])
        if command is None:
            world.violate(
                "API-202",
                f"{call.operation} ({call.intent}) answered 202 for {item['command_id']}"
                " which is not in the book",
            )
        elif command.kind != item["kind"] or command.certificate_id != item["certificate_id"]:
            world.violate(
                "API-202",
                f"202 for {item} but the book has {command.kind} on {command.certificate_id}",
            )


def replayed(world: World, first: Sent, again: Answer) -> None:
    """The same key and body again: the first answer's commands again."""
    assert first.answer is not None
    if again.status != 202:
        world.violate(
            "API-replay",
            f"{first.call.operation} replayed with key {first.call.key} answered "
            f"{again.status} {again.body}, the first answer was 202",
        )
        return
    ids = {i["command_id"] for i in _accepted_items(first.call, first.answer)}
    ids_again = {i["command_id"] for i in _accepted_items(first.call, again)}
    if not ids <= ids_again:
        world.violate(
            "API-replay",
            f"{first.call.operation} replayed with key {first.call.key} named "
            f"{sorted(ids_again)}, the first answer {sorted(ids)}",
        )


def read_isolated(world: World, call: ApiCall, answer: Answer) -> None:
    """I7 on reads: an owner sees their own slices of certificates they hold or held, and
    nothing of anyone else's."""
    if world.last_invocation is not None and world.last_invocation.preempted:
        return  # the book may have moved between the read and this check
    viewer = call.actor
    if call.operation == "list_certificates":
        if answer.status != 200:
            world.violate("I7", f"listing certificates answered {answer.status}")
            return
        views = answer.body["items"]
    else:
        cert = world.book.get_certificate(call.path_params["certificate_id"])
        may_see = cert is not None and (
            viewer in cert.owners()
            or (cert.owner == viewer and cert.status == CertificateStatus.ISSUING)
        )
        if answer.status == 404:
            if may_see:
                world.violate("I7", f"{viewer} could not read {cert.certificate_id}")
            return
        if answer.status != 200 or not may_see:
            world.violate("I7", f"{viewer} read {call.path_params} answered {answer.status}")
            return
        views = [answer.body]
    for view in views:
        foreign = [s for s in view["slices"] if s["owner"] != viewer]
        if foreign:
            world.violate("I7", f"{viewer} was shown others' slices of {view['certificate_id']}")


# --- during the run ------------------------------------------------------------------------


_ENDED = (CertificateStatus.WITHDRAWN, CertificateStatus.EXPIRED)
_SPENDABLE = (SliceState.AVAILABLE, SliceState.RESERVED)


def spendable_when_ended(cert: domain.Certificate) -> list[str]:
    """Slices the book would still let an owner use on a withdrawn or expired certificate
    (the registry takes nothing from it): the book differs from the registry (I6)."""
    if cert.status not in _ENDED:
        return []
    return [
        f"{cert.certificate_id} is {cert.status} but its slice {s.slice_id} is {s.state}"
        for s in cert.slices.values()
        if s.state in _SPENDABLE
    ]


def during_run(world: World) -> None:
    for cert in world.book.certificates.values():
        if not domain.conservation_holds(cert):
            world.violate_once(
                "I3",
                f"{cert.certificate_id}: live slices sum to "
                f"{cert.live_quantity()} Wh of {cert.quantity_wh} ({cert.status})",
            )
        for problem in spendable_when_ended(cert):
            world.violate_once("I6", problem)
    for command in world.in_doubt():
        if not command.error:
            world.violate_once("I2", f"{command.command_id} is IN_DOUBT and says nothing to do")


# --- once quiet ----------------------------------------------------------------------------


def at_quiet(world: World) -> None:
    book, registry = world.book, world.registry
    # I2: nothing lost, nothing left open
    for command in book.open_commands(world.now() + timedelta(days=1), 100_000):
        world.violate(
            "I2",
            f"{command.command_id} ({command.kind}) is still {command.status}: {command.error}",
        )
    for call, item in world.clients.accepted:
        if book.get_command(item["command_id"]) is None:
            world.violate(
                "API-202",
                f"{call.operation} answered 202 for {item['command_id']}, "
                "which is gone from the book",
            )
    if world.federated:
        in_its_own_registry(world)
    # I1: each transaction reached the registry at most once, and only transactions that a
    # command stores (a rebuilt transaction is a second send of the same step)
    sent = [e for e in registry.log() if e.origin == "client"]
    counts = Counter(e.transaction_id for e in sent)
    for tid, n in counts.items():
        if n > 1:
            world.violate("I1", f"transaction {tid} reached the registry {n} times")
    stored = {
        transaction_id_of(domain_bytes)
        for c in book.commands.values()
        for domain_bytes in _transactions(c)
    }
    for tid in counts:
        if tid not in stored:
            world.violate("I1", f"transaction {tid} was sent but no command stores it (rebuilt?)")
    # I3: conservation
    for cert in book.certificates.values():
        if not domain.conservation_holds(cert):
            world.violate(
                "I3",
                f"{cert.certificate_id}: live slices sum to "
                f"{cert.live_quantity()} of {cert.quantity_wh} Wh",
            )
    # I4: a slice is spent by one committed command at most, once more for each unclaim that
    # gave it back (the claim on it was undone: the other side was withdrawn)
    committed = [c for c in book.commands.values() if c.status == domain.CommandStatus.COMMITTED]
    given_back = Counter(
        (ref.certificate_id, ref.slice_id)
        for c in committed
        if c.kind == CommandKind.UNCLAIM
        for ref in c.slices
    )
    spent: dict[tuple[str, str], list[str]] = {}
    for command in committed:
        if command.kind == CommandKind.UNCLAIM:
            continue
        for ref in command.slices:
            key = (ref.certificate_id, ref.slice_id)
            spent.setdefault(key, []).append(command.command_id)
            if len(spent[key]) > 1 + given_back[key]:
                world.violate(
                    "I4",
                    f"slice {ref.slice_id} of {ref.certificate_id} spent by "
                    + " and ".join(spent[key]),
                )
    # I5: no stale holds
    for cert in book.certificates.values():
        for s in cert.slices.values():
            if s.reserved_by is not None:
                holder = book.get_command(s.reserved_by)
                if holder is None or holder.is_terminal:
                    world.violate(
                        "I5",
                        f"slice {s.slice_id} of {cert.certificate_id} reserved "
                        f"by {s.reserved_by}, which is {_status(holder)}",
                    )
        if cert.withdrawal is not None:
            holder = book.get_command(cert.withdrawal)
            if holder is None or holder.is_terminal:
                world.violate(
                    "I5",
                    f"{cert.certificate_id} marked withdrawing by "
                    f"{cert.withdrawal}, which is {_status(holder)}",
                )
        if cert.status == CertificateStatus.ISSUING:
            world.violate(
                "I5",
                f"{cert.certificate_id} still issuing, its issue command "
                f"{_status(book.get_command(cert.issue_command))}",
            )
    # I6: the book equals the registry
    streams = {e.stream_id for e in registry.log() if e.stream_id and e.verdict == "COMMITTED"}
    for certificate_id in sorted(set(book.certificates) | streams):
        reason = _alignment_exempt(world, certificate_id)
        if reason:
            world.exempt[reason] += 1
            continue
        for difference in differences(world, certificate_id):
            world.violate("I6", f"{certificate_id}: {difference}")
    # I6, the other way: a repair is made only where the registry really moved behind the
    # book's back. One on a certificate that never drifted overwrote the book with a stale
    # look at the registry (a commit landed between the stream query and the repair).
    for certificate_id in sorted(book.certificates):
        if certificate_id in world.drifted:
            continue
        for entry in book.audits(certificate_id):
            world.violate("I6", f"{certificate_id}: repaired, but never drifted: {entry}")
    # A stranded allocation is never hidden: every claim that stopped after an allocation
    # committed names it, and is on the operators' stranded list.
    stranded = {c.command_id for c in book.stranded_commands(100_000)}
    for command in book.commands.values():
        if command.status != domain.CommandStatus.REJECTED:
            continue
        stopped = domain.claim_stopped_sides(command).values()
        allocated = [s for s in stopped if s == SliceState.ALLOCATED]
        world.stats["claims.stranded"] += bool(allocated)
        if len(command.stranded) != len(allocated) or (
            allocated and command.command_id not in stranded
        ):
            world.violate(
                "I2",
                f"claim {command.command_id} stopped at step {command.step + 1} with "
                f"{len(allocated)} allocation(s) left, but names {len(command.stranded)} and "
                f"is {'' if command.command_id in stranded else 'not '}on the stranded list",
            )
    # I7: every owner of a live slice finds the certificate in their list
    for cert in book.certificates.values():
        for s in cert.slices.values():
            if s.is_live and cert.certificate_id not in book._holdings.get(s.owner, ()):
                world.violate(
                    "I7",
                    f"{s.owner} holds {s.slice_id} of {cert.certificate_id} "
                    "but does not find it in their certificates",
                )


def _transactions(command: Command) -> list[bytes]:
    import base64

    return [base64.b64decode(tx) for tx in command.transactions]


def _alignment_exempt(world: World, certificate_id: str) -> str | None:
    drifted_at = world.drifted.get(certificate_id)
    if drifted_at is None:
        return None
    if not world.queries:
        return "I6: drifted where the registry answers no queries (undetectable by design)"
    since = world.now() - timedelta(seconds=world.clock() - drifted_at)
    touched = any(
        c.is_terminal and c.updated_at > since and certificate_id in c.certificate_ids()
        for c in world.book.commands.values()
    )
    if not touched:
        return "I6: drifted, and no command on it settled since (only changed ones are compared)"
    return None


def differences(world: World, certificate_id: str) -> list[str]:
    """How the book's certificate differs from the registry's (empty when aligned)."""
    cert = world.book.get_certificate(certificate_id)
    snapshot = world.registry.snapshot(certificate_id)
    issued = cert is not None and cert.status not in (
        CertificateStatus.ISSUING,
        CertificateStatus.REJECTED,
    )
    if not issued:
        return [] if snapshot is None else [f"the registry has it, the book has {_cert(cert)}"]
    if snapshot is None:
        return [f"the book has it {cert.status}, the registry does not"]
    found = spendable_when_ended(cert)
    if snapshot["withdrawn"] != (cert.status == CertificateStatus.WITHDRAWN):
        found.append(f"withdrawn in the registry: {snapshot['withdrawn']}, book: {cert.status}")
    book_slices = sorted(
        (s.ref, s.owner, s.quantity_wh, _registry_use(s.state))
        for s in cert.slices.values()
        if s.is_live
    )
    registry_slices = sorted(
        (s["ref"], s["owner"], s["quantity"], s["state"]) for s in snapshot["slices"]
    )
    if book_slices != registry_slices:
        found.append(f"slices: book {book_slices} registry {registry_slices}")
    # A claim refused after its allocation committed leaves the slice allocated for good:
    # the book must show it so (not usable), never available.
    live = {s.ref: s for s in cert.slices.values() if s.state == SliceState.AVAILABLE}
    for s in snapshot["slices"]:
        if s["state"] != "allocated" or s["ref"] not in live:
            continue
        claim = _allocated_by(world, snapshot, s["ref"])
        found.append(
            f"slice {s['ref']} is allocated (unspendable) in the registry, available in the "
            f"book; allocated by {claim and claim.command_id} ({claim and claim.error})"
        )
    return found


def _registry_use(state: SliceState) -> str:
    """A book slice's state as the registry tells it: claimed, allocated, or available."""
    if state in (SliceState.CLAIMED, SliceState.ALLOCATED):
        return state.value
    return "available"


def _allocated_by(world: World, snapshot: dict[str, Any], ref: str) -> Command | None:
    allocations = {
        a["allocation_id"]
        for a in snapshot["allocations"]
        if ref in (a["production_slice"], a["consumption_slice"])
    }
    for command in world.book.commands.values():
        if command.kind == CommandKind.CLAIM and allocation_id_for(command) in allocations:
            return command
    return None


def _cert(cert: domain.Certificate | None) -> str:
    return "nothing" if cert is None else cert.status.value


def in_its_own_registry(world: World) -> None:
    """A federated run (issue 17): every transaction reached the registry of its certificate
    and no other, and claims that matched the two registries' certificates are counted."""
    book = world.book
    for name, member in world.registry.members.items():
        for entry in member.log():
            cert = book.get_certificate(entry.stream_id) if entry.stream_id else None
            if cert is not None and (cert.registry or world.settings.default_registry) != name:
                world.violate_once(
                    "FED",
                    f"transaction {entry.transaction_id} of {cert.certificate_id} (in "
                    f"{cert.registry}) reached registry {name}",
                )
    for command in book.commands.values():
        if command.kind != CommandKind.CLAIM or command.status != CommandStatus.COMMITTED:
            continue
        sides = [book.get_certificate(ref.certificate_id) for ref in command.slices]
        if len({c.registry for c in sides if c is not None}) > 1:
            world.stats["claims.across_registries"] += 1
