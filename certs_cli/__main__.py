"""`certs`: the command line, and the one place that turns failures into exit codes.

Exit codes: 0 it worked; 1 the API refused (4xx), or a waited command ended REJECTED or
IN_DOUBT, or a batch had refused rows; 2 the command line is wrong; 3 no usable answer
(cannot connect, 5xx, no answer in time); 4 --wait gave up before the command finished (it goes
on); 130 Ctrl-C (a command already accepted goes on).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from certs_cli import __version__
from certs_cli import commands as c
from certs_cli.api import ApiError, Client, Unavailable
from certs_cli.render import Output

DEFAULT_URL = "http://127.0.0.1:8000"
# REJECTED: the claims that stranded an allocation, listed for good.
STUCK_STATUSES = ("ACCEPTED", "SENDING", "SENT", "IN_DOUBT", "REJECTED")
STATUSES = ("ACCEPTED", "SENDING", "SENT", "IN_DOUBT", "COMMITTED", "REJECTED")


def _attribute(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected key=value, got {text!r}")
    return key, value


def _slice_ref(text: str) -> dict[str, str]:
    certificate_id, sep, slice_id = text.partition(":")
    if not sep or not certificate_id or not slice_id or ":" in slice_id:
        raise argparse.ArgumentTypeError(f"expected CERTIFICATE:SLICE, got {text!r}")
    return {"certificate_id": certificate_id, "slice_id": slice_id}


def _global_options(with_defaults: bool) -> argparse.ArgumentParser:
    """The options every command takes, before or after its name (`certs --json list` and
    `certs list --json`); on subcommands they default to SUPPRESS so as not to hide the
    value given before the name."""
    options = argparse.ArgumentParser(add_help=False)

    def default(value):
        return value if with_defaults else argparse.SUPPRESS

    options.add_argument(
        "--url",
        default=default(None),
        help=f"the API's base URL (env CERTS_URL, else {DEFAULT_URL})",
    )
    options.add_argument("--token", default=default(None), help="a bearer token (env CERTS_TOKEN)")
    options.add_argument(
        "--json",
        action="store_true",
        default=default(False),
        help="print the API's JSON answers as they are, for scripts",
    )
    return options


def _write_options() -> argparse.ArgumentParser:
    options = argparse.ArgumentParser(add_help=False)
    options.add_argument("--key", help="the Idempotency-Key (a new uuid4 when absent)")
    options.add_argument(
        "--wait", action="store_true", help="wait until the command is terminal or in doubt"
    )
    options.add_argument("--timeout", type=float, default=60.0, help="seconds to wait (60)")
    options.add_argument(
        "--ids",
        action="store_true",
        help="wait, then print only the CERT:SLICE ids of the slices it made, on one line "
        "(for scripts: set -- $(certs slice ... --ids))",
    )
    return options


def _page_options() -> argparse.ArgumentParser:
    options = argparse.ArgumentParser(add_help=False)
    options.add_argument("--limit", type=int, help="items per page (the API's default is 50)")
    options.add_argument("--cursor", help="the next_cursor of a previous page")
    options.add_argument("--all", action="store_true", help="follow next_cursor to the end")
    return options


def parser() -> argparse.ArgumentParser:
    common = _global_options(with_defaults=False)
    write = _write_options()
    pages = _page_options()
    top = argparse.ArgumentParser(
        prog="certs",
        description="A client for the Certificates Domain API.",
        epilog="Exit codes: 0 done; 1 refused by the API, or the command ended REJECTED or "
        "IN_DOUBT; 2 usage; 3 API unreachable or failing; 4 --wait timed out (the command "
        "goes on); 130 Ctrl-C (an accepted command goes on).",
        parents=[_global_options(with_defaults=True)],
    )
    top.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = top.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, run, summary: str, *parents: argparse.ArgumentParser, into=sub):
        p = into.add_parser(name, help=summary, description=summary, parents=[common, *parents])
        if run is not None:
            p.set_defaults(run=run)
        return p

    p = command("token", c.token, "mint a local HS256 token (embedded stack and tests)")
    p.add_argument("--owner", required=True, help="the owner id (the token's sub)")
    p.add_argument("--role", action="append", choices=["issuer", "operator"])
    p.add_argument(
        "--secret", help="the HS256 secret (env CERTS_JWT_SECRET, else the development one)"
    )
    p.add_argument("--hours", type=float, default=12.0, help="lifetime in hours (12)")

    p = command("issue", c.issue, "issue one certificate (issuer)", write)
    p.add_argument("--type", required=True, choices=["production", "consumption"])
    p.add_argument("--gsrn", required=True, help="the metering point, 18 digits")
    p.add_argument("--grid-area", required=True, help="e.g. DK1")
    p.add_argument(
        "--start", required=True, help="RFC 3339 on a quarter hour, e.g. 2026-06-01T10:00:00Z"
    )
    p.add_argument(
        "--end",
        required=True,
        help="RFC 3339, 15 min to 1 h after --start; both on a quarter hour (:00, :15, :30, :45)",
    )
    p.add_argument("--quantity", required=True, type=int, help="Wh")
    p.add_argument("--owner", required=True)
    p.add_argument("--attr", action="append", type=_attribute, metavar="KEY=VALUE")

    p = command(
        "issue-batch",
        c.issue_batch,
        "issue certificates from a CSV of metering data, 100 per request (issuer)",
        write,
    )
    p.add_argument(
        "file", help="CSV: type,gsrn,grid_area,start,end,quantity_wh,owner[,attr:<key>...]"
    )

    p = command("slice", c.slice_, "slice one of your slices into parts", write)
    p.add_argument(
        "words", nargs="+", metavar="CERT:SLICE QUANTITY_WH", help="(or CERT SLICE QUANTITY_WH...)"
    )

    p = command("transfer", c.transfer, "transfer a slice, or part of one", write)
    p.add_argument("certificate", metavar="CERT:SLICE", help="(or CERT SLICE)")
    p.add_argument("slice", nargs="?", help=argparse.SUPPRESS)
    p.add_argument("--to", required=True, help="the receiving owner")
    p.add_argument("--quantity", required=True, type=int, help="Wh")

    p = command("claim", c.claim, "claim production against consumption", write)
    p.add_argument("--production", required=True, type=_slice_ref, metavar="CERT:SLICE")
    p.add_argument("--consumption", required=True, type=_slice_ref, metavar="CERT:SLICE")
    p.add_argument("--quantity", required=True, type=int, help="Wh")

    p = command("withdraw", c.withdraw, "withdraw a certificate (issuer)", write)
    p.add_argument("certificate")

    p = command("show", c.show, "show a command, or --wait until it is terminal")
    p.add_argument("command")
    p.add_argument("--wait", action="store_true", help="poll until COMMITTED, REJECTED or IN_DOUBT")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds to wait (60)")

    p = command("cert", c.certificate, "show a certificate with your slices")
    p.add_argument("certificate")

    p = command("list", c.list_certificates, "list your certificates, newest first", pages)
    p.add_argument("--type", choices=["production", "consumption"])
    p.add_argument("--grid-area")
    p.add_argument("--start", help="RFC 3339")
    p.add_argument("--end", help="RFC 3339")

    p = command("aggregate", c.aggregate, "available quantity per time bucket")
    p.add_argument("--granularity", default="day", choices=["hour", "day", "week", "month"])
    p.add_argument("--type", choices=["production", "consumption"])
    p.add_argument("--start", help="RFC 3339")
    p.add_argument("--end", help="RFC 3339")

    p = command(
        "matching",
        c.matching_report,
        "how much of your consumption your claims cover (hourly matching)",
    )
    p.add_argument("--start", required=True, help="RFC 3339, e.g. 2026-06-01T00:00:00Z")
    p.add_argument("--end", required=True, help="RFC 3339, after --start")
    p.add_argument("--granularity", default="day", choices=["hour", "day", "month"])
    p.add_argument("--csv", metavar="FILE", help="also write the buckets as CSV (- for stdout)")
    p.add_argument(
        "--chart",
        metavar="FILE",
        help="also draw a PNG: daily coverage and the hour-of-day profile (needs matplotlib)",
    )

    p = command(
        "commands",
        c.own_commands,
        "the commands you made (every kind), newest first: follow a batch without its ids",
        pages,
    )
    p.add_argument("--kind", choices=["issue", "slice", "transfer", "claim", "withdraw", "unclaim"])
    p.add_argument("--status", choices=STATUSES)
    p.add_argument("--created-after", metavar="TIME", help="RFC 3339, inclusive")
    p.add_argument("--created-before", metavar="TIME", help="RFC 3339, exclusive")

    command("transfers", c.transfers, "your transfers, sent and received", pages)
    command("claims", c.claims, "your claims", pages)
    command("health", c.health, "the state of each dependency of the API")

    ops = command("ops", None, "operator commands").add_subparsers(
        dest="operation", required=True, metavar="OPERATION"
    )
    p = command("stuck", c.ops_stuck, "commands that are stuck", into=ops)
    p.add_argument("--status", choices=STUCK_STATUSES)
    p.add_argument("--older-than", type=float, default=0, metavar="SECONDS")
    p.add_argument("--limit", type=int)

    p = command("resolve", c.ops_resolve, "resolve an IN_DOUBT command", into=ops)
    p.add_argument("command")
    p.add_argument("--outcome", required=True, choices=["committed", "rejected"])
    p.add_argument("--reason", required=True, help="what the registry showed, for the audit")

    command("reconcile", c.ops_reconcile, "run one reconciliation pass now", into=ops)
    return top


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = parser().parse_args(argv)
    except SystemExit as exc:  # argparse: --help (0) or a usage error (2)
        return exc.code if isinstance(exc.code, int) else c.USAGE
    url = args.url or os.environ.get("CERTS_URL") or DEFAULT_URL
    if not url.startswith(("http://", "https://")):
        print(f"certs: error: --url must start with http:// or https://: {url!r}", file=sys.stderr)
        return c.USAGE
    token = args.token or os.environ.get("CERTS_TOKEN")
    out = Output(as_json=args.json)
    context = c.Context(api=Client(url, token), out=out)
    try:
        return args.run(context, args)
    except c.UsageError as exc:
        out.note(f"certs: error: {exc}")
        return c.USAGE
    except ApiError as exc:
        if out.as_json:  # scripts get the problem body itself, on stdout
            out.json({"status": exc.status, **exc.problem})
        out.note(exc.line())
        if exc.status == 401 and not token:
            out.note(
                "no token: set CERTS_TOKEN or pass --token (certs token --owner ... mints one)"
            )
        if exc.status < 500:
            return c.REFUSED
        _retry_hint(out, exc)
        return c.UNAVAILABLE
    except Unavailable as exc:
        out.note(str(exc))
        _retry_hint(out, exc)
        return c.UNAVAILABLE
    except c.Interrupted:
        return c.INTERRUPTED
    except KeyboardInterrupt as exc:
        out.note("interrupted")
        _retry_hint(out, exc)
        return c.INTERRUPTED


def _retry_hint(out: Output, exc: BaseException) -> None:
    """After a write whose fate is unknown: the same key makes sending it again safe."""
    key = getattr(exc, "idempotency_key", None)
    if key and getattr(exc, "may_have_arrived", True):
        out.note(f"the request may have arrived: retry with --key {key} so that it counts once")


if __name__ == "__main__":
    sys.exit(main())
