"""The deep profile: ``python -m tests.oracle --examples 500``.

Generates histories with the Hypothesis grammar, runs each one both ways on
two scratch databases of the test server (the private one unless
``DATABASE_URL`` is set), then shrinks one example per failure class and
prints the figures: histories run, passed, refused, invalid, failed, and
each class with its count and smallest example.
"""

import argparse
import os
import sys
import tempfile
import time
from collections import Counter

import django


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m tests.oracle", description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=100, help="histories to generate (default 100)")
    parser.add_argument("--exclude", default="", help="comma-separated edits or field kinds to leave out")
    parser.add_argument("--fast", action="store_true", help="use the fast profile's exclusions")
    parser.add_argument("--shrink-seconds", type=float, default=90.0, help="time to shrink each class (default 90)")
    parser.add_argument("--ignore", action="append", default=[],
                        help="drop differences containing this text (repeatable), e.g. 'backfill progress row'")
    parser.add_argument("--seed", type=int, default=0, help="Hypothesis seed (default 0: reproducible)")
    parser.add_argument("--in-flight", action="store_true",
                        help="each release's contract waits for the next release's expand")
    args = parser.parse_args(argv)

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "testproject.settings")
    django.setup()
    import logging

    logging.getLogger("safemigrate").setLevel(logging.WARNING)
    from hypothesis import HealthCheck, Phase, given, seed, settings

    from tests.oracle import triage
    from tests.oracle.history import ScratchDatabase, run_history
    from tests.oracle.strategies import FAST_PROFILE_EXCLUDES, histories

    exclude = frozenset(filter(None, args.exclude.split(","))) | (FAST_PROFILE_EXCLUDES if args.fast else frozenset())
    outcomes = []
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="oracle-") as root, \
            ScratchDatabase("plain") as plain, ScratchDatabase("safe") as safe:

        def run(history):
            return run_history(history, root, plain, safe, keep_going=False, ignore=args.ignore,
                               in_flight=args.in_flight)

        @seed(args.seed)
        @settings(max_examples=args.examples, phases=[Phase.generate], database=None, deadline=None,
                  suppress_health_check=list(HealthCheck))
        @given(histories(exclude))
        def collect(history):
            outcome = run(history)
            outcomes.append((history, outcome))
            if len(outcomes) % 25 == 0:
                print(f"  {len(outcomes)} histories, {time.monotonic() - started:.0f} s", file=sys.stderr)

        collect()
        generated = time.monotonic() - started
        statuses = Counter(outcome.status for _, outcome in outcomes)
        by_class = {}
        for history, outcome in outcomes:
            for name in triage.classes(outcome):
                by_class.setdefault(name, []).append(history)
        print(f"histories run: {len(outcomes)} in {generated:.0f} s ({generated / max(len(outcomes), 1):.2f} s each)")
        print("  " + ", ".join(f"{status}: {statuses.get(status, 0)}"
                              for status in ("passed", "refused", "invalid", "failed")))
        refusals = Counter(o.messages[0].splitlines()[-1].strip()[:100] for _, o in outcomes if o.status == "refused")
        for message, count in refusals.most_common(5):
            print(f"  refused x{count}: {message}")
        print(f"failure classes: {len(by_class)}" + (f" (excluded: {', '.join(sorted(exclude))})" if exclude else ""))
        covered = {}
        for name, failing in sorted(by_class.items(), key=lambda item: -len(item[1])):
            if name in covered:
                continue  # the smallest example of a more frequent class shows it too
            smallest = min(failing, key=lambda h: len(repr(h)))
            shrunk, tries = triage.shrink(smallest, lambda h, name=name: name in triage.classes(run(h)),
                                          seconds=args.shrink_seconds)
            outcome = run(shrunk)
            also = sorted(triage.classes(outcome) - {name})
            for other in also:
                covered.setdefault(other, name)
            print(f"\n== {name}  (x{len(failing)}; shrunk in {tries} tries)")
            for other in also:
                print(f"   also: {other} (x{len(by_class.get(other, []))})")
            for number, version in enumerate(shrunk, 1):
                print(f"  v{number}: {version!r}")
            for message in outcome.messages[:8]:
                print(f"    {message.splitlines()[0][:220]}")
        print(f"\ntotal time: {time.monotonic() - started:.0f} s")
    return 1 if by_class else 0


if __name__ == "__main__":
    sys.exit(main())
