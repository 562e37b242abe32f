"""A short simulated rollout: the old and the new code write rows between expand and contract.

During a real deploy, after ``migrate`` the old code keeps serving and the new
code starts serving beside it. Two things break there that no schema check
finds: the old code can no longer write (a NOT NULL column it does not know,
a column gone), and the new code writes values the old schema cannot hold,
which only hurts later, when the release is rolled back (a NULL in a column
that was NOT NULL, a string longer than the old ``max_length``, a number
beyond the old integer range). The rollback then fails on real data, in
production, at the worst moment.

So for every model the release changes, each code version's model is built
from the migration state (``loader.project_state``: the old code's state
before the release, the new code's with it applied; historical models, as
the real code would use them, without its custom ``save``), and writes a few
rows through the ORM: a copy of an existing row (unique fields made unique)
and, for the new code, with each changed field set to a value only the new
definition allows. Then both versions re-save an existing row.

What counts as a failure: the database refusing the old code's write for a
reason the schema makes (a column it names is gone, a column it does not
know is NOT NULL without a default). Anything else (a unique value we made
clashing, a foreign key we could not fill) is a limit of the synthetic rows
and reported as a note.
"""

import datetime
import decimal
import uuid
from dataclasses import dataclass, field

from django.db import DatabaseError, models

from ..pg.ddl import sqlstate

#: SQLSTATEs that mean "this code version no longer fits the schema".
SCHEMA_ERRORS = {"42703": "a column it uses does not exist", "42P01": "a table it uses does not exist"}
NOT_NULL = "23502"
_INTEGERS = {"SmallIntegerField", "IntegerField", "BigIntegerField", "PositiveSmallIntegerField",
             "PositiveIntegerField", "PositiveBigIntegerField", "SmallAutoField", "AutoField", "BigAutoField"}
_TEXT = {"CharField", "SlugField", "EmailField", "URLField", "TextField", "GenericIPAddressField",
         "FilePathField", "FileField", "ImageField"}


class Unsupported(Exception):
    """No synthetic value can be made for a field (the model is left out of the rollout, with a note)."""


@dataclass
class RolloutResult:
    #: {"old" | "new": {model label: [primary keys written]}}
    written: dict = field(default_factory=lambda: {"old": {}, "new": {}})
    #: {model label: {field: what the new code wrote that the old schema cannot hold}}
    edges: dict = field(default_factory=dict)
    failures: list = field(default_factory=list)
    notes: list = field(default_factory=list)

    @property
    def rows(self):
        return sum(len(pks) for version in self.written.values() for pks in version.values())


def _fields_signature(model_state):
    return {name: field.deconstruct()[1:] for name, field in model_state.fields.items()}


def changed_models(old_state, new_state, app_labels):
    """``[(app_label, model_name)]`` the release adds, changes or removes in ``app_labels``."""
    keys = {key for key in set(old_state.models) | set(new_state.models) if key[0] in app_labels}
    changed = []
    for key in sorted(keys):
        old, new = old_state.models.get(key), new_state.models.get(key)
        if old is None or new is None or _fields_signature(old) != _fields_signature(new) \
                or old.options.get("db_table") != new.options.get("db_table"):
            changed.append(key)
    return changed


def _writable(model):
    meta = model._meta
    return meta.managed and not meta.proxy and not meta.abstract and not meta.swapped


def edge_values(old_field, new_field, connection):
    """A value the new field allows and the old does not (None if there is none we know)."""
    if old_field is None or new_field is None or new_field.primary_key:
        return None
    if new_field.null and not old_field.null:
        return ("NULL", None)
    old_type, new_type = old_field.get_internal_type(), new_field.get_internal_type()
    if old_type in _INTEGERS and new_type in _INTEGERS:
        old_max = connection.ops.integer_field_range(old_type)[1]
        new_max = connection.ops.integer_field_range(new_type)[1]
        if old_max is not None and (new_max is None or new_max > old_max):
            return (f"{old_max + 1} (beyond the old {old_type})", old_max + 1)
    if old_type in _TEXT and new_type in _TEXT:
        old_len, new_len = getattr(old_field, "max_length", None), getattr(new_field, "max_length", None)
        if old_len and (new_len is None or new_len > old_len):
            return (f"{old_len + 1} characters (the old max_length is {old_len})", "r" * (old_len + 1))
    if old_type == new_type == "DecimalField":
        old_digits = old_field.max_digits - old_field.decimal_places
        new_digits = new_field.max_digits - new_field.decimal_places
        if new_digits > old_digits:
            return (f"10^{old_digits} (more digits than the old max_digits allows)", decimal.Decimal(10) ** old_digits)
    return None


def _unique_fields(model):
    names = {f.name for f in model._meta.concrete_fields if f.unique and not f.primary_key}
    for together in model._meta.unique_together:
        names.add(together[0])
    for constraint in model._meta.constraints:
        if isinstance(constraint, models.UniqueConstraint) and constraint.fields:
            names.add(constraint.fields[0])
    return names


