"""``manage.py rehearse`` end to end: real source databases, real subprocesses, real kill -9.

Every test runs the command as a team does (``python -m django rehearse``
against a source database) and reads its exit status, its report and the
databases on the server.
"""

import json
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import psycopg
import pytest

from tests.scratch_project import RehearseProject, kill_group, server_url

DOCS = Path(__file__).resolve().parent.parent / "docs" / "pages" / "rehearse.md"

INITIAL = """
from django.db import migrations, models
import django.db.models.deletion


class Migration(migrations.Migration):
    initial = True
    dependencies = []
    operations = [
        migrations.CreateModel("Category", [
            ("id", models.BigAutoField(primary_key=True)),
            ("name", models.CharField(max_length=30, unique=True)),
        ]),
        migrations.CreateModel("Item", [
            ("id", models.BigAutoField(primary_key=True)),
            ("name", models.CharField(max_length=10)),
            ("qty", models.IntegerField(default=0)),
            ("note", models.TextField(null=True)),
            ("category", models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, to="rhapp.category")),
        ]),
    ]
"""

#: A release that rolls back cleanly: a new column filled in batches and an index, then a contract step.
EXPAND = """
from django.db import migrations, models
from safemigrate.operations import Backfill


class Migration(migrations.Migration):
    atomic = False
    dependencies = [("rhapp", "0001_initial")]
    operations = [
        migrations.AddField("item", "label", models.CharField(max_length=40, null=True)),
        Backfill("item", set={"label": '"name"'}, where='"label" IS NULL', reverse_set={}),
        migrations.AddIndex("item", models.Index(fields=["qty"], name="rh_item_qty_idx")),
    ]
"""
CONTRACT = """
from django.db import migrations


class Migration(migrations.Migration):
    stage = "contract"
    dependencies = [("rhapp", "0002_expand")]
    operations = [
        migrations.RunSQL("COMMENT ON COLUMN rhapp_item.label IS 'copied from name'",
                          reverse_sql="COMMENT ON COLUMN rhapp_item.label IS NULL"),
    ]
"""
#: A release whose rollback cannot narrow what the new code wrote.
WIDEN = """
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("rhapp", "0001_initial")]
    operations = [migrations.AlterField("item", "name", models.CharField(max_length=50))]
"""

ROWS = 6000


def _fill(project):
    project.run("migrate", "--all-stages")
    project.query("INSERT INTO rhapp_category (name) SELECT 'c' || i FROM generate_series(1, 300) i")
    project.query(f"INSERT INTO rhapp_item (name, qty, category_id) SELECT 'n' || (i % 1000), i % 97, 1 + i % 300 "
                f"FROM generate_series(1, {ROWS}) i")
    project.settle()


@pytest.fixture(scope="module")
def release():
    """A filled source and a two-migration release that rolls back cleanly."""
    project = RehearseProject({"0001_initial.py": INITIAL})
    try:
        _fill(project)
        project.add({"0002_expand.py": EXPAND, "0003_contract.py": CONTRACT})
        yield project
    finally:
        project.drop()


@pytest.fixture
def fresh(release):
    """The shared project with its settings restored after the test."""
    yield release
    release.configure()


def rehearse(project, *args, check_status=None):
    result = project.run("rehearse", *args, check=False)
    if check_status is not None:
        assert result.returncode == check_status, result.stdout + result.stderr
    return result


def as_json(result):
    return json.loads(result.stdout)


def documented_schema():
    blocks = re.findall(r"```json\n(.*?)```", DOCS.read_text(), re.S)
    return json.loads(next(block for block in blocks if '"$schema"' in block))


