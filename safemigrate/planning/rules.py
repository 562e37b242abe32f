"""Which migration operations hurt a live site, why, and what to use instead.

The one home of safemigrate's risk rules. ``makemigrations`` (warnings),
``lint_migrations`` and the migrate commands' ``--plan`` all ask this module,
and ``makemigrations --safe`` should ask ``type_change_is_risky`` too, so that
a change is never "safe" in one place and "risky" in another.

Two ways an operation hurts: it breaks the code that is still running during
the deploy (old code selects a dropped column, inserts without a new NOT NULL
column), or it holds / queues for a table lock long enough to stall traffic
(rewrites, blocking index builds, full-table scans and validations).

Everything here reads migration state only: no database connection is opened,
so the linter runs in any CI job.
"""

import math
import re
from dataclasses import replace

from django.db import migrations, models

from ..pg.copy_steps import in_place_type_change

from ..pg.locks import Lock
from ..pg.statements import How
from .findings import ACCESS_EXCLUSIVE_INSTANT, FK_VALIDATION, REWRITE, SCAN, SEVERITIES, SHARE_BUILD, Finding
from .lint_sql import sql_findings, tables_created


# -- reading migration state ------------------------------------------------


def _model_state(state, app_label, model_name):
    if state is None or app_label is None or model_name is None:
        return None
    return state.models.get((app_label, model_name.lower()))


def _field(from_state, app_label, model_name, name):
    model = _model_state(from_state, app_label, model_name)
    if model is None:
        return None
    try:
        return model.get_field(name)
    except (KeyError, LookupError):
        return None


def table_of(state, app_label, model_name):
    """The table a model lives in, per the migration state (None when unknown)."""
    model = _model_state(state, app_label, model_name)
    if model is None:
        return None
    return model.options.get("db_table") or f"{app_label}_{model.name_lower}"


def runs_sql_on(state, app_label, model_name):
    """False for models Django never creates or alters: unmanaged, proxy or swapped out."""
    model = _model_state(state, app_label, model_name)
    if model is None:
        return True
    options = model.options
    if not options.get("managed", True) or options.get("proxy", False):
        return False
    swappable = options.get("swappable")
    if swappable:
        from django.conf import settings

        swapped = getattr(settings, swappable, None)
        if swapped and swapped.lower() != f"{app_label}.{model.name_lower}":
            return False
    return True


def _target(field, state, app_label, model_name):
    """(app_label, model_name) a relation points at, resolved like Django's lazy references."""
    to = field.remote_field.model
    if not isinstance(to, str):
        return to._meta.app_label, to._meta.model_name
    if to == "self":
        return app_label, model_name.lower()
    if "." in to:
        app, name = to.split(".", 1)
        return app, name.lower()
    return app_label, to.lower()


def _target_field(field, state, app_label, model_name):
    target_app, target_model = _target(field, state, app_label, model_name)
    target = _model_state(state, target_app, target_model)
    if target is None:
        return None, None
    to_field = getattr(field.remote_field, "field_name", None)
    for name, candidate in target.fields.items():
        if (to_field and name == to_field) or (not to_field and candidate.primary_key):
            return (target_app, target_model, name), candidate
    return None, None


def _connection():
    from django.db import connection

    return connection


def column_type(field, state, app_label, model_name, _seen=None):
    """The column type of ``field`` as PostgreSQL sees it, relations resolved through ``state``.

    A ``ForeignKey`` in a migration names its target as a string; its column
    type is the target's key type (``bigint`` for a ``BigAutoField`` key,
    ``uuid`` for a ``UUIDField`` key), which only the migration state knows.
    None for fields without a column (many-to-many) or unresolvable targets.
    """
    if field.many_to_many:
        return None
    if field.is_relation and field.remote_field is not None:
        key, target = _target_field(field, state, app_label, model_name)
        if target is None:
            return None
        if target.is_relation:  # a foreign key as the target's primary key
            seen = _seen or set()
            if key in seen:
                return None
            return column_type(target, state, key[0], key[1], seen | {key})
        return target.rel_db_type(_connection())
    try:
        return field.db_parameters(_connection())["type"]
    except ValueError:
        return None