def _fresh(field, counter, alias, unique):
    kind = field.get_internal_type()
    if field.choices and not unique:
        return field.choices[0][0]
    if field.is_relation:
        if unique:
            raise Unsupported(f"{field.name} is a unique relation (one-to-one)")
        target = field.related_model._default_manager.using(alias).values_list("pk", flat=True).first()
        if target is None:
            raise Unsupported(f"{field.name}: no {field.related_model._meta.label} row to point to")
        return target
    if kind in _INTEGERS or kind in ("FloatField", "DecimalField"):
        base = 0
        if unique:
            current = field.model._default_manager.using(alias).aggregate(m=models.Max(field.name))["m"]
            base = int(current or 0)
        value = base + counter
        return decimal.Decimal(value) if kind == "DecimalField" else float(value) if kind == "FloatField" else value
    if kind == "EmailField":
        return f"r{counter}.{uuid.uuid4().hex[:8]}@example.com"
    if kind == "GenericIPAddressField":
        return f"10.{counter // 65536 % 256}.{counter // 256 % 256}.{counter % 256}"
    if kind in _TEXT:
        value = f"r{uuid.uuid4().hex[:10]}{counter}"
        limit = getattr(field, "max_length", None)
        if limit and len(value) > limit:
            value = value[-limit:] if unique else value[:limit]
        return value
    if kind == "BooleanField":
        return False
    if kind == "UUIDField":
        return uuid.uuid4()
    if kind == "DateTimeField":
        return datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(microseconds=counter)
    if kind == "DateField":
        return datetime.date.today() + datetime.timedelta(days=counter if unique else 0)
    if kind == "TimeField":
        return datetime.time(0, 0)
    if kind == "DurationField":
        return datetime.timedelta(seconds=counter)
    if kind == "JSONField":
        return {}
    if kind == "BinaryField":
        return b""
    raise Unsupported(f"{field.name}: no synthetic value for a {kind}")


def _values(model, template, counter, edges, alias):
    values = {}
    uniques = _unique_fields(model)
    for f in model._meta.concrete_fields:
        if f.primary_key and (f.get_internal_type() in _INTEGERS or f.has_default()):
            continue  # the sequence or the default makes it
        if getattr(f, "generated", False):
            continue
        if f.name in edges:
            values[f.attname] = edges[f.name][1]
        elif f.primary_key or f.name in uniques:
            values[f.attname] = f.get_default() if f.has_default() and callable(f.default) else \
                _fresh(f, counter, alias, unique=True)
        elif template is not None:
            values[f.attname] = getattr(template, f.attname)
        elif f.has_default():
            values[f.attname] = f.get_default()
        elif f.null:
            values[f.attname] = None
        else:
            values[f.attname] = _fresh(f, counter, alias, unique=False)
    return values


def _classify(exc, model):
    """A failure message when the database refused the write because the schema no longer fits the code."""
    state = sqlstate(exc)
    if state in SCHEMA_ERRORS:
        return SCHEMA_ERRORS[state]
    if state == NOT_NULL:
        columns = {f.column for f in model._meta.concrete_fields}
        cause = getattr(exc, "__cause__", None)
        column = getattr(getattr(cause, "diag", None), "column_name", None)
        if column and column not in columns:
            return f"column {column!r}, which this code does not know, is NOT NULL without a default"
    return None


def simulate(old_apps, new_apps, model_keys, alias, connection, rows=10):
    """Write ``rows`` rows per changed model with each code version; returns a ``RolloutResult``."""
    result = RolloutResult()
    counter = 0
    for version, apps in (("old", old_apps), ("new", new_apps)):
        for app_label, model_name in model_keys:
            try:
                model = apps.get_model(app_label, model_name)
            except LookupError:
                continue  # added by the release (old code) or removed by it (new code)
            if not _writable(model):
                continue
            label = model._meta.label
            edges = {}
            if version == "new":
                try:
                    old_model = old_apps.get_model(app_label, model_name)
                except LookupError:
                    old_model = None
                for f in model._meta.concrete_fields:
                    old_field = _field(old_model, f.name)
                    edge = edge_values(old_field, f, connection) if old_field is not None and \
                        old_field.column == f.column else None
                    if edge:
                        edges[f.name] = edge
                if edges:
                    result.edges[label] = {name: text for name, (text, _value) in edges.items()}
            written = result.written[version].setdefault(label, [])
            try:
                template = model._default_manager.using(alias).order_by("-pk").first()
                for _ in range(rows):
                    counter += 1
                    obj = model(**_values(model, template, counter, edges, alias))
                    obj.save(using=alias, force_insert=True)
                    written.append(obj.pk)
                if template is not None:
                    template.save(using=alias)
            except Unsupported as exc:
                result.notes.append(f"{version} code, {label}: rows not written ({exc})")
            except DatabaseError as exc:
                why = _classify(exc, model)
                text = " ".join(str(exc).split())
                if why and version == "old":
                    result.failures.append(
                        f"The old code cannot write {label} after expand: {why} ({text}). During the rollout "
                        "old code still serves, so every write of this kind would fail.")
                elif why:
                    result.failures.append(f"The new code cannot write {label} after expand: {why} ({text}).")
                else:
                    result.notes.append(f"{version} code, {label}: a synthetic row was refused ({text}); "
                                        "not a schema problem, the rollout goes on")
    return result


def _field(model, name):
    if model is None:
        return None
    try:
        f = model._meta.get_field(name)
    except Exception:  # noqa: BLE001 - FieldDoesNotExist or a reverse relation
        return None
    return f if getattr(f, "concrete", False) else None
