"""The `certs` command line against the app served over real HTTP on 127.0.0.1.

The app runs in chalice's threaded local server over moto, the SQS poller feeds the worker in
a thread as Lambda would, and the registry is the simulator; the CLI's `main(argv)` runs in
this process, so each test reads exactly what a person would see on stdout and stderr, and
the exit code.
"""

from __future__ import annotations

import contextlib
import io
import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import jwt
import pytest
from chalice.config import Config
from chalice.local import (
    ChaliceRequestHandler,
    LocalChalice,
    LocalDevServer,
    create_local_server,
)

import app as app_module
from certs_cli.__main__ import main
from certs_cli.render import Progress
from chalicelib.composition import utc_now
from chalicelib.registry.sandbox.simulator import RegistrySimulator, SimulatorConfig
from chalicelib.settings import DEVELOPMENT_JWT_SECRET
from devstack.poller import QueuePoller
from tests.conftest import SECRET

PERIOD = ["--start", "2026-06-01T10:00:00Z", "--end", "2026-06-01T11:00:00Z"]
PRODUCTION_GSRN = "571313000000000001"
CONSUMPTION_GSRN = "571313000000000002"


class QuietRequestHandler(ChaliceRequestHandler):
    def log_message(self, format: str, *args) -> None:
        """The request log would land in the test's captured stderr, among the CLI's lines."""


@pytest.fixture(scope="module")
def http_url() -> Iterator[str]:
    """The app on a free port of 127.0.0.1, for the whole module."""
    if not isinstance(app_module.app, LocalChalice):
        # Swaps the app's class for chalice's thread-safe one (once per process: a second
        # swap would make the class its own base); the server it binds is not needed.
        create_local_server(app_module.app, Config(), "127.0.0.1", 0).server.server_close()
    server = LocalDevServer(
        app_module.app, Config(), "127.0.0.1", 0, handler_cls=QuietRequestHandler
    )
    # The inner server: LocalDevServer.serve_forever would print to a test's stdout.
    thread = threading.Thread(target=server.server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server.server_address[1]}"
    server.shutdown()
    thread.join(5)
    server.server.server_close()


@dataclass
class Stack:
    url: str
    registry: RegistrySimulator


@pytest.fixture
def stack(http_url, moto_services, aws) -> Iterator[Stack]:
    registry = RegistrySimulator(SimulatorConfig(commit_delay_s=0.0))
    moto_services.registry = registry
    moto_services.clock = utc_now  # real time: the CLI waits in real time
    app_module.use_services(moto_services)
    sqs = aws.client("sqs")
    queue_url = sqs.get_queue_url(QueueName=moto_services.settings.queue_name)["QueueUrl"]
    poller = QueuePoller(sqs, queue_url, lambda event: app_module.worker(event, None), wait_s=0)
    stop = threading.Event()

    def feed() -> None:
        while not stop.wait(0.02):
            while not stop.is_set() and poller.poll_once(wait_s=0):
                pass

    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    yield Stack(http_url, registry)
    stop.set()
    feeder.join(10)
    app_module.use_services(None)


@dataclass(frozen=True)
class Ran:
    code: int
    out: str
    err: str

    def json(self):
        return json.loads(self.out)

    @property
    def err_lines(self) -> list[str]:
        return self.err.strip().splitlines()

    @property
    def fields(self) -> dict[str, str]:
        """The `name   value` lines of a command or certificate shown on stdout."""
        pairs = (line.split(maxsplit=1) for line in self.out.splitlines())
        return {p[0]: p[1] for p in pairs if len(p) == 2}


@pytest.fixture
def certs(stack, capsys):
    """Runs `certs --url <stack> [--token T] ARGS...` and captures what it printed."""

    def run(*argv: str, token: str | None = None) -> Ran:
        capsys.readouterr()
        code = main(["--url", stack.url, *(["--token", token] if token else []), *argv])
        out, err = capsys.readouterr()
        return Ran(code, out, err)

    return run


