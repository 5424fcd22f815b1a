"""`make run` as a newcomer uses it: the embedded stack started as a process of its own, driven
through real HTTP and through the `certs` CLI, then stopped with Ctrl-C (SIGINT)."""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from chalicelib.api.auth import mint_token
from chalicelib.settings import DEVELOPMENT_JWT_SECRET
from devstack.stack import free_port

ROOT = Path(__file__).resolve().parent.parent
ISSUER = mint_token(DEVELOPMENT_JWT_SECRET, "issuer-dk", ["issuer"])
ALICE = mint_token(DEVELOPMENT_JWT_SECRET, "alice")


def _moto_servers(parent: int | None = None) -> set[tuple[int, int]]:
    """Moto server processes (of one parent, when given: tests may run stacks side by side),
    each as (pid, start time): pids wrap at 32768 here, and a pid once a stack's server may by
    now be a server of a test running beside this one, which must not be killed or counted."""
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes()
                status = (entry / "status").read_text()
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            ppid = int(next(ln.split()[1] for ln in status.splitlines() if ln.startswith("PPid:")))
            started = int(stat.rsplit(")", 1)[1].split()[19])  # field 22, after the comm
            if b"devstack.motoserver" in cmdline and parent in (None, ppid):
                found.add((int(entry.name), started))
    return found


def _kill(servers: set[tuple[int, int]]) -> None:
    for pid, _ in servers:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def healthy(url: str, process: subprocess.Popen, within_s: float) -> bool:
    """Wait for the stack at `url` to answer its health check; False if it stopped first or
    took longer than `within_s`."""
    deadline = time.monotonic() + within_s
    while process.poll() is None and time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url + "/v1/health", timeout=2) as answer:
                if json.loads(answer.read())["status"] == "ok":
                    return True
        except OSError:
            pass
        time.sleep(0.2)
    return False