def column_types(old_field, new_field, from_state, to_state, app_label, model_name):
    """(old type, new type) of one column across an ``AlterField``.

    ``to_state`` may be None: the new field's relation target is then looked
    up in ``from_state`` (it must exist there before the operation runs).
    """
    return (column_type(old_field, from_state, app_label, model_name),
            column_type(new_field, to_state if to_state is not None else from_state, app_label, model_name))


def type_change_is_risky(old_field, new_field, from_state, to_state, app_label, model_name):
    """True when changing the column from ``old_field`` to ``new_field`` rewrites or scans the table.

    The single rule for "is this type change risky", used by the linter and
    meant for ``makemigrations --safe``. Changes PostgreSQL does in place
    (varchar widening, varchar -> text, numeric widening) are not risky.
    A relation whose target cannot be resolved is compared by field class.
    """
    old_type, new_type = column_types(old_field, new_field, from_state, to_state, app_label, model_name)
    if old_type is None or new_type is None:
        if old_field.many_to_many or new_field.many_to_many:
            return False
        return old_field.is_relation != new_field.is_relation
    return old_type != new_type and not in_place_type_change(old_type, new_type)


_INTEGER_DIGITS = {"smallint": 5, "integer": 10, "bigint": 19}
_TEXT_TYPES = ("text", "varchar", "character varying", "char", "character", "bpchar")


def _value_range(column_type):
    """``(family, integer digits, scale)`` of a numeric column type, or None.

    Unlimited numeric is ``("numeric", inf, inf)``; floats are their own
    family (binary fractions: only integers up to 2**53 fit exactly).
    """
    text = column_type.lower().strip()
    if text in _INTEGER_DIGITS:
        return "numeric", _INTEGER_DIGITS[text], 0
    match = re.fullmatch(r"numeric\s*\(\s*(\d+)\s*(?:,\s*(\d+)\s*)?\)", text)
    if match:
        precision, scale = int(match.group(1)), int(match.group(2) or 0)
        return "numeric", precision - scale, scale
    if text in ("numeric", "decimal"):
        return "numeric", math.inf, math.inf
    if text == "real":
        return "float", 6, 0
    if text == "double precision":
        return "float", 15, 0
    return None


def _holds(outer, inner):
    """Every value of column type ``inner`` is stored exactly by column type ``outer``."""
    o, i = _value_range(outer), _value_range(inner)
    if o is None or i is None:
        return False
    if o[0] == "float" and i[0] == "numeric":
        return i[2] == 0 and i[1] <= o[1]  # integers small enough for the mantissa
    if o[0] != i[0] and o[0] == "numeric":
        return False  # float -> numeric: NaN, rounding of binary fractions
    return o[1] >= i[1] and o[2] >= i[2]


def type_change_direction(old_type, new_type):
    """How a copy-based type change keeps both code versions working, or None if none can.

    During the rollout one column serves both versions, so its type must
    hold every value either version writes:

    - ``"widen"``: the new type holds every old value (int -> bigint,
      numeric(8,2) -> numeric(12,4)). The swap happens at expand; the old
      code writes values the new type stores exactly (it may read them back
      as the new Python type, e.g. ``Decimal`` for a former integer).
    - ``"narrow"``: the old type holds every new value (bigint -> int,
      text -> integer). The column keeps the old type until contract; the new
      code's values fit in it, and the swap fails loudly on old values that
      do not cast.
    - None: neither holds the other (bigint -> numeric(10,2): large integers
      do not fit, decimals do not fit an integer). Writing either version's
      values into the other type would round, cut or fail, so
      ``makemigrations --safe`` refuses and names the two-step sequence.
    """
    if _holds(new_type, old_type):
        return "widen"
    if _holds(old_type, new_type):
        return "narrow"
    old_base = re.sub(r"\(.*\)", "", old_type.lower()).strip()
    if old_base in _TEXT_TYPES:
        return "narrow"  # every value of the new type has a text form the old column takes
    return None


