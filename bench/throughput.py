"""Section 3: commands/s through real HTTP, from accept to COMMITTED, on the embedded stack.

`devstack.stack.Stack` as `make run` starts it (two moto servers, the threaded Chalice server,
queue pollers, the registry simulator server), with the registry at zero latency and commit
delay. The book is grown in steps (1,000, 10,000, 100,000 certificates) and at each size two
workloads run from a separate client process (HTTP/1.1 keep-alive, `--clients` connections):

- issue: new certificates (POST /v1/certificates);
- transfer: whole-slice transfers of certificates picked at random from the whole book.

Seeding is fast and layout-blind: one certificate is issued through the API, committed and
reconciled, then every item the table holds for it is cloned with new ids (certificate,
command, slice, GSRN, derived exactly as the service derives them) and written with
BatchWriteItem straight into the moto server. The registry learns of the seeded certificates a
transfer will touch through the simulator's `inject` (their Issued transaction, built by the
service's own builder).

Throughput = commands / (last COMMITTED time - first request time), the times taken from the
commands themselves (created_at, updated_at). Latency = updated_at - created_at. The CPU
seconds each process used per command (this process: API + workers + registry; each moto
server) are read from /proc, so the figures can be judged on a busy machine too: the load
average is recorded, and `cpu_bound_cmd_s` is what the CPU figures allow on an idle 2-core
machine (no process can use more than one core; all together no more than two).

    .venv/bin/python -m bench.throughput [--sizes 1000,10000,100000] [--commands 300]
"""

from __future__ import annotations

import argparse
import base64
import concurrent.futures
import http.client
import json
import multiprocessing
import os
import queue
import random
import statistics
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

SECRET = "bench-secret-that-is-long-enough-for-hs256"
TICKS = os.sysconf("SC_CLK_TCK")


# --- the client process --------------------------------------------------------------------------


