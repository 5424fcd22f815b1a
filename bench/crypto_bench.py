"""Proof time, verify time and transaction size per command kind, on this machine.

    .venv/bin/python -m bench.crypto_bench [--rounds 5]

For each command kind the real builder (ProtoTransactionBuilder) makes its transactions from a
book in memory, and the simulator's verifier (ProtoLedger) checks and applies them, as the
worker and the registry would. "build" is everything the builder does: commitments, range and
equality proofs, signatures, sealing the secrets, and verifying its own proofs and signatures
again before anything may leave (about a third of it). "verify" is the registry side. Sizes are
the serialized transactions. Times are medians over the rounds, in milliseconds; one core.
"""

from __future__ import annotations

import argparse
import base64
import statistics
import time
from datetime import UTC, datetime, timedelta

from chalicelib import domain
from chalicelib.adapters.memory import InMemoryBook, InMemoryQueue
from chalicelib.domain import Actor, CertificateType, IssueSpec, Period, Role, SliceRef
from chalicelib.registry import keys
from chalicelib.registry.builder import ProtoTransactionBuilder
from chalicelib.registry.crypto import equality
from chalicelib.registry.crypto.interface import prove_range, verify_range
from chalicelib.registry.crypto.pedersen import commit
from chalicelib.registry.crypto.ristretto import random_scalar
from chalicelib.registry.keys import IssuerKeys, SandboxOwnerKeys
from chalicelib.registry.sandbox.verifier import ProtoLedger
from chalicelib.registry.secrets import LocalSecretBox
from chalicelib.usecases import accept
from chalicelib.usecases.process import apply_outcome

SECRET = b"bench: sandbox root secret for issuer and owner keys"
ISSUER = Actor(owner="issuer-dk", roles=frozenset({Role.ISSUER}))
START = datetime(2026, 6, 1, 10, tzinfo=UTC)


class Bench:
    def __init__(self) -> None:
        self.book = InMemoryBook()
        self.queue = InMemoryQueue()
        self.issuers = IssuerKeys.sandbox(SECRET)
        self.builder = ProtoTransactionBuilder(
            "bench", self.issuers, SandboxOwnerKeys(SECRET), LocalSecretBox(bytes(32))
        )
        self.ledger = ProtoLedger(self.issuers.public_keys)
        self.keys = 0

    def request(self, actor: Actor) -> accept.Request:
        self.keys += 1
        return accept.Request(actor, f"k{self.keys}", f"h{self.keys}", START, timedelta(seconds=25))

    def run(self, command) -> tuple[float, float, list[int]]:
        """Build, verify and commit one command: (build ms, verify ms, sizes)."""
        certs = {c.certificate_id: c for c in self.book.get_certificates(command.certificate_ids())}
        if command.kind == domain.CommandKind.ISSUE:
            certs = {command.certificate_id: self.book.get_certificate(command.certificate_id)}
        t0 = time.perf_counter()
        built = self.builder.build(command, certs)
        t1 = time.perf_counter()
        txs = [base64.b64decode(t) for t in built.transactions]
        for data in txs:
            self.ledger.apply(self.ledger.parse(data)[2])
        t2 = time.perf_counter()
        apply_outcome(self.book, command.model_copy(update={"sealed_slices": built.sealed_slices}))
        return (t1 - t0) * 1000, (t2 - t1) * 1000, [len(t) for t in txs]

    def issue(self, owner: str, quantity: int, n: int, kind=CertificateType.PRODUCTION):
        spec = IssueSpec(
            type=kind,
            gsrn=f"5713130000{n:08d}",
            grid_area="DK1",
            period=Period.of(START, START + timedelta(hours=1)),
            quantity_wh=quantity,
            owner=owner,
        )
        command = accept.issue(self.book, self.queue, self.request(ISSUER), spec)
        return command, self.run(command)

    def only_slice(self, certificate_id: str, owner: str = "alice") -> SliceRef:
        cert = self.book.get_certificate(certificate_id)
        (found,) = [
            s
            for s in cert.slices.values()
            if s.owner == owner and s.state == domain.SliceState.AVAILABLE
        ]
        return SliceRef(certificate_id=certificate_id, slice_id=found.slice_id)


