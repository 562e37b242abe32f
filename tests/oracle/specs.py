"""Model histories as plain data: field specs, model specs, versions.

A history is a list of versions; a version is a tuple of ``M`` (model specs)
made of ``F`` (field specs). Specs are frozen data so that Hypothesis can
generate and shrink them and a failure prints as something a person can
paste into a regression test. ``version_state`` turns a version into the
``ProjectState`` the autodetector compares against, as the models of one
release of the code would give.
"""

import uuid
from dataclasses import dataclass

from django.db import models
from django.db.migrations.state import ModelState, ProjectState

APP = "oracleapp"


class PlainJSONField(models.TextField):
    """A column of type ``json`` (no equality operator, unlike jsonb)."""

    def db_type(self, connection):
        return "json"


# -- specs ---------------------------------------------------------------------

NUMERIC = ("int", "bigint", "positive", "decimal")
STRING = ("char", "text")
RELATIONS = ("fk", "o2o", "m2m")


@dataclass(frozen=True)
class F:
    """One field. ``default``/``db_default`` None means "not given"; ``"uuid4"`` is the callable."""

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

    def __repr__(self):
        # Only what differs from the defaults: shrunk examples stay readable.
        changed = [f"{name}={getattr(self, name)!r}" for name in
                   ("null", "default", "db_default", "unique", "db_index", "max_length", "digits", "to", "on_delete")
                   if getattr(self, name) != F.__dataclass_fields__[name].default]
        return f"F({', '.join([repr(self.kind), *changed])})"


@dataclass(frozen=True)
class M:
    """One model: fields in order, its primary key and Meta options.

    ``pk``: "auto" / "bigauto" (AutoField / BigAutoField) or "int" / "bigint"
    (a plain integer key the code assigns).

    ``indexes``: ((name, (field, ...)), ...); ``constraints``:
    (("unique", name, (field, ...), nulls_distinct), ("check", name, field, minimum), ...);
    ``unique_together``: ((field, ...), ...).
    """

    name: str
    fields: tuple = ()
    pk: str = "bigauto"
    db_table: str = None
    unique_together: tuple = ()
    indexes: tuple = ()
    constraints: tuple = ()

    def field(self, name):
        return dict(self.fields).get(name)

    def __repr__(self):
        parts = [repr(self.name), repr(self.fields)]
        for name in ("pk", "db_table", "unique_together", "indexes", "constraints"):
            if getattr(self, name) != M.__dataclass_fields__[name].default:
                parts.append(f"{name}={getattr(self, name)!r}")
        return f"M({', '.join(parts)})"


def build_field(spec):
    kwargs = {}
    if spec.null:
        kwargs["null"] = True
    if spec.default is not None:
        kwargs["default"] = uuid.uuid4 if spec.default == "uuid4" else spec.default
    if spec.db_default is not None:
        kwargs["db_default"] = spec.db_default
    if spec.unique and spec.kind != "o2o":
        kwargs["unique"] = True
    if spec.db_index:
        kwargs["db_index"] = True
    kind = spec.kind
    if kind in ("fk", "o2o"):
        cls = models.ForeignKey if kind == "fk" else models.OneToOneField
        return cls(f"{APP}.{spec.to}", on_delete=getattr(models, spec.on_delete), **kwargs)
    if kind == "m2m":
        return models.ManyToManyField(f"{APP}.{spec.to}")
    simple = {"int": models.IntegerField, "bigint": models.BigIntegerField, "positive": models.PositiveIntegerField,
              "text": models.TextField, "bool": models.BooleanField, "uuid": models.UUIDField,
              "json": models.JSONField, "plainjson": PlainJSONField}
    if kind == "decimal":
        return models.DecimalField(max_digits=spec.digits[0], decimal_places=spec.digits[1], **kwargs)
    if kind == "char":
        return models.CharField(max_length=spec.max_length, **kwargs)
    return simple[kind](**kwargs)


def model_state(spec):
    if spec.pk in ("auto", "bigauto"):
        pk = (models.BigAutoField if spec.pk == "bigauto" else models.AutoField)(
            primary_key=True, serialize=False, auto_created=True)
    else:
        pk = (models.BigIntegerField if spec.pk == "bigint" else models.IntegerField)(primary_key=True, serialize=False)
    fields = [("id", pk)]
    fields += [(name, build_field(f)) for name, f in spec.fields]
    options = {}
    if spec.db_table:
        options["db_table"] = spec.db_table
    if spec.unique_together:
        options["unique_together"] = {tuple(names) for names in spec.unique_together}
    options["indexes"] = [models.Index(fields=list(names), name=name) for name, names in spec.indexes]
    constraints = []
    for constraint in spec.constraints:
        if constraint[0] == "unique":
            _, name, names, nulls_distinct = constraint
            constraints.append(models.UniqueConstraint(fields=list(names), name=name, nulls_distinct=nulls_distinct))
        else:
            _, name, column, minimum = constraint
            constraints.append(models.CheckConstraint(condition=models.Q(**{f"{column}__gte": minimum}), name=name))
    options["constraints"] = constraints
    return ModelState(APP, spec.name, fields, options=options)


def version_state(version):
    state = ProjectState()
    for spec in version:
        state.add_model(model_state(spec))
    return state
