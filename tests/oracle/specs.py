"""Model histories as plain data: field specs, model specs, versions.

A history is a list of versions; a version is a tuple of ``M`` (model specs)
made of ``F`` (field specs), with ``Ix`` / ``U`` / ``C`` / ``X`` for Meta
indexes and constraints. Specs are frozen data so that Hypothesis can
generate and shrink them and a failure prints as something a person can
paste into a regression test.

``build_models`` turns a version into real model classes (in a registry of
their own), as one release of the code would define them: abstract bases,
multi-table inheritance, proxies, unmanaged models, explicit through models
and ``order_with_respect_to`` all go through Django's own model machinery.
``version_state`` then reads them with ``ModelState.from_model``, exactly as
``makemigrations`` reads a project's models.
"""

import datetime
import uuid
from dataclasses import dataclass

import django
from django.apps.registry import Apps
from django.contrib.postgres import constraints as pg_constraints
from django.contrib.postgres import fields as pg_fields
from django.contrib.postgres import indexes as pg_indexes
from django.db import models
from django.db.migrations.state import AppConfigStub, ModelState, ProjectState
from django.db.models.functions import Lower
from django.utils import timezone

APP = "oracleapp"
#: Django 6.1 adds database-level on_delete (DB_CASCADE, ...) and VIRTUAL generated columns on PostgreSQL 18.
DJANGO_61 = django.VERSION >= (6, 1)


class PlainJSONField(models.TextField):
    """A column of type ``json`` (no equality operator, unlike jsonb)."""

    def db_type(self, connection):
        return "json"


# -- specs ---------------------------------------------------------------------

INTEGER = ("int", "bigint", "positive", "smallint", "positivesmall", "positivebig")
NUMERIC = INTEGER + ("decimal", "float")
STRING = ("char", "text", "email", "slug", "url")
TEMPORAL = ("date", "datetime", "time")
RANGES = ("intrange", "bigintrange", "decimalrange", "daterange", "datetimerange")
RELATIONS = ("fk", "o2o", "m2m")
#: Kinds with no meaningful uniqueness / btree index in the grammar.
UNINDEXED = ("bool", "json", "plainjson", "binary", "hstore", "generated") + RANGES


@dataclass(frozen=True)
class F:
    """One field. ``default``/``db_default`` None means "not given"; ``"uuid4"``/``"now"`` are callables."""

    kind: str
    null: bool = False
    default: object = None
    db_default: object = None
    unique: bool = False
    db_index: bool = False
    max_length: int = 50
    #: (max_digits, decimal_places) of a decimal
    digits: tuple = (10, 2)
    to: str = None
    on_delete: str = "CASCADE"
    db_column: str = None
    db_comment: str = None
    db_tablespace: str = None
    #: db_collation of a text field
    collation: str = None
    #: a relation without its FOREIGN KEY constraint
    db_constraint: bool = True
    #: a relation to a unique field of the target other than its key
    to_field: str = None
    #: "auto_now" / "auto_now_add" (date, datetime, time)
    auto_now: str = None
    blank: bool = False
    #: state-only attributes Django still writes migrations for
    help_text: str = None
    #: many-to-many through an explicit model of the version
    through: str = None
    #: generated: the integer field it computes from, and whether it is stored
    source: str = None
    db_persist: bool = True
    #: declared on an abstract base class
    inherited: bool = False

    def __repr__(self):
        # Only what differs from the defaults: shrunk examples stay readable.
        changed = [f"{name}={getattr(self, name)!r}" for name in F.__dataclass_fields__
                   if name != "kind" and getattr(self, name) != F.__dataclass_fields__[name].default]
        return f"F({', '.join([repr(self.kind), *changed])})"


@dataclass(frozen=True)
class Ix:
    """A Meta index: btree by default, or gin / gist / hash / brin.

    ``condition``: (lookup, field, value) for a partial index; ``expression``:
    ("lower", field) or ("plus", field) instead of fields; ``include``:
    covering columns; ``desc``: descending order; ``opclass``: an operator class.
    """

    name: str
    fields: tuple = ()
    kind: str = "btree"
    condition: tuple = None
    expression: tuple = None
    include: tuple = ()
    desc: bool = False
    opclass: str = None

    def names(self):
        return tuple(self.fields) + tuple(self.include) + ((self.expression[1],) if self.expression else ()) + (
            (self.condition[1],) if self.condition else ())