@contextlib.contextmanager
def _started_stack(
    protocol: str, *args: str
) -> Iterator[tuple[str, subprocess.Popen, float, set[int]]]:
    """`make run` in a process of its own: its URL, the process, its start-up time and its moto
    servers (killed at the end, with the stack, whatever state a test left it in)."""
    port = free_port()
    env = {**os.environ, "PORT": str(port)}
    env.pop("CERTS_JWT_SECRET", None)
    if protocol == "grpc":
        # Issuer keys of our own, as the README documents: the verifying simulator of the stack
        # must take the same ones (it once derived its own, and refused every issue).
        env["CERTS_REGISTRY_ISSUER_KEYS"] = json.dumps(
            {area: base64.b64encode(os.urandom(32)).decode() for area in ("DK1", "DK2")}
        )
    process = subprocess.Popen(
        [sys.executable, "-m", "devstack", "--registry-protocol", protocol, *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    started = time.monotonic()
    if not healthy(url, process, 60):
        process.kill()
        pytest.fail(f"the stack did not come up: {process.stdout.read()}")
    servers = _moto_servers(process.pid)
    try:
        yield url, process, time.monotonic() - started, servers
    finally:
        if process.poll() is None:
            process.kill()
        # Only this stack's servers (orphaned if it was killed): tests running beside this
        # one start moto servers of their own.
        _kill(servers & _moto_servers())


@pytest.fixture(scope="module", params=["http", "grpc"])
def running_stack(request):
    """The stack with the registry simulator over HTTP (plain transactions), and over gRPC
    (the real wire format: proofs and signatures, checked by the verifying simulator)."""
    with _started_stack(request.param) as stack:
        yield stack


def _http(url: str, method: str, path: str, token: str, body=None, key=None):
    headers = {"Authorization": f"Bearer {token}"}
    data = None
    if body is not None:
        headers["Content-Type"] = "application/json"
        data = json.dumps(body).encode()
    if key:
        headers["Idempotency-Key"] = key
    request = urllib.request.Request(url + path, data=data, headers=headers, method=method)
    for _ in range(10):
        try:
            with urllib.request.urlopen(request, timeout=30) as answer:
                return answer.status, json.loads(answer.read())
        except urllib.error.HTTPError as error:
            # 503 + Retry-After: a dependency was busy (a loaded machine); as API.md says, a
            # client retries, with the same Idempotency-Key for writes.
            if error.code != 503:
                raise
            time.sleep(float(error.headers.get("Retry-After", "1")) / 5)
    raise AssertionError(f"{method} {path} answered 503 ten times")


def _wait(url: str, command_id: str, token: str) -> dict:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        _, view = _http(url, "GET", f"/v1/commands/{command_id}", token)
        if view["status"] in ("COMMITTED", "REJECTED", "IN_DOUBT"):
            return view
        time.sleep(0.2)
    raise AssertionError(f"command {command_id} did not settle")


def _certs(url: str, token: str, *args: str) -> dict:
    done = subprocess.run(
        [sys.executable, "-m", "certs_cli", "--url", url, "--token", token, "--json", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def _available(url: str, certificate_id: str, token: str) -> dict[int, str]:
    _, view = _http(url, "GET", f"/v1/certificates/{certificate_id}", token)
    return {s["quantity_wh"]: s["slice_id"] for s in view["slices"] if s["state"] == "available"}


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_make_run_with_two_registries_claims_across_them(protocol: str) -> None:
    """Issue 17: `make run ARGS="--registries 2"`. A DK1 production slice claimed against a
    DK2 consumption slice reaches COMMITTED, and each certificate shows its own registry (that
    each registry takes only its own side is tests/test_federation.py's)."""
    # over gRPC, each grid area also names a chronicler, which signs each side's allocation
    chronicled = ("--chronicler", "DK1,DK2") if protocol == "grpc" else ()
    with contextlib.ExitStack() as stack:
        url, process, _, _ = stack.enter_context(
            _started_stack(protocol, "--registries", "2", *chronicled)
        )
        refs = {}
        for area, type_, gsrn in (
            ("DK1", "production", "571313000000000011"),
            ("DK2", "consumption", "571313000000000012"),
        ):
            body = {
                "type": type_,
                "gsrn": gsrn,
                "grid_area": area,
                "start": "2026-06-01T10:00:00Z",
                "end": "2026-06-01T11:00:00Z",
                "quantity_wh": 1000,
                "owner": "alice",
            }
            _, accepted = _http(url, "POST", "/v1/certificates", ISSUER, body, f"issue-{area}")
            assert _wait(url, accepted["command_id"], ISSUER)["status"] == "COMMITTED"
            certificate_id = accepted["certificate_id"]
            _, view = _http(url, "GET", f"/v1/certificates/{certificate_id}", ALICE)
            assert view["registry"] == area.lower(), view
            refs[type_] = {
                "certificate_id": certificate_id,
                "slice_id": view["slices"][0]["slice_id"],
            }
        claim = {
            "production": refs["production"],
            "consumption": refs["consumption"],
            "quantity_wh": 400,
        }
        status, accepted = _http(url, "POST", "/v1/claims", ALICE, claim, "claim-across")
        assert status == 202, accepted
        done = _wait(url, accepted["command_id"], ALICE)
        assert done["status"] == "COMMITTED", done
        for type_ in refs:
            _, view = _http(url, "GET", f"/v1/certificates/{refs[type_]['certificate_id']}", ALICE)
            assert "claimed" in {s["state"] for s in view["slices"]}, view
        assert process.poll() is None


def test_make_run_serves_the_whole_pipeline_over_http_and_the_cli(running_stack) -> None:
    url, _, startup_s, _ = running_stack
    assert startup_s < 60
    issue = {
        "type": "production",
        "gsrn": "571313000000000001",
        "grid_area": "DK1",
        "start": "2026-06-01T10:00:00Z",
        "end": "2026-06-01T11:00:00Z",
        "quantity_wh": 1000,
        "owner": "alice",
    }
    status, production = _http(url, "POST", "/v1/certificates", ISSUER, issue, "issue-p")
    assert status == 202
    consumption = _certs(
        url,
        ISSUER,
        "issue",
        "--type",
        "consumption",
        "--gsrn",
        "571313000000000002",
        "--grid-area",
        "DK1",
        "--start",
        "2026-06-01T10:00:00Z",
        "--end",
        "2026-06-01T11:00:00Z",
        "--quantity",
        "300",
        "--owner",
        "alice",
        "--wait",
    )
    assert _wait(url, production["command_id"], ISSUER)["status"] == "COMMITTED"
    assert _wait(url, consumption["command_id"], ISSUER)["status"] == "COMMITTED"

    cert = production["certificate_id"]
    (whole,) = _available(url, cert, ALICE).values()
    sliced = _certs(url, ALICE, "slice", cert, whole, "700", "300", "--wait")
    assert _wait(url, sliced["command_id"], ALICE)["status"] == "COMMITTED"
    parts = _available(url, cert, ALICE)

    moved = _certs(
        url, ALICE, "transfer", cert, parts[700], "--to", "bob", "--quantity", "200", "--wait"
    )
    assert _wait(url, moved["command_id"], ALICE)["status"] == "COMMITTED"

    (consumed,) = _available(url, consumption["certificate_id"], ALICE).values()
    status, claimed = _http(
        url,
        "POST",
        "/v1/claims",
        ALICE,
        {
            "production": {"certificate_id": cert, "slice_id": parts[300]},
            "consumption": {"certificate_id": consumption["certificate_id"], "slice_id": consumed},
            "quantity_wh": 300,
        },
        "claim-1",
    )
    assert status == 202
    assert _wait(url, claimed["command_id"], ALICE)["status"] == "COMMITTED"
    assert sorted(_available(url, cert, ALICE)) == [500]


def _start_failing(
    env_update: dict[str, str], *args: str
) -> tuple[subprocess.CompletedProcess, set]:
    # Only the settings under test: a CERTS_ variable of the caller's shell would add its own line.
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("CERTS_")}
    env = {**inherited, "PORT": str(free_port()), **env_update}
    process = subprocess.Popen(
        [sys.executable, "-m", "devstack", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    seen: set[tuple[int, int]] = set()
    while process.poll() is None:  # every moto server it ever had
        seen |= _moto_servers(process.pid)
        time.sleep(0.05)
    out, err = process.communicate()
    return subprocess.CompletedProcess(process.args, process.returncode, out, err), seen


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"CERTS_REGISTRY_TIMEOUT_S": "100"}, "CERTS_REGISTRY_TIMEOUT_S"),
        ({"CERTS_REGISTRY_TIMEOUT_S": "ten"}, "CERTS_REGISTRY_TIMEOUT_S"),
        ({"CERTS_REGISTRY": "grpc"}, "CERTS_REGISTRY_GRPC_TARGET"),
        ({"CERTS_AUTH": "oidc"}, "CERTS_OIDC_ISSUER"),
        ({"CERTS_CHRONICLERS": "{DK1"}, "CERTS_CHRONICLERS"),
        ({"CERTS_CHRONICLERS": '{"DK1": {"target": "h:1"}}'}, "CERTS_CHRONICLERS"),
    ],
)
def test_a_settings_error_is_one_line_naming_it_and_starts_nothing(env, named) -> None:
    done, servers = _start_failing(env)
    assert done.returncode == 2, done.stderr
    assert named in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr  # not a traceback
    assert not servers


def test_a_chronicler_without_the_grpc_registry_is_one_line_and_starts_nothing() -> None:
    done, servers = _start_failing({}, "--chronicler", "DK1")
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip() == "make run: --chronicler needs --registry-protocol grpc"
    assert not servers


def test_a_start_that_fails_after_the_moto_servers_leaves_none(monkeypatch) -> None:
    """A failure inside Stack.start, once the moto servers run, stops them."""
    from devstack import resources
    from devstack.stack import Stack, StackOptions

    def refuse(*_args):
        raise RuntimeError("no tables today")

    monkeypatch.setattr(resources, "create", refuse)
    stack = Stack(StackOptions(port=free_port()))
    with pytest.raises(RuntimeError, match="no tables today"):
        stack.start()
    assert len(stack.moto_pids) == 2  # it did get that far
    time.sleep(0.2)
    assert not set(stack.moto_pids.values()) & {pid for pid, _ in _moto_servers(os.getpid())}


def test_verbose_puts_access_lines_on_stdout_and_readable_transitions_on_stderr(
    tmp_path: Path,
) -> None:
    """`make run ARGS=--verbose`: one `access` line per request on stdout, the command's
    transitions on stderr as readable lines; JSON lines only with --log-json."""
    port = free_port()
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("CERTS_")}
    out, err = tmp_path / "out", tmp_path / "err"
    with out.open("w") as stdout, err.open("w") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "devstack", "--verbose"],
            cwd=ROOT,
            env={**inherited, "PORT": str(port)},
            stdout=stdout,
            stderr=stderr,
            text=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        assert healthy(url, process, 90), err.read_text()
        status, accepted = _http(
            url,
            "POST",
            "/v1/certificates",
            ISSUER,
            {
                "type": "production",
                "gsrn": "571313000000000777",
                "grid_area": "DK1",
                "start": "2026-06-01T10:00:00Z",
                "end": "2026-06-01T11:00:00Z",
                "quantity_wh": 10,
                "owner": "alice",
            },
            key="verbose-1",
        )
        assert status == 202
        assert _wait(url, accepted["command_id"], ISSUER)["status"] == "COMMITTED"
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(timeout=30)
    stdout_lines, stderr_lines = out.read_text().splitlines(), err.read_text().splitlines()
    access = [line for line in stdout_lines if line.startswith("access ")]
    assert any('"POST /v1/certificates HTTP/1.1" 202' in line for line in access), stdout_lines
    assert not any("HTTP/1.1" in line for line in stderr_lines), stderr_lines
    assert not [line for line in stderr_lines if line.lstrip().startswith("{")]
    moves = [line for line in stderr_lines if line.startswith("command.transition ")]
    assert any(
        f"command_id={accepted['command_id']}" in line and "to=COMMITTED" in line for line in moves
    ), stderr_lines


