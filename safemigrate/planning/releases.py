"""Several releases in flight: expand work of release N+1 past release N's contract.

Teams deploy several times a day, so release N's contract (run once no
release-N-1 code serves) often is still pending when release N+1 ships. If
release N+1's first migration depended on that contract, as Django's
autodetector makes it (it extends the app's leaf), ``migrate`` could not apply
it before the contract, and the new code would ship without its columns.

So when a new migration would depend on a contract migration, it depends on
that contract's *expand frontier* instead (the nearest expand migrations
above it), and the app keeps one leaf (Django refuses several) through a
contract-stage join: the new contract migration gains the old contract as a
dependency, or, when the release has no contract of its own, a migration
holding only ``ContractJoin`` depends on both. ``migrate`` applies the new
expand migration now; ``migrate_contract`` later applies the contracts in
order, then the join.

Why the state stays the same: Django computes a migration's state from the
migrations before it in the plan, so the new expand migration no longer sees
the bypassed contract migrations' state changes. safemigrate's contract
operations change only the database (their state changes happen in the
expand half), except ``SetNotNull(stage="contract")``, which sets
``null=False`` on its field; a hand-written contract migration may hold any
operation. Both are fine as long as the new operations touch nothing the
bypassed migrations touch: then the two orders commute, for the state and
for the database. When they do touch the same field, model or table (re-add
a dropped column, alter a field whose rename is unfinished, delete a model
whose key is being swapped), the new migration depends on the contract as
before, ``makemigrations`` says why, and ``migrate`` refuses to run it until
``migrate_contract`` has (see ``blocked_expand``). Operations whose targets
cannot be told (``RunSQL``, ``RunPython``) count as touching everything, and
``makemigrations --empty`` keeps Django's dependency (its operations are
written later, by hand).
"""

import sys

from django.core.management.base import CommandError
from django.db.migrations import operations as django_ops
from django.db.migrations.migration import Migration
from django.db.migrations.operations.fields import FieldOperation
from django.db.migrations.operations.models import IndexOperation, ModelOperation
from django.db.migrations.utils import field_references

from .. import operations as safe
from ..stages import Stage, migration_stage

#: Model operations that only change Python-side options: they commute with anything.
_STATE_ONLY = (django_ops.AlterModelOptions, django_ops.AlterModelManagers)
_TOGETHER = tuple(getattr(django_ops, name) for name in ("AlterUniqueTogether", "AlterIndexTogether")
                  if hasattr(django_ops, name))


# -- the graph ---------------------------------------------------------------

def _stage_of(graph, key):
    migration = graph.nodes.get(key)
    return Stage.EXPAND if migration is None else migration_stage(migration)


def ancestors(graph, key):
    """``key`` and every migration it depends on, directly or not."""
    seen, stack = set(), [key]
    while stack:
        node = stack.pop()
        if node in seen:
            continue
        seen.add(node)
        stack.extend(parent.key for parent in graph.node_map[node].parents)
    return seen


def expand_frontier(graph, key):
    """The nearest expand migrations at or above ``key``, walking up through contract ones.

    For an expand migration that is ``{key}``. For a contract migration it is
    what its expand part is: the expand migrations it builds on, without
    those that are already ancestors of another member (the minimal set).
    """
    found, seen, stack = set(), set(), [key]
    while stack:
        node = stack.pop()
        if node in seen:
            continue
        seen.add(node)
        if _stage_of(graph, node) is Stage.EXPAND:
            found.add(node)
        else:
            stack.extend(parent.key for parent in graph.node_map[node].parents)
    above = set()
    for node in found:
        above |= ancestors(graph, node) - {node}
    return found - above


def bypassed(graph, key, frontier):
    """Migrations above ``key`` that depending on ``frontier`` instead leaves out."""
    kept = set()
    for node in frontier:
        kept |= ancestors(graph, node)
    return ancestors(graph, key) - kept


# -- what an operation touches ------------------------------------------------

def _table(app_label, model_state):
    return model_state.options.get("db_table") or f"{app_label}_{model_state.name_lower}"


