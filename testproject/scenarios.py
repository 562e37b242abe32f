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
                      "WHERE table_name = '{table}' AND column_name = 'legacy')"],
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
                      "WHERE table_name = '{table}' AND column_name = 'points'"],
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
                      "WHERE table_name = '{table}' AND column_name = 'points'"],
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
                      "WHERE table_name = '{table}' AND column_name = 'note'"],
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
                      "WHERE table_name = '{table}' AND column_name = 'id'"],
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
