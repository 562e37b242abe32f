"""The demo: a risky change deployed under live traffic, with a report.

    python testproject/demo.py              # safemigrate
    python testproject/demo.py --compare    # ... and the same change with plain Django

A table of a few hundred thousand rows gets a field rename and a type change
(int -> bigint) in one deploy: ``makemigrations --safe`` -> ``migrate`` while
the old code serves -> rollout (old and new code side by side) ->
``migrate_contract`` while the new code serves. Each code version's ORM
traffic runs in its own process, and a long-running report query keeps
taking a lock on the table throughout. The report shows each step (duration,
lock retries, rows backfilled) and, for the traffic, requests served, errors
and the worst wait.

Uses ``DATABASE_URL`` when set, otherwise starts a private PostgreSQL server.
"""

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "testproject.settings")

from testproject.pgserver import ServerUnavailable, database_url  # noqa: E402
from testproject.scenario import Scenario  # noqa: E402
from testproject.scenarios import SCENARIOS  # noqa: E402

BOUND_MS = 300


def report(result, out=print):
    title = "safemigrate" if result.safe else "plain Django makemigrations + migrate"
    out("")
    out(f"=== Report: {title} ===")
    if result.migration_files:
        out("Generated migrations:")
        for name in result.migration_files:
            out(f"  {name}")
    if result.report_steps:
        out("Steps:")
        out(f"  {'step':<58} {'time':>8} {'lock retries':>13} {'rows':>9}")
        current = None
        for record in result.report_steps:
            if record["operation"] != current:
                current = record["operation"]
                out(f"  {current}")
            rows = f"{record['rows']:,}" if record["rows"] else ""
            label = record["step"] + (" (already done)" if record["skipped"] else "")
            out(f"    {label[:56]:<56} {record['duration'] * 1000:>6.0f}ms {record['lock_retries']:>13} {rows:>9}")
        total_retries = sum(r["lock_retries"] for r in result.report_steps)
        total_rows = sum(r["rows"] for r in result.report_steps)
        out(f"  lock retries: {total_retries}, rows backfilled: {total_rows:,}")
    out("Commands:")
    for title_, seconds, code in result.steps:
        out(f"  {title_:<52} {seconds:>6.1f}s" + ("" if code == 0 else f"  exit {code}"))
    out("Traffic:")
    for summary in result.traffic:
        slow = len(summary.slow(BOUND_MS / 1000))
        out(f"  {summary.line()}, {slow} waits over {BOUND_MS} ms")
    errors = result.errors
    out(f"Errors seen by the application: {len(errors)}")
    for error in sorted({e.splitlines()[0] for e in errors})[:5]:
        out(f"  {error[:160]}")
    out(f"Worst wait: {result.worst * 1000:.0f} ms (blocker held its lock {result.blocker_holds} times)")
    if result.safe:
        out(f"Rows written by either version and checked in the final schema: {result.checked_rows:,}; "
            f"missing {len(result.missing)}, wrong {len(result.mismatches)}; "
            f"makemigrations --check clean: {result.check_clean}")
    for failure in result.failures:
        out("FAILED: " + failure[-1500:])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=300_000, help="rows in the demo table (default 300000)")
    parser.add_argument("--compare", action="store_true", help="also run the same change with plain Django")
    parser.add_argument("--hold", type=float, default=2.0,
                        help="seconds the simulated report query holds its lock each time (default 2.0)")
    parser.add_argument("--scenario", default="rename_and_retype", choices=sorted(SCENARIOS))
    options = parser.parse_args(argv)
    try:
        url = database_url()
    except ServerUnavailable as exc:
        print(exc, file=sys.stderr)  # the reason and the fix; a traceback would bury them
        return 2
    print(f"PostgreSQL: {url.split('@')[-1]}")
    spec = SCENARIOS[options.scenario]
    # The blocker stands for a long report query holding a lock on the table.
    results = [Scenario(spec, rows=options.rows, echo=print, blocker_hold=options.hold).run()]
    report(results[0])
    if options.compare:
        results.append(Scenario(spec, rows=options.rows, safe=False, echo=print, blocker_hold=options.hold).run())
        report(results[1])
        safe, plain = results
        print("")
        print("=== Contrast ===")
        print(f"  {'':<22}{'errors':>10}{'worst wait':>14}")
        for label, result in (("safemigrate", safe), ("plain Django", plain)):
            print(f"  {label:<22}{len(result.errors):>10}{result.worst * 1000:>12.0f}ms")
    ok = not results[0].errors and not results[0].failures and not results[0].missing and not results[0].mismatches
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
