"""What each `certs` command does: one or a few API calls, then a short answer.

Each takes a `Context` and its parsed arguments and returns the exit code. Errors from the API
are raised, and `__main__` turns them into one line on stderr and an exit code.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from certs_cli import metering
from certs_cli.api import ApiError, Client, Unavailable, describe_problem
from certs_cli.render import Output

OK, REFUSED, USAGE, UNAVAILABLE, TIMED_OUT = 0, 1, 2, 3, 4
INTERRUPTED = 130  # Ctrl-C: the command goes on in the service
TERMINAL = ("COMMITTED", "REJECTED")
STOPS_WAITING = (*TERMINAL, "IN_DOUBT")  # IN_DOUBT waits for an operator, not for time


class UsageError(Exception):
    """The command line asks for something the CLI cannot do (exit code 2)."""


class Interrupted(Exception):
    """Ctrl-C while waiting, already explained (exit code 130)."""


@dataclass
class Context:
    api: Client
    out: Output
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep
    # Polling starts fast, so that a quick commit shows at once, and backs off to once a second.
    first_poll_s: float = 0.1
    slowest_poll_s: float = 1.0


# --- identity ---------------------------------------------------------------------------------


def token(ctx: Context, args: argparse.Namespace) -> int:
    _find_chalicelib()
    from chalicelib.api.auth import mint_token
    from chalicelib.settings import DEVELOPMENT_JWT_SECRET

    secret = args.secret or os.environ.get("CERTS_JWT_SECRET") or DEVELOPMENT_JWT_SECRET
    roles = list(dict.fromkeys(args.role or []))
    minted = mint_token(secret, args.owner, roles, lifetime_s=int(args.hours * 3600))
    if ctx.out.as_json:
        ctx.out.json({"token": minted, "owner": args.owner, "roles": roles})
    else:
        ctx.out.line(minted)
    return OK


def _find_chalicelib() -> None:
    """`pip install -e .` installs only certs_cli, and a console script does not start in the
    checkout's root; chalicelib (mint_token, the development secret) sits next to this package."""
    try:
        import chalicelib  # noqa: F401
    except ModuleNotFoundError:
        checkout = Path(__file__).resolve().parents[1]
        if not (checkout / "chalicelib").is_dir():
            raise UsageError(
                "minting a token needs chalicelib: run certs from the checkout"
            ) from None
        sys.path.append(str(checkout))


# --- writes -----------------------------------------------------------------------------------


def _key(args: argparse.Namespace) -> str:
    return args.key or str(uuid.uuid4())


@contextmanager
def _retry_hint(key: str) -> Iterator[None]:
    """Tags a failure with the request's Idempotency-Key: when it is unclear whether the
    request arrived (no answer, 5xx, Ctrl-C), sending it again with the same key is safe."""
    try:
        yield
    except (ApiError, Unavailable, KeyboardInterrupt) as exc:
        exc.idempotency_key = key
        raise


def _write(ctx: Context, args: argparse.Namespace, path: str, body: dict[str, Any]) -> int:
    key = _key(args)
    with _retry_hint(key):
        accepted = ctx.api.post(path, body, key)
    ctx.out.note(f"idempotency key {key}")
    if args.wait or getattr(args, "ids", False):
        return _wait(ctx, accepted["command_id"], args.timeout, ids=getattr(args, "ids", False))
    if ctx.out.as_json:
        ctx.out.json(accepted)
    else:
        ctx.out.line(
            f"{accepted['kind']} command {accepted['command_id']} {accepted['status']}"
            f" (certificate {accepted['certificate_id']})"
        )
        ctx.out.note(f"follow it with: certs show {accepted['command_id']} --wait")
    return OK


def issue(ctx: Context, args: argparse.Namespace) -> int:
    body = {
        "type": args.type,
        "gsrn": args.gsrn,
        "grid_area": args.grid_area,
        "start": args.start,
        "end": args.end,
        "quantity_wh": args.quantity,
        "owner": args.owner,
        "attributes": dict(args.attr or []),
    }
    return _write(ctx, args, "/v1/certificates", body)


