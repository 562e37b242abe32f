"""The Hypothesis grammar of model histories.

A history starts with one or two models and moves through 1-3 more versions;
each version applies one or two edits a developer makes between releases.
Names come from small pools so that consecutive versions often touch the
same field again (the case behind several real defects).

The grammar covers what Django's model field reference and Meta options send
to the database: every built-in field class (and ``django.contrib.postgres``'
array, hstore and range fields), ``GeneratedField``, the field options
``null``, ``default``, ``db_default``, ``unique``, ``db_index``,
``db_column``, ``db_comment``, ``db_tablespace``, ``db_collation``,
``auto_now``/``auto_now_add``, ``blank``; relations with ``on_delete``
(database-level ones on Django 6.1), ``db_constraint=False``, ``to_field``
and explicit ``through`` models; Meta ``db_table``, ``db_table_comment``,
``db_tablespace``, ``unique_together``, indexes (partial, expression,
covering, descending, operator classes, GIN, GiST, hash, BRIN), unique
constraints (partial, covering, deferrable, expression, NULLS NOT DISTINCT),
check and exclusion constraints, ``order_with_respect_to``; multi-table and
abstract inheritance, proxy and unmanaged models; models added in a later
release with relations to older ones.

Every edit keeps the models valid for Django and its own migrations
runnable on the generated rows: a field turning NOT NULL gets a default, a
field added to a table with rows is nullable or has a default, a self
reference is nullable, a referenced model is not deleted. What it cannot
rule out (a unique index over rows that a static default made equal) plain
Django reports, and the runner records the history as "invalid".

``exclude`` names edits and field kinds to leave out (see EDITS and KINDS,
plus "remove_relation": remove_field limited to non-relations): the fast
profile excludes what is known to fail today.
"""

from dataclasses import replace

from hypothesis import strategies as st

from .specs import (C, DJANGO_61, INTEGER, NUMERIC, RANGES, STRING, UNINDEXED, F, Ix, M, U, X, constraint,
                    index, static_default)

MODEL_NAMES = ("Alpha", "Beta", "Gamma", "Delta")
FIELD_NAMES = ("a", "b", "c", "d", "e")
#: A multi-table child's own fields: never the names its parent uses.
CHILD_FIELD_NAMES = ("x", "y", "z")
COLUMN_NAMES = ("col_p", "col_q", "col_r")
TEMPORAL = ("date", "datetime", "time")
OTHER = ("bool", "uuid", "json", "duration", "binary", "ip", "file", "array", "hstore")
KINDS = NUMERIC + STRING + TEMPORAL + OTHER + RANGES + ("generated", "fk", "o2o", "m2m")
#: Kinds a type change moves between.
TYPE_GROUPS = (NUMERIC, STRING + ("file",), ("date", "datetime"), ("intrange", "bigintrange"))
MAX_LENGTHS = (10, 50, 200)
#: Kinds that take a constant database default in the grammar.
DB_DEFAULTABLE = NUMERIC + STRING + ("bool", "date")
ON_DELETE = ("CASCADE", "PROTECT", "RESTRICT", "DO_NOTHING") + (("DB_CASCADE",) if DJANGO_61 else ())
EDITS = (
    "add_field", "remove_field", "rename_field", "add_model", "remove_model", "rename_model",
    "type", "max_length", "null_to_not_null", "not_null_to_null", "default", "percent_default",
    "uuid_default", "db_default", "unique", "db_index", "on_delete", "retarget", "bigint_pk",
    "index", "unique_constraint", "nulls_not_distinct", "check_constraint", "unique_together",
    "db_column", "db_comment", "db_tablespace", "collation", "db_constraint", "auto_now", "blank", "help_text",
    "db_table", "db_table_comment", "model_tablespace", "inherit", "abstract", "proxy", "unmanaged",
    "order_wrt", "m2m_through", "exclusion_constraint", "generated",
)

#: Edits left out of the fast pytest profile because they fail today (none now:
#: each former one has a hand-written history in tests/test_oracle.py).
FAST_PROFILE_EXCLUDES = frozenset()