@dataclass(frozen=True)
class U:
    """A UniqueConstraint: fields, or an expression; partial, covering, deferrable, NULLS NOT DISTINCT."""

    name: str
    fields: tuple = ()
    nulls_distinct: bool = None
    condition: tuple = None
    include: tuple = ()
    deferrable: str = None
    expression: tuple = None

    def names(self):
        return tuple(self.fields) + tuple(self.include) + ((self.expression[1],) if self.expression else ()) + (
            (self.condition[1],) if self.condition else ())


@dataclass(frozen=True)
class C:
    """A CheckConstraint ``field >= minimum``."""

    name: str
    field: str
    minimum: object = 0

    def names(self):
        return (self.field,)


@dataclass(frozen=True)
class X:
    """An ExclusionConstraint over one field: ``&&`` for a range, ``=`` otherwise (btree_gist)."""

    name: str
    field: str
    operator: str = "&&"

    def names(self):
        return (self.field,)


def constraint(item):
    """A constraint spec from its old tuple form: ("unique", name, fields, nulls_distinct) / ("check", name, field, min)."""
    if isinstance(item, tuple):
        if item[0] == "unique":
            return U(item[1], tuple(item[2]), item[3] if len(item) > 3 else None)
        return C(item[1], item[2], item[3])
    return item


def index(item):
    """An index spec from its old tuple form: (name, (field, ...))."""
    return Ix(item[0], tuple(item[1])) if isinstance(item, tuple) else item


@dataclass(frozen=True)
class M:
    """One model: fields in order, its primary key and Meta options.

    ``pk``: "auto" / "bigauto" (AutoField / BigAutoField) or "int" / "bigint"
    (a plain integer key the code assigns). ``parent``: multi-table
    inheritance (the key is ``<parent>_ptr``). ``proxy_of``: a proxy (no
    fields of its own). ``managed=False``: an unmanaged model over
    ``db_table``, a table another model of the version creates.
    ``order_wrt``: order_with_respect_to (a foreign key of the model).

    ``indexes``: ``Ix`` (or the old (name, (field, ...))); ``constraints``:
    ``U``, ``C``, ``X`` (or the old tuples); ``unique_together``: ((field, ...), ...).
    """

    name: str
    fields: tuple = ()
    pk: str = "bigauto"
    db_table: str = None
    unique_together: tuple = ()
    indexes: tuple = ()
    constraints: tuple = ()
    db_table_comment: str = None
    db_tablespace: str = None
    parent: str = None
    proxy_of: str = None
    managed: bool = True
    order_wrt: str = None

    def field(self, name):
        return dict(self.fields).get(name)

    def __repr__(self):
        parts = [repr(self.name), repr(self.fields)]
        for name in M.__dataclass_fields__:
            if name not in ("name", "fields") and getattr(self, name) != M.__dataclass_fields__[name].default:
                parts.append(f"{name}={getattr(self, name)!r}")
        return f"M({', '.join(parts)})"


# -- building model classes ------------------------------------------------------

ON_DELETE = {"CASCADE": models.CASCADE, "PROTECT": models.PROTECT, "SET_NULL": models.SET_NULL,
             "RESTRICT": models.RESTRICT, "DO_NOTHING": models.DO_NOTHING}
if DJANGO_61:
    ON_DELETE.update(DB_CASCADE=models.DB_CASCADE, DB_SET_NULL=models.DB_SET_NULL)

#: Python-side callable defaults by their spec names.
CALLABLES = {"uuid4": uuid.uuid4, "now": timezone.now, "dict": dict, "list": list}


def _q(condition):
    lookup, field, value = condition
    return models.Q(**{f"{field}__{lookup}": value})


def _expression(expression):
    how, field = expression
    return Lower(field) if how == "lower" else models.F(field) + 1


