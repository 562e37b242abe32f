"""Every statement ``migrate`` runs is lock-bounded: plain migrations, RunSQL, contract, rollbacks.

A second app (``billing``, migrations supplied on the fly) changes a busy
100k-row table with plain Django operations, not ``makemigrations --safe``
output, while old-code traffic reads and writes it and a Blocker keeps taking
ACCESS SHARE for 1.2 s at a time. Each test runs the real ``migrate`` /
``migrate_contract`` commands, forwards and backwards, and asserts: no
request slower than lock_timeout + 100 ms, no error, the schema as Django
would have built it.
"""

import time

import pytest
from django.db import connection, connections, models
from django.test import override_settings

from tests.traffic import Blocker, Traffic
from tests.utils import (
    execute,
    fill_table,
    forget_migrations,
    run_command,
    temporary_migration_modules,
    unique_table,
    version_of_model,
)

pytestmark = pytest.mark.traffic

ROWS = 100_000
LOCK_TIMEOUT_MS = 200
BOUND = (LOCK_TIMEOUT_MS + 100) / 1000
FAST_RETRIES = {"LOCK_TIMEOUT_MS": LOCK_TIMEOUT_MS, "LOCK_RETRIES": 60, "RETRY_BACKOFF_MAX_MS": 400}

HEADER = "from django.db import migrations, models\nimport django.db.models.deletion\nimport safemigrate.operations\n"


def state_only_initial(item, parent, extra_fields=""):
    """billing 0001: the existing tables, known to the migration state only (they already exist)."""
    return HEADER + f"""
class Migration(migrations.Migration):
    initial = True
    dependencies = []
    operations = [migrations.SeparateDatabaseAndState(state_operations=[
        migrations.CreateModel("Parent", [("id", models.BigAutoField(primary_key=True))],
                               options={{"db_table": "{parent}"}}),
        migrations.CreateModel("Item", [
            ("id", models.BigAutoField(primary_key=True)),
            ("v", models.IntegerField()),
            ("label", models.CharField(max_length=20, null=True)),{extra_fields}
        ], options={{"db_table": "{item}"}}),
    ])]
"""


@pytest.fixture
def busy(transactional_db):
    item, parent, note = unique_table("item"), unique_table("par"), unique_table("note")
    execute(f'CREATE TABLE "{parent}" (id bigserial PRIMARY KEY)')
    execute(f'INSERT INTO "{parent}" SELECT generate_series(1, 10)')
    execute(f'CREATE TABLE "{item}" (id bigserial PRIMARY KEY, v int NOT NULL, label varchar(20))')
    fill_table(item, ROWS, v="i", label="'l' || i")
    yield item, parent, note
    connections.close_all()
    for name in (note, item, parent):
        execute(f'DROP TABLE IF EXISTS "{name}" CASCADE')
    forget_migrations("billing")


def old_code(table, offset=0, rows=ROWS, text_field="label"):
    """Inserts and updates through a model that knows ``v`` and one text field (old code's view)."""
    Item = version_of_model(
        "Item", {"v": models.IntegerField(), text_field: models.CharField(max_length=20, null=True)}, table
    )

    def work(index, iteration):
        if iteration % 2:
            Item.objects.create(v=ROWS + offset + 1_000_000 * (index + 1) + iteration, **{text_field: "new"})
        else:
            row = Item.objects.filter(pk=(iteration * 7919) % rows + 1).first()
            setattr(row, text_field, f"u{iteration}")
            row.save(update_fields=[text_field])

    return work


def under_traffic(tables, blocked, action, **workload):
    """Run ``action`` while old code hits every table in ``tables`` and ``blocked`` is blocked."""
    traffic = [Traffic(f"code on {t}", old_code(t, offset=n * 10_000_000, **workload)) for n, t in enumerate(tables)]
    with Blocker(blocked, hold=1.2) as blocker:
        for t in traffic:
            t.start()
        time.sleep(0.3)
        started = time.monotonic()
        output = action()
        elapsed = time.monotonic() - started
        time.sleep(0.3)
        results = [t.stop() for t in traffic]
    print(f"{action.__name__ if hasattr(action, '__name__') else action}: " + "; ".join(map(str, results)))
    assert not blocker.errors
    assert blocker.holds >= 1, "the blocker must overlap the migration"
    for result in results:
        assert result.errors == [], result.errors[:1]
        assert result.calls > 20, str(result)
        assert result.slow(BOUND) == [], f"{result} (migration took {elapsed:.2f}s)"
    return output, results


def columns(table):
    return {name: nullable for name, nullable in execute(
        "SELECT column_name, is_nullable = 'YES' FROM information_schema.columns WHERE table_name = %s", [table])}