def _plain_kinds(exclude):
    return [kind for kind in NUMERIC + STRING + TEMPORAL + OTHER + RANGES if kind not in exclude]


def _columns(spec):
    """The columns a model's fields use (to keep new db_column names apart)."""
    out = set()
    for name, f in spec.fields:
        base = f"{name}_id" if f.kind in ("fk", "o2o") else name
        out.add(f.db_column or base)
    return out


@st.composite
def field_spec(draw, exclude, models, owner, on_existing_table, version=()):
    """A new field on ``owner``; ``models`` are the model names it may point at."""
    concrete = [n for n in models if _concrete(version, n)] if version else list(models)
    kinds = _plain_kinds(exclude) + [k for k in ("fk", "o2o", "m2m") if k not in exclude and concrete]
    kind = draw(st.sampled_from(kinds))
    if kind in ("fk", "o2o", "m2m"):
        target = draw(st.sampled_from(concrete))
        if kind == "m2m":
            return F("m2m", to=target)
        # A reference added to a table with rows, or to the own table, has nothing to point at yet.
        null = on_existing_table or target == owner or draw(st.booleans())
        spec = F(kind, null=null, to=target)
        on_delete = draw(st.sampled_from(ON_DELETE + (("SET_NULL", "DB_SET_NULL" if DJANGO_61 else "SET_NULL")
                                                      if null else ())))
        spec = replace(spec, on_delete=on_delete)
        if "db_constraint" not in exclude and draw(st.integers(0, 5)) == 0:
            spec = replace(spec, db_constraint=False)
        if "to_field" not in exclude and version and draw(st.integers(0, 3)) == 0:
            target_spec = _spec(version, target)
            unique = [n for n, f in (target_spec.fields if target_spec else ()) if f.unique and
                      f.kind in INTEGER + STRING and not f.db_column]
            if unique:
                spec = replace(spec, to_field=draw(st.sampled_from(unique)))
        return spec
    null = draw(st.booleans())
    spec = F(kind, null=null)
    if kind in STRING:
        spec = replace(spec, max_length=draw(st.sampled_from(MAX_LENGTHS)))
    if not null:
        choices = ["default"] if static_default(kind) is not None else []
        if kind == "uuid" and "uuid_default" not in exclude:
            choices.append("uuid4")
        if kind in DB_DEFAULTABLE and "db_default" not in exclude:
            choices.append("db_default")
        if kind in STRING and "percent_default" not in exclude:
            choices.append("percent")
        if kind in STRING and "blank" not in exclude:
            choices.append("blank")  # NOT NULL without a default: Django's schema editor fills ''
        if kind in TEMPORAL and "auto_now" not in exclude:
            choices += ["auto_now", "auto_now_add"]
        if kind == "datetime":
            choices.append("now")
        how = draw(st.sampled_from(choices)) if choices else None
        if how in ("uuid4", "now"):
            spec = replace(spec, default=how)
        elif how == "db_default":
            spec = replace(spec, db_default=static_default(kind))
        elif how == "percent":
            spec = replace(spec, default="100%")
        elif how == "blank":
            spec = replace(spec, blank=True)
        elif how in ("auto_now", "auto_now_add"):
            spec = replace(spec, auto_now=how)
        elif how == "default":
            spec = replace(spec, default=static_default(kind))
        else:
            spec = replace(spec, null=True)  # no default the grammar can give: keep it nullable
    elif kind in TEMPORAL and "auto_now" not in exclude and draw(st.integers(0, 4)) == 0:
        spec = replace(spec, auto_now=draw(st.sampled_from(["auto_now", "auto_now_add"])))
    if kind not in UNINDEXED and "db_index" not in exclude and draw(st.integers(0, 3)) == 0:
        spec = replace(spec, db_index=True)
    if kind not in UNINDEXED and kind not in ("file",) and "unique" not in exclude and spec.null \
            and spec.default is None and spec.db_default is None and not spec.auto_now and draw(st.integers(0, 3)) == 0:
        spec = replace(spec, unique=True)
    if kind in ("char", "text") and "collation" not in exclude and draw(st.integers(0, 5)) == 0:
        spec = replace(spec, collation="C")
    if "db_comment" not in exclude and draw(st.integers(0, 6)) == 0:
        spec = replace(spec, db_comment="it's a note")
    return spec


