"""Sorting failed histories into classes, and shrinking one example per class.

Hundreds of generated histories tend to fail for a handful of reasons, each
many times over. A class is what a difference says once the names and
numbers are taken out ("index only in plain Django: UNIQUE", "safemigrate
expand: ProgrammingError"), so the report can show one small example per
reason instead of hundreds of large ones.

The shrinker is a plain greedy one over the spec data (drop a version, a
model, a field, a Meta entry; reset one attribute), keeping a smaller
history whenever it still shows the same class. Hypothesis shrinks on its
own inside pytest; outside it (the deep profile collects every outcome
first) this is simpler than replaying Hypothesis' choice sequences.
"""

import re
import time
from dataclasses import replace

from .specs import F
from .strategies import _without_field


def classes(outcome):
    """The failure classes of an outcome (empty unless it failed)."""
    if outcome.status != "failed":
        return set()
    return {classify(message) for message in outcome.messages}


def classify(message):
    message = re.sub(r"^v\d+: ", "", message)
    step = re.match(r"(makemigrations --safe crashed|safemigrate expand|safemigrate contract|"
                    r"old code write after expand|new code write after expand): (\S+?):? (.*)", message, re.S)
    if step:
        what, error, rest = step.groups()
        words = re.sub(r'"[^"]*"|\'[^\']*\'|\d+|oracleapp_\w+(\.\w+)?', "X", rest.split("\n")[0])
        return f"{what}: {error} {' '.join(words.split()[:6])}"
    if message.startswith("makemigrations --check"):
        return "makemigrations --check not clean after contract"
    match = re.match(r"\S+: (index|constraint|trigger|table|function|view|backfill progress row) only in "
                     r"(plain Django|safemigrate): (\S+)", message)
    if match:
        kind, side, first = match.groups()
        if kind == "index":
            first = "UNIQUE" if first == "UNIQUE" else "non-unique"
        elif kind == "constraint":
            first = {"FOREIGN": "FOREIGN KEY", "PRIMARY": "PRIMARY KEY"}.get(first, first)
        else:
            first = ""
        return f"{kind} only in {side} {first}".strip()
    if re.match(r"\S+: table options differ", message):
        return "table comment/tablespace differs"
    if message.startswith("old code update of a row the new code created"):
        return re.sub(r"\d+|\(\w+\.\w+\)$|\"[^\"]*\"", "X", message)[:120]
    if re.match(r"\S+: more rows differ", message):
        return "row values differ"
    if re.match(r"\S+ row .* only in", message):
        return "row only on one side"
    if re.match(r"\S+ row ", message):
        return "row values differ"
    match = re.match(r"[^:]+\.[^:.]+: plain Django (.*); safemigrate (.*)$", message)
    if match:
        plain, safe = match.groups()
        if "(no column)" in (plain, safe):
            return "column only on one side"
        aspects = [name for name, pattern in (("type", r"^\S+( \S+)?(?= (NOT )?NULL)"), ("nullability", r"(NOT )?NULL"),
                                              ("default", r"DEFAULT .*?(?= IDENTITY| SEQUENCE| GENERATED| COLLATE| COMMENT|$)"),
                                              ("identity/sequence", r"(IDENTITY|SEQUENCE) \S+"),
                                              ("generated", r"GENERATED \S+"), ("collation", r"COLLATE \S+"),
                                              ("comment", r"COMMENT .*"))
                   if (re.search(pattern, plain) or [None])[0] != (re.search(pattern, safe) or [None])[0]]
        return "column " + "/".join(aspects or ["definition"]) + " differs"
    return re.sub(r"\d+", "N", message)[:80]


# -- shrinking -------------------------------------------------------------------


def _models(history):
    return sorted({spec.name for version in history for spec in version})


def _fields(history):
    return sorted({(spec.name, name) for version in history for spec in version for name, _ in spec.fields})


def _map_specs(history, model, change):
    return [tuple(change(spec) if spec.name == model else spec for spec in version) for version in history]


def _map_field(history, model, field_name, change):
    def on_spec(spec):
        return replace(spec, fields=tuple((n, change(f) if n == field_name else f) for n, f in spec.fields))
    return _map_specs(history, model, on_spec)


def _drop_field(spec, field_name):
    return _without_field(spec, field_name)


SIMPLER = (("unique", False), ("db_index", False), ("db_default", None), ("default", None), ("null", False),
           ("on_delete", "CASCADE"), ("max_length", 50), ("db_column", None), ("db_comment", None),
           ("db_tablespace", None), ("collation", None), ("db_constraint", True), ("to_field", None),
           ("auto_now", None), ("blank", False), ("help_text", None), ("inherited", False))
MODEL_SIMPLER = (("db_table_comment", None), ("db_tablespace", None), ("order_wrt", None), ("db_table", None))


def candidates(history):
    """Smaller or simpler histories than ``history``, most promising first."""
    history = list(history)
    for index in range(len(history)):
        if len(history) > 1:
            yield history[:index] + history[index + 1:]
    for model in _models(history):
        yield [tuple(spec for spec in version if spec.name != model) for version in history]
    for model, name in _fields(history):
        yield _map_specs(history, model, lambda spec, name=name: _drop_field(spec, name))
    for model in _models(history):
        for option in ("indexes", "constraints", "unique_together"):
            yield _map_specs(history, model, lambda spec, option=option: replace(spec, **{option: ()}))
        yield _map_specs(history, model, lambda spec: replace(spec, pk="bigauto"))
        for attribute, value in MODEL_SIMPLER:
            yield _map_specs(history, model, lambda spec, a=attribute, v=value: replace(spec, **{a: v}))
    for model, name in _fields(history):
        for attribute, value in SIMPLER:
            yield _map_field(history, model, name, lambda f, a=attribute, v=value: replace(f, **{a: v})
                             if isinstance(f, F) else f)


def shrink(history, still_fails, seconds=120.0):
    """Greedily shrink ``history`` while ``still_fails(candidate)`` holds; returns (history, tries)."""
    deadline = time.monotonic() + seconds
    tries = 0
    improved = True
    history = [tuple(version) for version in history]
    while improved and time.monotonic() < deadline:
        improved = False
        for candidate in candidates(history):
            candidate = [v for v in candidate if v]
            if not candidate or candidate == history or time.monotonic() >= deadline:
                continue
            tries += 1
            if still_fails(candidate):
                history, improved = candidate, True
                break
    return history, tries
