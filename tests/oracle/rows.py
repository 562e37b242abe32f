"""The rows each version of the code writes, through that version's ORM.

Each write is a real ORM call (``save()``, ``delete()``, a many-to-many
link) on the version's model classes (``specs.build_models``), made on plain
Django's side while every statement the ORM sends is captured. The captured
statements are then replayed on safemigrate's side at the corresponding
point of its rollout: the same rows, the same values, the same keys (both
sides insert in the same order). So the old code writes exactly what its ORM
would (every field on insert and ``save()``, multi-table inheritance,
``auto_now``, ``order_with_respect_to``, cascades of ``delete()``), and a
write that fails on safemigrate's side is one the real old code would see
fail.

The old code also updates rows the new code created, live on both sides
(``cross_updates``): safemigrate's side through the old models, plain
Django's through the new ones (there the old code is gone).
"""

import datetime
import decimal
import ipaddress
import uuid
from dataclasses import replace

from django.db import DatabaseError, IntegrityError, models, transaction
from django.db.models import ProtectedError, RestrictedError
from psycopg.types.range import Range

from .specs import INTEGER, RANGES, STRING, U, build_models, constraint

SAVEPOINTS = ("SAVEPOINT", "RELEASE SAVEPOINT", "ROLLBACK TO SAVEPOINT")


def capture(connection, action):
    """Run ``action()`` on ``connection`` in a transaction; returns (statements, result).

    Statements are (sql, params, many); nothing is kept when ``action`` raises.
    """
    statements = []

    def wrapper(execute, sql, params, many, context):
        statements.append((sql, params, many))
        return execute(sql, params, many, context)

    with transaction.atomic(using=connection.alias), connection.execute_wrapper(wrapper):
        result = action()
    return [s for s in statements if not s[0].lstrip().upper().startswith(SAVEPOINTS)], result


