"""The README's walk-through, run as written, top to bottom, on a fresh stack.

The shell blocks of "The command-line client" and "A session with curl" are taken from the
README itself and run by bash with `set -eu` (a command that fails stops the run), in a fresh
directory whose `.venv` is this interpreter's environment and with this checkout on
PYTHONPATH, against a stack started as `make run` starts it. The one change: the stack's port
is a free one, so `127.0.0.1:8000` in the README becomes that address.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from devstack.stack import free_port
from tests.test_devstack import healthy

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def _blocks(heading: str) -> list[str]:
    start = README.index(f"\n## {heading}\n")
    end = README.find("\n## ", start + 1)
    return re.findall(r"```sh\n(.*?)```", README[start:end], flags=re.S)


@pytest.fixture(scope="module")
def fresh_stack():
    port = free_port()
    env = {**os.environ, "PORT": str(port)}
    env.pop("CERTS_JWT_SECRET", None)
    process = subprocess.Popen(
        [sys.executable, "-m", "devstack"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    if not healthy(url, process, 90):
        process.kill()
        pytest.fail(f"the stack did not come up: {process.stdout.read()}")
    yield url
    process.terminate()
    process.communicate(timeout=30)


def _run(block: str, url: str, tmp_path: Path) -> subprocess.CompletedProcess:
    (tmp_path / ".venv").symlink_to(sys.prefix, target_is_directory=True)
    script = "set -eu\n" + block.replace("http://127.0.0.1:8000", url)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for name in ("CERTS_URL", "CERTS_TOKEN", "CERTS_JWT_SECRET"):
        env.pop(name, None)
    return subprocess.run(
        ["bash", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )


def test_the_cli_walk_through_runs_as_written(fresh_stack, tmp_path: Path) -> None:
    [block] = _blocks("The command-line client")
    done = _run(block, fresh_stack, tmp_path)
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr}"
    out = done.stdout
    assert "COMMITTED" in out  # transfer and claim waited for
    assert "no stuck commands" in out
    assert out.count("status") >= 2 and "REJECTED" not in out


@pytest.mark.skipif(shutil.which("jq") is None, reason="the curl session uses jq")
def test_the_curl_session_runs_as_written(fresh_stack, tmp_path: Path) -> None:
    [block] = _blocks("A session with curl")
    done = _run(block, fresh_stack, tmp_path)
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr}"
    answers, text, decoder = [], done.stdout, json.JSONDecoder()  # curl adds no newlines
    while (start := text.find("{")) != -1:
        answer, end = decoder.raw_decode(text, start)
        answers.append(answer)
        text = text[end:]
    assert answers[0]["status"] == "ACCEPTED"  # the issue
    assert not [a for a in answers if "status" in a and isinstance(a["status"], int)], answers
    transfer = next(a for a in answers if a.get("kind") == "transfer")
    assert transfer["status"] == "ACCEPTED"
