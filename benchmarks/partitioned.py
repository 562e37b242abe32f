"""Safe operations on a partitioned table under traffic, compared with plain Django's end state.

For each scenario of ``testproject.scenarios.PARTITIONED_SCENARIOS`` (8 partitions;
list-partitioned: an index, a unique constraint with the partition key, a check, a
foreign key, a NOT NULL column with a default, a column made NOT NULL, a column removed,
and a ninth partition attached while ``migrate`` runs; range-partitioned: a rename of an
indexed column, a type change, a field with a callable default), as the zero-downtime
tests run them but with ``--rows`` rows:

1. safemigrate: ``makemigrations --safe``, ``migrate`` under the old code's traffic and a
   blocker holding ACCESS SHARE 1.2 s at a time, the rollout, ``migrate_contract`` under
   the new code's traffic; errors, the worst wait against lock_timeout + 100 ms, the
   final checks (every index valid and attached on every partition, every constraint
   validated), the rows both versions wrote;
2. plain Django (``makemigrations`` + ``migrate``, same traffic and blocker) for the end
   state: the two catalogs (parent and every partition: index definitions, validity and
   which index each is attached to, constraints and their validation, columns) must be
   equal. Names are left out, as the oracle leaves them out: after a rename plain Django
   keeps the old field's index names, safemigrate gives the new field's.

Usage: python benchmarks/partitioned.py [--rows N] [--profile NAME] [--scenario NAME] [--no-plain]
(the issue's figure: --rows 2000000; a quick check: --rows 20000)
"""

import argparse
import sys
import time

from _common import REPO  # noqa: F401  (puts the repository on sys.path)

BOUND_MS = 300  # lock_timeout (200 ms) + 100 ms, as the zero-downtime tests


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--profile", default="two_role_app_schema",
                        help="testproject.profiles name (default: two roles, app schema)")
    parser.add_argument("--scenario", action="append", help="only these scenarios (repeatable)")
    parser.add_argument("--no-plain", action="store_true", help="skip plain Django's run and the comparison")
    args = parser.parse_args()

    import os

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "testproject.settings")
    from testproject.pgserver import database_url
    from testproject.scenario import Scenario
    from testproject.scenarios import PARTITIONED_SCENARIOS

    database_url()
    failed = False
    for name in args.scenario or list(PARTITIONED_SCENARIOS):
        spec = PARTITIONED_SCENARIOS[name]
        started = time.monotonic()
        safe = Scenario(spec, rows=args.rows, profile=args.profile, echo=print).run()
        took = time.monotonic() - started
        worst = safe.worst * 1000
        over = sum(len(summary.slow(BOUND_MS / 1000)) for summary in safe.traffic)
        steps = {title: seconds for title, seconds, _ in safe.steps}
        migrate_s = next((s for t, s in steps.items() if t.startswith("migrate (before")), 0.0)
        contract_s = next((s for t, s in steps.items() if t.startswith("migrate_contract")), 0.0)
        ok = not (safe.failures or safe.errors or over or safe.failed_checks or safe.missing or safe.mismatches
                  or not safe.check_clean)
        same = "skipped"
        if not args.no_plain:
            plain = Scenario(spec, rows=args.rows, profile=args.profile, safe=False, echo=print).run()
            same = "yes" if plain.catalog == safe.catalog else "NO"
            if same == "NO":
                ok = False
                for ours, theirs in zip(safe.catalog, plain.catalog):
                    for part, (a, b) in zip(("bound", "indexes", "constraints", "columns"), zip(ours, theirs)):
                        if a != b:
                            print(f"DIFFERENCE in {ours[0]} {part}:\n  safemigrate:  {a}\n  plain Django: {b}")
        failed |= not ok
        print(f"{name}: rows={args.rows} partitions_at_end={len(safe.catalog or [None]) - 1} requests={sum(s.calls for s in safe.traffic)} "
              f"errors={len(safe.errors)} worst_wait_ms={worst:.0f} bound_ms={BOUND_MS} over_bound={over} "
              f"final_checks={'ok' if not safe.failed_checks else safe.failed_checks} "
              f"rows_checked={safe.checked_rows} missing={len(safe.missing)} mismatched={len(safe.mismatches)} "
              f"makemigrations_check={'clean' if safe.check_clean else 'NOT CLEAN'} "
              f"same_as_plain_django={same} migrate_s={migrate_s:.1f} contract_s={contract_s:.1f} "
              f"total_s={took:.0f} result={'PASS' if ok else 'FAIL'}")
        for failure in safe.failures:
            print(f"  failure: {failure[-1500:]}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