class Rows:
    """Deterministic rows for a history, legal under every version's constraints.

    Values are drawn from small pools (duplicates, NULLs, '%' and quotes in
    strings, edge numbers) except for fields that are unique somewhere in the
    history, which get a value of their own per row. Fields are known by name
    alone, whatever the model: a renamed model keeps its fields' rules.
    """

    def __init__(self, history):
        self.serial = 0
        self.ids = {}  # model name -> inserted keys in order (a renamed model keeps them: see rename())
        self.values = {}  # (model name, key) -> {field: value} as inserted (to_field references)
        self.links = set()
        #: model name -> keys some row referenced when it was written (deleting one tests stale references)
        self.referenced = {}
        #: model name -> keys of rows the newest version's code created
        self.created_by_new = {}
        #: (model name, field name) -> target keys a one-to-one already uses
        self.used_o2o = {}
        self.unique = set()
        self.no_nulls = set()
        #: field name -> the shortest max_length any version gives it (every version's code can store the text)
        self.max_lengths = {}
        for version in history:
            for spec in version:
                for name, f in spec.fields:
                    if f.kind in STRING and f.kind != "text":
                        self.max_lengths[name] = min(self.max_lengths.get(name, f.max_length), f.max_length)
                    if f.unique or f.kind == "o2o":
                        self.unique.add(name)
                    if f.kind in ("fk", "o2o") and f.to_field:
                        self.unique.add(f.to_field)
                for names in spec.unique_together:
                    self.unique.update(names)
                for item in map(constraint, spec.constraints):
                    if isinstance(item, U):
                        self.unique.update(item.names())
                        if item.nulls_distinct is False:
                            self.no_nulls.update(item.names())
                    elif type(item).__name__ == "X":
                        self.unique.add(item.field)
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
                        if old_fields[old_name].kind != new_fields[new_name].kind:
                            continue
                        # Likewise a unique constraint with NULLS NOT DISTINCT: the old code's NULLs
                        # reach the new column, where a second one breaks it.
                        for names in (self.unique, self.no_nulls):
                            if old_name in names or new_name in names:
                                names.update((old_name, new_name))

    def value(self, name, f, serial):
        """The Python value the code writes into field ``name`` of kind ``f.kind`` for row ``serial``."""
        if f.null and name not in self.no_nulls and serial % 3 == 0:
            return None
        unique = name in self.unique
        kind = f.kind
        if kind in INTEGER:
            small = kind in ("smallint", "positivesmall")
            return 1000 + serial if unique else [0, 7, 32767 if small else 99999999, 1][serial % 4]
        if kind == "float":
            return 1000.25 + serial if unique else [0.0, 1.5, -2.25, 1e10][serial % 4]  # unique after rounding too
        if kind == "decimal":
            return decimal.Decimal(1000 + serial) + decimal.Decimal("0.25") if unique else \
                [decimal.Decimal("0"), decimal.Decimal("12.50"), decimal.Decimal("99999.99")][serial % 3]
        if kind in STRING or kind in ("file", "image"):
            if kind == "email":
                text = f"{serial}@x.o" if unique else ["a@x.org", "o'k@x.org", "b@x.org"][serial % 3]
            elif kind == "slug":
                text = f"s-{serial}" if unique else ["", "a-b", "x"][serial % 3]
            elif kind == "url":
                text = f"h:{serial}" if unique else ["https://x.org/100%", "https://x.org/"][serial % 2]
            elif kind in ("file", "image"):
                text = f"up/{serial}" if unique else ["up/a.txt", "up/it's.txt"][serial % 2]
            else:
                text = f"v{serial}%" if unique else ["", "100%", "it's", "x"][serial % 4]
            # What the code writes fits its own model (forms and validators see to
            # it); rows a type change must cast fit every version's.
            return text[:self.max_lengths.get(name, f.max_length if kind != "text" else None)]
        if kind == "bool":
            return serial % 2 == 0
        if kind == "uuid":
            return uuid.UUID(int=serial + 1)
        if kind == "json":
            return {"n": serial, "s": "50%"}
        if kind == "plainjson":
            return '{"n": %d}' % serial
        if kind == "date":
            return datetime.date(2020, 1, 1) + datetime.timedelta(days=serial)
        if kind == "datetime":
            return datetime.datetime(2020, 1, 1, tzinfo=datetime.timezone.utc) + datetime.timedelta(hours=serial)
        if kind == "time":
            return datetime.time(serial % 24, serial % 60)
        if kind == "duration":
            return datetime.timedelta(seconds=serial, microseconds=serial % 7)
        if kind == "binary":
            return bytes([serial % 256, 0, 39])
        if kind == "ip":
            return str(ipaddress.ip_address(167772160 + serial)) if unique or serial % 2 else "::1"
        if kind == "array":
            return [serial, 1] if unique else [[1], [], [0, 7]][serial % 3]
        if kind == "hstore":
            return {"k": str(serial), "q": "it's"}
        if kind in RANGES:
            low = serial * 10
            if kind in ("intrange", "bigintrange"):
                return Range(low, low + 5)
            if kind == "decimalrange":
                return Range(decimal.Decimal(low), decimal.Decimal(low) + decimal.Decimal("2.5"))
            start = datetime.date(2020, 1, 1) + datetime.timedelta(days=low)
            if kind == "daterange":
                return Range(start, start + datetime.timedelta(days=3))
            start = datetime.datetime.combine(start, datetime.time(), datetime.timezone.utc)
            return Range(start, start + datetime.timedelta(hours=3))
        raise ValueError(kind)

    # -- the writes -----------------------------------------------------------------

    def new_object(self, cls, version, used_o2o):
        """An unsaved instance of ``cls`` as the code would create it, or None (nothing to reference)."""
        specs = {spec.name: spec for spec in version}
        self.serial += 1
        serial = self.serial
        kwargs = {}
        for field in cls._meta.concrete_fields:
            if field.auto_created or getattr(field, "generated", False) or field.name == "_order":
                continue
            owner = specs.get(field.model.__name__) or specs.get(cls.__name__)
            f = owner.field(field.name) if owner else None
            if field.primary_key:
                if f is None and owner is not None and owner.pk in ("int", "bigint"):
                    kwargs[field.attname] = serial
                continue
            if f is None:
                continue
            if f.kind in ("fk", "o2o"):
                value = self.reference(field, f, serial, used_o2o)
                if value is None and (not f.null or field.name in self.no_nulls):
                    return None  # no target left (or a second NULL a NULLS NOT DISTINCT constraint refuses)
                kwargs[field.attname] = value
                continue
            if f.db_default is not None and f.default is None and serial % 2 and field.name not in self.unique:
                continue  # the ORM sends DEFAULT: the database's default fills it
            value = self.value(field.name, f, serial)
            if value is None and not f.null:
                value = self.value(field.name, replace(f, null=False), serial)
            kwargs[field.name] = value
        return cls(**kwargs)

    def reference(self, field, f, serial, used_o2o):
        """A key (or ``to_field`` value) of an existing row of the target, or None."""
        if f.null and field.name not in self.no_nulls and serial % 2:
            return None
        target = field.related_model.__name__
        # A one-to-one, or a relation some version makes unique: every row its
        # own target, whichever version writes it (a constraint added at
        # expand checks the old code's writes one by one).
        unique = f.kind == "o2o" or field.name in self.unique
        used = used_o2o.setdefault((field.model.__name__, field.name), set()) if unique else set()
        keys = [pk for pk in self.ids.get(target, []) if pk not in used]
        if not keys:
            return None
        pk = keys[serial % len(keys)] if unique else keys[-1]
        used.add(pk)
        self.referenced.setdefault(target, set()).add(pk)
        if f.to_field:
            return self.values.get((target, pk), {}).get(f.to_field)
        return pk

    def remember(self, cls, obj):
        name = cls.__name__
        self.ids.setdefault(name, []).append(obj.pk)
        self.values[(name, obj.pk)] = {field.name: getattr(obj, field.attname, None)
                                       for field in cls._meta.concrete_fields}