def _ref_and_rest(words: list[str]) -> tuple[str, str, list[str]]:
    """`CERT:SLICE rest...` or `CERT SLICE rest...` (what `--ids` prints, or two words)."""
    if words and ":" in words[0]:
        certificate_id, _, slice_id = words[0].partition(":")
        rest = words[1:]
    elif len(words) >= 2:
        certificate_id, slice_id, rest = words[0], words[1], words[2:]
    else:
        raise UsageError("expected CERT:SLICE (or CERT SLICE)")
    if not certificate_id or not slice_id or ":" in slice_id:
        raise UsageError(f"expected CERT:SLICE, got {words[0]!r}")
    return certificate_id, slice_id, rest


def slice_(ctx: Context, args: argparse.Namespace) -> int:
    certificate_id, slice_id, rest = _ref_and_rest(args.words)
    try:
        quantities = [int(q) for q in rest]
    except ValueError:
        raise UsageError(f"quantities are whole Wh: {' '.join(rest)}") from None
    if not quantities:
        raise UsageError("give the parts' quantities in Wh, e.g. 600 400")
    body = {"slice_id": slice_id, "quantities_wh": quantities}
    return _write(ctx, args, f"/v1/certificates/{_segment(certificate_id)}/slices", body)


def transfer(ctx: Context, args: argparse.Namespace) -> int:
    words = [args.certificate] + ([args.slice] if args.slice else [])
    certificate_id, slice_id, rest = _ref_and_rest(words)
    if rest:
        raise UsageError(f"unexpected {' '.join(rest)!r}")
    body = {
        "certificate_id": certificate_id,
        "slice_id": slice_id,
        "receiver": args.to,
        "quantity_wh": args.quantity,
    }
    return _write(ctx, args, "/v1/transfers", body)


def claim(ctx: Context, args: argparse.Namespace) -> int:
    body = {
        "production": args.production,
        "consumption": args.consumption,
        "quantity_wh": args.quantity,
    }
    return _write(ctx, args, "/v1/claims", body)


def withdraw(ctx: Context, args: argparse.Namespace) -> int:
    return _write(ctx, args, f"/v1/certificates/{_segment(args.certificate)}/withdraw", {})


def issue_batch(ctx: Context, args: argparse.Namespace) -> int:
    try:
        rows = metering.read(Path(args.file))
    except metering.BadFile as exc:
        raise UsageError(str(exc)) from None
    chunks = metering.chunks(rows)
    # One key per chunk, derived from one shown key: the same file sent again with --key
    # replays every chunk the API already took instead of issuing it twice.
    base = _key(args)
    progress = ctx.out.progress()
    results: list[dict[str, Any]] = []
    accepted = 0
    for number, chunk in enumerate(chunks, start=1):
        progress.show(
            f"batch {number}/{len(chunks)}: sending lines {chunk[0].line}-{chunk[-1].line}"
            f" ({len(results) + len(chunk)} of {len(rows)} rows)",
            key=number,
        )
        try:
            with _retry_hint(base):
                answer = ctx.api.post(
                    "/v1/certificates/batch",
                    {"certificates": [r.certificate for r in chunk]},
                    f"{base}/{number}",
                )
        except (ApiError, Unavailable, KeyboardInterrupt):
            progress.done()
            _report_rows(ctx, results, len(rows))
            ctx.out.note(f"stopped at batch {number} of {len(chunks)} (line {chunk[0].line} on)")
            raise
        for item in answer["commands"]:
            row = chunk[item["index"]]
            if item.get("command"):
                accepted += 1
                results.append({"line": row.line, "command": item["command"]})
            else:
                results.append({"line": row.line, "error": item.get("error") or {}})
    progress.show(
        f"batch {len(chunks)}/{len(chunks)}: {len(rows)} rows sent,"
        f" {accepted} accepted, {len(rows) - accepted} refused",
        key="done",
    )
    progress.done()
    ctx.out.note(f"idempotency key {base} (send the same file with --key {base} to retry)")
    finished_ok = True
    if args.wait or getattr(args, "ids", False):
        finished_ok = _wait_for_rows(ctx, results, args.timeout)
    _report_rows(ctx, results, len(rows))
    if finished_ok is None:
        return TIMED_OUT
    return OK if accepted == len(rows) and finished_ok else REFUSED