def test_a_release_is_deployed_rolled_back_and_redeployed_on_a_sample(release):
    jsonschema = pytest.importorskip("jsonschema")
    before = release.write_counters()
    result = rehearse(release, "--sample", "20", "--format", "json", check_status=0)
    report = as_json(result)
    schema = documented_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    jsonschema.validate(report, schema, cls=jsonschema.Draft202012Validator)
    assert report["ok"] and report["exit_status"] == 0 and not report["failures"]
    assert report["release"]["migrations"] == ["rhapp.0002_expand", "rhapp.0003_contract"]
    assert report["release"]["rollback_from"] == "contract"
    assert [p["name"] for p in report["phases"]] == [
        "expand", "rollout", "background", "contract", "rollback", "expand again", "background again",
        "contract again"]
    assert {p["name"]: p.get("note") for p in report["phases"]}["background"] == "no background migration enqueued"
    assert [c["ok"] for c in report["checks"]] == [True, True, True]
    assert report["source"]["schema_from"].startswith("pg_dump")
    # The sample: about 20 % of the items, every category an item needs.
    tables = {t["table"]: t for t in report["tables"]}
    assert 0.15 * ROWS < tables["rhapp_item"]["rehearsed_rows"] < 0.25 * ROWS
    assert tables["rhapp_item"]["source_rows"] == ROWS and tables["rhapp_item"]["basis"] == "reltuples"
    steps = {s["id"]: s for s in report["steps"]}
    expand = steps["expand: rhapp.0002_expand"]
    # Per statement: the index build (rewritten CONCURRENTLY), scaled n log n; the batches, linear.
    build = next(s for s in expand["statements"] if "CREATE INDEX CONCURRENTLY" in s["sql"])
    # (Never below the measured time; on a tiny sample the build can be all waiting, which does
    # not grow with the table, so the prediction may equal it.)
    assert build["kind"] == "index build" and "n·log n" in build["basis"]
    assert build["predicted_seconds"] >= build["seconds"]
    # A short build is built twice more after the release; the estimate scales the fastest run.
    assert "built 3 times on the copy" in build["basis"], build["basis"]
    assert any("built 2 more times on the copy" in note for note in report["notes"]), report["notes"]
    batch = next(s for s in expand["statements"] if s["sql"].startswith('UPDATE "rhapp_item" SET "label"'))
    assert batch["kind"] == "linear" and batch["rows"] > 0 and batch["count"] >= 1
    assert "rhapp_item" in batch["basis"] and "reltuples" in batch["basis"]
    # Per step: backfill batch percentiles, WAL, rows, and locks with their hold times.
    backfill = expand["backfill"]
    assert backfill["rows"] == tables["rhapp_item"]["rehearsed_rows"]
    assert 0 < backfill["p50_ms"] <= backfill["p95_ms"] and backfill["predicted_seconds"] > backfill["seconds"]
    assert expand["measured"]["wal_bytes"] > 0 and expand["measured"]["rows"]["updated"] >= backfill["rows"]
    assert expand["predicted"]["wal_bytes"] > expand["measured"]["wal_bytes"]
    exclusive = [h for h in expand["locks"] if h["mode"] == "ACCESS EXCLUSIVE" and h["relation"] == "rhapp_item"]
    assert exclusive and all(h["blocking"] for h in exclusive)
    add_column = next(s for s in expand["statements"] if "ADD COLUMN" in s["sql"])
    assert "ACCESS EXCLUSIVE on rhapp_item" in add_column["locks_taken"] and add_column["kind"] == "catalog"
    # The rollout wrote with both code versions; nothing failed.
    assert report["rollout"]["rows"] >= 20 and report["rollout"]["models"] == ["rhapp.item"]
    assert report["predicted"]["expand_seconds"] > 0
    assert release.write_counters() == before, "the source database was written to"
    assert release.scratch_databases() == []


def test_a_copy_of_the_source_by_template_leaves_it_untouched_and_reads_as_text(release):
    before = release.write_counters()
    result = rehearse(release, "--from-template", release.dbname, check_status=0)
    text = result.stdout
    assert "Rehearsal of 2 migration(s): rhapp.0002_expand (expand), rhapp.0003_contract (contract)" in text
    assert f"On a copy of database '{release.dbname}'" in text
    for line in ("expand\n", "rollout\n", "contract again\n", "Checks:", "Slowest steps at production size:",
                 "Predicted at production size: expand", "backfill: ", "Rehearsal passed."):
        assert line in text, line
    assert re.search(r"rhapp_item\s+6,000 rows \(reltuples\)\s+rehearsed on 6,000\s+x1\.0", text)
    # A full copy multiplies nothing: its index build is timed once (planning.rebuilds).
    assert "more times on the copy" not in text and "built 3 times" not in text
    assert release.write_counters() == before
    assert release.scratch_databases() == []