def wider_type(old_type, new_type):
    """A numeric type holding every value of both, for the two-step sequence (or None)."""
    a, b = _value_range(old_type), _value_range(new_type)
    if a is None or b is None or a[0] != b[0] or a[0] != "numeric":
        return None
    digits, scale = max(a[1], b[1]), max(a[2], b[2])
    if math.inf in (digits, scale):
        return "numeric"
    return f"numeric({digits + scale}, {scale})"


def type_changed(old, new, connection=None, from_state=None, app_label=None, model_name=None):
    """Backwards-compatible wrapper of ``type_change_is_risky`` (state optional)."""
    return type_change_is_risky(old, new, from_state, None, app_label, model_name)


def column_name(field, name):
    """The column Django uses for a field called ``name``."""
    if field.db_column:
        return field.db_column
    if field.is_relation and (field.many_to_one or field.one_to_one):
        return f"{name}_id"
    return name


def _indexes(field):
    """(unique constraint?, plain index?) the way Django's schema editor builds them."""
    unique = bool(field.unique) and not field.primary_key
    return unique, bool(field.db_index) and not field.unique and not field.primary_key


def _db_kwargs(field, target_table, neutral_default, comments=False):
    _, path, args, kwargs = field.deconstruct()
    for attr in field.non_db_attrs:
        kwargs.pop(attr, None)
    if not comments:
        kwargs.pop("db_comment", None)
    if target_table is not None:
        kwargs.pop("to", None)
    if neutral_default:
        kwargs.pop("default", None)
    return path, args, kwargs


def alter_runs_sql(old, new, name, state, app_label, model_name, keep_python_default=False, comments=False):
    """Whether Django's ``AlterField`` from ``old`` to ``new`` would run any SQL.

    Mirrors the schema editor's own test: only attributes outside
    ``non_db_attrs`` count, a relation retargeted to a model with the same
    table counts as unchanged, and a changed column name always counts. A
    Python-side default alone runs no SQL, except on a foreign key, where
    Django still drops and re-adds the constraint (``keep_python_default``).
    ``comments``: a changed ``db_comment`` counts (a harmless COMMENT ON for
    the risk rules, but SQL all the same).
    """
    if old.many_to_many or new.many_to_many:
        return False
    if column_name(old, name) != column_name(new, name):
        return True
    same_target = None
    if old.is_relation and new.is_relation:
        old_t, new_t = (_target(f, state, app_label, model_name) for f in (old, new))
        old_table, new_table = table_of(state, *old_t), table_of(state, *new_t)
        if old_t == new_t or (old_table is not None and old_table == new_table):
            same_target = old_table or "same"
    neutral = not keep_python_default and old.null == new.null
    return _db_kwargs(old, same_target, neutral, comments) != _db_kwargs(new, same_target, neutral, comments)


# -- the rules ----------------------------------------------------------------


def declared_statements(operation, from_state=None, app_label=None):
    """The statements a safemigrate operation declares (``pg.statements``); None for any other operation.

    Built from the operation's own plan against a collecting schema editor,
    so they are exactly what ``sqlmigrate`` shows and the runner runs, minus
    what only the live catalog can tell. None also when the plan cannot be
    built without a database (a key change reads the catalog for its foreign
    keys) or when no state is given.
    """
    if not callable(getattr(operation, "declared_statements", None)):
        return None
    if from_state is None:
        return None
    try:
        return operation.declared_statements(app_label, from_state)
    except Exception:  # a plan that needs the database, or a state it does not fit
        return None