def build_field(spec):
    kwargs = {}
    if spec.null:
        kwargs["null"] = True
    if spec.default is not None:
        default = spec.default
        kwargs["default"] = CALLABLES[default] if isinstance(default, str) and default in CALLABLES else default
    if spec.db_default is not None:
        kwargs["db_default"] = spec.db_default
    if spec.unique and spec.kind != "o2o":
        kwargs["unique"] = True
    if spec.db_index:
        kwargs["db_index"] = True
    for attribute, keyword in (("db_column", "db_column"), ("db_comment", "db_comment"),
                               ("db_tablespace", "db_tablespace"), ("help_text", "help_text")):
        if getattr(spec, attribute) is not None:
            kwargs[keyword] = getattr(spec, attribute)
    if spec.blank:
        kwargs["blank"] = True
    kind = spec.kind
    if kind in ("fk", "o2o"):
        cls = models.ForeignKey if kind == "fk" else models.OneToOneField
        if not spec.db_constraint:
            kwargs["db_constraint"] = False
        if spec.to_field:
            kwargs["to_field"] = spec.to_field
        return cls(f"{APP}.{spec.to}", on_delete=ON_DELETE[spec.on_delete], **kwargs)
    if kind == "m2m":
        extra = {"through": f"{APP}.{spec.through}"} if spec.through else {}
        if spec.db_comment:
            extra["db_comment"] = spec.db_comment
        return models.ManyToManyField(f"{APP}.{spec.to}", **extra)
    if kind == "generated":
        return models.GeneratedField(expression=models.F(spec.source) + 1, output_field=models.BigIntegerField(),
                                     db_persist=spec.db_persist, **{k: v for k, v in kwargs.items()
                                                                   if k in ("db_comment", "help_text", "db_column")})
    if spec.collation:
        kwargs["db_collation"] = spec.collation
    if spec.auto_now:
        kwargs[spec.auto_now] = True
    if kind == "decimal":
        return models.DecimalField(max_digits=spec.digits[0], decimal_places=spec.digits[1], **kwargs)
    if kind in ("char", "email", "slug", "url"):
        cls = {"char": models.CharField, "email": models.EmailField, "slug": models.SlugField,
               "url": models.URLField}[kind]
        return cls(max_length=spec.max_length, **kwargs)
    if kind in ("file", "image"):
        return (models.FileField if kind == "file" else models.ImageField)(upload_to="up", **kwargs)
    if kind == "array":
        return pg_fields.ArrayField(models.IntegerField(), **kwargs)
    simple = {"int": models.IntegerField, "bigint": models.BigIntegerField, "positive": models.PositiveIntegerField,
              "smallint": models.SmallIntegerField, "positivesmall": models.PositiveSmallIntegerField,
              "positivebig": models.PositiveBigIntegerField, "float": models.FloatField,
              "text": models.TextField, "bool": models.BooleanField, "uuid": models.UUIDField,
              "json": models.JSONField, "plainjson": PlainJSONField, "date": models.DateField,
              "datetime": models.DateTimeField, "time": models.TimeField, "duration": models.DurationField,
              "binary": models.BinaryField, "ip": models.GenericIPAddressField, "hstore": pg_fields.HStoreField,
              "intrange": pg_fields.IntegerRangeField, "bigintrange": pg_fields.BigIntegerRangeField,
              "decimalrange": pg_fields.DecimalRangeField, "daterange": pg_fields.DateRangeField,
              "datetimerange": pg_fields.DateTimeRangeField}
    return simple[kind](**kwargs)


def build_index(spec):
    spec = index(spec)
    kwargs = {"name": spec.name}
    if spec.condition:
        kwargs["condition"] = _q(spec.condition)
    if spec.include:
        kwargs["include"] = list(spec.include)
    if spec.opclass:
        kwargs["opclasses"] = [spec.opclass] * len(spec.fields)
    cls = {"btree": models.Index, "gin": pg_indexes.GinIndex, "gist": pg_indexes.GistIndex,
           "hash": pg_indexes.HashIndex, "brin": pg_indexes.BrinIndex}[spec.kind]
    if spec.expression:
        return cls(_expression(spec.expression), **kwargs)
    fields = [f"-{name}" if spec.desc else name for name in spec.fields]
    return cls(fields=fields, **kwargs)


def build_constraint(spec):
    spec = constraint(spec)
    if isinstance(spec, C):
        return models.CheckConstraint(condition=models.Q(**{f"{spec.field}__gte": spec.minimum}), name=spec.name)
    if isinstance(spec, X):
        return pg_constraints.ExclusionConstraint(name=spec.name, expressions=[(spec.field, spec.operator)],
                                                  index_type="gist")
    kwargs = {"name": spec.name}
    if spec.nulls_distinct is not None:
        kwargs["nulls_distinct"] = spec.nulls_distinct
    if spec.condition:
        kwargs["condition"] = _q(spec.condition)
    if spec.include:
        kwargs["include"] = list(spec.include)
    if spec.deferrable:
        kwargs["deferrable"] = getattr(models.Deferrable, spec.deferrable)
    if spec.expression:
        return models.UniqueConstraint(_expression(spec.expression), **kwargs)
    return models.UniqueConstraint(fields=list(spec.fields), **kwargs)