def test_budgets_fail_the_build_naming_the_step(fresh):
    fresh.configure({"REHEARSE_MAX_BACKFILL_S": 0.0001, "REHEARSE_MAX_EXPAND_S": 0.0001,
                     "REHEARSE_MAX_LOCK_HOLD_MS": 100000})
    result = rehearse(fresh, "--sample", "20", "--rollback-from", "none", "--rollout", "0", check_status=3)
    text = result.stdout
    assert "OVER BUDGET  REHEARSE_MAX_BACKFILL_S: expand: rhapp.0002_expand backfills for ~" in text
    assert "OVER BUDGET  REHEARSE_MAX_EXPAND_S: expand takes ~" in text and "most of it in expand: rhapp.0002_expand" \
        in text
    assert "ok           REHEARSE_MAX_LOCK_HOLD_MS: longest blocking lock" in text
    assert "Rehearsal passed, but over budget." in text
    fresh.configure({"REHEARSE_MAX_LOCK_HOLD_MS": 0.0001})
    report = as_json(rehearse(fresh, "--sample", "20", "--rollback-from", "none", "--rollout", "0", "--format",
                              "json", check_status=3))
    over = [b for b in report["budgets"] if not b["ok"]]
    assert over and all(b["setting"] == "REHEARSE_MAX_LOCK_HOLD_MS" for b in over)
    assert any(b["step"] == "expand: rhapp.0002_expand" and "on rhapp_item" in b["message"] for b in over)


def test_a_rollback_that_cannot_narrow_what_the_new_code_wrote_is_caught_with_its_rows(tmp_path):
    project = RehearseProject({"0001_initial.py": INITIAL})
    try:
        _fill(project)
        project.add({"0002_widen.py": WIDEN})
        before = project.write_counters()
        result = rehearse(project, "--sample", "20", check_status=1)
        text = result.stdout
        assert "rollback  [FAILED]" in text
        failure = text[text.index("REHEARSAL FAILED:"):]
        assert "rollback, rhapp.0002_widen (backwards): DataError: value too long for type character varying(10)" \
            in failure
        rows = re.search(r"rhapp_item rows ([\d, ]+) and \d+ more: name is longer than 10 characters", failure)
        assert rows, failure
        first = int(rows.group(1).split(",")[0])
        assert f"{first}: new code during the rollout" in failure
        # The rows named are the new code's 11-character names.
        assert first > ROWS
        report = as_json(rehearse(project, "--sample", "20", "--format", "json", check_status=1))
        failed = next(s for s in report["steps"] if s["status"] == "failed")
        assert failed["id"] == "rollback: rhapp.0002_widen" and failed["direction"] == "backwards"
        (row,) = failed["failing_rows"]
        assert row["table"] == "rhapp_item" and row["column"] == "name" and row["count"] == 10
        assert report["rollout"]["edge_values"] == {"rhapp.Item": {"name": "11 characters (the old max_length is 10)"}}
        assert project.write_counters() == before
        assert project.scratch_databases() == []
    finally:
        project.drop()


RENAME = """
from django.db import migrations
from safemigrate.operations import RenameViaCopy


class Migration(migrations.Migration):
    atomic = False
    dependencies = [("rhapp", "0001_initial")]
    operations = [RenameViaCopy("item", "name", "title")]
"""
FINISH_RENAME = """
from django.db import migrations
from safemigrate.operations import FinishRenameViaCopy


class Migration(migrations.Migration):
    atomic = False
    stage = "contract"
    dependencies = [("rhapp", "0002_rename")]
    operations = [FinishRenameViaCopy("item", "name", "title")]
"""


def test_a_rename_through_a_copy_rolls_back_to_the_schema_before_the_release():
    """The rehearsal found the old column coming back NULLABLE after the contract's reverse."""
    project = RehearseProject({"0001_initial.py": INITIAL})
    try:
        _fill(project)
        project.add({"0002_rename.py": RENAME, "0003_finish_rename.py": FINISH_RENAME})
        report = as_json(rehearse(project, "--sample", "20", "--format", "json", check_status=0))
        assert report["release"]["rollback_from"] == "contract"
        assert [(c["name"], c["ok"]) for c in report["checks"]] == [
            ("the rollback restores the pre-release schema", True),
            ("expand after the rollback ends as the first expand did", True),
            ("the release run again ends as a direct forward run", True)]
        steps = {s["id"]: s for s in report["steps"]}
        back = steps["rollback: rhapp.0003_finish_rename"]["statements"]
        # safemigrate's own SET NOT NULL, declared instant after its validated CHECK: a catalog change.
        set_not_null = next(s for s in back if s["sql"].endswith('ALTER COLUMN "name" SET NOT NULL'))
        assert set_not_null["declared"] and set_not_null["kind"] == "catalog"
        assert set_not_null["expected_lock"].startswith("ACCESS EXCLUSIVE (instant")
        validate = next(s for s in back if "VALIDATE CONSTRAINT" in s["sql"])
        assert validate["declared"] and validate["kind"] == "linear"
        assert project.scratch_databases() == []
    finally:
        project.drop()