def _wait_for_rows(ctx: Context, results: list[dict[str, Any]], timeout_s: float) -> bool | None:
    """Polls every accepted row's command until each is COMMITTED, REJECTED or IN_DOUBT, with
    one progress line for the whole batch. True when all committed; None on timeout."""
    open_rows = [r for r in results if "command" in r]
    progress = ctx.out.progress()
    started = ctx.clock()
    interval = ctx.first_poll_s
    try:
        while True:
            for r in open_rows:
                if r["command"]["status"] not in STOPS_WAITING:
                    r["command"] = ctx.api.get(
                        f"/v1/commands/{_segment(r['command']['command_id'])}"
                    )
            counts: dict[str, int] = {}
            for r in open_rows:
                counts[r["command"]["status"]] = counts.get(r["command"]["status"], 0) + 1
            elapsed = ctx.clock() - started
            summary = ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
            progress.show(f"batch: {summary} after {elapsed:.1f} s", key=summary)
            if all(r["command"]["status"] in STOPS_WAITING for r in open_rows):
                return all(r["command"]["status"] == "COMMITTED" for r in open_rows)
            if elapsed >= timeout_s:
                ctx.out.note(
                    f"timed out after {timeout_s:g} s; the commands go on (certs show ID --wait)"
                )
                return None
            ctx.sleep(min(interval, max(timeout_s - elapsed, 0)))
            interval = min(interval * 1.5, ctx.slowest_poll_s)
    except KeyboardInterrupt:
        progress.done()
        ctx.out.note("stopped waiting; the accepted commands go on in the service")
        raise Interrupted from None
    finally:
        progress.done()


def _report_rows(ctx: Context, results: list[dict[str, Any]], total: int) -> None:
    accepted = sum(1 for r in results if "command" in r)
    refused = len(results) - accepted
    if ctx.out.as_json:
        ctx.out.json({"accepted": accepted, "refused": refused, "rows": results})
        return
    for r in results:
        if "command" in r:
            c = r["command"]
            made = " ".join(
                f"{n['certificate_id']}:{n['slice_id']}" for n in c.get("new_slices", [])
            )
            ctx.out.line(
                f"line {r['line']}: {c['status'] if 'created_at' in c else 'accepted'},"
                f" command {c['command_id']} (certificate {c['certificate_id']})"
                + (f", slice {made}" if made else "")
            )
        else:
            ctx.out.line(f"line {r['line']}: refused, {describe_problem(r['error'])}")
    ctx.out.line(f"{accepted} accepted, {refused} refused, {total - len(results)} not sent")


# --- commands ---------------------------------------------------------------------------------


def show(ctx: Context, args: argparse.Namespace) -> int:
    if args.wait:
        return _wait(ctx, args.command, args.timeout)
    _print_command(ctx, ctx.api.get(f"/v1/commands/{_segment(args.command)}"))
    return OK


def _poll(ctx: Context, command_id: str, timeout_s: float) -> Iterator[tuple[dict, float]]:
    started = ctx.clock()
    interval = ctx.first_poll_s
    while True:
        view = ctx.api.get(f"/v1/commands/{_segment(command_id)}")
        elapsed = ctx.clock() - started
        yield view, elapsed
        if view["status"] in STOPS_WAITING or elapsed >= timeout_s:
            return
        ctx.sleep(min(interval, max(timeout_s - elapsed, 0)))
        interval = min(interval * 1.5, ctx.slowest_poll_s)


def _wait(ctx: Context, command_id: str, timeout_s: float, ids: bool = False) -> int:
    progress = ctx.out.progress()
    view: dict[str, Any] = {}
    shown = ""
    try:
        for view, elapsed in _poll(ctx, command_id, timeout_s):
            # A command of several transactions is ACCEPTED again between them: on the way,
            # that is progress, not a step back.
            label = view["status"]
            if label == "ACCEPTED" and (view.get("step") or shown != "ACCEPTED"):
                label = "SENDING"
            shown = label
            step = (
                f", {view['step']} of {view['steps']} transactions done"
                if view.get("steps", 0) > 1
                else ""
            )
            progress.show(
                f"command {command_id}: {label}{step} after {elapsed:.1f} s",
                key=(label, view.get("step")),
            )
    except KeyboardInterrupt:
        progress.done()
        ctx.out.note(
            f"stopped waiting; command {command_id} goes on in the service."
            f" Follow it with: certs show {command_id} --wait"
        )
        raise Interrupted from None
    finally:
        progress.done()
    if ids:
        ctx.out.line(
            " ".join(f"{s['certificate_id']}:{s['slice_id']}" for s in view.get("new_slices", []))
        )
        ctx.out.note(f"command {command_id} {view['status']}")
    else:
        _print_command(ctx, view)
    status = view["status"]
    if status == "COMMITTED":
        return OK
    if status == "REJECTED":
        ctx.out.note(f"command {command_id} was rejected: {view.get('error') or 'no reason given'}")
        return REFUSED
    if status == "IN_DOUBT":
        ctx.out.note(
            f"command {command_id} is in doubt: {view.get('error') or 'no reason given'};"
            f" an operator resolves it with: certs ops resolve {command_id} --outcome ..."
        )
        return REFUSED
    ctx.out.note(
        f"timed out after {timeout_s:g} s: command {command_id} is still {status};"
        f" wait again with: certs show {command_id} --wait"
    )
    return TIMED_OUT