def one_row(ran: Ran) -> str:
    """The only row of a table printed on stdout, under its header."""
    rows = ran.out.splitlines()[1:]
    assert len(rows) == 1, ran
    return rows[0]


def one_error_line(ran: Ran) -> str:
    assert len(ran.err_lines) == 1, ran
    return ran.err_lines[0]


def mint(owner: str, *roles: str) -> str:
    argv = ["token", "--owner", owner, "--secret", SECRET]
    for role in roles:
        argv += ["--role", role]
    return _run_offline(argv).out.strip()


def _run_offline(argv: list[str]) -> Ran:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return Ran(code, out.getvalue(), err.getvalue())


@pytest.fixture
def tokens() -> dict[str, str]:
    return {
        "issuer": mint("issuer-dk", "issuer"),
        "operator": mint("ops", "operator"),
        "alice": mint("alice"),
        "bob": mint("bob"),
    }


def issue_args(owner: str, gsrn: str, type_: str, quantity: int) -> list[str]:
    return [
        "issue",
        "--type",
        type_,
        "--gsrn",
        gsrn,
        "--grid-area",
        "DK1",
        *PERIOD,
        "--quantity",
        str(quantity),
        "--owner",
        owner,
        "--attr",
        "technology=T010000",
    ]


def issued(certs, tokens, owner: str, gsrn: str, type_: str, quantity: int) -> str:
    """Issue and wait for COMMITTED; returns the certificate id."""
    ran = certs(
        "--json", *issue_args(owner, gsrn, type_, quantity), "--wait", token=tokens["issuer"]
    )
    assert ran.code == 0, ran
    view = ran.json()
    assert view["status"] == "COMMITTED"
    return view["certificate_id"]


def available_slices(certs, token: str, certificate_id: str) -> dict[int, str]:
    view = certs("--json", "cert", certificate_id, token=token).json()
    return {s["quantity_wh"]: s["slice_id"] for s in view["slices"] if s["state"] == "available"}


# --- tokens -----------------------------------------------------------------------------------


def test_a_minted_token_names_its_owner_and_roles_and_verifies_with_the_secret() -> None:
    ran = _run_offline(["token", "--owner", "alice", "--role", "issuer", "--secret", SECRET])
    assert ran.code == 0
    claims = jwt.decode(ran.out.strip(), SECRET, algorithms=["HS256"])
    assert (claims["sub"], claims["roles"]) == ("alice", ["issuer"])
    assert claims["exp"] - claims["iat"] == 12 * 3600


def test_a_token_is_signed_with_the_environment_secret_or_else_the_development_one(
    monkeypatch,
) -> None:
    monkeypatch.setenv("CERTS_JWT_SECRET", "a-secret-from-the-environment-long-enough")
    from_env = _run_offline(["token", "--owner", "bob"]).out.strip()
    assert jwt.decode(from_env, "a-secret-from-the-environment-long-enough", algorithms=["HS256"])
    monkeypatch.delenv("CERTS_JWT_SECRET")
    default = _run_offline(["token", "--owner", "bob", "--role", "operator"]).out.strip()
    claims = jwt.decode(default, DEVELOPMENT_JWT_SECRET, algorithms=["HS256"])
    assert claims["roles"] == ["operator"]


# --- writes and waiting -----------------------------------------------------------------------


def test_an_issued_certificate_is_accepted_then_shown_committed_after_waiting(
    certs, tokens
) -> None:
    ran = certs(*issue_args("alice", PRODUCTION_GSRN, "production", 1000), token=tokens["issuer"])
    assert ran.code == 0, ran
    kind, word, command_id, status, *_ = ran.out.split()
    assert (kind, word, status) == ("issue", "command", "ACCEPTED")
    assert "idempotency key" in ran.err
    assert f"certs show {command_id} --wait" in ran.err

    waited = certs("show", command_id, "--wait", "--timeout", "30", token=tokens["issuer"])
    assert waited.code == 0, waited
    assert waited.fields["status"] == "COMMITTED"
    # Not a terminal: one plain progress line per status seen, the last one COMMITTED.
    assert waited.err_lines[-1].startswith(f"command {command_id}: COMMITTED after ")

    certificate_id = certs("--json", "show", command_id, token=tokens["issuer"]).json()[
        "certificate_id"
    ]
    shown = certs("cert", certificate_id, token=tokens["alice"])
    assert shown.code == 0
    assert "technology=T010000" in shown.out
    (slice_line,) = [line for line in shown.out.splitlines() if "available" in line]
    assert slice_line.split()[1:] == ["1000", "available", "alice"]


