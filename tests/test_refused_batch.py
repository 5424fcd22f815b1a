"""A registry that refuses a batched send as such (HTTP 400, gRPC INVALID_ARGUMENT) applied
nothing of it: the worker tells the refused command from the good ones by sending each alone,
rejects the refused one (its holds released) and commits the others. Nothing goes IN_DOUBT.

Through both registry clients over their real wire: the plain HTTP client against the
simulator's HTTP server, and the gRPC client against the verifying simulator over gRPC."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from chalicelib.domain import CommandStatus, SliceState
from chalicelib.registry.http_client import HttpRegistry
from chalicelib.registry.port import RegistryRefused
from chalicelib.registry.sandbox.simulator import RegistrySimulator
from devstack.registry_server import serve
from tests.pipeline import Pipeline
from tests.registry_grpc.pipeline import ProtoPipeline

pytestmark = pytest.mark.usefixtures("groups_both_ways")


@pytest.fixture(params=["http", "grpc"])
def p(request) -> Iterator[Pipeline]:
    if request.param == "grpc":
        pipeline = ProtoPipeline(grpc=True)
        yield pipeline
        pipeline.close()
        return
    pipeline = Pipeline()
    server, _ = serve(pipeline.registry)
    pipeline.worker = pipeline.make_worker(
        registry=HttpRegistry(f"http://127.0.0.1:{server.port}", timeout_s=5.0)
    )
    yield pipeline
    server.shutdown()
    server.server_close()


def refuse_calls_naming(simulator: RegistrySimulator, certificate_id: str) -> None:
    """The registry refuses, whole, any call carrying a transaction on this certificate."""
    send = simulator.send

    def refusing(batch):
        if any(certificate_id.encode() in data for data in batch):
            raise RegistryRefused(f"a transaction on {certificate_id} is malformed")
        return send(batch)

    simulator.send = refusing


def _simulator(p: Pipeline) -> RegistrySimulator:
    return getattr(p, "simulator", p.registry)


def test_a_refused_batch_rejects_only_the_refused_command_and_commits_the_others(p) -> None:
    certs = [p.issued(gsrn=f"57131300000000001{i}") for i in range(3)]
    refused_cert, refused_slice = certs[1]
    refuse_calls_naming(_simulator(p), refused_cert)
    transfers = [p.transfer("alice", cert, s, "bob", 1000) for cert, s in certs]
    sent_before = len(_simulator(p).log())

    p.run()  # the three go out as one batch first

    statuses = [p.command(c.command_id).status for c in transfers]
    assert statuses == [CommandStatus.COMMITTED, CommandStatus.REJECTED, CommandStatus.COMMITTED]
    assert "refused" in (p.command(transfers[1].command_id).error or "")
    # the refused command's hold is released: the slice is alice's to use again
    kept = p.book.get_certificate(refused_cert).slices[refused_slice]
    assert (kept.owner, kept.state) == ("alice", SliceState.AVAILABLE)
    assert len(_simulator(p).log()) == sent_before + 2  # the registry received the two only
    p.check_invariants()


def test_a_refused_single_send_is_rejected_with_the_reason_not_left_in_doubt(p) -> None:
    cert, slice_id = p.issued()
    refuse_calls_naming(_simulator(p), cert)
    command = p.transfer("alice", cert, slice_id, "bob", 400)  # a cut, then the transfer

    p.run()

    done = p.command(command.command_id)
    assert done.status == CommandStatus.REJECTED
    assert "malformed" in (done.error or "")
    available = [s for s in p.book.get_certificate(cert).slices.values()]
    assert [(s.quantity_wh, s.state) for s in available] == [(1000, SliceState.AVAILABLE)]
    p.check_invariants()
