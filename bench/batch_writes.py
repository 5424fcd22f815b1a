"""A batch issuance's certificate writes: parallel conditional puts against TransactWriteItems.

Issue 16 wants a batch of up to 100 issuances to be one command whose certificates are written
by conditional puts (the "issued once" guard stays per certificate), measured against one
TransactWriteItems. Both are run here on moto, over the book's own table (its indexes as
infra/ declares them), with the certificate items exactly as the DynamoDB book writes them at
accept (`DynamoBook._certificate_item`, guard `attribute_not_exists(pk)`), and the capacity
computed by bench/capacity.py (transactional writes count twice, as DynamoDB charges them):

- all new: `--size` certificates, none issued before;
- one issued already: the same batch, one of whose identities was issued before (a metering
  reading sent twice).

Puts: one conditional PutItem per certificate, `--threads` in flight; each answers for itself,
so a duplicate is one ConditionalCheckFailed (that item's 409) and the others are written.
Transaction: one TransactWriteItems of the same puts (at most 100 per call); a duplicate
cancels it whole (nothing written, each item's reason in CancellationReasons), and the batch
is sent again without the refused item. Wall time on moto is shown as a ratio of the two, not
as a latency: moto runs in this process and is not DynamoDB.

    .venv/bin/python -m bench.batch_writes [--size 100] [--reps 5] [--threads 16]
        [--out bench/results/batch_writes.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError
from moto import mock_aws

from bench.capacity import Meter, Tally
from bench.inprocess import local_aws_environment
from chalicelib.adapters.dynamo import DynamoBook
from chalicelib.domain import Certificate, CertificateType, Period, certificate_id_for
from devstack.resources import table_definition

TABLE = "bench-batch-writes"
REGION = "eu-west-1"
TRANSACTION_LIMIT = 100  # items per TransactWriteItems
GUARD = "attribute_not_exists(pk)"
PRICE_PATH = Path(__file__).resolve().parent / "prices.json"


def certificates(batch: int, size: int) -> list[Certificate]:
    """One batch's certificates as `holds.certificate_to_issue` makes them: hourly readings of
    `size` metering points, each with the attributes an issuing body sends."""
    start = datetime(2026, 1, 1, tzinfo=UTC) + timedelta(hours=batch)
    made = []
    for i in range(size):
        gsrn = f"5713130000{i:08d}"
        made.append(
            Certificate(
                certificate_id=certificate_id_for(gsrn, CertificateType.PRODUCTION, start),
                type=CertificateType.PRODUCTION,
                gsrn=gsrn,
                grid_area="DK1",
                period=Period(start=start, end=start + timedelta(hours=1)),
                quantity_wh=1_000_000 + i,
                owner=f"owner-{i % 7}",
                attributes={"technology": "T020002", "fuel": "F01040100"},
                issued_by="issuer-dk",
                issue_command=f"batch-{batch}.{i}",
                created_at=start,
            )
        )
    return made


class Writer:
    def __init__(self, client: Any, book: DynamoBook, threads: int) -> None:
        self._db = client
        self._book = book
        self._threads = threads

    def puts(self, batch: list[Certificate]) -> list[str]:
        """Ids refused as issued already (the others are written)."""

        def put(cert: Certificate) -> str | None:
            try:
                self._db.put_item(
                    TableName=TABLE,
                    Item=self._book._certificate_item(cert),
                    ConditionExpression=GUARD,
                )
                return None
            except ClientError as exc:
                if exc.response["Error"]["Code"] != "ConditionalCheckFailedException":
                    raise
                return cert.certificate_id

        with ThreadPoolExecutor(self._threads) as pool:
            return [r for r in pool.map(put, batch) if r is not None]

    def transaction(self, batch: list[Certificate]) -> list[str]:
        """Ids refused as issued already: a cancelled transaction is sent again without them."""
        refused: list[str] = []
        for first in range(0, len(batch), TRANSACTION_LIMIT):
            chunk = batch[first : first + TRANSACTION_LIMIT]
            while chunk:
                try:
                    self._db.transact_write_items(
                        TransactItems=[
                            {
                                "Put": {
                                    "TableName": TABLE,
                                    "Item": self._book._certificate_item(cert),
                                    "ConditionExpression": GUARD,
                                }
                            }
                            for cert in chunk
                        ]
                    )
                    break
                except ClientError as exc:
                    if exc.response["Error"]["Code"] != "TransactionCanceledException":
                        raise
                    reasons = exc.response.get("CancellationReasons") or []
                    failed = {
                        i
                        for i, r in enumerate(reasons)
                        if r.get("Code") == "ConditionalCheckFailed"
                    }
                    if not failed:
                        raise  # a conflict with another transaction, not a duplicate
                    refused += [chunk[i].certificate_id for i in sorted(failed)]
                    chunk = [c for i, c in enumerate(chunk) if i not in failed]
        return refused


def _check(
    book: DynamoBook, batch: list[Certificate], refused: list[str], scenario: str, phase: str
) -> None:
    """Every certificate of the batch is in the table, and only the duplicate was refused."""
    written = book.get_certificates([c.certificate_id for c in batch])
    assert len(written) == len(batch), (phase, len(written))
    expected = [batch[len(batch) // 2].certificate_id] if scenario == "one issued already" else []
    assert refused == expected, (phase, refused)


def _figures(tally: Tally, certificates: int, seconds: list[float], wcu_price: float) -> dict:
    per = 1 / certificates
    return {
        "aws_calls_per_certificate": tally.aws_calls * per,
        "calls": dict(tally.calls),
        "wcu_per_certificate": tally.wcu * per,
        "wcu_table_per_certificate": tally.wcu_table * per,
        "wcu_index_per_certificate": {k: v * per for k, v in sorted(tally.wcu_index.items())},
        "failed_conditions": tally.failed_conditions,
        "usd_per_million_certificates": tally.wcu * per * wcu_price,
        "moto_ms_per_batch": statistics.median(seconds) * 1000,
    }


def run(size: int, reps: int, threads: int) -> dict[str, Any]:
    wcu_price = json.loads(PRICE_PATH.read_text())["prices"][
        "dynamodb_write_request_unit_per_million"
    ]["usd"]
    local_aws_environment()
    with mock_aws():
        session = boto3.Session(region_name=REGION)
        meter = Meter(boto3.Session(region_name=REGION))
        meter.attach(session, "bench")
        pool = Config(max_pool_connections=max(threads, 10))
        client = session.client("dynamodb", config=pool)
        client.create_table(TableName=TABLE, **table_definition())
        book = DynamoBook(client, TABLE)
        writer = Writer(client, book, threads)
        # Timed apart, unmetered: the meter reads every item before and after each write.
        unmetered = boto3.Session(region_name=REGION).client("dynamodb", config=pool)
        timed = Writer(unmetered, book, threads)
        batches = iter(range(10**6))
        results: dict[str, Any] = {}
        item_bytes = len(json.dumps(book._certificate_item(certificates(0, 1)[0])))
        for scenario in ("all new", "one issued already"):
            for method in ("puts", "transaction"):
                phase = f"{scenario}|{method}"
                seconds: list[float] = []
                refused_total = 0
                for _ in range(reps):
                    batch = certificates(next(batches), size)
                    if scenario == "one issued already":
                        with meter.measuring("setup"):
                            writer.puts(batch[size // 2 : size // 2 + 1])
                    with meter.measuring(phase):
                        refused = getattr(writer, method)(batch)
                    refused_total += len(refused)
                    _check(book, batch, refused, scenario, phase)
                    batch = certificates(next(batches), size)
                    if scenario == "one issued already":
                        timed.puts(batch[size // 2 : size // 2 + 1])
                    began = time.perf_counter()
                    refused = getattr(timed, method)(batch)
                    seconds.append(time.perf_counter() - began)
                    _check(book, batch, refused, scenario, phase)
                tally = meter.tally(phase, "bench")
                results[phase] = _figures(tally, size * reps, seconds, wcu_price) | {
                    "refused_per_batch": refused_total / reps
                }
                print(
                    f"  {scenario:20} {method:11} "
                    f"{results[phase]['aws_calls_per_certificate']:.2f} calls, "
                    f"{results[phase]['wcu_per_certificate']:.2f} WCU per certificate, "
                    f"moto {results[phase]['moto_ms_per_batch']:.0f} ms per batch",
                    flush=True,
                )
    return {
        "size": size,
        "reps": reps,
        "threads": threads,
        "certificate_item_json_bytes": item_bytes,
        "wcu_usd_per_million": wcu_price,
        "results": results,
    }


def table(data: dict[str, Any]) -> str:
    rows = [
        "| batch | written by | AWS calls per certificate | WCU per certificate (table + "
        "indexes) | USD per million certificates (writes) | moto ms per batch |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for phase, r in data["results"].items():
        scenario, method = phase.split("|")
        index = " + ".join(f"{v:.2f} {k}" for k, v in r["wcu_index_per_certificate"].items())
        rows.append(
            f"| {scenario} | {method} | {r['aws_calls_per_certificate']:.2f} | "
            f"{r['wcu_per_certificate']:.2f} ({r['wcu_table_per_certificate']:.2f} table"
            f"{' + ' + index if index else ''}) | {r['usd_per_million_certificates']:.2f} | "
            f"{r['moto_ms_per_batch']:.0f} |"
        )
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=100, help="certificates per batch")
    parser.add_argument("--reps", type=int, default=5, help="batches per method and scenario")
    parser.add_argument("--threads", type=int, default=16, help="puts in flight at once")
    parser.add_argument("--out", type=Path, default=None, help="write the figures as JSON here")
    args = parser.parse_args(argv)
    if not 2 <= args.size <= 1000 or args.reps < 1 or args.threads < 1:
        parser.error("--size must be 2-1000, --reps and --threads at least 1")
    print(f"batch writes: {args.size} certificates a batch, {args.reps} batches each", flush=True)
    data = run(args.size, args.reps, args.threads)
    print(table(data))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(data, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