def test_the_same_idempotency_key_gives_back_the_same_command(certs, tokens) -> None:
    args = [*issue_args("alice", PRODUCTION_GSRN, "production", 1000), "--key", "issue-once"]
    first = certs("--json", *args, token=tokens["issuer"])
    again = certs("--json", *args, token=tokens["issuer"])
    assert first.code == again.code == 0
    assert first.json()["command_id"] == again.json()["command_id"]
    assert "idempotency key issue-once" in again.err


def test_slice_transfer_claim_and_withdraw_commit_and_show_in_the_lists(certs, tokens) -> None:
    production = issued(certs, tokens, "alice", PRODUCTION_GSRN, "production", 1000)
    consumption = issued(certs, tokens, "alice", CONSUMPTION_GSRN, "consumption", 400)
    (whole,) = available_slices(certs, tokens["alice"], production).values()

    sliced = certs("slice", production, whole, "600", "400", "--wait", token=tokens["alice"])
    assert sliced.code == 0, sliced
    assert sliced.fields["status"] == "COMMITTED"
    parts = available_slices(certs, tokens["alice"], production)
    assert set(parts) == {600, 400}

    moved = certs(
        "transfer",
        production,
        parts[600],
        "--to",
        "bob",
        "--quantity",
        "250",
        "--wait",
        token=tokens["alice"],
    )
    assert moved.code == 0, moved
    assert moved.fields["receiver"] == "bob"
    assert set(available_slices(certs, tokens["bob"], production)) == {250}
    assert set(available_slices(certs, tokens["alice"], production)) == {400, 350}

    (consumed,) = available_slices(certs, tokens["alice"], consumption).values()
    claimed = certs(
        "claim",
        "--production",
        f"{production}:{parts[400]}",
        "--consumption",
        f"{consumption}:{consumed}",
        "--quantity",
        "400",
        "--wait",
        token=tokens["alice"],
    )
    assert claimed.code == 0, claimed

    withdrawn = certs("withdraw", consumption, "--wait", token=tokens["issuer"])
    assert withdrawn.code == 0, withdrawn
    assert certs("--json", "cert", consumption, token=tokens["issuer"]).json()["status"] == (
        "withdrawn"
    )
    # The withdrawn consumption was claimed: the service gives alice the production part back
    # (an unclaim of her own, queued once the withdrawal committed).
    deadline = time.monotonic() + 30
    while not (
        unclaims := certs("--json", "commands", "--kind", "unclaim", token=tokens["alice"]).json()[
            "items"
        ]
    ):
        assert time.monotonic() < deadline, "no unclaim was recorded"
        time.sleep(0.05)
    (unclaim,) = unclaims
    assert unclaim["certificate_id"] == production
    assert certs("show", unclaim["command_id"], "--wait", token=tokens["alice"]).code == 0

    sent = certs("transfers", token=tokens["alice"])
    assert sent.code == 0
    row = one_row(sent)
    assert row.split()[1:7] == ["COMMITTED", production, "250", "alice", "->", "bob"]
    received = certs("transfers", token=tokens["bob"])
    row = one_row(received)
    assert row.split()[0] == sent.out.splitlines()[1].split()[0]
    assert row.split()[4:7] == ["alice", "->", "bob"]  # bob sees who sent it

    claims = certs("claims", token=tokens["alice"])
    row = one_row(claims)
    assert row.split()[1:5] == ["COMMITTED", production, "400", consumption]

    listed = certs("list", "--type", "production", token=tokens["alice"])
    assert listed.code == 0
    row = one_row(listed)
    assert row.split()[:3] == [production, "production", "DK1"]
    assert row.split()[-2:] == ["750", "active"]  # 350, and the 400 the unclaim gave back

    totals = certs(
        "aggregate", "--granularity", "day", "--type", "production", token=tokens["alice"]
    )
    assert totals.code == 0
    assert totals.out.splitlines() == [
        "DAY                   AVAILABLE_WH  CERTIFICATES",
        "2026-06-01T00:00:00Z  750           1",
        "total                 750           1",
    ]


