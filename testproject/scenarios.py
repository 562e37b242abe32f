"""The model changes rehearsed by the zero-downtime tests and the demo.

Each is the old and the new ``models.py`` of the scenario app plus what each
code version's traffic writes, and how those writes must look in the final
schema. Expressions are evaluated by the traffic worker (``i`` is a counter)
and by the runner (``v`` is what a version wrote).
"""

from testproject.scenario import NOT_NULL, ScenarioSpec, Version

HEAD = "import uuid\nfrom django.db import models\n\n\nclass Item(models.Model):\n"
FILL = "INSERT INTO \"{{table}}\" (name, points{extra}) SELECT 'n' || i, i{extra_values} FROM generate_series(1, {{rows}}) i"


def models_py(*fields):
    return HEAD + "".join(f"    {line}\n" for line in fields)


NAME = 'name = models.CharField(max_length=50)'
POINTS = 'points = models.IntegerField(default=0)'
OLD_WRITES = {"name": "f'old-{i}'", "points": "i % 100000"}
OLD_UPDATES = {"name": "f'old-upd-{i}'"}
KEEP_NAME = {"name": "v['name']"}


def fill(extra="", extra_values=""):
    return FILL.format(extra=extra, extra_values=extra_values)


SCENARIOS = {
    "add_not_null_field": ScenarioSpec(
        name="add_not_null_field",
        old=Version(models_py(NAME, POINTS), OLD_WRITES, OLD_UPDATES, ["name"]),
        new=Version(models_py(NAME, POINTS, 'currency = models.CharField(max_length=3, default="EUR")'),
                    {"name": "f'new-{i}'", "points": "i % 100000", "currency": "'USD'"},
                    {"name": "f'new-upd-{i}'", "currency": "'GBP'"}, ["currency"]),
        fill_sql=fill(),
        expect_old={"name": "v['name']", "currency": "'EUR'"},
        expect_new={"name": "v['name']", "currency": "v['currency']"},
    ),
    "add_callable_default": ScenarioSpec(
        name="add_callable_default",
        old=Version(models_py(NAME, POINTS), OLD_WRITES, OLD_UPDATES, ["name"]),
        new=Version(models_py(NAME, POINTS, "token = models.UUIDField(default=uuid.uuid4, unique=True)"),
                    {"name": "f'new-{i}'", "points": "i % 100000"}, {"name": "f'new-upd-{i}'"}, ["token"]),
        fill_sql=fill(),
        expect_old={"name": "v['name']", "token": repr(NOT_NULL)},
        expect_new={"name": "v['name']", "token": repr(NOT_NULL)},
        final_checks=['SELECT count(DISTINCT token) = count(*) AND count(token) = count(*) FROM "{table}"'],
    ),
    "remove_field": ScenarioSpec(
        name="remove_field",
        old=Version(models_py(NAME, POINTS, "legacy = models.TextField()"),
                    {**OLD_WRITES, "legacy": "'x'"}, {"name": "f'old-upd-{i}'", "legacy": "'y'"}, ["legacy"]),
        new=Version(models_py(NAME, POINTS), {"name": "f'new-{i}'", "points": "1"}, {"name": "f'new-upd-{i}'"}, ["name"]),
        fill_sql=fill(", legacy", ", 'x'"),
        expect_old=KEEP_NAME,
        expect_new=KEEP_NAME,
        final_checks=["SELECT NOT EXISTS (SELECT 1 FROM information_schema.columns "
                      "WHERE table_schema = current_schema() AND table_name = '{table}' AND column_name = 'legacy')"],
    ),
    "rename_field": ScenarioSpec(
        name="rename_field",
        old=Version(models_py('name = models.CharField(max_length=50, db_index=True)', POINTS),
                    OLD_WRITES, OLD_UPDATES, ["name"]),
        new=Version(models_py('full_name = models.CharField(max_length=50, db_index=True)', POINTS),
                    {"full_name": "f'new-{i}'", "points": "1"}, {"full_name": "f'new-upd-{i}'"}, ["full_name"]),
        fill_sql=fill(),
        expect_old={"full_name": "v['name']"},
        expect_new={"full_name": "v['full_name']"},
    ),
    "change_type": ScenarioSpec(
        name="change_type",
        old=Version(models_py(NAME, POINTS), OLD_WRITES, {"points": "i % 1000"}, ["points"]),
        new=Version(models_py(NAME, 'points = models.BigIntegerField(default=0)'),
                    {"name": "f'new-{i}'", "points": "i % 100000"}, {"points": "i % 1000 + 7"}, ["points"]),
        fill_sql=fill(),
        expect_old={"name": "v['name']", "points": "v['points']"},
        expect_new={"name": "v['name']", "points": "v['points']"},
        final_checks=["SELECT data_type = 'bigint' FROM information_schema.columns "
                      "WHERE table_schema = current_schema() AND table_name = '{table}' AND column_name = 'points'"],
    ),
    "narrow_type": ScenarioSpec(
        name="narrow_type",
        old=Version(models_py(NAME, 'points = models.BigIntegerField(default=0)'), OLD_WRITES,
                    {"points": "i % 1000"}, ["points"]),
        new=Version(models_py(NAME, POINTS),
                    {"name": "f'new-{i}'", "points": "i % 100000"}, {"points": "i % 1000 + 7"}, ["points"]),
        fill_sql=fill(),
        expect_old={"name": "v['name']", "points": "v['points']"},
        expect_new={"name": "v['name']", "points": "v['points']"},
        final_checks=["SELECT data_type = 'integer' FROM information_schema.columns "
                      "WHERE table_schema = current_schema() AND table_name = '{table}' AND column_name = 'points'"],
    ),
    "set_not_null": ScenarioSpec(
        name="set_not_null",
        old=Version(models_py(NAME, POINTS, "note = models.TextField(null=True)"),
                    {**OLD_WRITES, "note": "None if i % 2 else 'kept'"}, {"note": "None"}, ["note"]),
        new=Version(models_py(NAME, POINTS, 'note = models.TextField(default="")'),
                    {"name": "f'new-{i}'", "points": "1", "note": "f'n{i}'"}, {"note": "'set'"}, ["note"]),
        fill_sql=fill(", note", ", CASE WHEN i % 3 = 0 THEN NULL ELSE 'x' END"),
        expect_old={"note": "v['note'] if v['note'] is not None else ''"},
        expect_new={"note": "v['note']"},
        final_checks=["SELECT is_nullable = 'NO' FROM information_schema.columns "
                      "WHERE table_schema = current_schema() AND table_name = '{table}' AND column_name = 'note'"],
    ),
    "add_indexes": ScenarioSpec(
        name="add_indexes",
        old=Version(models_py(NAME, POINTS), OLD_WRITES, OLD_UPDATES, ["name"]),
        new=Version(models_py('name = models.CharField(max_length=50, db_index=True)', POINTS,
                              "code = models.CharField(max_length=20, null=True, unique=True)",
                              'parent = models.ForeignKey("self", models.SET_NULL, null=True)',
                              "",
                              "class Meta:",
                              '    indexes = [models.Index(fields=["points"], name="zdt_points_idx")]',
                              '    constraints = [models.CheckConstraint(condition=models.Q(points__gte=0), '
                              'name="zdt_points_gte_0")]'),
                    {"name": "f'new-{i}'", "points": "i % 100000", "code": "f'c{i}'"},
                    {"name": "f'new-upd-{i}'"}, ["code"]),
        fill_sql=fill(),
        expect_old=KEEP_NAME,
        expect_new={"name": "v['name']", "code": "v['code']"},
        final_checks=["SELECT count(*) = 0 FROM pg_index WHERE indrelid = '{table}'::regclass AND NOT indisvalid",
                      "SELECT count(*) >= 5 FROM pg_index WHERE indrelid = '{table}'::regclass",
                      "SELECT count(*) = 2 FROM pg_constraint WHERE conrelid = '{table}'::regclass "
                      "AND contype IN ('c', 'f') AND convalidated"],
    ),
    "bigint_primary_key": ScenarioSpec(
        name="bigint_primary_key",
        old=Version(models_py("id = models.AutoField(primary_key=True)", NAME, POINTS),
                    OLD_WRITES, OLD_UPDATES, ["name"]),
        new=Version(models_py("id = models.BigAutoField(primary_key=True)", NAME, POINTS),
                    {"name": "f'new-{i}'", "points": "1"}, {"name": "f'new-upd-{i}'"}, ["name"]),
        fill_sql=fill(),
        expect_old=KEEP_NAME,
        expect_new=KEEP_NAME,
        final_checks=["SELECT data_type = 'bigint' FROM information_schema.columns "
                      "WHERE table_schema = current_schema() AND table_name = '{table}' AND column_name = 'id'"],
    ),
    # The demo's change: a rename and a type change in one deploy.
    "rename_and_retype": ScenarioSpec(
        name="rename_and_retype",
        old=Version(models_py(NAME, POINTS), OLD_WRITES, {"name": "f'old-upd-{i}'", "points": "i % 1000"},
                    ["name", "points"]),
        new=Version(models_py('full_name = models.CharField(max_length=50)',
                              'points = models.BigIntegerField(default=0)'),
                    {"full_name": "f'new-{i}'", "points": "i % 100000"},
                    {"full_name": "f'new-upd-{i}'", "points": "i % 1000 + 7"}, ["full_name", "points"]),
        fill_sql=fill(),
        expect_old={"full_name": "v['name']", "points": "v['points']"},
        expect_new={"full_name": "v['full_name']", "points": "v['points']"},
    ),
}


