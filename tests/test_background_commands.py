"""``manage.py backfills``: every action, its text, its ``--json`` (against the documented schema), its exit status."""

import io
import json
import re
from pathlib import Path

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection
from django.test import override_settings

from safemigrate.operations import Backfill
from safemigrate.pg import background_state as bg
from tests.test_background import customers  # noqa: F401 (fixture)
from tests.utils import apply_operations, execute, run_command

DOCS = Path(__file__).resolve().parent.parent / "docs" / "pages" / "background-migrations.md"


def documented_schema():
    blocks = re.findall(r"```json\n(.*?)```", DOCS.read_text(), re.S)
    return json.loads(next(block for block in blocks if '"$schema"' in block))


@pytest.fixture
def enqueued(customers):  # noqa: F811
    table, state = customers
    apply_operations([Backfill("customer", set={"note": "'a'"}, name="fill-a", background=True),
                      Backfill("customer", set={"points": '"points" * 2'}, name="fill-b", background=True)], state)
    return table


@pytest.fixture
def validate():
    jsonschema = pytest.importorskip("jsonschema")
    schema = documented_schema()
    jsonschema.Draft202012Validator.check_schema(schema)

    def check(document):
        jsonschema.validate(document, schema, cls=jsonschema.Draft202012Validator)
        return document

    check.jsonschema = jsonschema
    check.schema = schema
    return check


def run_json(capsys, *args):
    """Run with --json; returns (exit status, parsed document)."""
    out = io.StringIO()
    status = 0
    try:
        call_command("backfills", *args, "--json", stdout=out, stderr=io.StringIO())
    except SystemExit as exc:
        status = exc.code
    return status, json.loads(out.getvalue())


def test_every_action_prints_json_that_follows_the_documented_schema(enqueued, validate, capsys):
    status, listing = run_json(capsys, "list")
    assert status == 0 and [m["name"] for m in validate(listing)["background_migrations"]] == ["fill-a", "fill-b"]
    status, paused = run_json(capsys, "pause", "fill-b")
    assert validate(paused)["background_migration"]["state"] == "paused" and paused["action"] == "pause"
    status, ran = run_json(capsys, "run")
    assert status == 0 and validate(ran)["finished"] == ["fill-a"] and ran["rows"] == 3000
    status, shown = run_json(capsys, "status", "fill-a")
    migration = validate(shown)["background_migration"]
    assert migration["state"] == "finished" and migration["progress_percent"] == 100
    assert set(migration["health"]) >= {"vacuum", "transaction_age", "lock_waiters", "connections"}
    assert migration["rows_per_second"] > 0 and migration["columns"] == ["note"]
    status, resumed = run_json(capsys, "resume", "fill-b")
    assert validate(resumed)["background_migration"]["state"] == "queued"
    status, cancelled = run_json(capsys, "cancel", "fill-b")
    assert validate(cancelled)["background_migration"]["state"] == "cancelled"
    status, retried = run_json(capsys, "retry", "fill-b")
    assert validate(retried)["background_migration"]["state"] == "queued"
    status, finalized = run_json(capsys, "finalize", "fill-a", "fill-b", "--max-inline-seconds", "60")
    assert status == 0 and validate(finalized)["finalized"] is True
    assert {m["state"] for m in finalized["background_migrations"]} == {"finalized"}
    # A schema that accepts anything would prove nothing.
    with pytest.raises(validate.jsonschema.ValidationError):
        validate(dict(shown, background_migration=dict(migration, state="sleeping")))


def test_unknown_name_exits_2_naming_the_known_ones(enqueued, validate, capsys):
    with pytest.raises(CommandError) as caught:
        run_command("backfills", "pause", "nope")
    assert caught.value.returncode == 2
    assert "No background migration is named 'nope'" in str(caught.value) and "fill-a, fill-b" in str(caught.value)
    status, document = run_json(capsys, "status", "nope")
    assert status == 2 and validate(document)["error"]["exit_status"] == 2


def test_pausing_a_finished_migration_is_refused_with_exit_1(enqueued, capsys):
    run_command("backfills", "run", "fill-a")
    with pytest.raises(CommandError) as caught:
        run_command("backfills", "pause", "fill-a")
    assert caught.value.returncode == 1
    assert "it is finished" in str(caught.value) and "backfills finalize fill-a" in str(caught.value)
    assert bg.get(connection, "fill-a").state == "finished"  # nothing changed