def summarize_locks(statements):
    """One line for an operation's declared statements: the strongest lock it queues for, and the rest.

    Statements that can queue traffic (bounded ones) come first, then those
    that never do (concurrent builds and validations, batches, reads).
    """
    statements = [s for s in statements if s.how is not How.READ]  # checks and bookkeeping
    if not statements:
        return "none (no SQL)"
    waiting = [s for s in statements if s.how in (How.BOUNDED, How.UNBOUNDED) and s.lock is not Lock.NONE]
    other = [s for s in statements if s not in waiting and s.lock is not Lock.NONE]
    parts = []
    for group in (waiting, other):
        if group:
            strongest = max(group, key=lambda s: (s.lock, s.work is not None))
            parts.append(strongest.describe())
    return "; ".join(parts) or "no table lock"


def lock_for(operation, from_state=None, app_label=None):
    """The strongest table lock ``operation`` takes, and for how long."""
    declared = declared_statements(operation, from_state, app_label)
    if declared is not None:
        return summarize_locks(declared)
    if callable(getattr(operation, "declared_statements", None)):
        return "declared per statement (migrate --plan --annotate lists them)"
    found = findings(operation, from_state, app_label)
    if found:
        return found[0].lock
    if isinstance(operation, migrations.CreateModel):
        return "none on existing tables"
    if isinstance(operation, migrations.RunPython):
        return "whatever the code does, in one transaction"
    if isinstance(operation, migrations.RunSQL):
        return "none the linter recognises (raw SQL)"
    if isinstance(operation, (migrations.AlterModelOptions, migrations.AlterModelManagers)):
        return "none (state only)"
    return ACCESS_EXCLUSIVE_INSTANT


def operation_states(loader, migration):
    """``(operation, state before it)`` for each operation of ``migration``, in order."""
    key = (migration.app_label, migration.name)
    state = loader.graph.make_state(nodes=key, at_end=False, real_apps=loader.unmigrated_apps)
    for operation in migration.operations:
        yield operation, state
        try:
            state = state.clone()
            operation.state_forwards(migration.app_label, state)
        except Exception:  # a state the next description does not need
            pass


def plan_locks(loader, plan):
    """``{id(operation): lock}`` for every operation of ``plan`` (``(migration, backwards)`` pairs)."""
    locks = {}
    for migration, _ in plan:
        for operation, state in operation_states(loader, migration):
            locks[id(operation)] = lock_for(operation, state, migration.app_label)
    return locks


def declared_findings(operation, statements):
    """Findings for a safemigrate operation: the statements it declares as holding a blocking lock through work."""
    return [Finding("SAFE140", f"{operation.__class__.__name__}: {statement.label}",
                    f"holds {statement.lock.pg_name} while it {statement.work} ({statement.reason}).",
                    "run it in a quiet period, or take the copy-based route the operation's docs name.",
                    statement.describe(), statement.table)
            for statement in statements if statement.how is How.UNBOUNDED and statement.blocks_traffic]


def classify(operation, from_state=None, app_label=None):
    """The first ``Finding`` for ``operation`` (most severe first), or None."""
    found = findings(operation, from_state, app_label)
    return found[0] if found else None


def findings(operation, from_state=None, app_label=None):
    """Every ``Finding`` for ``operation``, errors first; [] when it is safe on a live site."""
    if callable(getattr(operation, "declared_statements", None)):
        # safemigrate's own operations: judged by what they declare, not by their name.
        return declared_findings(operation, declared_statements(operation, from_state, app_label) or [])
    if isinstance(operation, migrations.SeparateDatabaseAndState):
        return _separate_database_and_state(operation, from_state, app_label)
    model_name = getattr(operation, "model_name", None) or getattr(operation, "name", None)
    if isinstance(operation, migrations.RenameModel):
        model_name = operation.old_name
    if not isinstance(operation, (migrations.RunSQL, migrations.RunPython)) and \
            isinstance(model_name, str) and not runs_sql_on(from_state, app_label, model_name):
        return []  # unmanaged / proxy / swapped-out model: Django runs no SQL for it
    handler = _HANDLERS.get(type(operation))
    if handler is None:
        for cls, candidate in _HANDLERS.items():
            if isinstance(operation, cls):
                handler = candidate
                break
    if handler is None:
        return []
    table = table_of(from_state, app_label, model_name) if isinstance(model_name, str) else None
    result = [f if f.table else replace(f, table=table) for f in handler(operation, from_state, app_label)]
    return sorted(result, key=lambda f: SEVERITIES.index(f.severity))