@pytest.mark.parametrize("why", ["background=True", "production's size"])
def test_a_background_copy_runs_between_expand_and_contract_and_is_scaled_as_a_backfill(why):
    """At 10M rows the contract refused: the copy expand enqueued outgrew the gate's inline budget.

    BACKGROUND_FINALIZE_INLINE_S = 0 makes any size behave like production: the contract
    refuses unless the copy was finished before it, as ``backfills run`` does in a deploy.
    By size: the 20 % sample (1,200 rows) is under BACKGROUND_MIN_ROWS, the source (6,000)
    is not; the sample once ran the copy inline in expand, unlike the deploy it stands for.
    """
    project = RehearseProject({"0001_initial.py": INITIAL})
    settings = {"BACKGROUND_FINALIZE_INLINE_S": 0}
    expand = RENAME
    if why == "background=True":
        expand = RENAME.replace('"title")]', '"title", background=True)]')
    else:
        settings["BACKGROUND_MIN_ROWS"] = 5000
    try:
        _fill(project)
        project.add({"0002_rename.py": expand, "0003_finish_rename.py": FINISH_RENAME})
        result = project.run("rehearse", "--sample", "20", "--format", "json", check=False, safemigrate=settings)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        report = json.loads(result.stdout)
        names = [phase["name"] for phase in report["phases"]]
        assert names == ["expand", "rollout", "background", "contract", "rollback", "expand again",
                         "background again", "contract again"], names
        steps = {s["id"]: s for s in report["steps"]}
        (copy,) = [step for step in report["steps"] if step["phase"] == "background"]
        assert copy["id"].startswith("background: backfills run rhapp_item."), copy["id"]
        assert copy["direction"] == "background" and copy["status"] == "ok"
        assert copy["backfill"]["rows"] >= 1200 * 0.8 and copy["backfill"]["predicted_rows"] >= 5000
        assert report["predicted"]["background_seconds"] > 0
        assert not steps["contract: rhapp.0003_finish_rename"]["backfill"], "the contract copies nothing"
        jsonschema = pytest.importorskip("jsonschema")
        jsonschema.validate(report, documented_schema(), cls=jsonschema.Draft202012Validator)
        assert project.scratch_databases() == []
    finally:
        project.drop()


def _stderr_lines(process, lines):
    for line in process.stderr:
        lines.append(line)


@pytest.mark.parametrize("when", ["the scratch database exists", "the deploy runs"])
def test_kill_9_leaves_nothing_after_the_next_run_and_the_source_untouched(release, when):
    before = release.write_counters()
    schema = release.query("SELECT table_name, column_name, data_type FROM information_schema.columns "
                         "WHERE table_schema = 'public' ORDER BY 1, 2")
    process = release.start("rehearse", "--sample", "20")
    lines = []
    reader = threading.Thread(target=_stderr_lines, args=(process, lines), daemon=True)
    reader.start()
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline and process.poll() is None:
            ready = release.scratch_databases() if when.startswith("the scratch") else \
                [line for line in lines if line.startswith("expand:")]
            if ready:
                break
            time.sleep(0.02)
        assert process.poll() is None, "the rehearsal ended before it could be killed"
    finally:
        kill_group(process)
    left = release.scratch_databases()
    assert left, "nothing to clean up: the kill came too late to prove anything"
    result = rehearse(release, "--sample", "20", "--rollback-from", "none", "--rollout", "0", check_status=0)
    assert f"dropped scratch database {left[0]}" in result.stdout
    assert release.scratch_databases() == []
    assert release.write_counters() == before
    assert release.query("SELECT table_name, column_name, data_type FROM information_schema.columns "
                       "WHERE table_schema = 'public' ORDER BY 1, 2") == schema


