"""What a column carries besides its values, rebuilt on the column that replaces it.

A copy-based rename or type change ends by dropping the old column, and
PostgreSQL drops every index and constraint involving it. Whatever plain
Django's migration keeps must be rebuilt on the replacement column before
the contract step, without long locks: its CHECK (``PositiveIntegerField``'s
``>= 0``), its foreign key (same ON DELETE and deferral, through Django's
own SQL), the ``unique_together`` entries naming it
and — for a type change, where Django's autodetector emits nothing for
them — the ``Meta.indexes`` and ``Meta.constraints`` naming it. Indexes are
built CONCURRENTLY, constraints added NOT VALID and then validated.

A rename's replacement column already has its final name, so everything
gets Django's final names at once. A type change builds on the shadow
column under temporary names; ``swap_statements`` renames them in the same
short transaction that drops the old column and renames the shadow, so the
models and the catalog agree again the moment the swap commits.
"""

import hashlib
from dataclasses import dataclass

from django.db import models

from . import catalog, sql
from .schema import collecting, field_variant, table_of
from .steps import add_check, add_foreign_key, add_unique_via_index, foreign_key_name


@dataclass(frozen=True)
class Mirrored:
    """One object rebuilt on the replacement column."""

    kind: str  # "index" or "constraint": decides how the swap renames it
    temporary: str
    final: str


def temporary_name(final):
    """A name no Django object uses, stable across runs (resumable builds find it)."""
    digest = hashlib.sha1(final.encode()).hexdigest()[:8]
    return f"{final[:40]}_smtmp_{digest}"


def _names_in_condition(condition):
    """Field names a CHECK condition mentions: lookups' first parts and F() references."""
    names = set()
    children = list(getattr(condition, "children", [condition]))
    while children:
        child = children.pop()
        if isinstance(child, tuple):
            names.add(child[0].split("__")[0])
            children.append(child[1])
        elif isinstance(child, models.F):
            names.add(child.name.split("__")[0])
        elif hasattr(child, "get_source_expressions"):
            children.extend(getattr(child, "children", None) or child.get_source_expressions())
    return names


def _names_in(item):
    """Field names an index or a unique / exclusion constraint mentions anywhere: its fields,
    expressions, covering columns and condition. Any of them ties the index to the column:
    PostgreSQL drops an index with the column its WHERE or an expression reads, not only with
    a key column. (An exclusion constraint's expressions are ``(expression, operator)`` pairs,
    the expression a field name or an expression.)"""
    names = {name.lstrip("-") for name in getattr(item, "fields", ())} | set(getattr(item, "include", ()) or ())
    for expression in getattr(item, "expressions", ()) or ():
        expression = expression[0] if isinstance(expression, tuple) else expression
        names |= {expression} if isinstance(expression, str) else _names_in_condition(expression)
    if getattr(item, "condition", None) is not None:
        names |= _names_in_condition(item.condition)
    return names


def exclusion_constraints(model, field):
    """Names of ``model``'s exclusion constraints that mention ``field``.

    A copy-based change drops them with the old column, and none can be
    rebuilt on the new one without a long lock: PostgreSQL builds an
    exclusion constraint's index under ACCESS EXCLUSIVE (no CONCURRENTLY, no
    USING INDEX for this kind), so the copy must not start.
    """
    wanted = {field.name, field.attname}
    return [constraint.name for constraint in model._meta.constraints
            if type(constraint).__name__ == "ExclusionConstraint" and wanted & _names_in(constraint)]


def exclusion_refusal(where, change, step, constraints):
    """Why a copy-based change (``change``: what copies the column; ``step``: the change, as an
    instruction) is refused while exclusion constraints mention the column, and what to do."""
    return (f"{where}: {change}, and the exclusion constraint {', '.join(constraints)} over it would go with "
            f"the old column. PostgreSQL builds an exclusion constraint's index only under ACCESS EXCLUSIVE (no "
            f"CONCURRENTLY, and USING INDEX attaches only unique and primary key constraints), so rebuilding it "
            f"would make every read and write of the table wait for the whole build. Safe sequence: remove the "
            f"constraint in one release (RemoveConstraint is instant), {step} in the next, then add the constraint "
            f"back as a new exclusion constraint is added (on a new model that has it from its creation, or, for a "
            f"table small enough to stay locked for the build, with plain makemigrations in a release of its own).")


def _meta_objects(model, field):
    """Meta indexes and constraints that mention ``field`` (by field name), wherever they do."""
    wanted = {field.name, field.attname}
    indexes = [index for index in model._meta.indexes if wanted & _names_in(index)]
    constraints = []
    for constraint in model._meta.constraints:
        if isinstance(constraint, models.UniqueConstraint) and wanted & _names_in(constraint):
            constraints.append(constraint)
        elif isinstance(constraint, models.CheckConstraint) and wanted & _names_in_condition(constraint.condition):
            constraints.append(constraint)
    return indexes, constraints