def contract_targets(app_label, operation):
    """What a bypassed operation touches: ("field", app, model, names), ("model", app, model),
    ("table", name) or ("opaque", app, operation) when it cannot be told."""
    if isinstance(operation, safe.ContractJoin):
        return []
    if isinstance(operation, django_ops.SeparateDatabaseAndState):
        inner = [*operation.database_operations, *operation.state_operations]
        return [target for op in inner for target in contract_targets(app_label, op)]
    if isinstance(operation, safe.DropColumn):
        return [("field", app_label, operation.name_lower, {operation.column_name.lower()})]
    if isinstance(operation, safe.FinishRenameViaCopy):
        return [("field", app_label, operation.model_name_lower,
                 {operation.old_name.lower(), operation.new_name.lower()})]
    if isinstance(operation, safe.FinishRenameViaView):
        # The old name, which a later release must not reuse while the view still shows it (the
        # new name is the base table's real column: later releases may change it, rename it
        # again, drop it); and the table, whose name is a view until then, so a later release
        # may not rename or drop it, or build a model on its name, before this contract.
        return [("field", app_label, operation.model_name_lower, {operation.old_column.lower()}),
                ("model_table", app_label, operation.model_name_lower)]
    if isinstance(operation, safe.DropTable):
        return [("table", operation.table_name)]
    if isinstance(operation, safe.DropCompatibilityView):
        return [("table", name) for name in (operation.old_table, operation.new_table) if name]
    if isinstance(operation, safe.FinishChangePrimaryKeyToBigint):
        return [("model", app_label, operation.name_lower)]
    if isinstance(operation, safe.Backfill):
        return [("field", app_label, operation.model_name_lower, {name.lower() for name in operation.set})]
    if isinstance(operation, safe.RunPythonBatched):
        field_name = getattr(operation.code, "keywords", {}).get("field_name")
        if field_name:
            return [("field", app_label, operation.model_name_lower, {field_name.lower()})]
        return [("model", app_label, operation.model_name_lower)]
    if isinstance(operation, FieldOperation):
        names = {operation.name_lower}
        for attribute in ("old_name", "new_name"):
            if getattr(operation, attribute, None):
                names.add(getattr(operation, attribute).lower())
        column = getattr(getattr(operation, "field", None), "db_column", None)
        if column:
            names.add(column.lower())
        return [("field", app_label, operation.model_name_lower, names)]
    if isinstance(operation, IndexOperation):
        return [("model", app_label, operation.model_name_lower)]
    if isinstance(operation, ModelOperation):
        return [("model", app_label, operation.name_lower)]
    return [("opaque", app_label, operation)]


def _resolve(app_label, reference):
    if isinstance(reference, str):
        app, _, model = reference.rpartition(".")
        return (app or app_label, model.lower())
    return (reference._meta.app_label, reference._meta.model_name)


class _NotPrimaryKey:
    """Stands for a field the states no longer have (dropped, renamed away): never the key."""

    primary_key = False