@st.composite
def initial_version(draw, exclude):
    count = draw(st.integers(1, 2))
    names = list(MODEL_NAMES[:count])
    version = []
    for index_, name in enumerate(names):
        fields = []
        for field_name in draw(st.lists(st.sampled_from(FIELD_NAMES[:3]), min_size=1, max_size=3, unique=True)):
            fields.append((field_name, draw(field_spec(exclude, names[:index_ + 1], name, on_existing_table=False))))
        pk = "auto" if "bigint_pk" not in exclude and draw(st.booleans()) else "bigauto"
        version.append(M(name, tuple(sorted(fields)), pk=pk))
    return tuple(version)


# -- reading a version -------------------------------------------------------------


def _spec(version, name):
    return next((s for s in version if s.name == name), None)


def _concrete(version, name):
    spec = _spec(version, name)
    return spec is not None and not spec.proxy_of and spec.managed


def _referenced(version, name):
    """Whether another model points at, derives from, proxies or maps onto ``name``."""
    spec = _spec(version, name)
    table = _table(spec) if spec else None
    for other in version:
        if other.name == name:
            continue
        if other.parent == name or other.proxy_of == name or (not other.managed and other.db_table == table):
            return True
        if any(f.to == name or f.through == name for _, f in other.fields):
            return True
    return spec is not None and any(f.through for _, f in spec.fields)


def _table(spec):
    return spec.db_table or f"oracleapp_{spec.name.lower()}"


def _children(version, name):
    return [s for s in version if s.parent == name]


def _family_names(version, spec):
    """Field names a new field of ``spec`` must not take: its own, its parents' and its children's."""
    taken = {n for n, _ in spec.fields}
    parent = _spec(version, spec.parent) if spec.parent else None
    while parent is not None:
        taken |= {n for n, _ in parent.fields}
        parent = _spec(version, parent.parent) if parent.parent else None
    stack = [spec.name]
    while stack:
        for child in _children(version, stack.pop()):
            taken |= {n for n, _ in child.fields}
            stack.append(child.name)
    return taken


def _mentions(spec, field_name):
    return (any(field_name in names for names in spec.unique_together)
            or any(field_name in index(item).names() for item in spec.indexes)
            or any(field_name in constraint(item).names() for item in spec.constraints)
            or spec.order_wrt == field_name
            or any(f.source == field_name for _, f in spec.fields))


def _without_field(spec, field_name):
    return replace(
        spec,
        fields=tuple((n, f) for n, f in spec.fields if n != field_name and f.source != field_name),
        unique_together=tuple(names for names in spec.unique_together if field_name not in names),
        indexes=tuple(item for item in spec.indexes if field_name not in index(item).names()),
        constraints=tuple(item for item in spec.constraints if field_name not in constraint(item).names()),
        order_wrt=None if spec.order_wrt == field_name else spec.order_wrt,
    )


def _renamed_field(spec, old, new):
    def names(seq):
        return tuple(new if n == old else n for n in seq)

    def rename(item):
        changes = {}
        for attribute in ("fields", "include"):
            if hasattr(item, attribute):
                changes[attribute] = names(getattr(item, attribute))
        if getattr(item, "field", None) == old:
            changes["field"] = new
        for attribute in ("condition", "expression"):
            value = getattr(item, attribute, None)
            if value and value[1] == old:
                changes[attribute] = (value[0], new, *value[2:])
        return replace(item, **changes)

    return replace(
        spec,
        fields=tuple(sorted((new if n == old else n, replace(f, source=new) if f.source == old else f)
                            for n, f in spec.fields)),
        unique_together=tuple(names(t) for t in spec.unique_together),
        indexes=tuple(rename(index(item)) for item in spec.indexes),
        constraints=tuple(rename(constraint(item)) for item in spec.constraints),
        order_wrt=new if spec.order_wrt == old else spec.order_wrt,
    )