def _print_command(ctx: Context, view: dict[str, Any]) -> None:
    if ctx.out.as_json:
        ctx.out.json(view)
        return
    slices = ", ".join(f"{s['certificate_id']}:{s['slice_id']}" for s in view.get("slices", []))
    ctx.out.fields(
        [
            ("command", view["command_id"]),
            ("kind", view["kind"]),
            ("status", view["status"]),
            ("certificate", view["certificate_id"]),
            ("done", None if view["status"] in TERMINAL else _done(view)),
            ("slices", slices),
            (
                "new slices",
                " ".join(
                    f"{s['certificate_id']}:{s['slice_id']}" for s in view.get("new_slices", [])
                ),
            ),
            ("quantity_wh", view.get("quantity_wh")),
            ("receiver", view.get("receiver")),
            ("created", view.get("created_at")),
            ("updated", view.get("updated_at")),
            ("reason", view.get("error")),
            # What an operator looks up in the registry before resolving an IN_DOUBT command.
            ("transactions", ", ".join(view.get("transaction_ids", []))),
        ]
    )


def _done(view: dict[str, Any]) -> str | None:
    steps = view.get("steps", 0)
    return f"{view['step']} of {steps} transactions" if steps else None


# --- reads ------------------------------------------------------------------------------------


def certificate(ctx: Context, args: argparse.Namespace) -> int:
    cert = ctx.api.get(f"/v1/certificates/{_segment(args.certificate)}")
    if ctx.out.as_json:
        ctx.out.json(cert)
        return OK
    attributes = " ".join(f"{k}={v}" for k, v in sorted(cert.get("attributes", {}).items()))
    ctx.out.fields(
        [
            ("certificate", cert["certificate_id"]),
            ("type", cert["type"]),
            ("status", cert["status"]),
            ("gsrn", cert["gsrn"]),
            ("grid_area", cert["grid_area"]),
            ("period", f"{cert['start']} to {cert['end']}"),
            ("quantity_wh", cert["quantity_wh"]),
            ("attributes", attributes),
        ]
    )
    ctx.out.line()
    if cert["slices"]:
        ctx.out.table(
            ["SLICE", "QUANTITY_WH", "STATE", "OWNER"],
            [(s["slice_id"], s["quantity_wh"], s["state"], s["owner"]) for s in cert["slices"]],
        )
    else:
        ctx.out.line("no slices of yours")
    return OK


def _pages(ctx: Context, path: str, query: dict[str, Any], everything: bool) -> dict[str, Any]:
    """One page, or with `everything` every page, following next_cursor."""
    page = ctx.api.get(path, query)
    items = list(page["items"])
    while everything and page.get("next_cursor"):
        page = ctx.api.get(path, {**query, "cursor": page["next_cursor"]})
        items.extend(page["items"])
    return {"items": items, "next_cursor": page.get("next_cursor")}


def _more(ctx: Context, page: dict[str, Any], what: str) -> None:
    if page["next_cursor"] and not ctx.out.as_json:
        ctx.out.note(f"more {what}: --cursor {page['next_cursor']}, or --all")


def list_certificates(ctx: Context, args: argparse.Namespace) -> int:
    query = {
        "type": args.type,
        "grid_area": args.grid_area,
        "start": args.start,
        "end": args.end,
        "limit": args.limit,
        "cursor": args.cursor,
    }
    page = _pages(ctx, "/v1/certificates", query, args.all)
    if ctx.out.as_json:
        ctx.out.json(page)
    elif not page["items"]:
        ctx.out.line("no certificates")
    else:
        ctx.out.table(
            [
                "CERTIFICATE",
                "TYPE",
                "AREA",
                "START",
                "END",
                "QUANTITY_WH",
                "AVAILABLE_WH",
                "STATUS",
            ],
            [
                (
                    c["certificate_id"],
                    c["type"],
                    c["grid_area"],
                    c["start"],
                    c["end"],
                    c["quantity_wh"],
                    sum(s["quantity_wh"] for s in c["slices"] if s["state"] == "available"),
                    c["status"],
                )
                for c in page["items"]
            ],
        )
    _more(ctx, page, "certificates")
    return OK