class Touches:
    """What one new operation touches, in the terms ``contract_targets`` uses."""

    def __init__(self, app_label, operation, from_state, to_state):
        self.app_label = app_label
        self.operation = operation
        self.models, self.fields, self.tables = set(), set(), set()
        self.model_level = False
        self.related = []  # (field, (app, model)) of relations the operation creates or alters
        self.from_state, self.to_state = from_state, to_state
        self._collect(operation, from_state, to_state)

    def _collect(self, op, from_state, to_state):
        app = self.app_label
        if isinstance(op, django_ops.SeparateDatabaseAndState):
            for inner in [*op.database_operations, *op.state_operations]:
                self._collect(inner, from_state, to_state)
            return
        if isinstance(op, FieldOperation):
            model = (app, op.model_name_lower)
            self.models.add(model)
            names = {op.name_lower}
            for attribute in ("old_name", "new_name"):
                if getattr(op, attribute, None):
                    names.add(getattr(op, attribute).lower())
            field = getattr(op, "field", None)
            if field is not None:
                if field.db_column:
                    names.add(field.db_column.lower())
                if field.is_relation:
                    names.add(f"{op.name_lower}_id")
                    self.related.append((field, model))
                if field.many_to_many:
                    self.tables.add(self._m2m_table(op, to_state))
            self.fields |= {(app, op.model_name_lower, name) for name in names}
            return
        if isinstance(op, IndexOperation):
            model = (app, op.model_name_lower)
            self.models.add(model)
            item = getattr(op, "index", None) or getattr(op, "constraint", None)
            fields = list(getattr(item, "fields", None) or [])
            if item is None or getattr(item, "expressions", None) or getattr(item, "condition", None) or not fields:
                self.model_level = True  # expressions, conditions, removals by name: cannot tell
            self.fields |= {(app, op.model_name_lower, name.lower()) for name in fields}
            return
        if isinstance(op, ModelOperation):
            if isinstance(op, _STATE_ONLY):
                return
            names = {op.name_lower}
            for attribute in ("old_name", "new_name"):
                if getattr(op, attribute, None):
                    names.add(getattr(op, attribute).lower())
            for name in names:
                self.models.add((app, name))
                for state in (from_state, to_state):
                    model_state = state.models.get((app, name))
                    if model_state is not None:
                        self.tables.add(_table(app, model_state))
            if isinstance(op, django_ops.CreateModel):
                self.tables.add(op.options.get("db_table") or f"{app}_{op.name_lower}")
                for _, field in op.fields:
                    if field.is_relation:
                        self.related.append((field, (app, op.name_lower)))
            if isinstance(op, _TOGETHER):
                for group in op.option_value or ():
                    self.fields |= {(app, op.name_lower, name.lower()) for name in group}
                return
            self.model_level = True
            return
        self.model_level = True
        self.models.add(("*", "*"))

    def _m2m_table(self, op, to_state):
        try:
            model = to_state.apps.get_model(self.app_label, op.model_name)
            return model._meta.get_field(op.name).m2m_db_table()
        except Exception:  # an unrenderable state: fall back to Django's naming rule
            return f"{self.app_label}_{op.model_name_lower}_{op.name_lower}"

    def _relates_to(self, target_model, names=None):
        for field, model in self.related:
            for name in names or [None]:
                if field_references(model, field, target_model, name, self._field(target_model, name)):
                    return True
        return False

    def _field(self, model, name):
        """The target field as the states know it (a relation to the primary key only touches the key)."""
        for state in (self.from_state, self.to_state):
            try:
                return state.models[model].get_field(name)
            except (KeyError, LookupError, TypeError):
                continue
        return _NotPrimaryKey

    def clash(self, target):
        """Why this operation and a bypassed one cannot change order, or None."""
        kind = target[0]
        if ("*", "*") in self.models:
            return "it is an operation whose targets cannot be told (raw SQL or Python)"
        if kind == "field":
            _, app, model, names = target
            if (app, model) in self.models and (self.model_level or {(app, model, n) for n in names} & self.fields):
                return f"both change {app}.{model} ({', '.join(sorted(names))})"
            if self._relates_to((app, model), sorted(names)):
                return f"it adds a relation to {app}.{model} ({', '.join(sorted(names))})"
            return None
        if kind == "model":
            _, app, model = target
            if (app, model) in self.models or self._relates_to((app, model)):
                return f"both touch model {app}.{model}"
            return None
        if kind == "table":
            return f"both touch table {target[1]}" if target[1] in self.tables else None
        if kind == "model_table":
            _, app, model = target
            table_level = isinstance(self.operation, ModelOperation) and not isinstance(
                self.operation, (*_STATE_ONLY, *_TOGETHER))
            return (f"it renames, drops or re-creates the table of {app}.{model}, which is a rename window's view "
                    f"until that contract" if (app, model) in self.models and table_level else None)
        _, app, operation = target
        for other_app, model in self.models:
            if other_app == app and operation.references_model(model, app):
                return f"{operation.describe()} may touch {app}.{model}"
        for _, (other_app, model) in self.related:
            if other_app == app and operation.references_model(model, app):
                return f"{operation.describe()} may touch {app}.{model}"
        return None


def conflicts(new_operations, bypassed_migrations, from_state, to_state):
    """Reasons why the new operations must wait for the bypassed migrations (empty: none)."""
    reasons = []
    touches = [Touches(app, op, from_state, to_state) for app, op in new_operations]
    for migration in bypassed_migrations:
        for operation in migration.operations:
            for target in contract_targets(migration.app_label, operation):
                for touch in touches:
                    why = touch.clash(target)
                    if why:
                        reasons.append(f"{touch.operation.describe()} and {migration.app_label}.{migration.name}"
                                       f" ({operation.describe()}): {why}")
    return reasons


# -- makemigrations ------------------------------------------------------------

def _is_contract(migration):
    return migration_stage(migration) is Stage.CONTRACT


def _log(questioner, message):
    log = getattr(questioner, "log", None)
    if callable(log):
        log(message)
    else:
        sys.stderr.write(message + "\n")