def _with_field(spec, field_name, field):
    return replace(spec, fields=tuple(sorted([(n, f) for n, f in spec.fields if n != field_name] + [(field_name, field)])))


def _set(version, spec):
    return tuple(spec if s.name == spec.name else s for s in version)


def _column_fields(spec, kinds=None):
    return [n for n, f in spec.fields if f.kind not in ("m2m", "generated") and (kinds is None or f.kind in kinds)]


# -- edits ---------------------------------------------------------------------

FIELD_EDITS = {"type", "max_length", "null_to_not_null", "not_null_to_null", "default", "percent_default",
               "uuid_default", "db_default", "unique", "db_index", "on_delete", "retarget", "db_column",
               "db_comment", "db_tablespace", "collation", "db_constraint", "auto_now", "blank", "help_text",
               "abstract"}
META_EDITS = {"index", "unique_constraint", "nulls_not_distinct", "check_constraint", "unique_together",
              "exclusion_constraint", "db_table", "db_table_comment", "model_tablespace", "order_wrt"}


@st.composite
def edit(draw, version, exclude, last=None):
    """One edit of ``version``; ``last`` is (model, field) touched just before, preferred half the time."""
    spec = draw(st.sampled_from(version))
    if last and draw(st.booleans()):
        spec = next((s for s in version if s.name == last[0]), spec)
    options = [e for e in EDITS if e not in exclude]
    kind = draw(st.sampled_from(options))
    names = [s.name for s in version]
    if spec.proxy_of and kind not in ("remove_model", "rename_model", "add_model", "proxy", "unmanaged",
                                      "inherit", "m2m_through"):
        return version, None  # a proxy has no fields and no Meta of its own
    fields = dict(spec.fields)
    field_name = None
    if fields:
        field_name = draw(st.sampled_from(sorted(fields)))
        if last and last[0] == spec.name and last[1] in fields and draw(st.booleans()):
            field_name = last[1]
    f = fields.get(field_name)
    pool = CHILD_FIELD_NAMES if spec.parent else FIELD_NAMES
    free = [n for n in pool if n not in _family_names(version, spec)]

    if kind == "add_field":
        if free:
            name = draw(st.sampled_from(free))
            field = draw(field_spec(exclude, names, spec.name, True, version))
            return _set(version, _with_field(spec, name, field)), (spec.name, name)
    elif kind == "generated" and free:
        sources = _column_fields(spec, INTEGER)
        if sources:
            persist = True if not DJANGO_61 else draw(st.booleans())
            name = draw(st.sampled_from(free))
            field = F("generated", source=draw(st.sampled_from(sources)), db_persist=persist)
            return _set(version, _with_field(spec, name, field)), (spec.name, name)
    elif kind == "remove_field" and f is not None and not (f.kind in ("fk", "o2o", "m2m") and "remove_relation" in exclude):
        if any(t.to == spec.name and t.to_field == field_name for s in version for _, t in s.fields):
            return version, None
        return _set(version, _without_field(spec, field_name)), None
    elif kind == "rename_field" and f is not None and not f.through:
        if free and not any(t.to == spec.name and t.to_field == field_name for s in version for _, t in s.fields):
            new = draw(st.sampled_from(free))
            return _set(version, _renamed_field(spec, field_name, new)), (spec.name, new)
    elif kind == "add_model":
        free_models = [n for n in MODEL_NAMES if n not in names]
        if free_models:
            name = free_models[0]
            field = draw(field_spec(exclude, names + [name], name, False, version))
            return version + (M(name, (("a", field),)),), (name, "a")
    elif kind == "inherit" and _concrete(version, spec.name):
        free_models = [n for n in MODEL_NAMES if n not in names]
        own = [n for n in CHILD_FIELD_NAMES if n not in _family_names(version, spec)]
        if free_models and own:
            name = free_models[0]
            field = draw(field_spec(exclude, names, name, False, version))
            return version + (M(name, ((own[0], field),), parent=spec.name),), (name, own[0])
    elif kind == "proxy":
        proxies = [s for s in version if s.proxy_of]
        if proxies and draw(st.booleans()):
            gone = draw(st.sampled_from(proxies))
            if not _referenced(version, gone.name):
                return tuple(s for s in version if s.name != gone.name), None
        free_models = [n for n in MODEL_NAMES if n not in names]
        if free_models and _concrete(version, spec.name):
            return version + (M(free_models[0], proxy_of=spec.name),), None
    elif kind == "unmanaged":
        unmanaged = [s for s in version if not s.managed]
        if unmanaged and draw(st.booleans()):
            return tuple(s for s in version if s.managed), None
        free_models = [n for n in MODEL_NAMES if n not in names]
        if free_models and _concrete(version, spec.name) and not spec.parent:
            # A read-only model over another model's table, as teams map reporting models.
            copied = tuple((n, replace(f, unique=False, db_index=False)) for n, f in spec.fields
                           if f.kind not in ("fk", "o2o", "m2m", "generated"))
            return version + (M(free_models[0], copied, pk=spec.pk, db_table=_table(spec), managed=False),), None
    elif kind == "m2m_through" and _concrete(version, spec.name) and not spec.parent:
        free_models = [n for n in MODEL_NAMES if n not in names]
        targets = [n for n in names if _concrete(version, n) and n != spec.name]
        if free_models and free and targets:
            link, target = free_models[0], draw(st.sampled_from(targets))
            through = M(link, (("a", F("fk", to=spec.name)), ("b", F("fk", to=target))),
                        unique_together=(("a", "b"),))
            owner = _with_field(spec, free[0], F("m2m", to=target, through=link))
            return _set(version, owner) + (through,), None
    elif kind == "remove_model" and len(version) > 1 and not _referenced(version, spec.name):
        return tuple(s for s in version if s.name != spec.name), None
    elif kind == "rename_model" and not _referenced(version, spec.name) and \
            not any(f.to == spec.name for _, f in spec.fields) and not spec.parent and spec.managed:
        free_models = [n for n in MODEL_NAMES if n not in names]
        if free_models:
            return tuple(replace(s, name=free_models[0]) if s.name == spec.name else s for s in version), None
    elif kind == "bigint_pk" and spec.pk == "auto" and not spec.parent and spec.managed:
        return _set(version, replace(spec, pk="bigauto")), None
    elif kind in FIELD_EDITS and f is not None and f.kind not in ("m2m", "generated"):
        changed = _alter(draw, kind, f, field_name, version, spec, exclude)
        if changed is not None and changed != f:
            return _set(version, _with_field(spec, field_name, changed)), (spec.name, field_name)
    elif kind == "retarget" and f is not None and f.kind == "m2m" and not f.through:
        others = [n for n in names if n != f.to and _concrete(version, n)]
        if others:
            return _set(version, _with_field(spec, field_name, replace(f, to=draw(st.sampled_from(others))))), None
    if kind in META_EDITS and spec.managed:
        return _meta(draw, kind, version, spec)
    return version, None  # the edit does not apply here: the caller draws again