def _together(model, field):
    return [list(together) for together in model._meta.unique_together if field.name in together]


def _field_check(schema_editor, field):
    return field.db_parameters(connection=schema_editor.connection)["check"]


def plan(schema_editor, model, field, target, final, *, meta):
    """The objects to rebuild on column ``target`` (later named ``final``), as ``Mirrored``."""
    table = table_of(model)
    rename = target == final
    items = []

    def final_and_temporary(name_for):
        with field_variant(field, column=final):
            final_name = name_for()
        return final_name, (final_name if rename else temporary_name(final_name))

    if _field_check(schema_editor, field):
        final_name, tmp = final_and_temporary(lambda: schema_editor._create_index_name(table, [final], "_check"))
        items.append(Mirrored("constraint", tmp, final_name))
    if (field.many_to_one or field.one_to_one) and field.db_constraint:
        final_name, tmp = final_and_temporary(lambda: foreign_key_name(schema_editor, model, field))
        items.append(Mirrored("constraint", tmp, final_name))
    for together in _together(model, field):
        final_name, tmp = final_and_temporary(lambda: schema_editor._create_index_name(
            table, [model._meta.get_field(name).column for name in together], "_uniq"))
        items.append(Mirrored("constraint", tmp, final_name))
    if meta:
        indexes, constraints = _meta_objects(model, field)
        for index in indexes:
            items.append(Mirrored("index", temporary_name(index.name), index.name))
        for constraint in constraints:
            index_only = isinstance(constraint, models.UniqueConstraint) and (
                constraint.condition or constraint.expressions or constraint.include or constraint.opclasses)
            items.append(Mirrored("index" if index_only else "constraint",
                                  temporary_name(constraint.name), constraint.name))
    return items


def build(schema_editor, model, field, target, final, *, meta):
    """The plan that builds the objects of ``plan`` on ``target``; each step asks the catalog first."""
    table = table_of(model)
    items = iter(plan(schema_editor, model, field, target, final, meta=meta))
    steps = []
    with field_variant(field, column=target):
        check = _field_check(schema_editor, field)
        if check:
            steps += add_check(table, next(items).temporary, check)
        if (field.many_to_one or field.one_to_one) and field.db_constraint:
            steps += add_foreign_key(schema_editor, model, field, name=next(items).temporary)
        for together in _together(model, field):
            columns = [model._meta.get_field(name).column for name in together]
            steps += add_unique_via_index(schema_editor, table, columns, name=next(items).temporary)
        if not meta:
            return steps
        indexes, constraints = _meta_objects(model, field)
        for index in indexes:
            name = next(items).temporary
            statement = index.create_sql(model, schema_editor, concurrently=True)
            statement.parts["name"] = sql.q(name)
            steps.append(sql.create_index_concurrently(statement, name, table))
        for constraint in constraints:
            item = next(items)
            if isinstance(constraint, models.CheckConstraint):
                steps += add_check(table, item.temporary, constraint._get_check_sql(model, schema_editor))
            elif item.kind == "index":
                text = sql.concurrently(constraint.create_sql(model, schema_editor)).replace(
                    sql.q(constraint.name), sql.q(item.temporary), 1)
                steps.append(sql.create_index_concurrently(text, item.temporary, table).but(
                    label=f"unique index {item.temporary} concurrently"))
            else:
                columns = [model._meta.get_field(name).column for name in constraint.fields]
                steps += add_unique_via_index(schema_editor, table, columns, item.temporary,
                                              constraint.deferrable, constraint.nulls_distinct)
    return steps


def swap_statements(schema_editor, model, field, shadow, final):
    """Renames that give the shadow column's objects their final names (inside the swap).

    For a moved column (``shadow == final``) only its Meta indexes and
    constraints have temporary names; its own already have their final ones.
    """
    table = table_of(model)
    statements = []
    connection = schema_editor.connection
    for item in plan(schema_editor, model, field, shadow, final, meta=True):
        if item.temporary == item.final:
            continue
        if not collecting(schema_editor) and not (
                catalog.index_state(connection, item.temporary)
                or catalog.constraint_state(connection, table, item.temporary)):
            continue
        if item.kind == "index":
            statements.append(sql.rename_index(item.temporary, item.final, table))
        else:
            statements.append(sql.rename_constraint(table, item.temporary, item.final))
    return statements


def db_default_statement(schema_editor, model, field):
    """``SET DEFAULT`` for the replacement column, or None.

    Given only at contract, in the transaction that drops the old column:
    during the rollout a default on the new column would fill it in the
    old code's INSERTs before the dual-write trigger runs, and the trigger
    would take it for a value the new code wrote (and copy it over the old
    code's). Until then the old column's default reaches the new column
    through the trigger.
    """
    if not field.has_db_default():
        return None
    default_sql, params = schema_editor.db_default_sql(field)
    return sql.set_default(table_of(model), field.column, default_sql, params)