def _separate_database_and_state(op, state, app_label):
    """Only ``database_operations`` run SQL; each is judged against the state the ones before it left."""
    found = []
    database_state = state.clone() if state is not None and len(op.database_operations) > 1 else state
    for index, inner in enumerate(op.database_operations):
        found.extend(findings(inner, database_state, app_label))
        if database_state is not None and index < len(op.database_operations) - 1:
            inner.state_forwards(app_label, database_state)
    return found


def _remove_field(op, state, app_label):
    return [Finding("SAFE101", op.describe(),
                    "drops the column while old code still selects and inserts it: every query of the "
                    "old code on this model fails until the rollout ends.",
                    "RemoveFieldSafely (expand) now, DropColumn (contract) after the deploy.",
                    ACCESS_EXCLUSIVE_INSTANT)]


def _delete_model(op, state, app_label):
    return [Finding("SAFE102", op.describe(), "drops the table while old code still queries it.",
                    "RemoveModelSafely (expand), DropTable (contract).", ACCESS_EXCLUSIVE_INSTANT)]


def _rename_field(op, state, app_label):
    old = _field(state, app_label, op.model_name, op.old_name)
    if old is not None and old.db_column:
        return []  # the column keeps its name: state only
    return [Finding("SAFE103", op.describe(),
                    "renames the column under the running old code, which keeps using the old name.",
                    "RenameFieldViaView (a view shows both names, no rows copied), FinishRenameViaView (contract); "
                    "or RenameViaCopy (new column + dual-write triggers + backfill), FinishRenameViaCopy.",
                    ACCESS_EXCLUSIVE_INSTANT)]


def _rename_model(op, state, app_label):
    old_table = table_of(state, app_label, op.old_name)
    model = _model_state(state, app_label, op.old_name)
    if model is not None and model.options.get("db_table"):
        return []  # Meta.db_table keeps the table name: state only
    return [Finding("SAFE104", op.describe(), "renames the table under the running old code.",
                    "RenameModelWithView (rename + updatable view under the old name), DropCompatibilityView "
                    "(contract); or keep the old name with Meta.db_table.", ACCESS_EXCLUSIVE_INSTANT,
                    old_table)]


def _alter_model_table(op, state, app_label):
    old_table = table_of(state, app_label, op.name)
    model = _model_state(state, app_label, op.name)
    new_table = op.table or (f"{app_label}_{model.name_lower}" if model else None)
    if old_table is None or old_table == new_table:
        return []
    return [Finding("SAFE104", op.describe(), f"renames the table {old_table!r} to {new_table!r} under the "
                    "running old code, which keeps querying the old name.",
                    "RenameModelWithView (rename + updatable view under the old name), DropCompatibilityView "
                    "(contract); or keep the old db_table.", ACCESS_EXCLUSIVE_INSTANT, old_table)]


def _add_field(op, state, app_label):
    field, desc = op.field, op.describe()
    if field.many_to_many:
        return []  # only creates the join table
    if not field.null and not field.has_db_default():
        if field.has_default() and callable(field.default):
            return [Finding("SAFE105", desc,
                            f"the callable default {field.default!r} is evaluated once and written to every row "
                            "under ACCESS EXCLUSIVE, and old code's INSERTs then fail the NOT NULL.",
                            "AddColumnNullable + Backfill (one value per row) now, SetNotNull (contract).",
                            REWRITE)]
        return [Finding("SAFE106", desc,
                        "Django drops the database default right after adding the column, so old code's "
                        "INSERTs (which omit it) fail the NOT NULL until the rollout ends.",
                        "AddColumnNullable keeps a constant DB default; DropColumnDefault (contract).",
                        ACCESS_EXCLUSIVE_INSTANT)]
    if field.is_relation and getattr(field, "db_constraint", True):
        return [Finding("SAFE108", desc, "validates the foreign key over the whole table under SHARE ROW "
                        "EXCLUSIVE on both tables and builds its index blocking writes.",
                        "AddForeignKey (NOT VALID, VALIDATE separately, index CONCURRENTLY).", FK_VALIDATION)]
    if field.unique or field.db_index:
        return [Finding("SAFE107", desc, "builds the index while holding a lock that blocks writes.",
                        "AddColumnNullable, which builds the index CONCURRENTLY.",
                        "ACCESS EXCLUSIVE, then " + SHARE_BUILD)]
    return []