def _client_run(url: str, requests: list[tuple[str, str, dict]], clients: int) -> dict:
    """Send the requests over `clients` keep-alive connections; runs in its own process.
    Returns the answers and the CPU seconds this process used for them."""
    cpu = time.process_time()
    host, port = url.removeprefix("http://").split(":")
    lock = threading.Lock()
    todo = list(reversed(requests))
    out: list[dict] = []

    def loop() -> None:
        conn = http.client.HTTPConnection(host, int(port), timeout=60)
        while True:
            with lock:
                if not todo:
                    break
                path, body, headers = todo.pop()
            sent = time.time()
            for attempt in range(3):
                try:
                    conn.request("POST", path, body=body, headers=headers)
                    answer = conn.getresponse()
                    data = answer.read()
                    break
                except (OSError, http.client.HTTPException):
                    conn.close()
                    conn = http.client.HTTPConnection(host, int(port), timeout=60)
                    if attempt == 2:
                        raise
            record = {"status": answer.status, "sent": sent, "answered": time.time()}
            try:
                record["command_id"] = json.loads(data)["command_id"]
            except (ValueError, KeyError):
                record["body"] = data[:300].decode(errors="replace")
            with lock:
                out.append(record)
        conn.close()

    threads = [threading.Thread(target=loop) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return {"records": out, "cpu_s": time.process_time() - cpu}


# --- CPU accounting --------------------------------------------------------------------------


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime


class CpuMeter:
    def __init__(self, moto_pids: dict[str, int]) -> None:
        self.pids = {"stack": os.getpid(), **{f"moto_{k}": v for k, v in moto_pids.items()}}

    def read(self) -> dict[str, float]:
        return {name: _cpu_seconds(pid) for name, pid in self.pids.items()}


def busy_seconds() -> float:
    """CPU seconds the whole machine has been busy (all cores), from /proc/stat."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(f) for f in fields[:8])
    return (user + nice + system + irq + softirq + steal) / TICKS


def load_average() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


# --- seeding -----------------------------------------------------------------------------------


class Book:
    """Seeds the stack's table with clones of one settled certificate and its items."""

    def __init__(self, stack: Any, post: Callable, wait: Callable) -> None:
        import boto3

        from chalicelib import domain
        from chalicelib.registry.builder import PlainTransactionBuilder

        self.stack = stack
        self.domain = domain
        self.db = boto3.Session(region_name=stack.settings.region).client("dynamodb")
        self.table = stack.settings.table_name
        self.builder = PlainTransactionBuilder(stack.settings.registry_name)
        self.simulator = stack._registry.simulator  # Stack keeps no public handle on it
        self.size = 0
        # Clone numbers not yet transferred (their commands are rebuilt when picked: holding
        # 100,000 models here would slow this process, the API's, down with its own garbage).
        self.seeded: list[int] = []
        # The template: one certificate issued through the API, committed and reconciled.
        answer = post([_issue_request(0)])[0]
        wait([answer["command_id"]])
        stack.reconcile()
        self.template = stack.services.book.get_command(answer["command_id"])
        cert = stack.services.book.get_certificate(self.template.certificate_id)
        self.template_ids = {
            "cert": cert.certificate_id,
            "command": self.template.command_id,
            "slice": next(iter(cert.slices)),
            "gsrn": cert.gsrn,
        }
        self.template_items = [
            json.dumps(item)
            for item in self._scan()
            if any(v in json.dumps(item) for v in self.template_ids.values())
        ]
        self.size = 1
        self.items_per_certificate = len(self.template_items)

    def _scan(self) -> list[dict]:
        items, args = [], {"TableName": self.table}
        while True:
            page = self.db.scan(**args)
            items += page["Items"]
            if "LastEvaluatedKey" not in page:
                return items
            args["ExclusiveStartKey"] = page["LastEvaluatedKey"]

    def _clone(self, i: int, items_too: bool = True) -> tuple[list[dict], Any]:
        spec = self.template.issue
        gsrn = f"57{i:016d}"
        cert_id = self.domain.certificate_id_for(gsrn, spec.type, spec.period.start)
        command_id = self.domain.command_id_for(self.template.caller, f"seed-{i}")
        ids = {
            "cert": cert_id,
            "command": command_id,
            "slice": self.domain.slice_id_for(command_id, 0),
            "gsrn": gsrn,
        }
        items = []
        for text in self.template_items if items_too else ():
            for name, old in self.template_ids.items():
                text = text.replace(old, ids[name])
            items.append(json.loads(text))
        if items_too:
            return items, None
        command = self.template.model_copy(
            update={
                "command_id": command_id,
                "certificate_id": cert_id,
                "issue": spec.model_copy(update={"gsrn": gsrn}),
            }
        )
        return items, command

    def grow_to(self, size: int, writers: int = 2) -> float:
        """Clone certificates until the book holds `size`; returns the seconds it took. Two
        writers keep the moto server busy while the next batches are built."""
        started = time.perf_counter()
        batches: queue.Queue = queue.Queue(maxsize=64)
        failures: list[BaseException] = []

        def write() -> None:
            while (items := batches.get()) is not None:
                try:
                    self._write(items)
                except BaseException as exc:  # reported once the writers are done
                    failures.append(exc)

        threads = [threading.Thread(target=write, daemon=True) for _ in range(writers)]
        for t in threads:
            t.start()
        batch: list[dict] = []
        for i in range(self.size, size):
            items, _command = self._clone(i)
            self.seeded.append(i)
            batch += items
            while len(batch) >= 25:
                batches.put(batch[:25])
                batch = batch[25:]
        if batch:
            batches.put(batch)
        for _ in threads:
            batches.put(None)
        for t in threads:
            t.join()
        if failures:
            raise failures[0]
        self.size = max(self.size, size)
        return time.perf_counter() - started

    def _write(self, items: list[dict]) -> None:
        pending = {self.table: [{"PutRequest": {"Item": item}} for item in items]}
        while pending:
            pending = self.db.batch_write_item(RequestItems=pending).get("UnprocessedItems")

    def register(self, commands: list[Any]) -> None:
        """Tell the registry about seeded certificates (their Issued transaction)."""
        for command in commands:
            built = self.builder.build(command, {})
            receipt = self.simulator.inject(base64.b64decode(built.transactions[0]))
            if receipt.status.value not in ("COMMITTED", "FINALIZED"):
                raise RuntimeError(f"the registry refused a seeded certificate: {receipt}")


# --- requests ----------------------------------------------------------------------------------


def _headers(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}


_TOKENS: dict[str, str] = {}


def _token(owner: str, *roles: str) -> str:
    if owner not in _TOKENS:
        from chalicelib.api.auth import mint_token

        _TOKENS[owner] = mint_token(SECRET, owner, roles)
    return _TOKENS[owner]


def _issue_request(n: int) -> tuple[str, str, dict]:
    body = {
        "type": "production",
        "gsrn": f"58{n:016d}",
        "grid_area": "DK1",
        "start": "2026-06-01T10:00:00Z",
        "end": "2026-06-01T11:00:00Z",
        "quantity_wh": 1000,
        "owner": "alice",
        "attributes": {"technology": "T010000", "fuel": "F01040100"},
    }
    headers = {**_headers(_token("issuer-dk", "issuer")), "Idempotency-Key": f"issue-{n}"}
    return "/v1/certificates", json.dumps(body), headers


def _transfer_request(command: Any, domain: Any) -> tuple[str, str, dict]:
    body = {
        "certificate_id": command.certificate_id,
        "slice_id": domain.slice_id_for(command.command_id, 0),
        "receiver": "bob",
        "quantity_wh": command.issue.quantity_wh,
    }
    owner = command.issue.owner
    headers = {**_headers(_token(owner)), "Idempotency-Key": f"transfer-{uuid.uuid4()}"}
    return "/v1/transfers", json.dumps(body), headers


# --- one workload ------------------------------------------------------------------------------


class Runner:
    def __init__(self, stack: Any, clients: int) -> None:
        self.stack = stack
        self.clients = clients
        self.pool = concurrent.futures.ProcessPoolExecutor(
            1, mp_context=multiprocessing.get_context("spawn")
        )
        self.pool.submit(time.time).result()  # start the client process before any timing
        self.cpu = CpuMeter(stack.moto_pids)
        import boto3

        self.sqs = boto3.Session(region_name=stack.settings.region).client("sqs")

    def post(self, requests: list[tuple[str, str, dict]]) -> list[dict]:
        answer = self.pool.submit(_client_run, self.stack.api_url, requests, self.clients)
        result = answer.result()
        self.client_cpu_s = result["cpu_s"]
        return result["records"]

    def get(self, path: str, token: str) -> dict:
        host, port = self.stack.api_url.removeprefix("http://").split(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=30)
        conn.request("GET", path, headers={"Authorization": f"Bearer {token}"})
        answer = conn.getresponse()
        data = json.loads(answer.read())
        conn.close()
        return data

    def queue_idle(self) -> bool:
        attributes = self.sqs.get_queue_attributes(
            QueueUrl=self.stack.settings.queue_url,
            AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
        )["Attributes"]
        return all(int(v) == 0 for v in attributes.values())

    def wait(self, command_ids: list[str], timeout_s: float = 600) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            time.sleep(0.25)
            if self.queue_idle():
                return
        raise RuntimeError(f"{len(command_ids)} commands not processed in {timeout_s} s")

    def views(self, command_ids: list[str], token: str) -> list[dict]:
        return [self.get(f"/v1/commands/{c}", token) for c in command_ids]

    def workload(self, name: str, requests: list[tuple[str, str, dict]], token: str) -> dict:
        cpu_before = self.cpu.read()
        load_before = load_average()
        busy_before, wall_before = busy_seconds(), time.monotonic()
        answers = self.post(requests)
        refused = [a for a in answers if a["status"] != 202]
        ids = [a["command_id"] for a in answers if a["status"] == 202]
        self.wait(ids)
        cpu_after = self.cpu.read()
        ours = sum(cpu_after[k] - cpu_before[k] for k in cpu_after) + self.client_cpu_s
        others = (busy_seconds() - busy_before - ours) / (time.monotonic() - wall_before)
        views = self.views(ids, token)
        statuses = Counter(v["status"] for v in views)
        created = [datetime.fromisoformat(v["created_at"]).timestamp() for v in views]
        updated = [datetime.fromisoformat(v["updated_at"]).timestamp() for v in views]
        first = min(a["sent"] for a in answers)
        elapsed = max(updated) - first
        latencies = sorted(u - c for c, u in zip(created, updated, strict=True))
        accepts = sorted(a["answered"] - a["sent"] for a in answers)
        cpu = {k: (cpu_after[k] - cpu_before[k]) / len(ids) * 1000 for k in cpu_after}
        bound = min(1000 / max(cpu.values()), 2 * 1000 / sum(cpu.values()))
        return {
            "workload": name,
            "commands": len(ids),
            "refused": len(refused),
            "refusals": refused[:3],
            "statuses": dict(statuses),
            "seconds": elapsed,
            "commands_per_s": len(ids) / elapsed,
            "accept_p50_ms": 1000 * statistics.median(accepts),
            "accept_p99_ms": 1000 * _pct(accepts, 0.99),
            "latency_p50_s": statistics.median(latencies),
            "latency_p99_s": _pct(latencies, 0.99),
            "cpu_ms_per_command": cpu,
            "cpu_bound_cmd_s": bound,
            "load_average": (load_before + load_average()) / 2,
            # Cores busy with other work than this benchmark (other users of the machine).
            "other_cores_busy": max(0.0, others),
        }

    def close(self) -> None:
        self.pool.shutdown()


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# --- the run -------------------------------------------------------------------------------


def run(
    sizes=(1000, 10_000, 100_000),
    commands: int = 300,
    clients: int = 12,
    workers: int = 4,
    workloads=("issue", "transfer"),
    log: Callable = print,
) -> dict[str, Any]:
    from chalicelib import domain
    from chalicelib.registry.sandbox.simulator import SimulatorConfig
    from devstack.stack import Stack, StackOptions, free_port

    os.environ["CERTS_JWT_SECRET"] = SECRET
    stack = Stack(
        StackOptions(
            port=free_port(),
            workers=workers,
            reconcile_every_s=10**9,  # passes are run and timed here, between workloads
            registry=SimulatorConfig(queries=True, latency_s=0.0, commit_delay_s=0.0),
            jwt_secret=SECRET,
        )
    )
    stack.start()
    runner = None
    results: dict[str, Any] = {
        "clients": clients,
        "workers": workers,
        "commands": commands,
        "registry": "simulator over HTTP, queries, zero latency and commit delay",
        "sizes": [],
    }
    try:
        runner = Runner(stack, clients)
        book = Book(stack, runner.post, runner.wait)
        results["items_per_certificate"] = book.items_per_certificate
        rng = random.Random(1)
        # Untimed: the first requests of a fresh stack pay for building clients, validators
        # and moto's backends, which would be charged to the first size's figure.
        warm_up = [_issue_request(i + 1) for i in range(min(60, commands))]
        runner.workload("warm-up", warm_up, _token("issuer-dk", "issuer"))
        issued = len(warm_up)
        for size in sizes:
            seconds = book.grow_to(size)
            log(f"throughput: book grown to {size} certificates in {seconds:.1f} s")
            entry: dict[str, Any] = {"certificates": size, "seed_seconds": seconds, "runs": []}
            for name in workloads:
                if name == "issue":
                    requests = [_issue_request(issued + i + 1) for i in range(commands)]
                    issued += commands
                    token = _token("issuer-dk", "issuer")
                else:
                    chosen = set(rng.sample(range(len(book.seeded)), min(commands, size - 1)))
                    picked = [book._clone(book.seeded[i], False)[1] for i in sorted(chosen)]
                    book.seeded = [c for i, c in enumerate(book.seeded) if i not in chosen]
                    book.register(picked)
                    requests = [_transfer_request(c, domain) for c in picked]
                    token = _token("alice")
                result = runner.workload(name, requests, token)
                entry["runs"].append(result)
                log(
                    f"throughput: {size} certificates, {name}: "
                    f"{result['commands_per_s']:.1f} commands/s "
                    f"(p50 {result['latency_p50_s']:.2f} s, "
                    f"other work {result['other_cores_busy']:.2f} cores, "
                    f"CPU ms/command {_fmt(result['cpu_ms_per_command'])})"
                )
            started = time.perf_counter()
            try:
                actions = stack.reconcile()
                entry["reconcile_actions"] = actions.get("actions", actions)
            except Exception as exc:  # reported, and the next size still runs
                entry["reconcile_error"] = f"{type(exc).__name__}: {exc}"
            entry["reconcile_pass_s"] = time.perf_counter() - started
            log(
                f"throughput: reconciler pass at {size}: {entry['reconcile_pass_s']:.1f} s"
                + (f" FAILED: {entry['reconcile_error']}" if "reconcile_error" in entry else "")
            )
            results["sizes"].append(entry)
        results["registry_duplicates"] = len(stack._registry.simulator.duplicates())
    finally:
        if runner:
            runner.close()
        stack.stop()
    first = {r["workload"]: r["commands_per_s"] for r in results["sizes"][0]["runs"]}
    last = {r["workload"]: r["commands_per_s"] for r in results["sizes"][-1]["runs"]}
    results["ratio_last_to_first"] = {k: last[k] / first[k] for k in first if k in last}
    # The same ratio from CPU per command, which the machine's other load hardly moves.
    first = {r["workload"]: r["cpu_bound_cmd_s"] for r in results["sizes"][0]["runs"]}
    last = {r["workload"]: r["cpu_bound_cmd_s"] for r in results["sizes"][-1]["runs"]}
    results["cpu_ratio_last_to_first"] = {k: last[k] / first[k] for k in first if k in last}
    return results


def _fmt(cpu: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.0f}" for k, v in cpu.items())


def table(result: dict[str, Any]) -> str:
    lines = [
        "| book (certificates) | workload | commands/s | accept p50 / p99 ms "
        "| accept->COMMITTED p50 / p99 s | CPU ms per command (stack, moto ddb, moto sqs) "
        "| idle-machine bound cmd/s | cores busy with other work |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for entry in result["sizes"]:
        for r in entry["runs"]:
            cpu = r["cpu_ms_per_command"]
            lines.append(
                f"| {entry['certificates']:,} | {r['workload']} | **{r['commands_per_s']:.1f}** "
                f"| {r['accept_p50_ms']:.0f} / {r['accept_p99_ms']:.0f} "
                f"| {r['latency_p50_s']:.2f} / {r['latency_p99_s']:.2f} "
                f"| {cpu.get('stack', 0):.0f}, {cpu.get('moto_dynamodb', 0):.0f}, "
                f"{cpu.get('moto_sqs', 0):.0f} | {r['cpu_bound_cmd_s']:.0f} "
                f"| {r.get('other_cores_busy', float('nan')):.2f} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.throughput", description=__doc__)
    parser.add_argument("--sizes", default="1000,10000,100000")
    parser.add_argument("--commands", type=int, default=300, help="commands per workload")
    parser.add_argument("--clients", type=int, default=12, help="concurrent HTTP connections")
    parser.add_argument("--workers", type=int, default=4, help="queue pollers (Lambda workers)")
    parser.add_argument("--out", type=Path, default=Path("bench/results/throughput.json"))
    args = parser.parse_args(argv)
    sizes = tuple(int(s) for s in args.sizes.split(","))
    result = run(sizes, args.commands, args.clients, args.workers)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1, sort_keys=True))
    print(table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
