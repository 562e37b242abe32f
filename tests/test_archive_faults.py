"""kill -9 during archiving, restoring, purging and a type change's reverse: a re-run finishes, nothing lost.

Uses the fault harness (``tests/faults/harness.py``): each kill point gets a
fresh copy of a template database holding the old schema, its rows and the
``makemigrations --safe`` migrations; the command is run in a subprocess,
SIGKILLed after a chosen output line (plus a delay: mid-step) or a chosen
time, and run again. Then the whole undo is finished and every value the
old code had must be back. Copy mode with small batches makes the archive
step's copy and the restore's batches long enough to be killed in the middle.

The default run kills each command at a few points; ``-m faults`` spreads more.
"""

import json

import psycopg
import pytest

from tests.faults.harness import Clone, discard, kill_points, prepare, run_phase

ROWS = 10_000
SETTINGS = ('\nSAFEMIGRATE.update({{"ARCHIVE": {{"default": "{mode}"}}, "BATCH_INITIAL_SIZE": 200, '
            '"BATCH_MIN_SIZE": 100, "BATCH_MAX_SIZE": 300}})\n')


def configure(scenario, mode):
    for version in ("old", "new"):
        path = scenario.root / version / "zdt_settings.py"
        path.write_text(path.read_text() + SETTINGS.format(mode=mode))


def migrations_of(scenario):
    files = sorted((scenario.root / "zdt_migrations").glob("0*.py"))
    contract = [p.stem for p in files if 'stage = "contract"' in p.read_text()]
    expand = [p.stem for p in files if p.stem not in contract]
    return expand, contract


def query(dsn, sql, params=None):
    with psycopg.connect(dsn) as conn:
        return conn.execute(sql, params).fetchall()


def must(scenario, args):
    code, _, _, _, output = run_phase(scenario, args)
    assert code == 0, f"{' '.join(args)} exited {code}:\n{output[-3000:]}"
    return output


def archive_ids(scenario):
    output = must(scenario, ("archive", "list", "--all", "--json"))
    return [str(a["id"]) for a in json.loads(output[output.index("["):])]


def kill_then_rerun(scenario, args, point):
    """Run ``args`` killed at ``point`` (``(after_line, delay)``), then again until it succeeds (at most 3 times)."""
    _, _, _, killed_at, _ = run_phase(scenario, args, kill=point)
    for _ in range(3):
        code, _, _, _, output = run_phase(scenario, args)
        if code == 0:
            return killed_at, output
    raise AssertionError(f"{' '.join(args)} still fails after a kill at {killed_at}:\n{output[-3000:]}")


def timings(scenario, template, args, before=()):
    """Output lines and their times of a clean run of ``args`` (after ``before``), on a copy."""
    with Clone(scenario, template, f"{template}_cal"):
        for step in before:
            must(scenario, step)
        code, lines, times, _, output = run_phase(scenario, args)
        assert code == 0, output[-3000:]
    return lines, times


def points(phase, lines, times, spread):
    found = kill_points(phase, lines, times, spread)
    return [(p.after_line, p.delay) for p in found][: spread * 2]


def check_no_leftovers(dsn):
    unfinished = query(dsn, "SELECT name FROM safemigrate_backfill_progress WHERE NOT done") if query(
        dsn, "SELECT to_regclass('safemigrate_backfill_progress') IS NOT NULL")[0][0] else []
    assert unfinished == [], unfinished
    assert query(dsn, "SELECT count(*) FROM pg_index WHERE NOT indisvalid") == [(0,)]


@pytest.fixture
def removal(transactional_db):
    scenario = prepare("remove_field", ROWS)
    configure(scenario, "copy")
    yield scenario
    discard(scenario)