def test_log_json_gives_the_log_lines_as_json() -> None:
    from devstack.__main__ import log_formatter

    record = logging.LogRecord(
        "certificates", logging.INFO, __file__, 1, json.dumps({"event": "x", "a": 1}), (), None
    )
    assert json.loads(log_formatter(as_json=True).format(record)) == {"event": "x", "a": 1}
    assert log_formatter(as_json=False).format(record) == "x a=1"
    metric = json.dumps({"_aws": {"Timestamp": 1}, "Stage": "local", "registry_errors": 0})
    record.msg = metric
    assert log_formatter(as_json=False).format(record) == "metrics Stage=local registry_errors=0"
    plain = logging.LogRecord("other", logging.WARNING, __file__, 1, "plain words", (), None)
    assert log_formatter(as_json=False).format(plain) == "plain words"


def test_a_misspelt_variable_is_reported() -> None:
    from chalicelib.settings import unknown_variables

    found = unknown_variables({"CERTS_REGISTRY_TIMOUT_S": "5", "CERTS_URL": "x", "PATH": "/"})
    assert found == ["CERTS_REGISTRY_TIMOUT_S (did you mean CERTS_REGISTRY_TIMEOUT_S?)"]


def test_moto_servers_die_with_a_stack_killed_9() -> None:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "devstack"],
        cwd=ROOT,
        env={**os.environ, "PORT": str(port), "CERTS_REGISTRY_TIMOUT_S": "5"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        output = ""
        while "Ctrl-C stops everything" not in (line := process.stdout.readline()):
            assert line and time.monotonic() < deadline, "the stack did not come up"
            output += line
        assert "CERTS_REGISTRY_TIMOUT_S (did you mean CERTS_REGISTRY_TIMEOUT_S?)" in output
        servers = _moto_servers(process.pid)
        assert len(servers) == 2
    finally:
        process.kill()
        process.wait()
    deadline = time.monotonic() + 10
    while servers & _moto_servers() and time.monotonic() < deadline:
        time.sleep(0.1)
    left = servers & _moto_servers()
    _kill(left)
    assert not left


RACERS = 10


def _answer_status(url: str, path: str, token: str, body: dict, key: str) -> int:
    """The status of one POST, whatever it is (a 409 is an answer here, not an error)."""
    request = urllib.request.Request(
        url + path,
        data=json.dumps(body).encode(),
        headers={
            "Authorization": f"Bearer {token}",
            "Content-Type": "application/json",
            "Idempotency-Key": key,
        },
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as answer:
            return answer.status
    except urllib.error.HTTPError as error:
        return error.code


def test_of_ten_concurrent_transfers_of_one_slice_exactly_one_is_accepted(running_stack) -> None:
    """The black-box race through `make run`: the stack's moto servers must decide each
    conditional write as DynamoDB does, or two transfers reserve the same slice (I4).
    CERTS_RACE_RUNS sets the number of runs (the issue's check by hand is 20 on a busy machine)."""
    url = running_stack[0]
    runs = int(os.environ.get("CERTS_RACE_RUNS", "3"))
    answers = []
    for run in range(runs):
        issue = {
            "type": "production",
            "gsrn": "571313000000000003",
            "grid_area": "DK1",
            "start": f"2026-07-{run % 28 + 1:02d}T10:00:00Z",
            "end": f"2026-07-{run % 28 + 1:02d}T11:00:00Z",
            "quantity_wh": 1000,
            "owner": "alice",
        }
        _, issued = _http(url, "POST", "/v1/certificates", ISSUER, issue, f"race-issue-{run}")
        assert _wait(url, issued["command_id"], ISSUER)["status"] == "COMMITTED"
        cert = issued["certificate_id"]
        (slice_id,) = _available(url, cert, ALICE).values()
        start = threading.Barrier(RACERS)

        def transfer(i: int, cert=cert, slice_id=slice_id, start=start, run=run) -> int:
            body = {
                "certificate_id": cert,
                "slice_id": slice_id,
                "receiver": f"r{i}",
                "quantity_wh": 1000,
            }
            start.wait()
            return _answer_status(url, "/v1/transfers", ALICE, body, f"race-{run}-{i}")

        with ThreadPoolExecutor(RACERS) as pool:
            statuses = sorted(pool.map(transfer, range(RACERS)))
        answers.append(statuses)
    assert answers == [[202] + [409] * (RACERS - 1)] * runs


def test_ctrl_c_stops_the_stack_and_its_moto_servers() -> None:
    with _started_stack("http") as (_, process, _, servers):  # its own: it stops it
        assert len(servers) == 2  # DynamoDB and SQS, one process each
        process.send_signal(signal.SIGINT)
        output, _ = process.communicate(timeout=30)
        assert process.returncode == 0, output
        assert "stopped." in output
        time.sleep(0.5)
        assert not (servers & _moto_servers())  # before the clean-up would kill them
