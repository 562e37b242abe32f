"""Ignores for ``lint_migrations``: reviewed findings that should stop failing CI.

An ignore always carries the reason it is safe (a reviewed migration, a table
known to be tiny, a maintenance window already booked). An ignore without a
reason is a configuration error: six months later nobody knows whether the
finding was judged harmless or just silenced.

Two places, one rule format:

* in a migration: ``safemigrate_ignore = {"SAFE112": "reason"}`` on the
  ``Migration`` class, covering that migration;
* in settings: ``SAFEMIGRATE["LINT_IGNORE"]``, a list of
  ``{"app": ..., "migration": ..., "rule": ..., "reason": ...}`` entries where
  any of app / migration / rule may be left out to widen the match (but not
  all three, and ``migration`` needs ``app``).

"""

from dataclasses import dataclass

from .findings import RULES


class IgnoreConfigError(ValueError):
    """A malformed ignore; ``lint_migrations`` exits with status 2."""


@dataclass(frozen=True)
class Ignore:
    reason: str
    source: str  # "migration" or "settings"
    app: "str | None" = None
    migration: "str | None" = None
    rule: "str | None" = None

    def matches(self, app, migration, rule):
        return ((self.app is None or self.app == app) and (self.migration is None or self.migration == migration)
                and (self.rule is None or self.rule == rule))


def _rule(value, where):
    if not isinstance(value, str):
        raise IgnoreConfigError(f"{where}: the rule id must be a string like 'SAFE112', got {value!r}.")
    rule = value.strip().upper()
    if rule not in RULES:
        raise IgnoreConfigError(f"{where}: unknown rule id {value!r}. An ignore that matches nothing hides "
                                f"nothing, and a typo here silences nothing: use an id from docs/pages/linter.md "
                                f"(SAFE101 ... SAFE139).")
    return rule


def _reason(value, where):
    if not isinstance(value, str) or not value.strip():
        raise IgnoreConfigError(f"{where}: an ignore needs a reason (a non-empty string saying why the "
                                f"finding is safe here), got {value!r}. Without it nobody can later tell a "
                                f"reviewed exception from a silenced risk.")
    return value.strip()


def settings_ignores(raw):
    """Parse ``SAFEMIGRATE["LINT_IGNORE"]``."""
    if not isinstance(raw, (list, tuple)):
        raise IgnoreConfigError(f"SAFEMIGRATE['LINT_IGNORE'] must be a list of dicts, got {type(raw).__name__}.")
    ignores = []
    for index, entry in enumerate(raw):
        where = f"SAFEMIGRATE['LINT_IGNORE'][{index}]"
        if not isinstance(entry, dict):
            raise IgnoreConfigError(f"{where} must be a dict with 'reason' and at least one of 'app', "
                                    f"'migration', 'rule'; got {entry!r}.")
        unknown = set(entry) - {"app", "migration", "rule", "reason"}
        if unknown:
            raise IgnoreConfigError(f"{where} has unknown keys {sorted(unknown)}; allowed: app, migration, rule, "
                                    f"reason.")
        if not any(entry.get(key) for key in ("app", "migration", "rule")):
            raise IgnoreConfigError(f"{where} matches everything: give at least one of 'app', 'migration', "
                                    f"'rule' (ignoring all findings everywhere would turn the linter off).")
        if entry.get("migration") and not entry.get("app"):
            raise IgnoreConfigError(f"{where}: 'migration' needs 'app' (migration names repeat across apps).")
        for key in ("app", "migration"):
            if entry.get(key) is not None and not isinstance(entry[key], str):
                raise IgnoreConfigError(f"{where}: {key!r} must be a string, got {entry[key]!r}.")
        rule = _rule(entry["rule"], where) if entry.get("rule") else None
        ignores.append(Ignore(_reason(entry.get("reason"), where), "settings", entry.get("app") or None,
                              entry.get("migration") or None, rule))
    return ignores


def migration_ignores(migration):
    """Parse a migration's ``safemigrate_ignore = {rule: reason}``."""
    raw = getattr(migration, "safemigrate_ignore", None)
    if raw is None:
        return []
    where = f"{migration.app_label}.{migration.name}: safemigrate_ignore"
    if not isinstance(raw, dict):
        raise IgnoreConfigError(f"{where} must be a dict {{'SAFE112': 'why this is safe'}}, got {raw!r}.")
    return [Ignore(_reason(reason, f"{where}[{rule!r}]"), "migration", migration.app_label, migration.name,
                   _rule(rule, where)) for rule, reason in raw.items()]


def matching_ignore(ignores, app, migration, rule):
    """The first ignore covering this finding (migration ones before settings ones), or None."""
    for ignore in ignores:
        if ignore.matches(app, migration, rule):
            return ignore
    return None
