"""Run the kill -9 fault profile: ``python -m tests.faults [--rows N] [--spread K] [KIND ...]``.

Exits non-zero when any kill point did not recover. Needs a PostgreSQL server
like the tests: ``DATABASE_URL``, or a private one started for the run.
"""

import argparse
import os
import signal
import sys
import time

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "testproject.settings")


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m tests.faults", description=__doc__.splitlines()[0])
    parser.add_argument("kinds", nargs="*", help="kinds of change (default: the profile's six)")
    parser.add_argument("--rows", type=int, default=20_000, help="rows in the table (default 20000)")
    parser.add_argument("--spread", type=int, default=4,
                        help="kill points per phase and way of spreading them (default 4)")
    parser.add_argument("--terminate", action="store_true",
                        help="also terminate the killed client's server backend (as a restart or failover would)")
    options = parser.parse_args(argv)
    # Stopped with SIGTERM: exit normally, so the databases and the private server it
    # started are removed (a background job started by a script ignores SIGINT).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    from testproject.pgserver import database_url
    from tests.faults.harness import CHECKS, DEFAULT_KINDS, profile

    database_url()
    kinds = options.kinds or DEFAULT_KINDS
    unknown = [kind for kind in kinds if kind not in CHECKS]
    if unknown:
        parser.error(f"unknown kinds {unknown}; known: {', '.join(CHECKS)}")
    started = time.monotonic()
    totals = {"points": 0, "killed": 0, "first": 0, "later": 0, "failed": 0, "invalid": 0, "unfinished": 0}
    failures = []
    for kind in kinds:
        outcomes, setup = profile(kind, rows=options.rows, spread=options.spread, terminate=options.terminate,
                                  echo=lambda line: print(line, flush=True))
        if setup:
            failures.append((kind, "setup", setup))
            print(f"[{kind}] clean run failed: {setup}", flush=True)
        for outcome in outcomes:
            totals["points"] += 1
            totals["killed"] += outcome.killed
            totals["invalid"] += bool(outcome.left.get("invalid indexes"))
            totals["unfinished"] += bool(outcome.left.get("unfinished backfills"))
            if outcome.ok and outcome.rerun_ok:
                totals["first"] += 1
            elif outcome.ok:
                totals["later"] += 1
            else:
                totals["failed"] += 1
                failures.append((kind, outcome.point.describe() + f" (killed {outcome.killed_at})", outcome.problems))
    minutes = (time.monotonic() - started) / 60
    print(f"\n{totals['points']} kill points ({totals['killed']} killed mid-run, the rest finished first), "
          f"{totals['first']} recovered on the first re-run, {totals['later']} on a later re-run, "
          f"{totals['failed']} failed; {options.rows:,} rows, "
          f"{'backends terminated, ' if options.terminate else ''}{minutes:.1f} min")
    print(f"Left for the re-run to repair: an INVALID index at {totals['invalid']} points, "
          f"an unfinished backfill at {totals['unfinished']}.")
    for kind, where, problems in failures:
        print(f"FAILED {kind} {where}:")
        for problem in problems:
            print(f"    {problem}")
    return 1 if failures or totals["later"] else 0


if __name__ == "__main__":
    sys.exit(main())