def constraints(table):
    """{name: (type, validated)} of ``table``'s constraints (PostgreSQL 18's NOT NULL entries left out)."""
    return {name: (kind, valid) for name, kind, valid in execute(
        "SELECT conname, contype, convalidated FROM pg_constraint WHERE conrelid = to_regclass(%s) "
        "AND contype <> 'n'", [f'"{table}"'])}


def indexes(table):
    """{index name: (definition, valid)}."""
    return {name: (definition, valid) for name, definition, valid in execute(
        "SELECT c.relname, pg_get_indexdef(i.indexrelid), i.indisvalid FROM pg_index i "
        "JOIN pg_class c ON c.oid = i.indexrelid WHERE i.indrelid = to_regclass(%s)", [f'"{table}"'])}


def plain_changes(item, parent, note, atomic):
    return HEADER + f"""
class Migration(migrations.Migration):
    atomic = {atomic}
    dependencies = [("billing", "0001_initial")]
    operations = [
        migrations.AddField("item", "parent", models.ForeignKey(
            "billing.Parent", django.db.models.deletion.CASCADE, null=True)),
        migrations.AlterUniqueTogether("item", {{("v", "parent")}}),
        migrations.AddField("item", "code", models.CharField(max_length=8, null=True, unique=True)),
        migrations.AddIndex("item", models.Index(fields=["label"], name="plain_label_idx")),
        migrations.AddConstraint("item", models.CheckConstraint(condition=models.Q(v__gt=0), name="plain_v_pos")),
        migrations.CreateModel("Note", [
            ("id", models.BigAutoField(primary_key=True)),
            ("item", models.ForeignKey("billing.Item", django.db.models.deletion.CASCADE)),
        ], options={{"db_table": "{note}"}}),
    ]
"""


def test_plain_non_atomic_migration_is_rewritten_and_bounded_both_ways(tmp_path, busy):
    item, parent, note = busy
    files = {"0001_initial.py": state_only_initial(item, parent),
             "0002_plain.py": plain_changes(item, parent, note, atomic=False)}
    with override_settings(SAFEMIGRATE=FAST_RETRIES), temporary_migration_modules(tmp_path, {"billing": files}):
        run_command("migrate", "billing", "0001", "--noinput")
        (out, err), _ = under_traffic([item], item, lambda: run_command("migrate", "billing", "--noinput"))
        assert "rewritten to keep traffic flowing" in err and "rewritten" not in out, "diagnostics go to stderr"
        assert "CREATE UNIQUE INDEX CONCURRENTLY" in err and "VALIDATE CONSTRAINT" in err
        assert "not made safe" not in err
        # The schema Django would have built: FK (validated), its index, the unique pair, the new table.
        assert columns(item)["parent_id"] is True
        kinds = constraints(item)
        assert sorted(kind for kind, _ in kinds.values()) == ["c", "f", "p", "u", "u"], kinds
        assert all(valid for _, valid in kinds.values())
        defs = indexes(item)
        assert all(valid for _, valid in defs.values()), defs
        assert any("UNIQUE" in d and "(v, parent_id)" in d for d, _ in defs.values()), defs
        assert any("UNIQUE" not in d and "(parent_id)" in d for d, _ in defs.values()), defs
        assert "plain_label_idx" in defs and any("varchar_pattern_ops" in d for d, _ in defs.values()), defs
        note_kinds = constraints(note)
        assert sorted(kind for kind, _ in note_kinds.values()) == ["f", "p"] and all(
            valid for _, valid in note_kinds.values())
        # Backwards, under the same traffic: everything removed, bounded.
        under_traffic([item], item, lambda: run_command("migrate", "billing", "0001", "--noinput"))
        assert "parent_id" not in columns(item) and "code" not in columns(item)
        assert sorted(indexes(item)) == [f"{item}_pkey"]
        assert sorted(kind for kind, _ in constraints(item).values()) == ["p"]
        assert not execute("SELECT to_regclass(%s)", [f'"{note}"'])[0][0]


def test_atomic_plain_migration_reports_what_it_could_not_make_safe(tmp_path, busy):
    """Atomic: no CONCURRENTLY possible; each blocking statement runs bounded and gets a line."""
    item, parent, note = busy
    files = {"0001_initial.py": state_only_initial(item, parent),
             "0002_plain.py": plain_changes(item, parent, note, atomic=True)}
    with temporary_migration_modules(tmp_path, {"billing": files}):
        run_command("migrate", "billing", "0001", "--noinput")
        out, err = run_command("migrate", "billing", "--noinput")
    assert "not made safe" not in out, "stdout stays Django's"
    lines = [line for line in err.splitlines() if "not made safe" in line]
    assert any("UNIQUE" in line and "set atomic = False" in line for line in lines), out
    assert any("CREATE INDEX" in line for line in lines), out
    # CREATE INDEX on the new table is harmless: no line for it.
    assert not any(f'ON "{note}"' in line for line in lines), lines
    assert "rewritten" not in err
    assert sorted(kind for kind, _ in constraints(item).values()) == ["c", "f", "p", "u", "u"]