def _sequences(cls, connection):
    """``[(sequence, last_value, is_called)]`` behind the keys of ``cls``'s tables (its own and its parents')."""
    out = []
    with connection.cursor() as cursor:
        for model in [cls, *cls._meta.get_parent_list()]:
            if model._meta.pk.get_internal_type() not in ("AutoField", "BigAutoField", "SmallAutoField"):
                continue
            cursor.execute("SELECT pg_get_serial_sequence(%s, %s)",
                           [connection.ops.quote_name(model._meta.db_table), model._meta.pk.column])
            (name,) = cursor.fetchone()
            if name:
                cursor.execute(f"SELECT last_value, is_called FROM {name}")
                out.append((name, *cursor.fetchone()))
    return out


def _restore(sequences, connection):
    with connection.cursor() as cursor:
        for name, value, called in sequences:
            cursor.execute("SELECT setval(%s, %s, %s)", [name, value, called])


def _writable(cls):
    return not cls._meta.proxy and cls._meta.managed


def _parents_first(version, classes):
    """Model names in an order where every row a write references already exists."""
    specs = {spec.name: spec for spec in version}
    ordered, seen = [], set()

    def visit(name, path=()):
        if name in seen or name in path or name not in specs:
            return
        spec = specs[name]
        for base in (spec.parent, spec.proxy_of):
            if base:
                visit(base, path + (name,))
        for _, f in spec.fields:
            if f.kind in ("fk", "o2o") and f.to != name:
                visit(f.to, path + (name,))
        seen.add(name)
        ordered.append(name)

    for spec in version:
        visit(spec.name)
    return [name for name in ordered if _writable(classes[name])]


def write_rows(rows, version, plain, inserts_per_model, updates=True, deletes=False, new=False):
    """The code of ``version`` writes rows on plain Django's side; returns the actions to replay.

    Each action is the list of statements one ORM call sent. ``new``: these
    are the newest version's writes (their rows are the ones the old code
    later updates, see ``cross_updates``).
    """
    classes = build_models(version)
    connection = plain.connection
    alias = connection.alias
    actions = []
    used_o2o = rows.used_o2o
    if new:
        rows.created_by_new = {}
    _prune(rows, classes, connection)  # a model deleted and created again starts empty
    order = _parents_first(version, classes)
    for name in order:
        cls = classes[name]
        for _ in range(inserts_per_model):
            obj = rows.new_object(cls, version, used_o2o)
            if obj is None:
                continue
            sequences = _sequences(cls, connection)
            try:
                statements, _ = capture(connection, lambda obj=obj: obj.save(using=alias, force_insert=True))
            except IntegrityError:
                # A value this history's constraints refuse (a partial unique, an
                # exclusion). The failed INSERT took a key from the sequence: give
                # it back, or the keys of the two sides part ways.
                _restore(sequences, connection)
                continue
            rows.remember(cls, obj)
            if new:
                rows.created_by_new.setdefault(name, []).append(obj.pk)
            actions.append(statements)
        if updates:
            action = _update(rows, version, cls, connection)
            if action:
                actions.append(action)
        for field in cls._meta.local_many_to_many:
            if field.remote_field.through._meta.auto_created:
                action = _link(rows, cls, field, connection)
                if action:
                    actions.append(action)
    if deletes:
        for name in reversed(order):
            action = _delete(rows, classes[name], connection)
            if action:
                actions.append(action)
                _prune(rows, classes, connection)
    return actions


def _changeable(spec, f):
    return f is not None and f.kind not in ("fk", "o2o", "m2m", "generated") and not f.auto_now


def _update(rows, version, cls, connection):
    """``save()`` of the model's first row after changing one field (the ORM writes every column)."""
    name = cls.__name__
    ids = rows.ids.get(name)
    if not ids:
        return None
    specs = {spec.name: spec for spec in version}
    for field in cls._meta.concrete_fields:
        owner = specs.get(field.model.__name__)
        f = owner.field(field.name) if owner else None
        if field.primary_key or not _changeable(owner, f):
            continue
        rows.serial += 1
        value = rows.value(field.name, replace(f, null=False), rows.serial)

        def save(field=field, value=value):
            obj = cls._base_manager.using(connection.alias).get(pk=ids[0])
            setattr(obj, field.attname, value)
            obj.save(using=connection.alias)

        try:
            statements, _ = capture(connection, save)
        except (IntegrityError, cls.DoesNotExist):
            return None
        return statements
    return None