def test_list_all_follows_the_cursor_to_the_last_page(certs, tokens) -> None:
    for hour in range(3):
        ran = certs(
            "issue",
            "--type",
            "production",
            "--gsrn",
            PRODUCTION_GSRN,
            "--grid-area",
            "DK1",
            "--start",
            f"2026-06-01T0{hour}:00:00Z",
            "--end",
            f"2026-06-01T0{hour + 1}:00:00Z",
            "--quantity",
            "100",
            "--owner",
            "alice",
            "--wait",
            token=tokens["issuer"],
        )
        assert ran.code == 0, ran
    first_page = certs("list", "--limit", "2", token=tokens["alice"])
    assert len(first_page.out.splitlines()) == 1 + 2
    assert "more certificates: --cursor " in first_page.err
    everything = certs("--json", "list", "--limit", "2", "--all", token=tokens["alice"]).json()
    starts = [c["start"] for c in everything["items"]]
    assert starts == ["2026-06-01T02:00:00Z", "2026-06-01T01:00:00Z", "2026-06-01T00:00:00Z"]
    assert everything["next_cursor"] is None


def test_a_batch_from_csv_reports_each_row_and_refuses_the_bad_one(
    certs, tokens, tmp_path: Path
) -> None:
    csv = tmp_path / "metering.csv"
    csv.write_text(
        "type,gsrn,grid_area,start,end,quantity_wh,owner,attr:technology\n"
        "production,571313000000000011,DK1,2026-06-01T10:00:00Z,2026-06-01T11:00:00Z,500,alice,"
        "T010000\n"
        "production,5713130000,DK1,2026-06-01T10:00:00Z,2026-06-01T11:00:00Z,500,alice,T010000\n"
        "consumption,571313000000000012,DK1,2026-06-01T10:00:00Z,2026-06-01T11:00:00Z,300,alice,\n"
    )
    ran = certs("issue-batch", str(csv), token=tokens["issuer"])
    assert ran.code == 1, ran
    lines = ran.out.splitlines()
    assert lines[0].startswith("line 2: accepted, command ")
    assert lines[1].startswith("line 3: refused, 4")
    assert "gsrn" in lines[1]
    assert lines[2].startswith("line 4: accepted, command ")
    assert lines[3] == "2 accepted, 1 refused, 0 not sent"
    assert ran.err_lines[0] == "batch 1/1: sending lines 2-4 (3 of 3 rows)"  # as results say
    assert ran.err_lines[1] == "batch 1/1: 3 rows sent, 2 accepted, 1 refused"


def test_a_batch_of_more_than_a_hundred_rows_goes_in_chunks_of_a_hundred(
    certs, tokens, tmp_path: Path
) -> None:
    rows = [
        f"production,5713130000000{n:05d},DK1,2026-06-01T10:00:00Z,2026-06-01T11:00:00Z,10,alice"
        for n in range(101)
    ]
    csv = tmp_path / "metering.csv"
    csv.write_text("type,gsrn,grid_area,start,end,quantity_wh,owner\n" + "\n".join(rows) + "\n")
    ran = certs("--json", "issue-batch", str(csv), token=tokens["issuer"])
    assert ran.code == 0, ran.err
    report = ran.json()
    assert (report["accepted"], report["refused"]) == (101, 0)
    assert [r["line"] for r in report["rows"]] == list(range(2, 103))
    assert ran.err_lines[:2] == [
        "batch 1/2: sending lines 2-101 (100 of 101 rows)",
        "batch 2/2: sending lines 102-102 (101 of 101 rows)",
    ]