def test_bad_input_is_refused_with_a_clear_message_and_status_2(release):
    for value in ("0", "101", "-1", "abc", "0.00001"):
        result = rehearse(release, "--sample", value, check_status=2)
        assert f"--sample {value}: give a percentage between 0.00010 and 100" in result.stderr
    result = rehearse(release, check_status=2)
    assert "Say where to rehearse: --sample PERCENT" in result.stderr
    result = rehearse(release, "--clone", check_status=2)
    assert "--clone needs SAFEMIGRATE['REHEARSE_CLONE_COMMAND']" in result.stderr
    result = rehearse(release, "--from-template", "no_such_database_here", check_status=2)
    assert "Cannot read the source" in result.stderr and "no_such_database_here" in result.stderr
    result = rehearse(release, "--sample", "5", "--rollout", "-1", check_status=2)
    assert "--rollout -1: give a number of rows >= 0" in result.stderr
    assert release.scratch_databases() == []


def test_a_source_it_cannot_reach_or_read_is_named(release):
    env_url = server_url("rh_no_such_source")
    result = subprocess.run([sys.executable, "-m", "django", "rehearse", "--sample", "5"], cwd=release.root,
                            env={**release.env(), "DATABASE_URL": env_url}, capture_output=True, text=True)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Cannot read the source (database 'rh_no_such_source' of alias 'default')" in result.stderr
    role = f"rh_noread_{release.id}"
    release.query(f'CREATE ROLE "{role}" LOGIN CREATEDB')
    try:
        release.query(f'GRANT SELECT ON django_migrations TO "{role}"')
        url = release.url.replace("postgresql://postgres@", f"postgresql://{role}@")
        result = subprocess.run([sys.executable, "-m", "django", "rehearse", "--sample", "5"], cwd=release.root,
                                env={**release.env(), "DATABASE_URL": url}, capture_output=True, text=True)
        assert result.returncode == 2, result.stdout + result.stderr
        assert "permission denied for table" in result.stderr and "pg_read_all_data" in result.stderr
        assert release.scratch_databases() == []
    finally:
        release.query(f'DROP OWNED BY "{role}"')
        release.query(f'DROP ROLE "{role}"')


def test_a_busy_template_is_refused_naming_the_sessions(release):
    with psycopg.connect(server_url(release.dbname), autocommit=True,
                         application_name="reporting-job") as holder:
        holder.execute("SELECT 1")
        result = rehearse(release, "--from-template", release.dbname, check_status=2)
    assert "PostgreSQL copies a template only while no other session is connected to it" in result.stderr
    assert "reporting-job" in result.stderr and "rehearse never disconnects anyone" in result.stderr
    assert "--sample" in result.stderr and "REHEARSE_CLONE_COMMAND" in result.stderr
    assert release.scratch_databases() == []


def test_nothing_pending_says_so_and_exits_0(tmp_path):
    project = RehearseProject({"0001_initial.py": INITIAL})
    try:
        project.run("migrate", "--all-stages")
        result = rehearse(project, "--sample", "10", check_status=0)
        assert result.stdout.strip() == ("Nothing to rehearse: every migration is applied in the database "
                                         "rehearsed on.")
        report = as_json(rehearse(project, "--sample", "10", "--format", "json", check_status=0))
        assert report["ok"] and "Nothing to rehearse" in report["nothing_to_rehearse"]
        jsonschema = pytest.importorskip("jsonschema")
        jsonschema.validate(report, documented_schema(), cls=jsonschema.Draft202012Validator)
        assert project.scratch_databases() == []
    finally:
        project.drop()


CLONE = """
import sys, psycopg
name, source, dsn, url = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
with psycopg.connect(dsn, autocommit=True) as conn:
    conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{source}"')
print("cloned")
print(url.replace("/" + source, "/" + name))
"""
DROP = """
import sys, psycopg
with psycopg.connect(sys.argv[2], autocommit=True) as conn:
    conn.execute(f'DROP DATABASE "{sys.argv[1]}" WITH (FORCE)')
open(sys.argv[3], "a").write(sys.argv[1] + "\\n")
"""