def run_removal_profile(scenario, spread):
    template = scenario.dbname
    expected = dict(query(scenario._server_dsn(template), 'SELECT id, legacy FROM zdtapp_item'))
    expand, contract = migrations_of(scenario)
    migrate, contract_run = ("migrate", "--noinput"), ("migrate_contract", "--noinput")
    reverse = ("migrate", "zdtapp", expand[-1], "--noinput")

    def verify_restored(dsn):
        assert dict(query(dsn, 'SELECT id, legacy FROM zdtapp_item')) == expected
        assert query(dsn, "SELECT state FROM safemigrate_archive.manifest") == [("restored",)]
        check_no_leftovers(dsn)

    # 1. kill -9 during migrate_contract: the archive step, then its batched copy.
    lines, times = timings(scenario, template, contract_run, before=[migrate])
    assert any("copy zdtapp_item" in line for line in lines), lines
    killed = []
    for number, point in enumerate(points("contract", lines, times, spread)):
        with Clone(scenario, template, f"{template}_c{number}") as clone:
            must(scenario, migrate)
            killed_at, _ = kill_then_rerun(scenario, contract_run, point)
            killed.append(killed_at)
            dsn = clone.dsn()
            state = query(dsn, "SELECT state, mode, row_count FROM safemigrate_archive.manifest")
            assert state == [("archived", "copy", sum(v is not None for v in expected.values()))], (killed_at, state)
            check_no_leftovers(dsn)
            must(scenario, reverse)
            ids = archive_ids(scenario)
            must(scenario, ("archive", "restore", *ids))
            verify_restored(dsn)
    # 2. kill -9 during archive restore (its batches).
    restore_before = [migrate, contract_run, reverse]
    with Clone(scenario, template, f"{template}_rcal"):
        for step in restore_before:
            must(scenario, step)
        ids = archive_ids(scenario)
        code, lines, times, _, output = run_phase(scenario, ("archive", "restore", *ids))
        assert code == 0, output
    for number, point in enumerate(points("restore", lines, times, spread)):
        with Clone(scenario, template, f"{template}_r{number}") as clone:
            for step in restore_before:
                must(scenario, step)
            killed.append(kill_then_rerun(scenario, ("archive", "restore", *archive_ids(scenario)), point)[0])
            verify_restored(clone.dsn())
    # 3. kill -9 during archive purge (one transaction): it happened or it did not; a re-run finishes.
    with Clone(scenario, template, f"{template}_pcal"):
        must(scenario, migrate)
        must(scenario, contract_run)
        code, lines, times, _, output = run_phase(scenario, ("archive", "purge", "--older-than", "0m"))
        assert code == 0, output
    duration = times[-1] if times else 1.0
    for number, delay in enumerate([duration * f for f in (0.3, 0.7, 0.95)][:spread + 1]):
        with Clone(scenario, template, f"{template}_p{number}") as clone:
            must(scenario, migrate)
            must(scenario, contract_run)
            killed.append(kill_then_rerun(scenario, ("archive", "purge", "--older-than", "0m"), (-1, delay))[0])
            dsn = clone.dsn()
            assert query(dsn, "SELECT state FROM safemigrate_archive.manifest") == [("purged",)]
            assert query(dsn, "SELECT count(*) FROM pg_class WHERE relnamespace = "
                              "'safemigrate_archive'::regnamespace AND relname <> 'manifest' AND relkind = 'r'") \
                == [(0,)]
    return killed


def test_kill_during_archive_copy_restore_and_purge_loses_nothing(removal):
    killed = run_removal_profile(removal, spread=1)
    assert sum(bool(k) for k in killed) >= 3, killed  # the kills landed in running commands


@pytest.mark.faults
def test_kill_during_archive_copy_restore_and_purge_loses_nothing_spread(removal):
    run_removal_profile(removal, spread=3)


@pytest.fixture
def narrowing(transactional_db):
    scenario = prepare("narrow_type", ROWS)
    configure(scenario, "soft")
    yield scenario
    discard(scenario)


def run_type_reverse_profile(scenario, spread):
    template = scenario.dbname
    expected = dict(query(scenario._server_dsn(template), 'SELECT id, points FROM zdtapp_item'))
    expand, _ = migrations_of(scenario)
    before = [("migrate", "--noinput"), ("migrate_contract", "--noinput")]
    reverse = ("migrate", "zdtapp", expand[-1], "--noinput")
    lines, times = timings(scenario, template, reverse, before=before)
    killed = []
    for number, point in enumerate(points("reverse", lines, times, spread)):
        with Clone(scenario, template, f"{template}_t{number}") as clone:
            for step in before:
                must(scenario, step)
            dsn = clone.dsn()
            query(dsn, "SELECT 1")
            with psycopg.connect(dsn, autocommit=True) as conn:  # the new code writes since the contract
                conn.execute("UPDATE zdtapp_item SET points = 424242 WHERE id = 10")
            killed_at, _ = kill_then_rerun(scenario, reverse, point)
            killed.append(killed_at)
            assert query(dsn, "SELECT data_type FROM information_schema.columns WHERE table_name = 'zdtapp_item' "
                              "AND column_name = 'points'") == [("bigint",)], killed_at
            found = dict(query(dsn, 'SELECT id, points FROM zdtapp_item'))
            assert found == {**expected, 10: 424242}, killed_at
            assert query(dsn, "SELECT state FROM safemigrate_archive.manifest") == [("restored",)]
            check_no_leftovers(dsn)
            must(scenario, ("migrate_contract", "--noinput"))  # the contract runs again
    return killed


def test_kill_during_a_type_change_reverse_loses_nothing(narrowing):
    killed = run_type_reverse_profile(narrowing, spread=1)
    assert any(killed), killed


@pytest.mark.faults
def test_kill_during_a_type_change_reverse_loses_nothing_spread(narrowing):
    run_type_reverse_profile(narrowing, spread=3)