def branch_past_contracts(changes, graph, from_state, to_state, questioner=None):
    """Rewrite new migrations' dependencies on contract migrations (see the module docstring).

    ``changes`` is the autodetector's result after ``arrange_for_graph``
    (names and dependencies final). Decided from the files alone, never from
    what a database has applied, so every machine generates the same graph.
    """
    if not any(m.operations for migrations in changes.values() for m in migrations):
        # makemigrations --empty: the operations are not written yet, so nothing
        # can be checked against the contract; keep Django's dependency.
        return changes
    new_keys = {(app, m.name) for app, migrations in changes.items() for m in migrations}
    # Only new expand operations can run before the bypassed contracts; new
    # contract migrations come after them (they gain them as dependencies).
    new_operations = [(app, op) for app, migrations in changes.items() for m in migrations
                      if not _is_contract(m) for op in m.operations]
    for app_label, migrations in changes.items():
        joins = []
        for migration in migrations:
            rewritten = []
            for dependency in migration.dependencies:
                if (dependency in new_keys or dependency not in graph.nodes
                        or _stage_of(graph, dependency) is not Stage.CONTRACT or _is_contract(migration)):
                    rewritten.append(dependency)
                    continue
                frontier = expand_frontier(graph, dependency)
                if not frontier:  # a contract with no expand part above it (a squashed start)
                    rewritten.append(dependency)
                    continue
                skipped = [graph.nodes[key] for key in sorted(bypassed(graph, dependency, frontier))
                           if graph.nodes.get(key) is not None]
                reasons = conflicts(new_operations, skipped, from_state, to_state)
                if reasons:
                    # Decided from the files: whether that contract is applied
                    # somewhere is not known here, so say what follows either way.
                    _log(questioner, (
                        f"{app_label}.{migration.name} depends on the contract migration "
                        f"{dependency[0]}.{dependency[1]} itself (new migrations normally depend only on a "
                        f"contract's expand part), because " + "; ".join(reasons[:3]) + ". On a database where "
                        f"{dependency[0]}.{dependency[1]} is applied this changes nothing; where it is not yet, "
                        f"`migrate` applies this migration only after `migrate_contract` has applied it."))
                    rewritten.append(dependency)
                    continue
                rewritten.extend(key for key in sorted(frontier) if key not in rewritten)
                if dependency[0] == app_label:
                    joins.append(dependency)
            migration.dependencies = rewritten
        if joins:
            _join(app_label, migrations, joins)
    return changes


def _join(app_label, migrations, contracts):
    """Keep one leaf: the release's contract, or a join migration, depends on the old contracts."""
    last = migrations[-1]
    if _is_contract(last):
        last.dependencies.extend(key for key in contracts if key not in last.dependencies)
        return
    number = int(last.name.split("_", 1)[0]) + 1 if last.name[:4].isdigit() else len(migrations) + 1
    join = Migration(f"{number:04d}_join", app_label)
    join.dependencies = [*contracts, (app_label, last.name)]
    join.operations = [safe.ContractJoin()]
    migrations.append(join)


class ReleaseAwareArrangement:
    """Autodetector mixin: ``arrange_for_graph`` then ``branch_past_contracts``."""

    def arrange_for_graph(self, changes, graph, migration_name=None):
        changes = super().arrange_for_graph(changes, graph, migration_name)
        return branch_past_contracts(changes, graph, self.from_state, self.to_state, self.questioner)


# -- migrate -------------------------------------------------------------------

def blocked_expand(held, graph):
    """Held-back expand migrations, each with the unapplied contract migrations it waits for.

    ``held`` is ``split_plan``'s second list: its contract migrations and
    everything after them. An expand migration there is one the new code
    needs that cannot run before a contract.
    """
    held_keys = {(m.app_label, m.name) for m, _ in held}
    result = []
    for migration, _ in held:
        if migration_stage(migration) is not Stage.EXPAND:
            continue
        above = ancestors(graph, (migration.app_label, migration.name))
        waits = sorted(key for key in above & held_keys if _stage_of(graph, key) is Stage.CONTRACT)
        result.append((migration, waits))
    return result


def refuse_blocked(held, graph):
    """Raise ``CommandError`` when an expand migration waits behind a pending contract."""
    blocked = blocked_expand(held, graph)
    if not blocked:
        return
    lines = []
    for migration, waits in blocked:
        names = ", ".join(f"{app}.{name}" for app, name in waits)
        lines.append(f"  {migration.app_label}.{migration.name} (expand) waits for {names} (contract)")
    first = blocked[0][1][0] if blocked[0][1] else None
    target = f" {first[0]} {first[1]}" if first else ""
    raise CommandError(
        "Cannot apply every expand migration: some depend on contract migrations that are not applied yet.\n"
        + "\n".join(lines) + "\n"
        "The new code needs these expand migrations, so deploying it now would break it; nothing was "
        "applied. Contract migrations are safe only once no code older than their release runs.\n"
        "Fix: once the earlier release is fully rolled out, run `python manage.py migrate_contract"
        f"{target}` and then `python manage.py migrate` again. New migrations made by "
        "`makemigrations` branch past pending contracts by themselves; a migration that still depends "
        "on one touches what that contract changes (makemigrations said why), or was written by hand."
    )