def aggregate(ctx: Context, args: argparse.Namespace) -> int:
    query = {
        "granularity": args.granularity,
        "type": args.type,
        "start": args.start,
        "end": args.end,
    }
    answer = ctx.api.get("/v1/certificates/aggregate", query)
    if ctx.out.as_json:
        ctx.out.json(answer)
        return OK
    buckets = answer["buckets"]
    if not buckets:
        ctx.out.line("nothing available")
        return OK
    ctx.out.table(
        [args.granularity.upper(), "AVAILABLE_WH", "CERTIFICATES"],
        [(b["start"], b["quantity_wh"], b["certificates"]) for b in buckets]
        + [
            (
                "total",
                sum(b["quantity_wh"] for b in buckets),
                sum(b["certificates"] for b in buckets),
            )
        ],
    )
    return OK


def matching_report(ctx: Context, args: argparse.Namespace) -> int:
    from certs_cli import matching

    query = {"start": args.start, "end": args.end, "granularity": args.granularity}
    report = ctx.api.get("/v1/reports/matching", query)
    if args.csv:
        if args.csv == "-":
            ctx.out.line(matching.csv_text(report).rstrip("\n"))
        else:
            Path(args.csv).write_text(matching.csv_text(report))
            ctx.out.note(f"wrote {args.csv}")
    if args.chart:
        hourly = (
            report
            if args.granularity == "hour"
            else ctx.api.get("/v1/reports/matching", {**query, "granularity": "hour"})
        )
        try:
            matching.draw_chart(hourly, Path(args.chart))
        except ModuleNotFoundError as exc:
            raise UsageError(
                f"--chart needs {exc.name}: pip install -r requirements-dev.txt"
            ) from None
        ctx.out.note(f"wrote {args.chart}")
    if args.csv == "-":
        return OK
    if ctx.out.as_json:
        ctx.out.json(report)
        return OK
    ctx.out.table(
        [
            args.granularity.upper(),
            "CONSUMPTION_WH",
            "MATCHED_WH",
            "UNMATCHED_WH",
            "COVERAGE",
            "UNCLAIMED_PRODUCTION_WH",
        ],
        matching.table_rows(report),
    )
    ctx.out.line()
    ctx.out.line(f"hourly matching score: {matching.pct(report.get('hourly_matching_score_pct'))}")
    for source in report["by_source"]:
        ctx.out.line(
            f"matched by technology {source['technology']}, fuel {source['fuel']}: "
            f"{source['matched_wh']} Wh"
        )
    return OK


def _command_table(ctx: Context, items: list[dict[str, Any]], last: tuple[str, Callable]) -> None:
    title, value = last
    ctx.out.table(
        ["COMMAND", "STATUS", "CERTIFICATE", "QUANTITY_WH", title, "UPDATED"],
        [
            (
                c["command_id"],
                c["status"],
                c["certificate_id"],
                c.get("quantity_wh"),
                value(c),
                c["updated_at"],
            )
            for c in items
        ],
    )


def _command_list(ctx: Context, args: argparse.Namespace, path: str, last: tuple) -> int:
    page = _pages(ctx, path, {"limit": args.limit, "cursor": args.cursor}, args.all)
    what = path.rsplit("/", 1)[-1]
    if ctx.out.as_json:
        ctx.out.json(page)
    elif not page["items"]:
        ctx.out.line(f"no {what}")
    else:
        _command_table(ctx, page["items"], last)
    _more(ctx, page, what)
    return OK