def test_a_clone_command_makes_the_scratch_database_and_a_drop_command_removes_it(fresh, tmp_path):
    (tmp_path / "clone.py").write_text(CLONE)
    (tmp_path / "drop.py").write_text(DROP)
    dropped = tmp_path / "dropped.txt"
    admin = server_url("postgres")
    fresh.configure({
        "REHEARSE_CLONE_COMMAND": [sys.executable, str(tmp_path / "clone.py"), "{name}", "{source}", admin,
                                   fresh.url],
        "REHEARSE_DROP_COMMAND": [sys.executable, str(tmp_path / "drop.py"), "{name}", admin, str(dropped)],
    })
    before = fresh.write_counters()
    report = as_json(rehearse(fresh, "--clone", "--format", "json", check_status=0))
    assert report["scratch"]["kind"] == "clone" and report["ok"]
    assert dropped.read_text().split() == [report["scratch"]["name"]]
    assert fresh.write_counters() == before
    assert fresh.scratch_databases() == []


def test_keep_keeps_the_scratch_database_out_of_the_cleanup(release):
    report = as_json(rehearse(release, "--sample", "10", "--keep", "--rollback-from", "none", "--rollout", "0",
                              "--format", "json", check_status=0))
    kept = report["scratch"]["name"]
    try:
        assert kept.startswith("safemigrate_kept_")
        rehearse(release, "--sample", "10", "--rollback-from", "none", "--rollout", "0", check_status=0)
        assert release.query("SELECT count(*) FROM pg_database WHERE datname = %s", [kept], dbname="postgres") == [(1,)]
        assert release.query("SELECT count(*) FROM rhapp_item", dbname=kept)[0][0] > 0
    finally:
        release.query(f'DROP DATABASE IF EXISTS "{kept}" WITH (FORCE)', dbname="postgres")


def test_without_pg_dump_the_schema_comes_from_the_migrations_and_drift_is_reported(fresh):
    fresh.configure({"REHEARSE_PG_DUMP": False})
    fresh.query("CREATE INDEX rh_by_hand ON rhapp_item (note)")
    try:
        report = as_json(rehearse(fresh, "--sample", "20", "--rollback-from", "none", "--format", "json",
                                  check_status=0))
    finally:
        fresh.query("DROP INDEX rh_by_hand")
    assert report["source"]["schema_from"] == "the applied migrations, replayed (no fit pg_dump)"
    drift = [n for n in report["notes"] if n.startswith("the source's schema differs")]
    assert drift and "rhapp_item: index missing: btree (note)" in drift[0]


def test_a_rollback_that_leaves_something_behind_fails_the_check(tmp_path):
    project = RehearseProject({"0001_initial.py": INITIAL})
    try:
        _fill(project)
        project.add({"0002_sticky.py": """
            from django.db import migrations


            class Migration(migrations.Migration):
                dependencies = [("rhapp", "0001_initial")]
                operations = [migrations.RunSQL("CREATE INDEX rh_sticky ON rhapp_item (qty)",
                                                reverse_sql="SELECT 1")]
        """})
        report = as_json(rehearse(project, "--sample", "20", "--format", "json", check_status=1))
        check = report["checks"][0]
        assert check["name"] == "the rollback restores the pre-release schema" and not check["ok"]
        assert check["differences"] == ["rhapp_item: extra index: btree (qty)"]
        assert report["failures"][0].startswith("rollback: the rollback restores the pre-release schema")
    finally:
        project.drop()


def test_old_code_that_cannot_write_after_expand_fails_the_rollout(tmp_path):
    project = RehearseProject({"0001_initial.py": INITIAL})
    try:
        _fill(project)
        project.add({"0002_required.py": """
            from django.db import migrations, models


            class Migration(migrations.Migration):
                dependencies = [("rhapp", "0001_initial")]
                operations = [migrations.AddField("item", "code", models.CharField(max_length=5, default="x"),
                                                  preserve_default=False)]
        """})
        result = rehearse(project, "--sample", "20", check_status=1)
        assert "rollout  [FAILED]" in result.stdout
        assert ("The old code cannot write rhapp.Item after expand: column 'code', which this code does not know, "
                "is NOT NULL without a default") in result.stdout
    finally:
        project.drop()