def test_issue_batch_wait_waits_for_every_row_with_one_progress_line(
    certs, tokens, tmp_path: Path
) -> None:
    rows = [
        f"production,57131300000009{n:04d},DK1,2026-06-01T10:00:00Z,2026-06-01T11:00:00Z,10,alice"
        for n in range(3)
    ]
    csv = tmp_path / "metering.csv"
    csv.write_text("type,gsrn,grid_area,start,end,quantity_wh,owner\n" + "\n".join(rows) + "\n")
    ran = certs("issue-batch", str(csv), "--wait", token=tokens["issuer"])
    assert ran.code == 0, ran.err
    lines = ran.out.splitlines()
    assert all(" COMMITTED, command " in line and ", slice " in line for line in lines[:3]), lines
    assert ran.err_lines[-1].startswith("batch: 3 COMMITTED after "), ran.err_lines


def test_an_issuer_lists_its_own_commands_by_kind_and_status(certs, tmp_path: Path) -> None:
    issuer = mint("issuer-commands-list", "issuer")  # its own: the stack is shared
    rows = [
        f"production,57131300000019{n:04d},DK1,2026-06-01T10:00:00Z,2026-06-01T11:00:00Z,10,alice"
        for n in range(3)
    ]
    csv = tmp_path / "metering.csv"
    csv.write_text("type,gsrn,grid_area,start,end,quantity_wh,owner\n" + "\n".join(rows) + "\n")
    assert certs("issue-batch", str(csv), "--wait", token=issuer).code == 0
    listed = certs("commands", "--kind", "issue", "--status", "COMMITTED", token=issuer)
    assert listed.code == 0, listed.err
    header, *lines = listed.out.splitlines()
    assert header.split()[:4] == ["COMMAND", "KIND", "STATUS", "CERTIFICATE"]
    assert [line.split()[1:3] for line in lines] == [["issue", "COMMITTED"]] * 3
    paged = certs("--json", "commands", "--limit", "2", "--all", token=issuer).json()
    assert len(paged["items"]) == 3 and paged["next_cursor"] is None
    none = certs("commands", "--status", "REJECTED", token=issuer)
    assert none.out.strip() == "no commands"
    later = certs("commands", "--created-after", "2100-01-01T00:00:00Z", token=issuer)
    assert later.out.strip() == "no commands"


# --- errors -----------------------------------------------------------------------------------


def test_a_refused_request_is_one_line_on_stderr_and_exit_code_1(certs, tokens) -> None:
    issued(certs, tokens, "alice", PRODUCTION_GSRN, "production", 1000)
    twice = certs(*issue_args("alice", PRODUCTION_GSRN, "production", 1000), token=tokens["issuer"])
    assert twice.code == 1
    assert twice.out == ""
    line = one_error_line(twice)
    assert line.startswith("error 409 Conflict: ")


def test_a_refused_field_is_named_on_the_error_line(certs, tokens) -> None:
    ran = certs(*issue_args("alice", "12345", "production", 1000), token=tokens["issuer"])
    assert ran.code == 1
    line = one_error_line(ran)
    assert line.startswith("error 4")
    assert "gsrn" in line


def test_a_request_without_a_token_is_refused_with_a_hint(certs, monkeypatch) -> None:
    monkeypatch.delenv("CERTS_TOKEN", raising=False)
    ran = certs("list")
    assert ran.code == 1
    assert ran.err_lines[0].startswith("error 401 Unauthorized: ")
    assert "certs token --owner" in ran.err_lines[1]


def test_an_unreachable_api_is_one_line_and_exit_code_3(capsys) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{probe.getsockname()[1]}"
    code = main(["--url", url, "--token", "x", "list"])
    out, err = capsys.readouterr()
    assert code == 3
    assert out == ""
    assert err.splitlines() == [f"cannot reach the API at {url}: is `make run` running?"]