def _alter(draw, kind, f, field_name, version, spec, exclude):
    if kind == "db_column":
        used = _columns(spec) - {f.db_column}
        choices = [None] + [c for c in COLUMN_NAMES if c not in used]
        return replace(f, db_column=draw(st.sampled_from(choices)))
    if kind == "db_comment":
        return replace(f, db_comment=None if f.db_comment else draw(st.sampled_from(["note", "it's a note"])))
    if kind == "db_tablespace" and (f.db_index or f.unique):
        return replace(f, db_tablespace=None if f.db_tablespace else "pg_default")
    if kind == "help_text":
        return replace(f, help_text=None if f.help_text else "shown in forms")
    if kind == "abstract" and not spec.parent and spec.managed:
        return replace(f, inherited=not f.inherited)
    if f.kind in ("fk", "o2o"):
        if kind == "on_delete":
            return replace(f, on_delete=draw(st.sampled_from(ON_DELETE + (("SET_NULL",) if f.null else ()))))
        if kind == "db_constraint":
            return replace(f, db_constraint=not f.db_constraint)
        if kind == "not_null_to_null":
            return replace(f, null=True)
        if kind == "retarget":
            others = [s.name for s in version if s.name != f.to and _concrete(version, s.name)]
            if others:
                return replace(f, to=draw(st.sampled_from(others)), null=True, to_field=None)
        return None
    if kind == "type":
        group = next((g for g in TYPE_GROUPS if f.kind in g), None)
        if group:
            choices = [k for k in group if k != f.kind and k not in exclude]
            if choices and not any(t.to_field == field_name for s in version for _, t in s.fields):
                new = draw(st.sampled_from(choices))
                changed = replace(f, kind=new, collation=f.collation if new in ("char", "text") else None,
                                  auto_now=f.auto_now if new in TEMPORAL else None)
                if new in STRING:
                    changed = replace(changed, max_length=draw(st.sampled_from(MAX_LENGTHS)))
                if changed.default is not None and changed.default not in ("uuid4", "now"):
                    changed = replace(changed, default=static_default(new))
                if changed.default == "now" and new != "datetime":
                    changed = replace(changed, default=static_default(new))
                if changed.db_default is not None:
                    changed = replace(changed, db_default=static_default(new) if new in DB_DEFAULTABLE else None)
                if changed.blank and new not in STRING:
                    changed = replace(changed, blank=False)
                if not changed.null and changed.default is None and changed.db_default is None and \
                        not changed.auto_now and not changed.blank:
                    changed = replace(changed, null=True)
                if changed.unique and new in UNINDEXED + ("file",):
                    changed = replace(changed, unique=False)
                if any(s.source == field_name for _, s in spec.fields) and new not in INTEGER:
                    return None
                return changed
    elif kind == "max_length" and f.kind in STRING and f.kind != "text":
        return replace(f, max_length=draw(st.sampled_from([m for m in MAX_LENGTHS if m != f.max_length])))
    elif kind == "null_to_not_null" and f.null and not f.unique and not (f.kind == "uuid" and "uuid_default" in exclude):
        default = f.default
        if default is None and f.db_default is None and not f.auto_now and not f.blank:
            default = "uuid4" if f.kind == "uuid" else static_default(f.kind)
            if f.kind in STRING and "percent_default" not in exclude and draw(st.booleans()):
                default = "100%"
            if default is None:
                return None
        return replace(f, null=False, default=default)
    elif kind == "not_null_to_null" and not f.null:
        return replace(f, null=True)
    elif kind == "default" and f.kind not in ("uuid",) and static_default(f.kind) is not None:
        # Defaults live in Python: adding or dropping one is legal whatever the nullability.
        if f.default is not None:
            if not f.null and f.db_default is None and not f.auto_now and not f.blank:
                return None
            return replace(f, default=None)
        return replace(f, default=static_default(f.kind))
    elif kind == "percent_default" and f.kind in STRING:
        return replace(f, default="100%")
    elif kind == "uuid_default" and f.kind == "uuid":
        return replace(f, default="uuid4" if f.default is None else None) if f.null or f.default is None else None
    elif kind == "db_default" and f.kind in DB_DEFAULTABLE:
        if f.db_default is None:
            return replace(f, db_default=static_default(f.kind))
        if f.null or f.default is not None:
            return replace(f, db_default=None)
    elif kind == "unique" and f.kind not in UNINDEXED + ("file",):
        if f.unique:
            if any(t.to_field == field_name for s in version for _, t in s.fields):
                return None
            return replace(f, unique=False)
        if f.null and f.default is None and f.db_default is None and not f.auto_now:
            return replace(f, unique=True)
    elif kind == "db_index" and f.kind not in UNINDEXED:
        return replace(f, db_index=not f.db_index)
    elif kind == "collation" and f.kind in ("char", "text"):
        return replace(f, collation=None if f.collation else "C")
    elif kind == "auto_now" and f.kind in TEMPORAL:
        choice = draw(st.sampled_from([None, "auto_now", "auto_now_add"]))
        if choice is None and not f.null and f.default is None and f.db_default is None:
            return None
        return replace(f, auto_now=choice, unique=False if choice else f.unique)
    elif kind == "blank" and f.kind in STRING:
        if f.blank and not f.null and f.default is None and f.db_default is None:
            return None
        return replace(f, blank=not f.blank)
    return None


