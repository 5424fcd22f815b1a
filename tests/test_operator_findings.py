"""An operator's finding on an IN_DOUBT step is checked against the registry when it can
answer: a transaction it knows is never sent again (I1), an applied one is never called
rejected, an absent one never called committed. Where it cannot answer, the operator's word
stands; and a certificate the book gave up on while the registry has it is aligned."""

from __future__ import annotations

import pytest

from chalicelib import domain
from chalicelib.domain import Actor, CommandStatus, Role
from chalicelib.usecases.reconcile import resend_by_operator, resolve_by_operator
from tests.app_on_moto import serving
from tests.pipeline import Pipeline
from tests.test_ops_api import OPERATOR as OPERATOR_HEADERS
from tests.test_ops_api import _in_doubt_command, _resolve

OPERATOR = Actor(owner="ops", roles=frozenset({Role.OPERATOR}))


def in_doubt(p: Pipeline, **faults) -> domain.Command:
    p.registry.configure(**faults)
    command = p.issue()
    p.run()
    p.registry.configure(ambiguous_rate=0.0, lost_rate=0.0)
    p.vclock.advance(5)  # past the registry's decision
    found = p.command(command.command_id)
    assert found.status == CommandStatus.IN_DOUBT
    return found


def resolve(p: Pipeline, command: domain.Command, finding: str) -> domain.Command:
    if finding == "not_sent":
        return resend_by_operator(
            p.book, p.queue, OPERATOR, command.command_id, "not in the log", p.now(), p.registry
        )
    return resolve_by_operator(
        p.book,
        p.queue,
        p.make_worker(),
        OPERATOR,
        command.command_id,
        finding == "committed",
        "looked",
        p.registry,
    )


@pytest.mark.parametrize("finding", ["not_sent", "rejected"])
def test_a_finding_that_an_applied_step_did_not_apply_is_refused(finding) -> None:
    p = Pipeline(queries=True)
    command = in_doubt(p, ambiguous_rate=1.0)  # applied, the answer lost
    with pytest.raises(domain.Conflict, match="in the stream"):
        resolve(p, command, finding)
    assert p.command(command.command_id) == command
    p.run()
    assert len(p.registry.received_ids()) == 1  # never sent again
    assert resolve(p, command, "committed").status == CommandStatus.COMMITTED


def test_a_finding_that_an_absent_step_committed_is_refused_and_not_sent_is_taken() -> None:
    p = Pipeline(queries=True)
    command = in_doubt(p, lost_rate=1.0)  # lost before the registry
    with pytest.raises(domain.Conflict, match="UNKNOWN, and it is not in the stream"):
        resolve(p, command, "committed")
    assert resolve(p, command, "not_sent").status == CommandStatus.ACCEPTED
    p.run()
    assert p.command(command.command_id).status == CommandStatus.COMMITTED
    assert len(p.registry.received_ids()) == 1


@pytest.mark.parametrize("finding", ["not_sent", "rejected"])
def test_where_the_registry_cannot_answer_the_operators_word_stands(finding) -> None:
    p = Pipeline(queries=True)
    command = in_doubt(p, ambiguous_rate=1.0)
    p.registry.set_available(False)
    after = resolve(p, command, finding)
    assert after.status == (
        CommandStatus.ACCEPTED if finding == "not_sent" else CommandStatus.REJECTED
    )


def test_a_certificate_the_book_rejected_while_the_registry_issued_it_is_aligned() -> None:
    p = Pipeline(queries=True)
    command = in_doubt(p, ambiguous_rate=1.0)
    # An operator's word taken without the registry (it was down): the book gives up on it.
    p.registry.set_available(False)
    resolve(p, command, "rejected")
    p.registry.set_available(True)
    cert_id = command.certificate_id
    assert p.book.get_certificate(cert_id).status == domain.CertificateStatus.REJECTED

    actions = p.reconcile()

    assert actions["drift_repaired"] == 1, actions
    cert = p.book.get_certificate(cert_id)
    assert cert.status == domain.CertificateStatus.ACTIVE
    assert p.aligned(cert_id)
    assert "issued_in_registry" in [e["action"] for e in p.book.audits(cert_id)]
    owners = {s.owner for s in cert.slices.values() if s.is_live}
    assert owners == {"alice"}


def test_a_certificate_whose_issue_is_still_on_its_way_is_left_alone() -> None:
    p = Pipeline(queries=True, commit_delay_s=600)
    issued = p.issue()
    p.run()  # SENT: the registry has not committed it yet
    p.vclock.advance(700)  # now it has; the worker has not heard
    cert_id = issued.certificate_id
    reconciler = p.make_reconciler()
    assert reconciler._align(cert_id) == "aligned"
    assert p.book.get_certificate(cert_id).status == domain.CertificateStatus.ISSUING


# --- through the API ----------------------------------------------------------------------------


@pytest.fixture
def stack(moto_services, aws):
    from chalicelib.registry.sandbox.simulator import RegistrySimulator, SimulatorConfig

    # Every send applies and its answer is lost: every command ends IN_DOUBT.
    registry = RegistrySimulator(SimulatorConfig(queries=True, ambiguous_rate=1.0))
    with serving(moto_services, aws, registry) as (client, poller):
        yield client, poller, moto_services


def test_the_api_refuses_a_not_sent_finding_the_registry_contradicts_with_409(stack) -> None:
    client, poller, services = stack
    command_id = _in_doubt_command(client, poller)
    assert services.book.get_command(command_id).status == CommandStatus.IN_DOUBT
    answer = _resolve(client, command_id, OPERATOR_HEADERS, "not_sent")
    assert answer.status_code == 409
    assert answer.headers["Content-Type"] == "application/problem+json"
    assert "the registry reports transaction" in answer.json_body["detail"]
    assert services.book.get_command(command_id).status == CommandStatus.IN_DOUBT
    assert len(services.registry.received_ids()) == 1