# -- partitioned tables (docs/pages/partitioned-tables.md) --------------------------------------------
#
# The old code's table is created by hand-written DDL behind an ordinary model, as projects do, with
# 8 partitions. A ninth partition is attached while ``migrate`` runs (ATTACH PARTITION: SHARE UPDATE
# EXCLUSIVE on the parent, so the application's reads and writes go on), and must end up with every
# index and constraint too.

PARTITIONED_HEAD = (
    "import uuid\nfrom django.db import models\n\n\n"
    "class Tag(models.Model):\n    label = models.CharField(max_length=20)\n\n\n"
    "class Item(models.Model):\n"
)


def partitioned_models(*fields):
    return PARTITIONED_HEAD + "".join(f"    {line}\n" for line in fields)


def partitioned_initial(strategy, fields, then=""):
    """The old code's 0001: ``Tag`` as Django makes it, ``Item`` by hand-written partitioned DDL."""
    columns = {"list": '"region varchar(10) NOT NULL", "name varchar(50) NOT NULL", "points integer NOT NULL", '
                       '"note varchar(20) NULL", "legacy text NULL"',
               "range": '"region varchar(10) NOT NULL", "points integer NOT NULL", "amount integer NOT NULL"'}
    return f'''
from django.db import migrations, models
from testproject.partitioned import create_sql


class Migration(migrations.Migration):
    initial = True
    operations = [
        migrations.CreateModel("Tag", [
            ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
            ("label", models.CharField(max_length=20)),
        ]),
        migrations.SeparateDatabaseAndState(
            database_operations=[migrations.RunSQL(create_sql("{{table}}", [{columns[strategy]}],
                                                              {strategy!r}, rows_hint={{rows}}))],
            state_operations=[migrations.CreateModel("Item", [
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                {fields}
            ])],
        ),{then}
    ]
'''