def test_since_rehearses_the_files_added_since_a_ref_after_catching_up(tmp_path):
    project = RehearseProject({"0001_initial.py": INITIAL})
    try:
        _fill(project)
        git = ["git", "-c", "user.email=t@example.com", "-c", "user.name=t"]

        def run(*args):
            subprocess.run([*git, *args], cwd=project.root, check=True, capture_output=True)

        run("init", "-q", "-b", "main")
        project.add({"0002_widen.py": WIDEN.replace('max_length=50', 'max_length=12')})
        run("add", ".")
        run("commit", "-qm", "main")
        run("checkout", "-qb", "feature")
        project.add({"0003_expand.py": EXPAND.replace('"0001_initial"', '"0002_widen"')})
        run("add", ".")
        run("commit", "-qm", "feature")
        report = as_json(rehearse(project, "--sample", "20", "--since", "main", "--rollback-from", "expand",
                                  "--format", "json", check_status=0))
        assert report["release"]["migrations"] == ["rhapp.0003_expand"]
        assert report["release"]["catch_up"] == ["rhapp.0002_widen"] and report["release"]["since"] == "main"
        assert [c["ok"] for c in report["checks"]] == [True, True]
        nothing = rehearse(project, "--sample", "20", "--since", "HEAD", check_status=0)
        assert "Nothing to rehearse: no migration files were added since the ref." in nothing.stdout
    finally:
        project.drop()


def test_the_scratch_database_can_live_on_another_alias(fresh):
    fresh.configure(settings="""
        DATABASES["scratch"] = dict(DATABASES["default"], NAME="postgres")
    """)
    report = as_json(rehearse(fresh, "--sample", "10", "--scratch-database", "scratch", "--rollback-from", "none",
                              "--format", "json", check_status=0))
    assert report["ok"] and report["scratch"]["kind"] == "sample"
    result = rehearse(fresh, "--from-template", fresh.dbname, "--scratch-database", "scratch", check_status=2)
    assert "--scratch-database goes with --sample only" in result.stderr


def test_the_command_is_documented_with_a_json_schema_that_rejects_nonsense():
    jsonschema = pytest.importorskip("jsonschema")
    schema = documented_schema()
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"schema_version": 1, "ok": "yes"}, schema, cls=jsonschema.Draft202012Validator)


def test_a_table_rewrite_is_seen_by_its_relfilenode_and_its_lock_scaled_with_it(tmp_path):
    project = RehearseProject({"0001_initial.py": INITIAL})
    try:
        _fill(project)
        project.add({"0002_bigger_qty.py": """
            from django.db import migrations, models


            class Migration(migrations.Migration):
                dependencies = [("rhapp", "0001_initial")]
                operations = [migrations.AlterField("item", "qty", models.BigIntegerField(default=0))]
        """})
        # With the rollout, the new code writes 2^31 and the rollback to integer cannot hold it.
        failed = as_json(rehearse(project, "--sample", "20", "--format", "json", check_status=1))
        assert "qty is outside -2147483648..2147483647 (" in failed["failures"][0]
        report = as_json(rehearse(project, "--sample", "20", "--rollout", "0", "--lock-sample-ms", "2",
                                  "--format", "json", check_status=0))
        step = next(s for s in report["steps"] if s["id"] == "expand: rhapp.0002_bigger_qty")
        rewrites = {(r["relation"], r["kind"]) for r in step["measured"]["rewrites"]}
        assert ("rhapp_item", "table") in rewrites and ("rhapp_item_pkey", "index") in rewrites
        alter = next(s for s in step["statements"] if "TYPE bigint" in s["sql"])
        assert alter["kind"] == "linear" and "ACCESS EXCLUSIVE on rhapp_item" in alter["locks_taken"]
        hold = max((h for h in step["locks"] if h["relation"] == "rhapp_item" and h["mode"] == "ACCESS EXCLUSIVE"),
                   key=lambda h: h["predicted_ms"])
        assert hold["blocking"] and hold["predicted_ms"] > hold["measured_ms"]
        assert hold["basis"] == "scaled by the statements that ran while it was held"
        assert "not made safe" in " ".join(step["warnings"])
        # Rolled back (bigint -> integer: every value fits) and done again: the same schema each time.
        assert [c["ok"] for c in report["checks"]] == [True, True, True]
    finally:
        project.drop()
