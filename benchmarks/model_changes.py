"""Issue 21's five model changes deployed under traffic with a lock blocker, on a big table.

    python benchmarks/model_changes.py [--rows N] [NAME ...]

The scenarios of ``testproject.model_change_scenarios`` (``auto_now_add``
added, ``unique_together`` added, a ``db_column`` change, a ``Meta.db_table``
change, a ``GeneratedField`` added) run as in
``tests/test_model_changes_traffic.py`` but on ``--rows`` rows (default
1,000,000): old-code traffic during ``migrate``, both versions during the
rollout, new-code traffic during ``migrate_contract``, a transaction holding
ACCESS SHARE for 1.2 s at a time throughout. One line per change: each
command's duration, errors, the worst wait of any request, how many waited
longer than lock_timeout + 100 ms, and whether ``makemigrations --check`` is
clean. A change ``makemigrations --safe`` refuses prints its first line.
"""

import argparse
import os
import sys

import _common  # noqa: F401  (puts the repository on sys.path)

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "testproject.settings")

from testproject.model_change_scenarios import MODEL_CHANGE_SCENARIOS  # noqa: E402
from testproject.scenario import Scenario, ScenarioError  # noqa: E402

BOUND = 0.3  # lock_timeout (200 ms) + 100 ms


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("names", nargs="*", help=f"scenarios (default all: {', '.join(MODEL_CHANGE_SCENARIOS)})")
    options = parser.parse_args(argv)
    failed = False
    for name in options.names or MODEL_CHANGE_SCENARIOS:
        try:
            result = Scenario(MODEL_CHANGE_SCENARIOS[name], rows=options.rows, echo=None).run()
        except ScenarioError as exc:
            refusal = next((line.strip() for line in str(exc).splitlines() if line.strip().startswith("- ")), str(exc))
            print(f"{name}: refused by makemigrations --safe: {refusal[:300]}", flush=True)
            continue
        steps = " ".join(f"{title.split(' (')[0].replace(' ', '_')}={seconds:.1f}s" for title, seconds, _ in
                         result.steps if not title.startswith(("makemigrations (old", "migrate (old")))
        slow = sum(len(summary.slow(BOUND)) for summary in result.traffic)
        requests = sum(summary.calls for summary in result.traffic)
        ok = not (result.errors or slow or result.failures or result.missing or result.mismatches
                  or result.failed_checks) and result.check_clean
        failed |= not ok
        print(f"{name}: rows={options.rows} {steps} requests={requests} errors={len(result.errors)} "
              f"worst_wait_ms={result.worst * 1000:.0f} over_{int(BOUND * 1000)}ms={slow} "
              f"blocker_holds={result.blocker_holds} check_clean={result.check_clean} "
              f"rows_checked={result.checked_rows} {'OK' if ok else 'FAILED'}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