def test_a_refused_connection_does_not_say_the_request_may_have_arrived(capsys) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{probe.getsockname()[1]}"
    code = main(["--url", url, "withdraw", "some-certificate", "--key", "k-1"])
    assert code == 3
    err = capsys.readouterr().err
    assert "may have arrived" not in err  # nothing was sent: there is nothing to retry safely
    assert err.splitlines() == [f"cannot reach the API at {url}: is `make run` running?"]


def test_a_write_whose_answer_was_lost_says_how_to_retry_it_safely(capsys) -> None:
    with socket.socket() as server:  # accepts the request, then closes without an answer
        server.bind(("127.0.0.1", 0))
        server.listen()
        url = f"http://127.0.0.1:{server.getsockname()[1]}"

        def drop() -> None:
            connection, _ = server.accept()
            connection.recv(65536)
            connection.close()

        thread = threading.Thread(target=drop)
        thread.start()
        code = main(["--url", url, "withdraw", "some-certificate", "--key", "k-1"])
        thread.join()
    assert code == 3
    assert "retry with --key k-1" in capsys.readouterr().err


def test_a_wait_that_runs_out_of_time_exits_4_and_says_how_to_wait_again(
    stack, certs, tokens
) -> None:
    stack.registry.configure(outages=((0.0, 1e9),))
    accepted = certs(
        "--json", *issue_args("alice", PRODUCTION_GSRN, "production", 10), token=tokens["issuer"]
    )
    command_id = accepted.json()["command_id"]
    ran = certs("show", command_id, "--wait", "--timeout", "0.5", token=tokens["issuer"])
    assert ran.code == 4  # not 3, which says the API could not be reached
    assert f"wait again with: certs show {command_id} --wait" in ran.err_lines[-1]
    assert ran.err_lines[-1].startswith("timed out after 0.5 s")


def test_a_csv_without_its_header_row_is_told_the_header_it_needs(tmp_path: Path) -> None:
    rows = tmp_path / "no-header.csv"
    rows.write_text(
        "production,571313000000000011,DK1,2026-06-01T10:00:00Z,2026-06-01T11:00:00Z,500,alice\n"
        "production,571313000000000012,DK1,2026-06-01T10:00:00Z,2026-06-01T11:00:00Z,500,alice\n"
    )
    ran = _run_offline(["--url", "http://127.0.0.1:9", "issue-batch", str(rows)])
    assert ran.code == 2  # before any request
    assert ran.err_lines == [
        f"certs: error: {rows} has no header row: its first line must be "
        "type,gsrn,grid_area,start,end,quantity_wh,owner (then any attr:<key> columns); "
        "line 1 reads as data: production,571313000000000011,DK1,..."
    ]


def test_usage_errors_exit_2(certs, tokens, tmp_path: Path) -> None:
    wrong = tmp_path / "wrong.csv"
    wrong.write_text("type,gsrn,quantity\nproduction,1,2\n")
    ran = certs("issue-batch", str(wrong), token=tokens["issuer"])
    assert ran.code == 2
    assert ran.err_lines == [
        f"certs: error: {wrong} lacks the column(s) grid_area, start, end, quantity_wh, owner"
    ]
    assert certs("issue-batch", str(tmp_path / "missing.csv")).code == 2
    assert (
        certs("claim", "--production", "no-colon", "--consumption", "a:b", "--quantity", "1").code
        == 2
    )
    assert main(["--url", "127.0.0.1:8000", "list"]) == 2


# --- operations -------------------------------------------------------------------------------


