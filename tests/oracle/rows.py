"""The rows each version of the code writes, the way its ORM would write them.

The same statements run on both sides: built once from a version's rendered
models, run on plain Django's side (whose returned keys feed later
references), then replayed on safemigrate's side at the corresponding point
of its rollout.
"""

import decimal
import uuid
from dataclasses import replace

from .specs import APP, RELATIONS, STRING, version_state


class Rows:
    """Deterministic rows for a history, legal under every version's constraints.

    Values are drawn from small pools (duplicates, NULLs, '%' and quotes in
    strings, edge numbers) except for fields that are unique somewhere in the
    history, which get a value of their own per row. Fields are known by name
    alone, whatever the model: a renamed model keeps its fields' rules.
    """

    def __init__(self, history):
        self.serial = 0
        self.ids = {}  # table -> inserted ids in order
        self.links = set()
        #: table -> ids some row referenced when it was written (deleting one tests stale references)
        self.referenced = {}
        self.unique = set()
        self.no_nulls = set()
        for version in history:
            for spec in version:
                for name, f in spec.fields:
                    if f.unique or f.kind == "o2o":
                        self.unique.add(name)
                for names in spec.unique_together:
                    self.unique.update(names)
                for constraint in spec.constraints:
                    if constraint[0] == "unique":
                        self.unique.update(constraint[2])
                        if constraint[3] is False:
                            self.no_nulls.update(constraint[2])
        # A renamed field is unique under its old name too: during the rollout
        # the old code's writes are copied into the new column, where the new
        # version's unique constraint already applies to every statement.
        # (Plain Django checks them only once, after they all ran.) Fields
        # one version drops and the next adds with the same kind may be such
        # a rename.
        for before, after in zip(history, history[1:]):
            for old_spec, new_spec in zip(sorted(before, key=lambda m: m.name), sorted(after, key=lambda m: m.name)):
                old_fields, new_fields = dict(old_spec.fields), dict(new_spec.fields)
                gone = [n for n in old_fields if n not in new_fields]
                added = [n for n in new_fields if n not in old_fields]
                for old_name in gone:
                    for new_name in added:
                        if old_fields[old_name].kind == new_fields[new_name].kind and \
                                (old_name in self.unique or new_name in self.unique):
                            self.unique.update((old_name, new_name))

    def value(self, spec, name, f, serial):
        key = name
        if f.null and key not in self.no_nulls and serial % 3 == 0:
            return None
        unique = key in self.unique
        if f.kind in ("int", "bigint", "positive"):
            return 1000 + serial if unique else [0, 7, 99999999, 1][serial % 4]
        if f.kind == "decimal":
            return decimal.Decimal(1000 + serial) + decimal.Decimal("0.25") if unique else \
                [decimal.Decimal("0"), decimal.Decimal("12.50"), decimal.Decimal("99999.99")][serial % 3]
        if f.kind in STRING:
            text = f"v{serial}%" if unique else ["", "100%", "it's", "x"][serial % 4]
            # What the code writes fits its own model (forms and validators see to it).
            return text[:f.max_length] if f.kind == "char" else text
        if f.kind == "bool":
            return serial % 2 == 0
        if f.kind == "uuid":
            return uuid.UUID(int=serial + 1)
        if f.kind in ("json", "plainjson"):
            return {"n": serial, "s": "50%"} if f.kind == "json" else '{"n": %d}' % serial
        raise ValueError(f.kind)

    def target(self, table, key, used):
        ids = [pk for pk in self.ids.get(table, []) if pk not in used]
        if not ids:
            return None
        # Spread references over the targets where the column is part of a unique key.
        return ids[self.serial % len(ids)] if key in self.unique else ids[-1]

    def insert(self, state, spec, connection):
        """The INSERT the ORM of ``state``'s model would send for one new row, or None."""
        model = state.apps.get_model(APP, spec.name)
        self.serial += 1
        columns, params = [], []
        for model_field in model._meta.concrete_fields:
            if model_field.primary_key:
                if spec.pk in ("int", "bigint"):  # the code assigns the key
                    columns.append(connection.ops.quote_name(model_field.column))
                    params.append(self.serial)
                continue
            f = spec.field(model_field.name)
            if f.kind in ("fk", "o2o"):
                target_table = model_field.related_model._meta.db_table
                used = self.used_o2o(model._meta.db_table, model_field.column) if f.kind == "o2o" else set()
                value = None if (f.null and self.serial % 2) else self.target(target_table, model_field.name, used)
                if value is None and not f.null:
                    return None
                if f.kind == "o2o" and value is not None:
                    used.add(value)
                if value is not None:
                    self.referenced.setdefault(target_table, set()).add(value)
            elif f.db_default is not None and f.default is None and self.serial % 2 and \
                    model_field.name not in self.unique:
                continue  # the ORM sends DEFAULT: the database's default fills it
            else:
                value = self.value(spec, model_field.name, f, self.serial)
                if value is None and not f.null:
                    value = self.value(replace(spec), model_field.name, replace(f, null=False), self.serial)
                value = model_field.get_db_prep_save(value, connection)
            columns.append(connection.ops.quote_name(model_field.column))
            params.append(value)
        table = connection.ops.quote_name(model._meta.db_table)
        pk = connection.ops.quote_name(model._meta.pk.column)
        if columns:
            sql = f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join(['%s'] * len(params))}) RETURNING {pk}"
        else:
            sql = f"INSERT INTO {table} DEFAULT VALUES RETURNING {pk}"
        return sql, params

    _o2o = None

    def used_o2o(self, table, column):
        self._o2o = self._o2o or {}
        return self._o2o.setdefault((table, column), set())

    def update(self, state, spec, connection):
        """``save()`` of the table's first row after changing one non-key field, or None.

        Like the ORM's save(), the UPDATE sets every column: the changed one to
        its new value, the others to what was loaded (here: to themselves),
        so triggers on any of the old code's columns fire as in production.
        """
        model = state.apps.get_model(APP, spec.name)
        ids = self.ids.get(model._meta.db_table)
        if not ids:
            return None
        quote = connection.ops.quote_name
        columns = [f for f in model._meta.concrete_fields if not f.primary_key]
        for model_field in columns:
            f = spec.field(model_field.name)
            if f is None or f.kind in RELATIONS:
                continue
            self.serial += 1
            value = self.value(spec, model_field.name, replace(f, null=False), self.serial)
            value = model_field.get_db_prep_save(value, connection)
            assignments = [f"{quote(other.column)} = %s" if other is model_field else
                           f"{quote(other.column)} = {quote(other.column)}" for other in columns]
            return (f"UPDATE {quote(model._meta.db_table)} SET {', '.join(assignments)} "
                    f"WHERE {quote(model._meta.pk.column)} = %s", [value, ids[0]])
        return None

    def delete(self, state, spec, side):
        """The new code deletes the newest row nothing of its own references, or None.

        The ORM of ``state`` would cascade along its relations; a row no
        relation of ``state`` points at is deleted with one plain DELETE. A
        reference the new code no longer knows about (a removed field's
        foreign key) must not stop it.
        """
        model = state.apps.get_model(APP, spec.name)
        table = model._meta.db_table
        references = [(m._meta.db_table, f.column) for m in state.apps.get_models(include_auto_created=True)
                      for f in m._meta.concrete_fields if f.is_relation and f.related_model is model]
        quote = side.connection.ops.quote_name
        candidates = list(reversed(self.ids.get(table, [])[1:]))  # the first row is the one updates change
        # Rows something referenced once come first: the reference may live on
        # in a column the new code dropped from its models.
        referenced = self.referenced.get(table, set())
        candidates.sort(key=lambda pk: pk not in referenced)
        for pk in candidates:
            used = any(side.execute([(f"SELECT count(*) FROM {quote(t)} WHERE {quote(c)} = %s", [pk])])[0]
                       for t, c in references)
            if not used:
                self.ids[table].remove(pk)
                return f"DELETE FROM {quote(table)} WHERE {quote(model._meta.pk.column)} = %s", [pk]
        return None

    def link(self, state, spec, name, connection):
        """An INSERT into an M2M table linking a source row to a target row, or None."""
        model = state.apps.get_model(APP, spec.name)
        through = model._meta.get_field(name).remote_field.through
        source, target = [f for f in through._meta.concrete_fields if not f.primary_key]
        sources = self.ids.get(source.related_model._meta.db_table, [])
        targets = self.ids.get(target.related_model._meta.db_table, [])
        for a in sources:
            for b in reversed(targets):
                if (through._meta.db_table, a, b) not in self.links:
                    self.links.add((through._meta.db_table, a, b))
                    self.referenced.setdefault(source.related_model._meta.db_table, set()).add(a)
                    self.referenced.setdefault(target.related_model._meta.db_table, set()).add(b)
                    quote = connection.ops.quote_name
                    return (f"INSERT INTO {quote(through._meta.db_table)} ({quote(source.column)}, {quote(target.column)}) "
                            f"VALUES (%s, %s)", [a, b])
        return None


