"""The README's test command: the whole default suite, in two pytest runs.

    .venv/bin/python -m tests [pytest arguments...]

1. Every test except the traffic tests, in parallel (pytest-xdist, one worker
   per core, at most 4; ``--dist loadfile`` keeps a file's tests in one
   worker, in order, since they share module fixtures and scratch tables).
   Each worker gets its own test database on the one server.
2. The traffic tests (``-m traffic``), one at a time, with nothing else
   running: they assert that no request waits longer than a fixed bound for
   a lock, so a second worker's load would measure the machine, not the
   migration.

Why not one serial ``pytest``: on the 2-core CI machine the suite took 31
minutes serially; split like this it takes about half. ``python -m pytest``
still runs everything serially (the same tests, the same result). Arguments
are passed to both runs (``-x``, ``-k name``, a file); a run that selects no
test (exit 5) counts as passed as long as the other one ran tests. The kill -9
fault profile stays out, as in ``pytest``'s default (``-m faults`` runs it).
"""

import os
import subprocess
import sys

NO_TESTS = 5


def workers():
    return max(1, min(os.cpu_count() or 1, 4))


def main(args):
    runs = [
        ["-n", str(workers()), "--dist", "loadfile", "-m", "not traffic and not faults", *args],
        ["-m", "traffic and not faults", *args],
    ]
    codes = []
    for run in runs:
        print(f"\n===== python -m pytest {' '.join(run)} =====", flush=True)
        codes.append(subprocess.call([sys.executable, "-m", "pytest", *run]))
    if all(code == NO_TESTS for code in codes):
        return NO_TESTS
    failed = [code for code in codes if code not in (0, NO_TESTS)]
    return failed[0] if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
