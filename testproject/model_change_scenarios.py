"""The five model changes of issue 21, rehearsed like the others (``testproject.scenario``).

Each was a common edit that ``makemigrations --safe`` got wrong: an
``auto_now_add`` field added to a busy model, a ``unique_together`` added, a
``db_column`` changed, a ``Meta.db_table`` changed and a ``GeneratedField``
added. ``tests/test_model_changes_traffic.py`` deploys each under old- and
new-code traffic with a lock blocker; ``benchmarks/model_changes.py`` does the
same on a bigger table.
"""

import django

from testproject.scenario import NOT_NULL, ScenarioSpec, Version
from testproject.scenarios import KEEP_NAME, NAME, OLD_UPDATES, OLD_WRITES, POINTS, fill, models_py

NEW_WRITES = {"name": "f'new-{i}'", "points": "i % 100000"}
NEW_UPDATES = {"name": "f'new-upd-{i}'"}
#: Django 6.1 adds VIRTUAL generated columns on PostgreSQL 18 (instant); before, only STORED ones (a rewrite).
VIRTUAL_GENERATED = django.VERSION >= (6, 1)

MODEL_CHANGE_SCENARIOS = {
    "add_auto_now_add": ScenarioSpec(
        name="add_auto_now_add",
        old=Version(models_py(NAME, POINTS), OLD_WRITES, OLD_UPDATES, ["name"]),
        new=Version(models_py(NAME, POINTS, "created = models.DateTimeField(auto_now_add=True)"),
                    NEW_WRITES, NEW_UPDATES, ["created"]),
        fill_sql=fill(),
        expect_old={"name": "v['name']", "created": repr(NOT_NULL)},
        expect_new={"name": "v['name']", "created": repr(NOT_NULL)},
        final_checks=["SELECT is_nullable = 'NO' AND column_default IS NULL FROM information_schema.columns "
                      "WHERE table_name = '{table}' AND column_name = 'created'",
                      'SELECT count(*) = 0 FROM "{table}" WHERE created IS NULL'],
        # makemigrations asks for a one-off default: 1) provide one, accept timezone.now.
        answers="1\n\n",
    ),
    "add_unique_together": ScenarioSpec(
        name="add_unique_together",
        old=Version(models_py(NAME, POINTS), OLD_WRITES, OLD_UPDATES, ["name"]),
        new=Version(models_py(NAME, POINTS, "", "class Meta:", '    unique_together = [("name", "points")]'),
                    NEW_WRITES, NEW_UPDATES, ["name"]),
        fill_sql=fill(),
        expect_old=KEEP_NAME,
        expect_new=KEEP_NAME,
        final_checks=["SELECT count(*) = 1 FROM pg_constraint WHERE conrelid = '{table}'::regclass AND contype = 'u'",
                      "SELECT count(*) = 0 FROM pg_index WHERE indrelid = '{table}'::regclass AND NOT indisvalid"],
    ),
    "change_db_column": ScenarioSpec(
        name="change_db_column",
        old=Version(models_py(NAME, POINTS), OLD_WRITES, OLD_UPDATES, ["name"]),
        new=Version(models_py('name = models.CharField(max_length=50, db_column="title")', POINTS),
                    NEW_WRITES, NEW_UPDATES, ["name"]),
        fill_sql=fill(),
        expect_old={"title": "v['name']"},
        expect_new={"title": "v['name']"},
        final_checks=["SELECT NOT EXISTS (SELECT 1 FROM information_schema.columns "
                      "WHERE table_name = '{table}' AND column_name = 'name')"],
    ),
    "change_db_table": ScenarioSpec(
        name="change_db_table",
        old=Version(models_py(NAME, POINTS), OLD_WRITES, OLD_UPDATES, ["name"]),
        new=Version(models_py(NAME, POINTS, "", "class Meta:", '    db_table = "zdt_items"'),
                    NEW_WRITES, NEW_UPDATES, ["name"]),
        fill_sql=fill(),
        expect_old=KEEP_NAME,
        expect_new=KEEP_NAME,
        final_table="zdt_items",
        final_checks=["SELECT to_regclass('zdtapp_item') IS NULL"],
    ),
    "add_generated_field": ScenarioSpec(
        name="add_generated_field",
        old=Version(models_py(NAME, POINTS), OLD_WRITES, OLD_UPDATES, ["name"]),
        new=Version(models_py(NAME, POINTS, "double = models.GeneratedField(expression=models.F('points') * 2, "
                                            "output_field=models.BigIntegerField(), "
                                            f"db_persist={not VIRTUAL_GENERATED})"),
                    NEW_WRITES, NEW_UPDATES, ["double"]),
        fill_sql=fill(),
        expect_old={"name": "v['name']", "double": "v['points'] * 2"},
        expect_new={"name": "v['name']", "double": "v['points'] * 2"},
    ),
}