def _ordered(version):
    """Specs with each model after its parent / proxied model (class bases must exist first)."""
    by_name = {spec.name: spec for spec in version}
    out, seen = [], set()

    def visit(spec):
        if spec.name in seen:
            return
        seen.add(spec.name)
        for base in (spec.parent, spec.proxy_of):
            if base in by_name:
                visit(by_name[base])
        out.append(spec)

    for spec in version:
        visit(spec)
    return out


def build_models(version):
    """The version's model classes, in a registry of their own: ``{name: class}``.

    The registry holds an app config for the oracle's app (as the migration
    state's registry does): the models' reverse relations are found through
    the registry's app configs, and without them ``delete()`` would cascade,
    protect and set null through none of the version's relations.
    """
    registry = Apps([AppConfigStub(APP)])
    classes = {}
    for spec in _ordered(version):
        meta = {"apps": registry, "app_label": APP}
        if spec.db_table and not spec.proxy_of:
            meta["db_table"] = spec.db_table
        if spec.unique_together:
            meta["unique_together"] = [tuple(names) for names in spec.unique_together]
        if spec.indexes:
            meta["indexes"] = [build_index(item) for item in spec.indexes]
        if spec.constraints:
            meta["constraints"] = [build_constraint(item) for item in spec.constraints]
        for attribute in ("db_table_comment", "db_tablespace", "order_with_respect_to"):
            value = getattr(spec, "order_wrt" if attribute == "order_with_respect_to" else attribute)
            if value is not None:
                meta[attribute] = value
        if not spec.managed:
            meta["managed"] = False
        attrs = {"__module__": f"{APP}.models"}
        inherited = {}
        if spec.proxy_of:
            meta["proxy"] = True
            bases = (classes[spec.proxy_of],)
        else:
            if spec.parent:
                bases = (classes[spec.parent],)
            else:
                pk_class = {"auto": models.AutoField, "bigauto": models.BigAutoField, "int": models.IntegerField,
                            "bigint": models.BigIntegerField}[spec.pk]
                auto = spec.pk in ("auto", "bigauto")
                attrs["id"] = pk_class(primary_key=True, serialize=False, **({"auto_created": True} if auto else {}))
                bases = (models.Model,)
            for name, f in spec.fields:
                (inherited if f.inherited else attrs)[name] = build_field(f)
            if inherited:
                base_meta = type("Meta", (), {"abstract": True, "apps": registry, "app_label": APP})
                base = type(f"{spec.name}Base", bases, {"__module__": f"{APP}.models", "Meta": base_meta,
                                                      **inherited})
                bases = (base,)
        attrs["Meta"] = type("Meta", (), meta)
        classes[spec.name] = type(spec.name, bases, attrs)
    return classes


#: System checks whose errors make a version's models unusable for the comparison: each is about what
#: a delete does to the rows. fields.E323 (Django 6.1): Python- and database-level on_delete mixed in
#: one chain of references, where a database cascade deletes rows without the ORM's cascade through
#: the Python-level relations, leaving them pointing at deleted rows.
ROW_CHECKS = {"fields.E323"}


def check_errors(version):
    """What Django's system checks in ``ROW_CHECKS`` refuse in the version's models (``migrate`` runs them first).

    Only those: the grammar keeps generating models other checks reject for
    their Python API (clashing reverse accessors, ``auto_now`` with a
    default), whose tables and rows are still worth comparing.
    """
    return [f"{error.id}: {error.msg}" for cls in build_models(version).values() for error in cls.check()
            if error.id in ROW_CHECKS]


def version_state(version):
    """The ``ProjectState`` makemigrations would read from this version's models."""
    state = ProjectState()
    for cls in build_models(version).values():
        state.add_model(ModelState.from_model(cls))
    return state


#: Values a static default of each kind takes (Python-side and database defaults).
STATIC_DEFAULTS = {"int": 5, "bigint": 5, "positive": 5, "smallint": 5, "positivesmall": 5, "positivebig": 5,
                   "decimal": "1.50", "float": 1.5, "char": "x", "text": "x", "email": "a@b.cd", "slug": "x",
                   "url": "https://x.org", "bool": True, "date": datetime.date(2020, 1, 1),
                   "time": datetime.time(12, 0), "duration": datetime.timedelta(seconds=5),
                   "datetime": datetime.datetime(2020, 1, 1, tzinfo=datetime.timezone.utc),
                   "ip": "10.0.0.1", "file": "up/x.txt", "image": "up/x.png", "binary": b"x", "array": "list",
                   "json": "dict", "hstore": "dict"}


def static_default(kind):
    """A default for a field of ``kind`` (None: the grammar gives it none)."""
    return STATIC_DEFAULTS.get(kind)
