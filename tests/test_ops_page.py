"""The operators' page of the embedded stack (GET /ops), in a real headless browser.

A known state is put in the book and the queues (moto): commands in each open state, one in
doubt with its reason, one whose message was lost, one whose worker vanished mid-call, two
dead letters. The page is served by the stack's HTTP front and opened by Debian's chromium,
headless; the test reads the DOM chromium rendered and writes a screenshot under build/.
Without chromium the test is skipped, unless TESTS_REQUIRE_BROWSER is set (CI sets it, after
installing chromium in .ci/run).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

import app as app_module
from chalicelib.domain import CommandKind, CommandStatus
from devstack import gateway
from devstack.ops_page import OpsPage
from tests.builders import command

ROOT = Path(__file__).resolve().parent.parent
BROWSER = shutil.which("chromium") or shutil.which("chromium-browser")
# The flags a sandboxed CI runner needs, and nothing that reaches the network on its own.
HEADLESS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1280,900",
]

pytestmark = pytest.mark.skipif(
    BROWSER is None and not os.environ.get("TESTS_REQUIRE_BROWSER"),
    reason="chromium is not installed (apt-get install chromium; .ci/run does)",
)


@pytest.fixture
def known_state(moto_services, aws):
    """Three commands that need a look, one merely under way, two dead letters, one waiting."""
    now = datetime.now(UTC)
    book = moto_services.book
    book.add_command(
        command(
            CommandKind.TRANSFER,
            "cert-doubt",
            key="k-doubt",
            now=now - timedelta(minutes=3),
            status=CommandStatus.IN_DOUBT,
            error="the registry timed out after the send",
        )
    )
    book.add_command(
        command(CommandKind.CLAIM, "cert-lost", key="k-lost", now=now - timedelta(hours=1))
    )
    book.add_command(
        command(
            CommandKind.SLICE,
            "cert-vanished",
            key="k-vanished",
            now=now - timedelta(minutes=5),
            status=CommandStatus.SENDING,
            lease_until=now - timedelta(minutes=1),
        )
    )
    book.add_command(command(CommandKind.TRANSFER, "cert-fresh", key="k-fresh", now=now))
    sqs = aws.client("sqs")
    settings = moto_services.settings
    queue_url = sqs.get_queue_url(QueueName=settings.queue_name)["QueueUrl"]
    dlq_url = sqs.get_queue_url(QueueName=settings.dead_letter_queue_name)["QueueUrl"]
    for i in range(2):
        sqs.send_message(QueueUrl=dlq_url, MessageBody="{}", MessageGroupId=f"g{i}",
                         MessageDeduplicationId=f"d{i}")  # fmt: skip
    sqs.send_message(
        QueueUrl=queue_url, MessageBody="{}", MessageGroupId="g", MessageDeduplicationId="w"
    )
    page = OpsPage(lambda: moto_services, sqs, queue_url, dlq_url)
    page.note_pass({"actions": {"redriven": 1, "aligned": 4}, "complete": True})
    return page


@pytest.fixture
def ops_url(moto_services, known_state) -> Iterator[str]:
    app_module.use_services(moto_services)
    served = gateway.local_server(app_module.app, "127.0.0.1", 0, known_state)
    served.server.RequestHandlerClass.log_message = lambda *_a, **_k: None
    thread = threading.Thread(target=served.server.serve_forever, daemon=True)
    thread.start()
    host, port = served.server.server_address[:2]
    yield f"http://{host}:{port}/ops"
    served.shutdown()
    thread.join(5)
    served.server.server_close()
    app_module.use_services(None)


def chromium(tmp_path: Path, *args: str) -> str:
    assert BROWSER, "chromium is required here (TESTS_REQUIRE_BROWSER is set)"
    done = subprocess.run(
        [BROWSER, *HEADLESS, f"--user-data-dir={tmp_path / 'profile'}", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return done.stdout


def figure(dom: str, name: str) -> str:
    found = re.search(rf'data-figure="{re.escape(name)}"><div class="value">([^<]*)</div>', dom)
    assert found, f"no figure {name!r} on the page"
    return found.group(1)


def test_the_operators_page_shows_the_figures_and_the_stuck_commands_in_a_browser(
    ops_url, tmp_path
):
    dom = chromium(tmp_path, "--dump-dom", ops_url)
    assert "<title>Certificates Domain: operations</title>" in dom
    assert figure(dom, "open accepted") == "2"
    assert figure(dom, "open sending") == "1"
    assert figure(dom, "open in doubt") == "1"
    assert figure(dom, "stuck") == "3"
    assert figure(dom, "dead letters") == "2"
    assert figure(dom, "queue waiting") == "1"
    assert figure(dom, "oldest open command").startswith("36")  # an hour: 3600 s and some
    stuck = dom[dom.index('id="stuck"') : dom.index("</table>", dom.index('id="stuck"'))]
    assert "in doubt: the registry timed out after the send" in stuck
    assert "its message was lost" in stuck
    assert "lease expired mid-call" in stuck
    assert "cert-fresh" not in stuck  # under way, not stuck
    assert "redriven 1" in dom
    screenshot = ROOT / "build" / "ops-page.png"
    screenshot.parent.mkdir(exist_ok=True)
    chromium(tmp_path, f"--screenshot={screenshot}", ops_url)
    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_page_is_read_only_and_only_at_ops(ops_url):
    import urllib.error
    import urllib.request

    request = urllib.request.Request(ops_url, data=b"{}", method="POST")
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=10)
    assert refused.value.code == 404
    assert json.loads(refused.value.read())["status"] == 404


def test_the_cloudwatch_dashboard_shows_the_same_figures():
    """The template's dashboard (cfn-lint checks the rest in CI): one widget per figure the
    operators' page shows, on the metrics the code emits."""
    from devstack.resources import template

    dashboard = template()["Resources"]["OperationsDashboard"]
    assert dashboard["Type"] == "AWS::CloudWatch::Dashboard"
    body = json.loads(dashboard["Properties"]["DashboardBody"]["Fn::Sub"])
    titles = [w["properties"].get("title", "") for w in body["widgets"]]
    text = json.dumps(body)
    for wanted in (
        "Open commands by state",
        "In doubt and stranded",
        "Oldest command age",
        "Dead-letter queue depth",
        "Reconciler: actions and failures",
        "Registry latency per registry",
        "Registry errors per registry",
        "API answers: 4xx and 5xx",
    ):
        assert any(t.startswith(wanted) for t in titles), wanted
    for status in ("ACCEPTED", "SENDING", "SENT", "IN_DOUBT"):
        assert f'"open_{status}"' in text  # chalicelib/usecases/reconcile.py emits these
    for metric in ("oldest_open_command_s", "registry_call_ms", "registry_errors", "5XXError"):
        assert metric in text


def test_a_claim_that_stranded_an_allocation_is_stuck_for_good(known_state, moto_services):
    """Issue 15: a claim REJECTED after an allocation committed is listed with what it left."""
    from chalicelib import domain
    from chalicelib.ports import Transition

    book = moto_services.book
    claim = command(CommandKind.CLAIM, "cert-p", key="k-stranded", now=datetime.now(UTC))
    book.add_command(claim)
    allocation = domain.StrandedAllocation(
        side=domain.CertificateType.PRODUCTION,
        certificate_id="cert-p",
        slice_id="slice-p",
        allocation_id="alloc-1",
        transaction_id="tx-1",
    )
    book.note_stranded(claim)
    book.transition(
        claim.command_id,
        Transition(
            CommandStatus.ACCEPTED,
            CommandStatus.REJECTED,
            datetime.now(UTC),
            changes={"stranded": (allocation,), "error": "stranded"},
        ),
    )
    stuck = dict((c.command_id, why) for c, why in known_state.figures().stuck)
    assert stuck[claim.command_id] == (
        "stranded for good: the production allocation of slice slice-p (transaction tx-1)"
    )
    assert "slice-p" in known_state.render()