def one_round(n: int) -> dict[str, tuple[float, float, list[int]]]:
    b = Bench()
    results = {}
    issued, results["issue"] = b.issue("alice", 1000, 2 * n)
    cert = issued.certificate_id
    sliced = accept.slice_certificate(
        b.book, b.queue, b.request(Actor(owner="alice")), b.only_slice(cert), [1000 - 1, 1]
    )
    results["slice (2 parts)"] = b.run(sliced)
    # keep one part for alice: transfer the 1 Wh part whole, then a part of the rest
    parts = {
        s.quantity_wh: s.slice_id
        for s in b.book.get_certificate(cert).slices.values()
        if s.state == domain.SliceState.AVAILABLE
    }
    whole = accept.transfer(
        b.book,
        b.queue,
        b.request(Actor(owner="alice")),
        SliceRef(certificate_id=cert, slice_id=parts[1]),
        "bob",
        1,
    )
    results["transfer (whole slice)"] = b.run(whole)
    part = accept.transfer(
        b.book,
        b.queue,
        b.request(Actor(owner="alice")),
        SliceRef(certificate_id=cert, slice_id=parts[999]),
        "bob",
        499,
    )
    results["transfer (part: slice + transfer)"] = b.run(part)
    consumption, _ = b.issue("alice", 500, 2 * n + 1, CertificateType.CONSUMPTION)
    claim = accept.claim(
        b.book,
        b.queue,
        b.request(Actor(owner="alice")),
        b.only_slice(cert),
        b.only_slice(consumption.certificate_id),
        500,
    )
    results["claim (allocate + claim, both sides)"] = b.run(claim)
    withdraw = accept.withdraw(b.book, b.queue, b.request(ISSUER), cert)
    results["withdraw"] = b.run(withdraw)
    return results


def primitives(rounds: int) -> dict[str, float]:
    r = random_scalar()
    c = commit(1000, r)
    proof = prove_range(1000, r, "label")
    r2 = random_scalar()
    c2 = commit(1000, r2)
    eq = equality.prove_equality(c, c2, r, r2, "label")
    owner = SandboxOwnerKeys(SECRET).master("alice").derive((1, 2))
    signature = keys.sign_as_owner(owner.secret, b"h" * 120)
    issuer = IssuerKeys.sandbox(SECRET)
    ed = issuer.sign("DK1", b"h" * 120)
    ops = {
        "range proof, prove (32-bit)": lambda: prove_range(1000, r, "label"),
        "range proof, verify": lambda: verify_range(c, proof, "label"),
        "equality proof, prove": lambda: equality.prove_equality(c, c2, r, r2, "label"),
        "equality proof, verify": lambda: equality.verify_equality(c, c2, eq, "label"),
        "secp256k1 sign": lambda: keys.sign_as_owner(owner.secret, b"h" * 120),
        "secp256k1 verify": lambda: keys.signed_by_owner(owner.public_key, signature, b"h" * 120),
        "Ed25519 verify": lambda: keys.signed_by_issuer(issuer.public_keys("DK1"), ed, b"h" * 120),
        "BIP32 slice key (2 levels)": lambda: SandboxOwnerKeys(SECRET).master("x").derive((1, 2)),
    }
    timings = {}
    for name, op in ops.items():
        samples = []
        for _ in range(rounds):
            t = time.perf_counter()
            op()
            samples.append((time.perf_counter() - t) * 1000)
        timings[name] = statistics.median(samples)
    return timings


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.crypto_bench")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    one_round(0)  # warm up: generators, caches
    runs = [one_round(n + 1) for n in range(args.rounds)]
    print("| command kind | transactions | build ms | verify ms | bytes (each) |")
    print("| --- | ---: | ---: | ---: | --- |")
    for kind in runs[0]:
        build = statistics.median(r[kind][0] for r in runs)
        verify = statistics.median(r[kind][1] for r in runs)
        sizes = runs[0][kind][2]
        print(
            f"| {kind} | {len(sizes)} | {build:.0f} | {verify:.0f} | "
            f"{sum(sizes)} ({', '.join(map(str, sizes))}) |"
        )
    print()
    print("| primitive | ms |")
    print("| --- | ---: |")
    for name, ms in primitives(max(args.rounds, 10)).items():
        print(f"| {name} | {ms:.2f} |")


if __name__ == "__main__":
    main()
