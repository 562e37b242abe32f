"""What Django's models say about the schema, read for the plans.

Column definitions, the indexes a field asks for, names: all come from
Django's own schema editor helpers, so a later plain Django migration finds
what safemigrate created. Nothing here runs SQL.
"""

import contextlib


def model_of(state, app_label, model_name):
    return state.apps.get_model(app_label, model_name)


def qn(schema_editor, name):
    return schema_editor.quote_name(name)


def table_of(model):
    return model._meta.db_table


def collecting(schema_editor):
    return bool(getattr(schema_editor, "collect_sql", False))


@contextlib.contextmanager
def field_variant(field, **attributes):
    """Temporarily change attributes of a (state-rendered) field.

    Cloning would lose the resolved target of a relation, which the column
    type of a foreign key needs; the change is undone on exit.
    """
    saved = {name: getattr(field, name) for name in attributes}
    for name, value in attributes.items():
        setattr(field, name, value)
    field.__dict__.pop("unique", None)  # a cached_property in recent Django
    try:
        yield field
    finally:
        for name, value in saved.items():
            setattr(field, name, value)
        field.__dict__.pop("unique", None)


def column_definition(schema_editor, model, field, **overrides):
    """``(sql, params)`` of the column, without inline UNIQUE/PRIMARY KEY.

    Inline UNIQUE would build an index while holding ACCESS EXCLUSIVE; the
    operations build such indexes concurrently afterwards instead.
    """
    attributes = {"_unique": False, "db_index": False, "primary_key": False, **overrides}
    with field_variant(field, **attributes):
        sql, params = schema_editor.column_sql(model, field, include_default=True)
    return sql, list(params or [])


def needs_constant_default(field):
    """Why a NOT NULL column cannot be added instantly, or None if it can."""
    if field.null or field.has_db_default():
        return None
    if not field.has_default():
        return "it is NOT NULL and has no default"
    if callable(field.default):
        return f"its default {field.default!r} is a callable, one value per row"
    return None


def field_indexes(schema_editor, model, field):
    """Statements (CONCURRENTLY) for the plain and ``_like`` index Django gives a field."""
    statements = []
    if field.db_index and not field.unique:
        statements.append(schema_editor._create_index_sql(model, fields=[field], concurrently=True))
    like = like_index_statement(schema_editor, model, field)
    if like is not None:
        statements.append(like)
    return statements


def like_index_statement(schema_editor, model, field):
    db_type = field.db_type(connection=schema_editor.connection) or ""
    if not (field.db_index or field.unique) or "[" in db_type:
        return None
    for prefix, opclass in (("varchar", "varchar_pattern_ops"), ("text", "text_pattern_ops")):
        if db_type.startswith(prefix):
            return schema_editor._create_index_sql(
                model, fields=[field], suffix="_like", opclasses=[opclass], concurrently=True
            )
    return None


def statement_name(statement):
    """The unquoted name of a Django ``Statement`` that creates an index."""
    return str(statement.parts["name"]).strip('"')


def shadow_column(column):
    """The column that shadows ``column`` while its type (or the key it references) changes."""
    return f"{column}__sm_new"[:63]