def _conditions(spec):
    numeric = _column_fields(spec, NUMERIC)
    nullable = [n for n, f in spec.fields if f.null and f.kind not in ("m2m", "generated")]
    return [("gte", n, 0) for n in numeric] + [("isnull", n, False) for n in nullable]


def _meta(draw, kind, version, spec):
    btree = _column_fields(spec, NUMERIC + STRING + TEMPORAL + ("uuid", "fk", "o2o", "ip", "duration", "bool"))
    fields = dict(spec.fields)
    if kind == "index":
        if spec.indexes and draw(st.booleans()):
            return _set(version, replace(spec, indexes=spec.indexes[1:])), None
        variant = draw(st.sampled_from(["plain", "partial", "expression", "include", "desc", "opclass", "gin",
                                        "gist", "hash", "brin", "tablespace"]))
        item = None
        if variant in ("plain", "partial", "include", "desc", "tablespace") and btree:
            field = draw(st.sampled_from(btree))
            item = Ix(f"{spec.name.lower()}_{field}_idx", (field,), desc=variant == "desc")
            if variant == "partial" and _conditions(spec):
                item = replace(item, condition=draw(st.sampled_from(_conditions(spec))))
            if variant == "include":
                others = [n for n in btree if n != field]
                if others:
                    item = replace(item, include=(draw(st.sampled_from(others)),))
        elif variant == "expression":
            candidates = [n for n in btree if fields[n].kind in STRING + INTEGER]
            if candidates:
                field = draw(st.sampled_from(candidates))
                how = "lower" if fields[field].kind in STRING else "plus"
                item = Ix(f"{spec.name.lower()}_{field}_expr", expression=(how, field))
        elif variant == "opclass":
            candidates = [n for n in btree if fields[n].kind in STRING]
            if candidates:
                field = draw(st.sampled_from(candidates))
                opclass = "text_pattern_ops" if fields[field].kind == "text" else "varchar_pattern_ops"
                item = Ix(f"{spec.name.lower()}_{field}_ops", (field,), opclass=opclass)
        elif variant in ("gin", "gist", "hash", "brin"):
            kinds = {"gin": ("array", "hstore", "json"), "gist": RANGES, "hash": NUMERIC + STRING + ("uuid",),
                     "brin": INTEGER + ("date", "datetime")}[variant]
            candidates = _column_fields(spec, kinds)
            if candidates:
                field = draw(st.sampled_from(candidates))
                item = Ix(f"{spec.name.lower()}_{field}_{variant}", (field,), kind=variant)
        if item is not None and item.name not in [index(i).name for i in spec.indexes]:
            return _set(version, replace(spec, indexes=spec.indexes + (item,))), None
    elif kind in ("unique_constraint", "nulls_not_distinct"):
        if spec.constraints and draw(st.booleans()):
            return _set(version, replace(spec, constraints=spec.constraints[1:])), None
        columns = [n for n in _column_fields(spec, NUMERIC + STRING + TEMPORAL + ("uuid", "fk", "o2o", "ip"))
                   if not fields[n].auto_now]  # the current time: every existing row the same
        nullable = [n for n in columns if fields[n].null]
        pool = nullable if kind == "nulls_not_distinct" else columns
        if pool:
            chosen = tuple(draw(st.lists(st.sampled_from(pool), min_size=1, max_size=2, unique=True)))
            name = f"{spec.name.lower()}_{'_'.join(chosen)}_u"
            item = U(name, chosen, False if kind == "nulls_not_distinct" else None)
            if kind == "unique_constraint":
                variant = draw(st.sampled_from(["plain", "partial", "include", "deferrable", "expression"]))
                if variant == "partial" and _conditions(spec):
                    item = replace(item, condition=draw(st.sampled_from(_conditions(spec))))
                elif variant == "include":
                    others = [n for n in columns if n not in chosen]
                    if others:
                        item = replace(item, include=(draw(st.sampled_from(others)),))
                elif variant == "deferrable":
                    item = replace(item, deferrable=draw(st.sampled_from(["DEFERRED", "IMMEDIATE"])))
                elif variant == "expression" and fields[chosen[0]].kind in STRING + INTEGER:
                    how = "lower" if fields[chosen[0]].kind in STRING else "plus"
                    item = U(f"{spec.name.lower()}_{chosen[0]}_ux", expression=(how, chosen[0]))
            if item.name not in [constraint(c).name for c in spec.constraints]:
                return _set(version, replace(spec, constraints=spec.constraints + (item,))), None
    elif kind == "check_constraint":
        numeric = _column_fields(spec, NUMERIC)
        if numeric:
            field = draw(st.sampled_from(numeric))
            name = f"{spec.name.lower()}_{field}_min"
            if name not in [constraint(c).name for c in spec.constraints]:
                return _set(version, replace(spec, constraints=spec.constraints + (C(name, field, 0),))), None
    elif kind == "exclusion_constraint":
        candidates = _column_fields(spec, RANGES + INTEGER)
        if candidates:
            field = draw(st.sampled_from(candidates))
            name = f"{spec.name.lower()}_{field}_excl"
            item = X(name, field, "&&" if fields[field].kind in RANGES else "=")
            if name not in [constraint(c).name for c in spec.constraints]:
                return _set(version, replace(spec, constraints=spec.constraints + (item,))), None
    elif kind == "unique_together":
        if spec.unique_together:
            return _set(version, replace(spec, unique_together=())), None
        if len(btree) >= 2:
            pair = tuple(draw(st.lists(st.sampled_from(btree), min_size=2, max_size=2, unique=True)))
            return _set(version, replace(spec, unique_together=(pair,))), None
    elif kind == "db_table" and not spec.proxy_of:
        choice = draw(st.sampled_from([None, f"legacy_{spec.name.lower()}", f"{spec.name.lower()}s"]))
        if choice != spec.db_table and not any(not s.managed and s.db_table == _table(spec) for s in version):
            return _set(version, replace(spec, db_table=choice)), None
    elif kind == "db_table_comment":
        return _set(version, replace(spec, db_table_comment=None if spec.db_table_comment else "it's a table")), None
    elif kind == "model_tablespace":
        return _set(version, replace(spec, db_tablespace=None if spec.db_tablespace else "pg_default")), None
    elif kind == "order_wrt":
        if spec.order_wrt:
            return _set(version, replace(spec, order_wrt=None)), None
        fks = [n for n, f in spec.fields if f.kind == "fk"]
        if fks:
            return _set(version, replace(spec, order_wrt=draw(st.sampled_from(fks)))), None
    return version, None


@st.composite
def histories(draw, exclude=frozenset(), max_versions=4):
    """A list of 2..max_versions versions; each after the first differs by 1-2 edits."""
    versions = [draw(initial_version(exclude))]
    last = None
    for _ in range(draw(st.integers(1, max_versions - 1))):
        version = versions[-1]
        for _ in range(draw(st.integers(1, 2))):
            for _attempt in range(8):
                changed, touched = draw(edit(version, exclude, last))
                if changed != version:
                    version, last = changed, touched or last
                    break
        if version != versions[-1]:
            versions.append(version)
    return versions