def _parents_first(version):
    ordered, seen = [], set()

    def visit(spec, path=()):
        if spec.name in seen or spec.name in path:
            return
        for _, f in spec.fields:
            if f.kind in ("fk", "o2o") and f.to != spec.name:
                target = next((s for s in version if s.name == f.to), None)
                if target is not None:
                    visit(target, path + (spec.name,))
        seen.add(spec.name)
        ordered.append(spec)

    for spec in version:
        visit(spec)
    return ordered


def write_rows(rows, version, plain, inserts_per_model, updates=True, deletes=False):
    """The code of ``version`` writes rows on plain Django's side; returns the statements.

    The statements are built once, from the models of ``version`` rendered
    the way the ORM would send them, and run on plain Django's side (the
    primary keys it returns feed later references); the caller runs the same
    statements on safemigrate's side at the corresponding point of its rollout.
    """
    state = version_state(version)
    connection = plain.connection
    statements, tables = [], []
    for spec in _parents_first(version):
        table = state.apps.get_model(APP, spec.name)._meta.db_table
        for _ in range(inserts_per_model):
            statement = rows.insert(state, spec, connection)
            if statement is None:
                continue
            (pk,) = plain.execute([statement])
            rows.ids.setdefault(table, []).append(pk)
            statements.append(statement)
            tables.append(table)
        if updates:
            statement = rows.update(state, spec, connection)
            if statement:
                plain.execute([statement])
                statements.append(statement)
        for name, f in spec.fields:
            if f.kind == "m2m":
                statement = rows.link(state, spec, name, connection)
                if statement:
                    plain.execute([statement])
                    statements.append(statement)
    if deletes:
        for spec in reversed(_parents_first(version)):
            statement = rows.delete(state, spec, plain)
            if statement:
                plain.execute([statement])
                statements.append(statement)
    return statements