def _alter_field(op, state, app_label):
    old, new, desc = _field(state, app_label, op.model_name, op.name), op.field, op.describe()
    if old is None or old.many_to_many or new.many_to_many:
        return []
    if not alter_runs_sql(old, new, op.name, state, app_label, op.model_name, keep_python_default=True):
        return []
    found = []
    sql_beyond_fk = alter_runs_sql(old, new, op.name, state, app_label, op.model_name)
    if column_name(old, op.name) != column_name(new, op.name):
        found.append(Finding("SAFE103", desc,
                             f"renames the column {column_name(old, op.name)!r} to {column_name(new, op.name)!r} "
                             "(a foreign key turned into a plain field or back, or a new db_column) under the "
                             "running old code, which keeps using the old name.",
                             "add a new field next to the old one, write both from the new code, backfill, "
                             "switch reads, and remove the old field in a later deploy (RenameViaCopy does "
                             "this for a plain rename).", ACCESS_EXCLUSIVE_INSTANT))
    if type_change_is_risky(old, new, state, None, app_label, op.model_name):
        old_type, new_type = column_types(old, new, state, None, app_label, op.model_name)
        found.append(Finding("SAFE109", desc,
                             f"changes the column type ({old_type or old.__class__.__name__} -> "
                             f"{new_type or new.__class__.__name__}), which rewrites the table and its "
                             "indexes under ACCESS EXCLUSIVE.",
                             "ChangeTypeViaCopy (in place when PostgreSQL needs no rewrite, otherwise a shadow "
                             "column kept in step by triggers), FinishChangeTypeViaCopy (contract); for a "
                             "relation becoming another kind of field, a new field next to the old one.",
                             REWRITE))
    if old.null and not new.null:
        found.append(Finding("SAFE110", desc, "SET NOT NULL scans the whole table under ACCESS EXCLUSIVE, and "
                             "old code may still insert NULLs.",
                             "Backfill the NULLs, then SetNotNull (validated CHECK, contract).", SCAN))
    (old_unique, old_index), (new_unique, new_index) = _indexes(old), _indexes(new)
    if (new_unique and not old_unique) or (new_index and not old_index):
        dropped = " It also drops the unique constraint." if old_unique and not new_unique else ""
        found.append(Finding("SAFE111", desc, "builds an index without CONCURRENTLY, blocking writes for the "
                             "whole build." + dropped,
                             "AlterFieldIndexes (index CONCURRENTLY, unique via USING INDEX).", SHARE_BUILD))
    if (old.is_relation and getattr(old, "db_constraint", True) and new.is_relation
            and getattr(new, "db_constraint", True) and not found):
        why = "" if sql_beyond_fk else (" Here only a Python-side attribute (such as the default) changed, "
                                        "but Django still re-creates the constraint.")
        found.append(Finding("SAFE118", desc,
                             "Django drops the foreign key constraint and adds it back, validating every row "
                             "under SHARE ROW EXCLUSIVE on both tables." + why,
                             "wrap the change in SeparateDatabaseAndState with only the SQL it needs; when the "
                             "constraint must change, AddForeignKey (NOT VALID, VALIDATE separately).",
                             FK_VALIDATION))
    return found