def test_rewriting_can_be_turned_off_per_app(tmp_path, busy):
    item, parent, note = busy
    files = {"0001_initial.py": state_only_initial(item, parent),
             "0002_plain.py": plain_changes(item, parent, note, atomic=False)}
    settings = {"REWRITE_PLAIN_OPERATIONS": {"default": True, "billing": False}}
    with override_settings(SAFEMIGRATE=settings), temporary_migration_modules(tmp_path, {"billing": files}):
        run_command("migrate", "billing", "0001", "--noinput")
        _, err = run_command("migrate", "billing", "--noinput")
    assert "rewritten" not in err
    assert "not made safe (no lock-friendly equivalent is known)" in err
    assert sorted(kind for kind, _ in constraints(item).values()) == ["c", "f", "p", "u", "u"]


@pytest.mark.parametrize("atomic", [True, False])
def test_run_sql_alter_is_bounded_and_retried(tmp_path, busy, atomic):
    item, parent, _ = busy
    files = {
        "0001_initial.py": state_only_initial(item, parent),
        "0002_runsql.py": HEADER + f"""
class Migration(migrations.Migration):
    atomic = {atomic}
    dependencies = [("billing", "0001_initial")]
    operations = [migrations.RunSQL(
        'ALTER TABLE "{item}" ADD COLUMN flag boolean; ALTER TABLE "{item}" ALTER COLUMN label SET DEFAULT \\'x\\'',
        'ALTER TABLE "{item}" ALTER COLUMN label DROP DEFAULT; ALTER TABLE "{item}" DROP COLUMN flag',
    )]
""",
    }
    with override_settings(SAFEMIGRATE=FAST_RETRIES), temporary_migration_modules(tmp_path, {"billing": files}):
        run_command("migrate", "billing", "0001", "--noinput")
        (_, err), _ = under_traffic([item], item, lambda: run_command("migrate", "billing", "--noinput"))
        assert "flag" in columns(item)
        assert execute("SELECT column_default FROM information_schema.columns "
                       "WHERE table_name = %s AND column_name = 'label'", [item])[0][0].startswith("'x'")
        if atomic:
            assert "the whole migration was rolled back" in err
        else:
            assert "statement rolled back, retried alone" in err
        under_traffic([item], item, lambda: run_command("migrate", "billing", "0001", "--noinput"))
        assert "flag" not in columns(item)
    assert execute("SELECT count(*) FROM django_migrations WHERE app = 'billing'")[0][0] == 1


def test_contract_dropping_columns_of_two_tables_keeps_neither_locked_while_waiting(tmp_path, busy):
    """The accumulation bug: table 1 must not stay ACCESS EXCLUSIVE while table 2's lock is retried."""
    item, parent, _ = busy
    second = unique_table("item2")
    execute(f'CREATE TABLE "{second}" (id bigserial PRIMARY KEY, v int NOT NULL, label varchar(20), legacy text)')
    fill_table(second, ROWS, v="i", label="'l' || i")
    execute(f'ALTER TABLE "{item}" ADD COLUMN legacy text')
    files = {
        "0001_initial.py": state_only_initial(item, parent, extra_fields='\n            ("legacy", models.TextField(null=True)),')
        + f"""
Migration.operations[0].state_operations.append(migrations.CreateModel("Second", [
    ("id", models.BigAutoField(primary_key=True)), ("v", models.IntegerField()),
    ("label", models.CharField(max_length=20, null=True)), ("legacy", models.TextField(null=True)),
], options={{"db_table": "{second}"}}))
""",
        "0002_contract.py": HEADER + """
class Migration(migrations.Migration):
    dependencies = [("billing", "0001_initial")]
    operations = [
        safemigrate.operations.RemoveFieldSafely("item", "legacy"),
        safemigrate.operations.DropColumn("item", "legacy", field=models.TextField(null=True)),
        safemigrate.operations.RemoveFieldSafely("second", "legacy"),
        safemigrate.operations.DropColumn("second", "legacy", field=models.TextField(null=True)),
    ]
""",
    }
    try:
        with override_settings(SAFEMIGRATE=FAST_RETRIES), temporary_migration_modules(tmp_path, {"billing": files}):
            run_command("migrate", "billing", "--noinput")
            (_, err), _ = under_traffic([item, second], second,
                                        lambda: run_command("migrate_contract", "billing", "--noinput"))
            assert "the whole migration was rolled back" in err
            assert "legacy" not in columns(item) and "legacy" not in columns(second)
            # Backwards (columns come back, empty and nullable), bounded the same way.
            under_traffic([item, second], second, lambda: run_command("migrate", "billing", "0001", "--noinput"))
            assert columns(item)["legacy"] is True and columns(second)["legacy"] is True
    finally:
        connections.close_all()
        execute(f'DROP TABLE IF EXISTS "{second}" CASCADE')