#: Every index of the table valid, attached on every partition (the attached one included), every
#: constraint of the table and its partitions validated.
PARTITIONS_COMPLETE = [
    "SELECT bool_and(i.indisvalid AND (SELECT count(*) FROM pg_partition_tree(i.indexrelid) t WHERE t.isleaf) "
    "= (SELECT count(*) FROM pg_partition_tree('{table}'::regclass) t WHERE t.isleaf)) "
    "FROM pg_index i WHERE i.indrelid = '{table}'::regclass",
    "SELECT (SELECT count(*) FROM pg_partition_tree('{table}'::regclass) t WHERE t.isleaf) = 9",
    "SELECT bool_and(convalidated) FROM pg_constraint "
    "WHERE conrelid IN (SELECT relid FROM pg_partition_tree('{table}'::regclass))",
    "SELECT count(*) = 0 FROM pg_index WHERE NOT indisvalid",
]
ATTACH_A_PARTITION = [
    'CREATE TABLE "{table}_p8" (LIKE "{table}" INCLUDING DEFAULTS)',
    'ALTER TABLE "{table}" ATTACH PARTITION "{table}_p8" FOR VALUES IN (\'r8\')',
]
REGION = "f'r{i % 8}'"

PARTITIONED_SCENARIOS = {
    # List-partitioned on region (key (id, region)): an index, a unique constraint including the
    # partition key, a check, a foreign key with its index, a NOT NULL column with a default, a
    # nullable column made NOT NULL, a column removed.
    "partitioned_constraints": ScenarioSpec(
        name="partitioned_constraints",
        old=Version(partitioned_models("region = models.CharField(max_length=10)",
                                       "name = models.CharField(max_length=50)",
                                       "points = models.IntegerField(default=0)",
                                       "note = models.CharField(max_length=20, null=True)",
                                       "legacy = models.TextField(null=True)"),
                    {"region": REGION, "name": "f'old-{i}'", "points": "i % 100000", "note": "'n'", "legacy": "'x'"},
                    {"name": "f'old-upd-{i}'"}, ["name"]),
        new=Version(partitioned_models(
            "region = models.CharField(max_length=10)",
            "name = models.CharField(max_length=50)",
            "points = models.IntegerField(default=0)",
            'note = models.CharField(max_length=20, default="")',
            'currency = models.CharField(max_length=3, default="EUR")',
            "tag = models.ForeignKey(Tag, models.SET_NULL, null=True, db_index=False)",
            "",
            "class Meta:",
            '    indexes = [models.Index(fields=["points"], name="item_points_idx")]',
            '    constraints = [models.UniqueConstraint(fields=["name", "region"], name="item_name_region_uniq"),',
            '                   models.CheckConstraint(condition=models.Q(points__gte=0), name="item_points_gte_0")]'),
            {"region": REGION, "name": "f'new-{i}'", "points": "i % 100000", "note": "'m'", "currency": "'USD'"},
            {"name": "f'new-upd-{i}'", "currency": "'GBP'"}, ["currency"]),
        fill_sql="INSERT INTO \"{table}\" (region, name, points, note, legacy) "
                 "SELECT 'r' || (i % 8), 'n' || i, i, 'n', 'x' FROM generate_series(1, {rows}) i",
        initial_migration=partitioned_initial("list", '''("region", models.CharField(max_length=10)),
                ("name", models.CharField(max_length=50)),
                ("points", models.IntegerField(default=0)),
                ("note", models.CharField(max_length=20, null=True)),
                ("legacy", models.TextField(null=True)),'''),
        during_migrate=ATTACH_A_PARTITION,
        expect_old={"name": "v['name']", "currency": "'EUR'"},
        expect_new={"name": "v['name']", "currency": "v['currency']"},
        final_checks=PARTITIONS_COMPLETE + [
            "SELECT count(*) = 3 FROM pg_constraint WHERE conrelid = '{table}'::regclass AND contype IN ('u', 'c', 'f')",
            "SELECT count(*) = 3 FROM pg_index WHERE indrelid = '{table}'::regclass",
            "SELECT attnotnull FROM pg_attribute WHERE attrelid = '{table}'::regclass AND attname = 'note'",
            "SELECT NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = '{table}'::regclass "
            "AND attname = 'legacy' AND NOT attisdropped)",
        ],
    ),
    # Range-partitioned on id (key (id)): a rename of an indexed column (trigger on every partition,
    # backfill, the index rebuilt partition by partition), a type change (shadow column, cast trigger,
    # swap), a field with a callable default (backfilled across partitions).
    "partitioned_columns": ScenarioSpec(
        name="partitioned_columns",
        old=Version(partitioned_models("region = models.CharField(max_length=10)",
                                       "points = models.IntegerField(default=0, db_index=True)",
                                       "amount = models.IntegerField(default=0)"),
                    {"region": REGION, "points": "i % 100000", "amount": "i % 1000"},
                    {"points": "i % 777", "amount": "i % 1000"}, ["points", "amount"]),
        new=Version(partitioned_models("region = models.CharField(max_length=10)",
                                       "score = models.IntegerField(default=0, db_index=True)",
                                       "amount = models.BigIntegerField(default=0)",
                                       "token = models.UUIDField(default=uuid.uuid4)"),
                    {"region": REGION, "score": "i % 100000", "amount": "i % 1000"},
                    {"score": "i % 777 + 1", "amount": "i % 1000 + 7"}, ["score", "token"]),
        fill_sql="INSERT INTO \"{table}\" (region, points, amount) "
                 "SELECT 'r' || (i % 8), i, i % 1000 FROM generate_series(1, {rows}) i",
        # The index on points as Django makes it (a plain CREATE INDEX on the still empty parent).
        initial_migration=partitioned_initial("range", '''("region", models.CharField(max_length=10)),
                ("points", models.IntegerField(default=0)),
                ("amount", models.IntegerField(default=0)),''', then='''
        migrations.AlterField("item", "points", models.IntegerField(default=0, db_index=True)),'''),
        answers="y\n" * 8,
        expect_old={"score": "v['points']", "amount": "v['amount']", "token": repr(NOT_NULL)},
        expect_new={"score": "v['score']", "amount": "v['amount']", "token": repr(NOT_NULL)},
        final_checks=PARTITIONS_COMPLETE[:1] + PARTITIONS_COMPLETE[2:] + [
            "SELECT format_type(atttypid, atttypmod) = 'bigint' FROM pg_attribute "
            "WHERE attrelid = '{table}'::regclass AND attname = 'amount'",
            "SELECT count(*) = 0 FROM pg_trigger WHERE NOT tgisinternal "
            "AND tgrelid IN (SELECT relid FROM pg_partition_tree('{table}'::regclass))",
        ],
    ),
}