def test_text_list_and_status(enqueued):
    out, _ = run_command("backfills", "list")
    assert re.search(r"^fill-a\s+queued\s+0\.0%", out, re.M), out
    run_command("backfills", "run")
    out, _ = run_command("backfills", "status", "fill-b")
    assert "fill-b: finished" in out and "duty cycle" in out and "health (last reading" in out
    assert re.search(r"connections\s+\S+ / 0\.9", out), out


def test_finalize_refuses_naming_what_is_left_when_the_budget_is_too_short(enqueued, validate, capsys):
    bg.pause(connection, "fill-b")
    with pytest.raises(CommandError) as caught:
        run_command("backfills", "finalize", "fill-b", "--max-inline-seconds", "5")
    assert caught.value.returncode == 1
    message = str(caught.value)
    assert "fill-b' (paused" in message and "backfills resume fill-b" in message
    assert execute(f'SELECT count(*) FROM "{enqueued}" WHERE points <> id') == [(0,)]  # nothing ran
    bg.resume(connection, "fill-b")
    status, document = run_json(capsys, "finalize", "fill-b", "--max-inline-seconds", "0")
    assert status == 1 and not validate(document)["finalized"] and "ETA" in document["error"]["message"]


def test_run_exits_1_when_a_migration_fails(enqueued):
    execute(f'DROP TABLE "{enqueued}"')
    with pytest.raises(SystemExit) as caught:
        run_command("backfills", "run")
    assert caught.value.code == 1


@pytest.mark.parametrize("key, value", [
    ("BACKGROUND_MIN_ROWS", -1), ("BACKGROUND_DUTY_CYCLE", 0), ("BACKGROUND_DUTY_CYCLE", 1.5),
    ("BACKGROUND_HOLD_S", 0), ("BACKGROUND_MAX_CONNECTION_USE", 2), ("BACKGROUND_PAUSE_DURING_VACUUM", "yes"),
    ("BACKGROUND_HEALTH_CHECK", "nodots"), ("BACKGROUND_MAX_LOCK_WAITERS", -1),
])
def test_bad_settings_are_reported_by_check(key, value):
    from safemigrate.checks import check_settings

    with override_settings(SAFEMIGRATE={key: value}):
        errors = check_settings()
    assert [e.id for e in errors] == ["safemigrate.E003"] and key in errors[0].msg


LINT_APP = {
    "0001_initial.py": """
        from django.db import migrations, models


        class Migration(migrations.Migration):
            initial = True
            operations = [migrations.CreateModel("Item", [
                ("id", models.BigAutoField(primary_key=True)), ("note", models.TextField(null=True))],
                options={"db_table": "bgl_item"})]
    """,
    "0002_fill.py": """
        from django.db import migrations
        import safemigrate.operations


        class Migration(migrations.Migration):
            atomic = False
            dependencies = [("billing", "0001_initial")]
            operations = [safemigrate.operations.Backfill("item", set={"note": "'x'"}, name="bgl-fill",
                                                          background=True)]
    """,
    "0003_contract.py": """
        from django.db import migrations, models
        import safemigrate.operations


        class Migration(migrations.Migration):
            atomic = False
            dependencies = [("billing", "0002_fill")]
            operations = [safemigrate.operations.SetNotNull("item", "note", models.TextField(), stage="contract")]
    """,
}


def test_lint_flags_a_migration_that_constrains_a_column_a_pending_background_migration_fills(tmp_path,
                                                                                             transactional_db):
    from tests.utils import forget_migrations, temporary_migration_modules

    execute("DROP TABLE IF EXISTS safemigrate_backfill_progress")
    try:
        with temporary_migration_modules(tmp_path, {"billing": LINT_APP}):
            run_command("migrate", "billing", "0002_fill")
            execute("INSERT INTO bgl_item (note) SELECT NULL FROM generate_series(1, 500)")
            assert bg.get(connection, "bgl-fill").state == "queued"
            out, _ = run_command("lint_migrations", "billing", "--unapplied", "--format", "json")
            found = [f for f in json.loads(out)["findings"] if f["rule"] == "SAFE141"]
            assert [f["migration"] for f in found] == ["0003_contract"]
            assert "bgl-fill" in found[0]["reason"] and "backfills finalize bgl-fill" in found[0]["alternative"]
            assert json.loads(run_command("lint_migrations", "billing", "--format", "json")[0])["summary"]["errors"] == 0
            run_command("backfills", "run")
            out, _ = run_command("lint_migrations", "billing", "--unapplied", "--format", "json")
            assert not [f for f in json.loads(out)["findings"] if f["rule"] == "SAFE141"]
            run_command("migrate_contract", "billing")
            assert bg.get(connection, "bgl-fill").state == "finalized"
    finally:
        forget_migrations("billing")
        execute("DROP TABLE IF EXISTS bgl_item")