def _add_index(op, state, app_label):
    return [Finding("SAFE112", op.describe(), "CREATE INDEX blocks every write for the whole build.",
                    "CreateIndexConcurrently in a non-atomic migration.", SHARE_BUILD)]


def _remove_index(op, state, app_label):
    return [Finding("SAFE113", op.describe(), "DROP INDEX is quick but takes ACCESS EXCLUSIVE: if it waits "
                    "behind a long query, all traffic on the table queues behind it.",
                    "DropIndexConcurrently.", "ACCESS EXCLUSIVE, brief (no rewrite, no scan)")]


def _add_constraint(op, state, app_label):
    desc = op.describe()
    if isinstance(op.constraint, models.UniqueConstraint):
        return [Finding("SAFE114", desc, "builds the unique index while blocking writes.",
                        "AddUniqueConstraint (index CONCURRENTLY, then USING INDEX).", SHARE_BUILD)]
    if type(op.constraint).__name__ == "ExclusionConstraint":
        return [Finding("SAFE114", desc, "builds the exclusion constraint's index while blocking writes "
                        "(PostgreSQL cannot attach one built CONCURRENTLY).",
                        "a maintenance window; or enforce the rule in the application until one is booked.",
                        "ACCESS EXCLUSIVE for the whole index build (blocks reads and writes)")]
    return [Finding("SAFE115", desc, "validates every row while holding ACCESS EXCLUSIVE.",
                    "AddCheckConstraint (NOT VALID, then VALIDATE).", SCAN)]


def _alter_unique_together(op, state, app_label):
    model = _model_state(state, app_label, op.name)
    old = {tuple(t) for t in (model.options.get("unique_together") or ())} if model else set()
    if not {tuple(t) for t in (op.option_value or ())} - old:
        return []  # only removes unique sets: brief drops
    return [Finding("SAFE116", op.describe(), "builds unique indexes while blocking writes.",
                    "Meta.constraints with UniqueConstraint and AddUniqueConstraint.", SHARE_BUILD)]


def _run_python(op, state, app_label):
    return [Finding("SAFE117", f"RunPython: {op.describe()}",
                    "runs in one transaction: harmless for a few rows, but on a big table it holds row locks "
                    "until the end and cannot resume after a kill.",
                    "RunPythonBatched (short keyset batches, resumable) when it touches many rows.",
                    "row locks of whatever the code touches, until the migration commits")]


def _run_sql(op, state, app_label):
    return [replace(f, table=_index_table(state, f.index)) if f.index and not f.table else f
            for f in sql_findings(op)]


def _index_table(state, name):
    """The table of a named index or constraint declared in the migration state, or None."""
    if state is None:
        return None
    for (app_label, model_name), model in state.models.items():
        for declared in [*model.options.get("indexes", ()), *model.options.get("constraints", ())]:
            if declared.name == name:
                return table_of(state, app_label, model_name)
    return None


_HANDLERS = {
    migrations.RemoveField: _remove_field,
    migrations.DeleteModel: _delete_model,
    migrations.RenameField: _rename_field,
    migrations.RenameModel: _rename_model,
    migrations.AlterModelTable: _alter_model_table,
    migrations.AddField: _add_field,
    migrations.AlterField: _alter_field,
    migrations.AddIndex: _add_index,
    migrations.RemoveIndex: _remove_index,
    migrations.AddConstraint: _add_constraint,
    migrations.AlterUniqueTogether: _alter_unique_together,
    migrations.RunPython: _run_python,
    migrations.RunSQL: _run_sql,
}


def table_of_options(app_label, create_model):
    """The table a ``CreateModel`` operation creates."""
    return create_model.options.get("db_table") or f"{app_label}_{create_model.name_lower}"


def tables_created_by_sql(operation):
    """Tables created by raw SQL in ``operation`` (empty for anything but ``RunSQL``)."""
    if not isinstance(operation, migrations.RunSQL):
        return []
    return tables_created(operation)
