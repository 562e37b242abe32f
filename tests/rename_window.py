"""Shared pieces of the rename-window tests: a customer table, two code versions, the ORM matrix.

The old code knows the column as ``name``, the new code as ``full_name``;
``orm_matrix`` runs every kind of write Django sends through one version's
model and checks what both versions then read.
"""

import zlib

from django.db import connection, connections, migrations, models, transaction
from django.db.migrations.state import ModelState, ProjectState

from tests.utils import apply_operations, execute, fill_table, version_of_model


def customer_state(table, extra=()):
    state = ProjectState()
    state.add_model(ModelState(
        "shop", "Customer",
        [("id", models.BigAutoField(primary_key=True)),
         ("name", models.CharField(max_length=50, db_index=True)),
         ("code", models.IntegerField(unique=True, null=True)),
         ("points", models.IntegerField(default=0, db_default=0)), *extra],
        options={"db_table": table},
    ))
    return state


def create_customers(table, rows=200, extra=()):
    state = customer_state(table, extra)
    apply_operations([migrations.CreateModel(
        "Customer", list(state.models["shop", "customer"].fields.items()), options={"db_table": table})],
        atomic=True)
    if rows:
        fill_table(table, rows, name="'c' || i", code="i", points="i")
    return state


def _base(tag):
    return 1_000_000 + zlib.crc32(tag.encode()) % 1000 * 1000


def versions(table, using_name="name"):
    """(old code's model, new code's model) for ``table``, each in its own registry."""
    common = {"code": models.IntegerField(unique=True, null=True), "points": models.IntegerField(default=0)}
    old = version_of_model("Customer", {"name": models.CharField(max_length=50), **common}, table)
    new = version_of_model("Customer", {"full_name": models.CharField(max_length=50), **common}, table)
    return old, new


def orm_matrix(model, column, tag, using="default"):
    """Every kind of write Django sends, through ``model`` whose renamed field is ``column``.

    ``tag`` keeps the rows of different runs apart (codes are unique).
    Returns the ids it created. Raises on the first failure.
    """
    base = _base(tag)
    objects = model.objects.using(using)
    created = objects.create(code=base, points=1, **{column: f"{tag}-create"})
    assert created.pk is not None
    assert objects.get(pk=created.pk).points == 1
    # bulk_create with update_conflicts: an upsert on the unique code, RETURNING the keys.
    rows = [model(code=base, points=2, **{column: f"{tag}-upsert"}), model(code=base + 1, points=3, **{column: f"{tag}-bulk"})]
    done = objects.bulk_create(rows, update_conflicts=True, unique_fields=["code"], update_fields=[column, "points"])
    assert all(row.pk is not None for row in done)
    assert objects.get(code=base).__dict__[column] == f"{tag}-upsert"
    assert objects.filter(code=base + 1).update(**{column: f"{tag}-updated"}) == 1
    with transaction.atomic(using=using):
        locked = objects.select_for_update().get(code=base + 1)
        setattr(locked, column, f"{tag}-saved")
        locked.save()
    found, made = objects.get_or_create(code=base + 2, defaults={column: f"{tag}-goc", "points": 4})
    assert made and found.pk is not None
    found, made = objects.get_or_create(code=base + 2, defaults={column: "never"})
    assert not made and getattr(found, column) == f"{tag}-goc"
    quote = connection.ops.quote_name
    with connections[using].cursor() as cursor:
        cursor.execute(f"INSERT INTO {quote(model._meta.db_table)} ({quote(column)}, code, points) VALUES (%s, %s, 5) "
                       f"RETURNING id, {quote(column)}", [f"{tag}-raw", base + 3])
        raw_id, raw_value = cursor.fetchone()
    assert raw_value == f"{tag}-raw"
    ids = [created.pk, done[1].pk, found.pk, raw_id]
    assert objects.filter(code=base + 3).delete()[0] == 1
    return ids[:-1]


def read_back(model, column, tag):
    base = _base(tag)
    return {row.code: getattr(row, column) for row in model.objects.filter(code__gte=base, code__lt=base + 10)}


def expected(tag):
    base = _base(tag)
    return {base: f"{tag}-upsert", base + 1: f"{tag}-saved", base + 2: f"{tag}-goc"}


def relation_kind(name):
    rows = execute("SELECT relkind FROM pg_class WHERE oid = to_regclass(%s)", [f'"{name}"'])
    return rows[0][0] if rows else None


def drop_window(table):
    """Drop ``table`` whatever it is now (a table, or a window's view and base table)."""
    connection.close()
    if relation_kind(table) == "v":
        execute(f'DROP VIEW "{table}" CASCADE')
    from safemigrate.pg import views
    execute(f'DROP TABLE IF EXISTS "{table}", "{views.base_name(table)}" CASCADE')