def test_a_stranded_allocation_shows_up_in_certs_ops_stuck(stack, certs, tokens) -> None:
    """Issue 15: the issuer withdrew the consumption certificate in the registry, behind the
    book's back: the claim's production allocation commits, its consumption allocation is
    refused, and the production slice is allocated for good. The DynamoDB book, the API and
    the CLI all show it."""
    production = issued(certs, tokens, "alice", PRODUCTION_GSRN, "production", 400)
    consumption = issued(certs, tokens, "alice", CONSUMPTION_GSRN, "consumption", 400)
    (whole,) = available_slices(certs, tokens["alice"], production).values()
    (consumed,) = available_slices(certs, tokens["alice"], consumption).values()
    stack.registry.withdraw(consumption)
    claimed = certs(
        "claim",
        "--production",
        f"{production}:{whole}",
        "--consumption",
        f"{consumption}:{consumed}",
        "--quantity",
        "400",
        "--wait",
        token=tokens["alice"],
    )
    assert claimed.code == 1, claimed
    assert claimed.fields["status"] == "REJECTED"
    command_id = claimed.fields["command"]
    view = certs("--json", "cert", production, token=tokens["alice"]).json()
    assert [(s["slice_id"], s["state"]) for s in view["slices"]] == [(whole, "allocated")]

    stuck = certs("ops", "stuck", token=tokens["operator"])
    assert stuck.code == 0, stuck
    row, stranded = stuck.out.splitlines()[1:]
    assert row.split()[:3] == [command_id, "claim", "REJECTED"]
    assert stranded.startswith(f"stranded by claim {command_id}: the production allocation ")
    (allocation,) = certs("--json", "ops", "stuck", token=tokens["operator"]).json()["items"][0][
        "stranded"
    ]
    assert allocation["slice_id"] == whole and allocation["transaction_id"] in stranded
    only = certs("--json", "ops", "stuck", "--status", "REJECTED", token=tokens["operator"])
    assert [c["command_id"] for c in only.json()["items"]] == [command_id]


def test_an_in_doubt_command_is_listed_as_stuck_and_resolved_by_an_operator(
    stack, certs, tokens
) -> None:
    stack.registry.configure(ambiguous_rate=1.0)  # applied, then the call times out
    ran = certs(
        *issue_args("alice", PRODUCTION_GSRN, "production", 1000), "--wait", token=tokens["issuer"]
    )
    assert ran.code == 1
    command_id = ran.fields["command"]
    assert ran.fields["status"] == "IN_DOUBT"
    assert f"certs ops resolve {command_id}" in ran.err_lines[-1]
    stack.registry.configure(ambiguous_rate=0.0)

    stuck = certs("ops", "stuck", "--status", "IN_DOUBT", token=tokens["operator"])
    assert stuck.code == 0
    row = one_row(stuck)
    assert row.split()[:3] == [command_id, "issue", "IN_DOUBT"]
    assert certs("ops", "stuck", "--older-than", "3600", token=tokens["operator"]).out == (
        "no stuck commands\n"
    )

    refused = certs("ops", "stuck", token=tokens["alice"])
    assert refused.code == 1
    line = one_error_line(refused)
    assert line.startswith("error 403 Forbidden: ")

    resolved = certs(
        "ops",
        "resolve",
        command_id,
        "--outcome",
        "committed",
        "--reason",
        "the registry shows it",
        token=tokens["operator"],
    )
    assert resolved.code == 0, resolved
    assert resolved.fields["status"] == "COMMITTED"
    assert certs("--json", "show", command_id, token=tokens["issuer"]).json()["status"] == (
        "COMMITTED"
    )

    reconciled = certs("ops", "reconcile", token=tokens["operator"])
    assert reconciled.code == 0
    assert reconciled.out.startswith("reconciliation pass complete")
    assert certs("ops", "reconcile", token=tokens["issuer"]).code == 1


# --- the progress display ---------------------------------------------------------------------


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_rewrites_one_line_on_a_terminal_and_prints_each_step_once_elsewhere() -> None:
    terminal, log = Terminal(), io.StringIO()
    for stream in (terminal, log):
        progress = Progress(stream)
        for text, key in [("SENDING 0.1 s", "S"), ("SENDING 0.2 s", "S"), ("DONE 0.3 s", "D")]:
            progress.show(text, key=key)
        progress.done()
    assert terminal.getvalue() == "\rSENDING 0.1 s\rSENDING 0.2 s\rDONE 0.3 s   \n"
    assert log.getvalue() == "SENDING 0.1 s\nDONE 0.3 s\n"
