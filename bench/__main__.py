"""Run every benchmark of issue 8 and write the results table (`make bench`).

    .venv/bin/python -m bench                      # everything; updates bench/README.md
    .venv/bin/python -m bench --only calls,cost    # some sections
    .venv/bin/python -m bench --only calls,cost --format proto   # one transaction format
    .venv/bin/python -m bench --quick --out /tmp/b --no-readme   # tiny sizes (smoke)

Sections: calls (AWS calls and capacity per command), profile (where the time goes), cost
(USD per million, from calls and profile), scale (the worker in virtual time), throughput
(the embedded stack over HTTP). Each writes bench/results/<section>.json; the tables go to
bench/results/RESULTS.md and, between the markers, into bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import calls, cost, profile, scale, throughput

HERE = Path(__file__).resolve().parent
SECTIONS = ("calls", "profile", "cost", "scale", "throughput")
START, END = "<!-- results:start -->", "<!-- results:end -->"

# The targets.
MAX_CALLS_SINGLE = 6
MAX_WCU_SINGLE = 8
MAX_CALLS_PER_BATCHED = 1.5
# The USD targets per kind (issue 16) are in bench/cost.py (TARGETS): proto, queries, HTTP API.
MIN_COMMANDS_PER_S = 50.0
MIN_SIZE_RATIO = 0.8
MIN_BOUND_RATIO = 0.95
TARGET_SCENARIOS = ("registry-bound", "worker-bound", "balanced", "queries-mode")


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def _commit() -> str:
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "chalicelib", "app.py", "devstack", "infra"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        return head + (" + uncommitted changes" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


# --- targets -----------------------------------------------------------------------------------


def targets(results: dict[str, Any]) -> list[tuple[str, str, str, bool]]:
    """(target, measured, verdict text, met) rows for what was run."""
    rows: list[tuple[str, str, str, bool]] = []
    if "calls" in results:
        for mode, data in results["calls"]["modes"].items():
            if mode.endswith("no_queries"):
                continue  # the registry answers queries: its no-queries mode is a fallback
            kinds = data["kinds"]
            singles = {k: v for k, v in kinds.items() if k != "batch_issue"}
            if singles:
                worst_calls = max(singles.items(), key=lambda kv: kv[1]["total"]["aws_calls"])
                worst_wcu = max(singles.items(), key=lambda kv: kv[1]["total"]["wcu"])
                best = min(singles.items(), key=lambda kv: kv[1]["total"]["aws_calls"])
                calls_ok = worst_calls[1]["total"]["aws_calls"] <= MAX_CALLS_SINGLE
                wcu_ok = worst_wcu[1]["total"]["wcu"] <= MAX_WCU_SINGLE
                rows.append(
                    (
                        f"≤ {MAX_CALLS_SINGLE} AWS calls per single command ({mode})",
                        f"{best[1]['total']['aws_calls']:.1f} ({best[0]}) to "
                        f"{worst_calls[1]['total']['aws_calls']:.1f} ({worst_calls[0]})",
                        _verdict(worst_calls[1]["total"]["aws_calls"], MAX_CALLS_SINGLE, False),
                        calls_ok,
                    )
                )
                rows.append(
                    (
                        f"≤ {MAX_WCU_SINGLE} WCU per single command ({mode})",
                        f"up to {worst_wcu[1]['total']['wcu']:.0f} ({worst_wcu[0]}); issue "
                        f"{singles.get('issue', worst_wcu[1])['total']['wcu']:.0f}",
                        _verdict(worst_wcu[1]["total"]["wcu"], MAX_WCU_SINGLE, False),
                        wcu_ok,
                    )
                )
            if "batch_issue" in kinds:
                value = kinds["batch_issue"]["total"]["aws_calls"]
                rows.append(
                    (
                        f"≤ {MAX_CALLS_PER_BATCHED} AWS calls per batch-issued certificate "
                        f"({mode})",
                        f"{value:.2f} (+ {kinds['batch_issue']['esm']['aws_calls']:.2f} by the "
                        "event source mapping)",
                        _verdict(value, MAX_CALLS_PER_BATCHED, False),
                        value <= MAX_CALLS_PER_BATCHED,
                    )
                )
    if "cost" in results and "calls" in results:
        for r in cost.targets_rows(results["cost"], results["calls"]):
            rows.append(
                (
                    f"≤ {r['target']:g} USD per million, {r['kind']} ({r['mode']}, HTTP API)",
                    f"{r['http']:.2f} (REST API {r['rest']:.2f}"
                    + (f"; plain format {r['plain_http']:.2f}" if r["plain_http"] else "")
                    + ")",
                    _verdict(r["http"], r["target"], False),
                    r["met"],
                )
            )
    if "throughput" in results:
        tp = results["throughput"]
        for entry in tp["sizes"]:
            for run in entry["runs"]:
                value = run["commands_per_s"]
                rows.append(
                    (
                        f"≥ {MIN_COMMANDS_PER_S:g} commands/s, {run['workload']}, "
                        f"{entry['certificates']:,} certificates",
                        f"{value:.1f} measured ({run.get('other_cores_busy', 0):.2f} cores busy "
                        "with other work); "
                        f"CPU allows {run['cpu_bound_cmd_s']:.0f} on an idle machine",
                        _verdict(value, MIN_COMMANDS_PER_S, True),
                        value >= MIN_COMMANDS_PER_S,
                    )
                )
        for workload, ratio in tp.get("ratio_last_to_first", {}).items():
            sizes = tp["sizes"]
            by_cpu = tp.get("cpu_ratio_last_to_first", {}).get(workload)
            rows.append(
                (
                    f"{sizes[-1]['certificates']:,} / {sizes[0]['certificates']:,} "
                    f"certificates ≥ {MIN_SIZE_RATIO:g}, {workload}",
                    f"{ratio:.2f} measured"
                    + (f"; {by_cpu:.2f} from CPU per command" if by_cpu else ""),
                    _verdict(ratio, MIN_SIZE_RATIO, True),
                    ratio >= MIN_SIZE_RATIO,
                )
            )
    if "scale" in results:
        for r in results["scale"]["scenarios"]:
            name = r["scenario"]["name"]
            if name not in TARGET_SCENARIOS:
                continue
            ratio = r["ratio_to_bound"]
            ok = ratio >= MIN_BOUND_RATIO and r["duplicates"] == 0 and r["all_committed"]
            rows.append(
                (
                    f"≥ 95 % of min(C, W/L), none sent twice: {name}",
                    f"{ratio:.0%} ({r['saturation']['throughput_per_s']:.0f} of "
                    f"{r['bound_per_s']:.0f}/s), {r['duplicates']} sent twice",
                    "met" if ok else _verdict(ratio, MIN_BOUND_RATIO, True),
                    ok,
                )
            )
        if "danish" in results["scale"]:
            r = next(x for x in results["scale"]["scenarios"] if x["scenario"]["name"] == "danish")
            offered = r["steady"]["offered_per_s"]
            got = r["steady"]["throughput_per_s"]
            ok = got >= MIN_BOUND_RATIO * offered and r["duplicates"] == 0
            rows.append(
                (
                    "Danish case sustained (4,000/s at the simulated scale), none sent twice",
                    f"{got:.0f} of {offered:.0f}/s offered, p99 {r['steady']['latency_p99_s']:.1f} "
                    f"s, {r['duplicates']} sent twice",
                    "met" if ok else _verdict(got, MIN_BOUND_RATIO * offered, True),
                    ok,
                )
            )
    return rows


def _verdict(value: float, target: float, higher_is_better: bool) -> str:
    if (value >= target) if higher_is_better else (value <= target):
        return "met"
    factor = target / value if higher_is_better else value / target
    return f"NOT met: {factor:.2f}x off" if factor < 1.1 else f"NOT met: {factor:.1f}x off"


def targets_table(results: dict[str, Any]) -> str:
    lines = ["| target | measured | verdict |", "|---|---|---|"]
    for target, measured, verdict, _ok in targets(results):
        lines.append(
            f"| {target} | {measured} | {'**' + verdict + '**' if verdict != 'met' else verdict} |"
        )
    return "\n".join(lines)


# --- the report --------------------------------------------------------------------------------


def _carried(meta: dict[str, Any]) -> str:
    rerun = set(meta.get("rerun", meta["sections"]))
    older = [f"{s} ({meta['measured'][s]})" for s in meta.get("measured", {}) if s not in rerun]
    return f" Carried over from earlier runs: {', '.join(older)}." if older else ""


def report(results: dict[str, Any], meta: dict[str, Any]) -> str:
    parts = [
        f"Run {meta['finished']} on {meta['machine']}, code at {meta['commit']}, "
        f"{meta['minutes']:.1f} minutes, load average {meta['load_before']:.1f} at the start "
        f"(sections: {', '.join(meta.get('rerun', meta['sections']))}"
        f"{'; quick sizes' if meta['quick'] else ''})."
        + _carried(meta)
        + (f" {meta['note']}" if meta.get("note") else ""),
        "",
        "### Targets",
        "",
        targets_table(results),
    ]
    if "calls" in results:
        parts += [
            "",
            "### 1. AWS calls and capacity per command, accept to COMMITTED",
            "",
            "Our code's calls: accept (API) + worker + the reconciler's share per command "
            "(KMS and Secrets Manager included, in containers kept warm through the run). WCU "
            "and RCU computed by DynamoDB's rules from the requests and the stored items "
            "(bench/capacity.py); with small writes: the same writes if the stored "
            "transactions and sealed secrets were in items written once (one put each), the "
            "index entries likewise. KB written: the item sizes the writes were charged on, "
            "summed (of which the write-once parts). Deliveries: how often the worker got the "
            "message (a step waiting for its block is handed back and comes again). Registry "
            "tx: transactions sent, and their serialized bytes.",
            "",
            calls.table(results["calls"]),
            "",
            "Where they go (proto format, registry with queries, as a deployed stage runs):",
            "",
            calls.breakdown(results["calls"]),
        ]
        custody = calls.custody_table(results["calls"])
        if custody:
            parts += [
                "",
                "Custody per command (proto, queries): in containers kept warm (as above), and "
                "with a new container for every API request, worker invocation and reconciler "
                "pass (nothing cached: the worst case). Seed reads and puts: an owner's sealed "
                "seed (registry/custody.py), each read followed by a KMS Decrypt.",
                "",
                custody,
            ]
        builds = ", ".join(
            f"{kind} {k['builds']:.1f} ({k['build_cpu_ms']:.0f} ms)"
            for kind, k in calls.ordered(
                results["calls"]["modes"].get("proto/queries", {}).get("kinds", {})
            )
            if "builds" in k
        )
        if builds:
            parts += [
                "",
                "Transactions built per command in the worker (proto, queries), and the "
                f"builder's CPU per command (noisy: a shared machine): {builds}.",
            ]

    if "cost" in results:
        c = results["cost"]
        a = c["assumptions"]
        cpu = ", ".join(f"{k} {v:.1f} ms" for k, v in c["cpu_ms_per_command"].items())
        parts += [
            "",
            f"### 2. USD per million commands ({c['region']} list prices of {c['prices_as_of']})",
            "",
            f"Prices: bench/prices.json, {c.get('prices_caveat', '')}.",
            "",
            "Lambda memory "
            + ", ".join(f"{f} {c['memory_mb'][f]} MB" for f in ("api", "worker", "reconciler"))
            + " (.chalice/config.json, prod); our CPU per "
            f"command without moto {cpu} (on Lambda x {a['full_vcpu_mb']} / memory MB, a "
            "function's share of a vCPU), plus with proto the builder's CPU as measured; "
            f"DynamoDB call {a['dynamodb_call_ms']:g} ms, SQS call {a['sqs_call_ms']:g} ms, "
            f"KMS call {a['kms_call_ms']:g} ms; registry send {a['registry_send_s']:g} s, "
            f"status {a['registry_query_s']:g} s (the worker does not wait for the block: "
            f"{a['commit_wait_s']:g} s, charged only in the 'if it waited' column); "
            f"{a['batch_fill']} deliveries per worker invocation. KMS: warm calls as measured, "
            f"plus {a['owner_seed_miss_share']:g} of the seed opens and "
            f"{a['cold_container_share']:g} of the data-key and issuer-key calls that a new "
            "container makes. The reconciler's fixed cost (lease, listing, expiry sweep) is "
            f"{c['reconciler_fixed']['usd_per_month']:.2f} USD a month on top.",
            "",
            cost.table(c),
            "",
            "Lambda GB-seconds per command: the worker as it runs now (a step that waits for "
            "its block hands the message back) and as the worker that waited in Lambda would "
            "have paid for the same steps:",
            "",
            cost.lambda_table(c),
            "",
            "What would change it:",
            "",
            cost.sensitivity_table(c),
        ]
        if "calls" in results:
            parts += [
                "",
                "Targets of issue 16 (proto, queries, HTTP API) and what makes up each cost:",
                "",
                cost.targets_table(c, results["calls"]),
            ]
    if "throughput" in results:
        tp = results["throughput"]
        parts += [
            "",
            "### 3. Embedded stack throughput (real HTTP, accept to COMMITTED)",
            "",
            f"`devstack.stack.Stack`, {tp['workers']} queue pollers, {tp['clients']} client "
            f"connections from a separate process, {tp['commands']} commands per workload, "
            f"{tp['registry']}. Book seeded with {tp['items_per_certificate']} items per "
            "certificate. CPU ms per command from /proc for this process (API, workers, "
            "registry) and each moto server; the idle-machine bound is what those allow on "
            "2 cores (one core per process at most).",
            "",
            throughput.table(tp),
            "",
            "Book growth and the reconciler (timed apart, after each size's workloads): "
            + "; ".join(
                f"{e['certificates']:,}: seeded in {e['seed_seconds']:.0f} s, "
                f"a reconciler pass {e['reconcile_pass_s']:.1f} s"
                + (f" (**failed**: {e['reconcile_error']})" if "reconcile_error" in e else "")
                for e in tp["sizes"]
            )
            + f". Transactions sent twice: {tp.get('registry_duplicates', '?')}.",
        ]
    if "scale" in results:
        sc = results["scale"]
        parts += [
            "",
            "### 4. Scale in virtual time (the real worker, registry of capacity C, latency L)",
            "",
            "Throughput is measured at saturation (arrivals at 1.25x the batched bound); "
            "p50/p99 accept to COMMITTED at 70 % of it (the Danish row: at 4,000 x scale). "
            "DynamoDB calls 5 ms, SQS receives 10 ms, status queries 50 ms.",
            "",
            scale.table(sc),
        ]
        if "danish" in sc:
            d = sc["danish"]
            parts += [
                "",
                f"Danish case, simulated at scale {sc['danish_scale']:g} and scaled up: "
                f"{d['registry_instances']} registry instances; mean worker concurrency "
                f"{d['mean_concurrency_simulated']:.0f} at {4000 * sc['danish_scale']:.0f}/s, "
                f"so about {d['worker_concurrency_at_4000']:,} concurrent worker Lambdas at "
                f"4,000/s; p50/p99 {d['latency_p50_s']:.1f}/{d['latency_p99_s']:.1f} s; "
                f"{d['mean_transactions_per_send']:.1f} transactions per registry call.",
            ]
    if "profile" in results:
        pr = results["profile"]
        parts += [
            "",
            "### 5. Where the time goes (in-process, pyinstrument)",
            "",
            f"{pr['commands']} commands (issues and whole transfers, queries mode). CPU "
            "without the profiler:",
            "",
            profile.cpu_table(pr),
            "",
            profile.operations_table(pr),
            "",
            "With the profiler (its overhead inflates moto, which makes the most calls):",
            "",
            profile.table(pr),
            "",
            profile.hot_functions(pr),
        ]
    return "\n".join(parts) + "\n"


def update_readme(text: str, readme: Path = HERE / "README.md") -> None:
    content = readme.read_text()
    if START not in content or END not in content:
        raise SystemExit(f"{readme} lacks the {START} ... {END} markers")
    head, rest = content.split(START, 1)
    _, tail = rest.split(END, 1)
    readme.write_text(f"{head}{START}\n{text}{END}{tail}")


# --- main --------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--only", default=",".join(SECTIONS), help="comma-separated sections")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    parser.add_argument("--no-readme", action="store_true", help="leave bench/README.md alone")
    parser.add_argument("--sizes", default=None, help="book sizes for throughput")
    parser.add_argument(
        "--format",
        type=calls.formats_of,
        default=calls.FORMATS,
        help="transaction format of the calls section: plain, proto or both (default)",
    )
    parser.add_argument(
        "--report-only", action="store_true", help="rebuild the tables from --out's JSON files"
    )
    args = parser.parse_args(argv)
    if args.report_only:
        return report_only(args)
    sections = [s for s in SECTIONS if s in args.only.split(",")]
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    meta = {
        "machine": f"{platform.machine()}, {_cpus()} CPUs, Python {platform.python_version()}",
        "commit": _commit(),
        "load_before": float(Path("/proc/loadavg").read_text().split()[0]),
        "quick": args.quick,
        "sections": sections,
    }
    results: dict[str, Any] = {}
    for section in sections:
        t0 = time.monotonic()
        log(f"{section} ...")
        results[section] = _run(section, args, results)
        data = dict(results[section])
        if section == "profile":
            (args.out / "profile.txt").write_text(data.pop("text", ""))
            results[section] = data
        (args.out / f"{section}.json").write_text(
            json.dumps(data, indent=1, sort_keys=True, default=str)
        )
        log(f"{section} done in {time.monotonic() - t0:.0f} s")
    meta["minutes"] = (time.monotonic() - started) / 60
    meta["finished"] = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    if not args.quick:
        _carry_over(args.out, results, meta)
    text = report(results, meta)
    (args.out / "RESULTS.md").write_text(text)
    (args.out / "meta.json").write_text(json.dumps(meta, indent=1))
    if not args.no_readme:
        update_readme(text)
    print(targets_table(results))
    log(f"all done in {meta['minutes']:.1f} minutes; tables in {args.out / 'RESULTS.md'}")
    return 0


def _carry_over(out: Path, results: dict[str, Any], meta: dict[str, Any]) -> None:
    """A run of some sections (--only) keeps the others' results, from their files, and says
    when and at which commit each was measured: the tables in bench/README.md stay whole."""
    earlier = json.loads((out / "meta.json").read_text()) if (out / "meta.json").exists() else {}
    measured = dict(earlier.get("measured", {}))
    for section in earlier.get("sections", []):
        measured.setdefault(section, f"{earlier.get('finished')} at {earlier.get('commit')}")
    for section in meta["sections"]:
        measured[section] = f"{meta['finished']} at {meta['commit']}"
    for section in SECTIONS:
        if section not in results and (out / f"{section}.json").exists():
            results[section] = json.loads((out / f"{section}.json").read_text())
    meta["rerun"] = list(meta["sections"])
    meta["sections"] = [s for s in SECTIONS if s in results]
    meta["measured"] = {s: measured[s] for s in meta["sections"] if s in measured}


def report_only(args: argparse.Namespace) -> int:
    meta = json.loads((args.out / "meta.json").read_text())
    results = {
        section: json.loads((args.out / f"{section}.json").read_text())
        for section in meta["sections"]
        if (args.out / f"{section}.json").exists()
    }
    text = report(results, meta)
    (args.out / "RESULTS.md").write_text(text)
    if not args.no_readme:
        update_readme(text)
    print(targets_table(results))
    return 0


def _cpus() -> int:
    import os

    return os.cpu_count() or 0


def _run(section: str, args: argparse.Namespace, results: dict[str, Any]) -> dict[str, Any]:
    quick = args.quick
    if section == "calls":
        return calls.run(
            reps=1 if quick else 5, batch=3 if quick else 100, log=log, formats=args.format
        )
    if section == "profile":
        return profile.run(commands=3 if quick else 40, log=log)
    if section == "cost":
        data = results.get("calls")
        if data is None:
            data = json.loads((args.out / "calls.json").read_text())
        prof = results.get("profile")
        if prof is None and (args.out / "profile.json").exists():
            prof = json.loads((args.out / "profile.json").read_text())
        return cost.run(data, prof)
    if section == "scale":
        return scale.run(quick=quick, log=log)
    if section == "throughput":
        sizes = args.sizes or ("30,60" if quick else "1000,10000,100000")
        small = {"commands": 5, "clients": 2} if quick else {}  # else run()'s defaults
        return throughput.run(sizes=tuple(int(s) for s in sizes.split(",")), log=log, **small)
    raise ValueError(section)


if __name__ == "__main__":
    sys.exit(main())