def _link(rows, cls, field, connection):
    """A row of an auto-created many-to-many table linking two existing rows."""
    through = field.remote_field.through
    source, target = [f for f in through._meta.concrete_fields if not f.primary_key]
    sources = rows.ids.get(cls.__name__, [])
    targets = rows.ids.get(field.related_model.__name__, [])
    for a in sources:
        for b in reversed(targets):
            key = (through._meta.db_table, a, b)
            if key in rows.links:
                continue
            rows.links.add(key)
            rows.referenced.setdefault(cls.__name__, set()).add(a)
            rows.referenced.setdefault(field.related_model.__name__, set()).add(b)
            try:
                statements, _ = capture(connection, lambda: through._base_manager.using(connection.alias).create(
                    **{source.attname: a, target.attname: b}))
            except IntegrityError:
                return None
            return statements
    return None


def _delete(rows, cls, connection):
    """The code deletes one row with ``delete()`` (the ORM cascades along the relations it knows).

    Rows something referenced once come first: the reference may live on in
    a column this code dropped from its models. A row whose delete the
    relations refuse (PROTECT, RESTRICT, a foreign key without cascade) is
    skipped for the next one.
    """
    name = cls.__name__
    candidates = list(reversed(rows.ids.get(name, [])[1:]))  # the first row is the one updates change
    referenced = rows.referenced.get(name, set())
    candidates.sort(key=lambda pk: pk not in referenced)
    for pk in candidates:
        def delete(pk=pk):
            obj = cls._base_manager.using(connection.alias).filter(pk=pk).first()
            if obj is None:
                raise LookupError
            obj.delete(using=connection.alias)

        try:
            statements, _ = capture(connection, delete)
        except (ProtectedError, RestrictedError, IntegrityError, LookupError):
            continue
        rows.ids[name].remove(pk)
        return statements
    return None


def _prune(rows, classes, connection):
    """Forget keys of rows a delete took along (cascades): later rows must not reference them."""
    for name, cls in classes.items():
        if name in rows.ids and _writable(cls):
            existing = set(cls._base_manager.using(connection.alias).values_list("pk", flat=True))
            rows.ids[name] = [pk for pk in rows.ids[name] if pk in existing]


def cross_updates(rows, old_version, new_version, plain, safe):
    """The old code updates a row the new code created; returns error messages (safemigrate's side).

    On safemigrate's side the old models load the row and ``save()`` it with
    one field changed, during the rollout; on plain Django's side the new
    models do the same (the old code is gone there). Only fields both
    versions declare alike are changed, so both sides mean the same write.
    """
    old_classes, new_classes = build_models(old_version), build_models(new_version)
    old_specs = {spec.name: spec for spec in old_version}
    new_specs = {spec.name: spec for spec in new_version}
    errors = []
    for name, keys in sorted(rows.created_by_new.items()):
        if name not in old_specs or name not in new_specs or not keys:
            continue
        old_cls, new_cls = old_classes[name], new_classes[name]
        if not (_writable(old_cls) and _writable(new_cls)):
            continue
        common = [field_name for field_name, f in new_specs[name].fields
                  if _changeable(new_specs[name], f) and old_specs[name].field(field_name) == f
                  and field_name not in rows.unique]
        if not common:
            continue
        field_name = common[0]
        rows.serial += 1
        value = rows.value(field_name, replace(new_specs[name].field(field_name), null=False), rows.serial)
        pk = keys[-1]
        for cls, side in ((new_cls, plain), (old_cls, safe)):
            alias = side.connection.alias

            def save(cls=cls, alias=alias):
                obj = cls._base_manager.using(alias).get(pk=pk)
                setattr(obj, cls._meta.get_field(field_name).attname, value)
                obj.save(using=alias, update_fields=_round_trips(cls, field_name))

            try:
                capture(side.connection, save)
            except (DatabaseError, old_cls.DoesNotExist, new_cls.DoesNotExist) as exc:
                if side is plain:
                    break  # not a write plain Django's side can make: skip it on both
                errors.append(f"old code update of a row the new code created: {type(exc).__name__}: "
                              f"{str(exc).splitlines()[0] if str(exc) else ''} ({name}.{field_name})")
    return errors


def _round_trips(cls, changed):
    """The fields a load and ``save()`` of ``cls`` writes back unchanged, and ``changed`` (None: all of them).

    A nullable FileField loads NULL as an empty FieldFile and saves it as ''.
    The old code does that in any rolling deploy, with or without safemigrate;
    plain Django's side, where the new code makes the same update, cannot, so
    the old side leaves such fields out of its write.
    """
    lossy = [field for field in cls._meta.concrete_fields
             if isinstance(field, models.FileField) and field.null]
    if not lossy:
        return None
    return [field.name for field in cls._meta.concrete_fields
            if not field.primary_key and (field not in lossy or field.name == changed)]