def own_commands(ctx: Context, args: argparse.Namespace) -> int:
    query = {
        "kind": args.kind,
        "status": args.status,
        "created_after": args.created_after,
        "created_before": args.created_before,
        "limit": args.limit,
        "cursor": args.cursor,
    }
    page = _pages(ctx, "/v1/commands", query, args.all)
    if ctx.out.as_json:
        ctx.out.json(page)
    elif not page["items"]:
        ctx.out.line("no commands")
    else:
        ctx.out.table(
            ["COMMAND", "KIND", "STATUS", "CERTIFICATE", "CREATED", "ERROR"],
            [
                (
                    c["command_id"],
                    c["kind"],
                    c["status"],
                    c["certificate_id"],
                    c["created_at"],
                    c.get("error") or "",
                )
                for c in page["items"]
            ],
        )
    _more(ctx, page, "commands")
    return OK


def transfers(ctx: Context, args: argparse.Namespace) -> int:
    def parties(c: dict[str, Any]) -> str:
        return f"{c.get('sender') or '?'} -> {c.get('receiver')}"

    return _command_list(ctx, args, "/v1/transfers", ("FROM -> TO", parties))


def claims(ctx: Context, args: argparse.Namespace) -> int:
    def consumption(c: dict[str, Any]) -> str | None:
        refs = c.get("slices") or []
        return refs[1]["certificate_id"] if len(refs) > 1 else None

    return _command_list(ctx, args, "/v1/claims", ("CONSUMPTION", consumption))


def health(ctx: Context, args: argparse.Namespace) -> int:
    answer = ctx.api.get("/v1/health")
    if ctx.out.as_json:
        ctx.out.json(answer)
    else:
        version = f", version {answer['version']}" if answer.get("version") else ""
        ctx.out.line(f"{answer['status']} (stage {answer['stage']}{version})")
        ctx.out.table(["DEPENDENCY", "STATE"], sorted(answer["dependencies"].items()))
    return OK if answer["status"] == "ok" else UNAVAILABLE


# --- operations -------------------------------------------------------------------------------


def ops_stuck(ctx: Context, args: argparse.Namespace) -> int:
    query = {"status": args.status, "older_than_s": args.older_than, "limit": args.limit}
    page = ctx.api.get("/v1/ops/commands", query)
    if ctx.out.as_json:
        ctx.out.json(page)
    elif not page["items"]:
        ctx.out.line("no stuck commands")
    else:
        ctx.out.table(
            ["COMMAND", "KIND", "STATUS", "CERTIFICATE", "UPDATED", "REASON", "TRANSACTIONS"],
            [
                (
                    c["command_id"],
                    c["kind"],
                    c["status"],
                    c["certificate_id"],
                    c["updated_at"],
                    c.get("error"),
                    " ".join(c.get("transaction_ids", [])),
                )
                for c in page["items"]
            ],
        )
        for c in page["items"]:
            for s in c.get("stranded", []):
                ctx.out.line(
                    f"stranded by claim {c['command_id']}: the {s['side']} allocation "
                    f"{s['allocation_id']} of slice {s['slice_id']} (certificate "
                    f"{s['certificate_id']}), committed in transaction {s['transaction_id']}:"
                    " the registry holds the slice allocated for good"
                )
        if any(c["status"] == "IN_DOUBT" for c in page["items"]):
            ctx.out.note(
                "before resolving: look each transaction id up in the registry"
                " (GetTransactionStatus; docs/REGISTRY.md, 'Before resolving a command'),"
                " then certs ops resolve COMMAND --outcome committed|rejected --reason WHAT-YOU-SAW"
            )
    return OK


def ops_resolve(ctx: Context, args: argparse.Namespace) -> int:
    view = ctx.api.post(
        f"/v1/ops/commands/{_segment(args.command)}/resolve",
        {"outcome": args.outcome, "reason": args.reason},
    )
    if not ctx.out.as_json:
        ctx.out.note(f"resolved as {args.outcome}")
    _print_command(ctx, view)
    return OK


def ops_reconcile(ctx: Context, args: argparse.Namespace) -> int:
    report = ctx.api.post("/v1/ops/reconcile", {})
    if ctx.out.as_json:
        ctx.out.json(report)
        return OK
    state = "complete" if report["complete"] else "stopped at its work bound (run it again)"
    ctx.out.line(f"reconciliation pass {state}, {report['started_at']} to {report['finished_at']}")
    actions = {k: v for k, v in report["actions"].items() if v}
    if actions:
        ctx.out.table(["ACTION", "COUNT"], sorted(actions.items()))
    else:
        ctx.out.line("nothing to do")
    return OK


def _segment(value: str) -> str:
    """An id as one path segment: a `/` or `?` in it must not reach another route."""
    return quote(value, safe="")
