"""Which migrations a rehearsal runs, in what order, and where a rollback goes back to.

The release is the migrations not applied in the database rehearsed on (the
source's copy), or with ``--since REF`` the migration files added in git since
``REF`` (and any unapplied migration that depends on them: it cannot run
without them). Unapplied migrations the release depends on but that are not
part of it (``--since`` on a branch behind production) are applied first, all
stages, and not measured: the "catch-up".

The rollback goes back to the migrations just before the release, per app
(``migrate app 0041`` for each app, which is what a team runs). Where it
starts is ``rollback_point``: after contract when every contract migration of
the release can be reversed, otherwise after expand (the usual rollback,
docs/pages/rollback.md: until contract the old schema is still there), and
not at all when an expand migration cannot be reversed either.
"""

from dataclasses import dataclass, field

from ..stages import Stage, migration_stage


class NothingToRehearse(Exception):
    """No pending migration in the selection (a clear message, not a failure)."""


class ReleaseError(ValueError):
    """The selection cannot be rehearsed as asked; the message says why and what to do."""


@dataclass
class Release:
    #: The release's migrations, in Django's forwards order.
    keys: list
    #: Unapplied migrations the release needs first (not measured).
    catch_up: list = field(default_factory=list)
    #: Unapplied migrations outside the release and its needs (left alone).
    untouched: list = field(default_factory=list)
    #: Leaf migrations of the release: forwards plans go to these.
    targets: list = field(default_factory=list)
    #: (app, name or None) per app of the release: where a rollback goes back to.
    rollback_targets: list = field(default_factory=list)
    #: Leaves of what is applied before the release (the old code's migration state).
    old_nodes: list = field(default_factory=list)
    #: Leaves with the release applied (the new code's migration state).
    new_nodes: list = field(default_factory=list)


def forwards_order(graph):
    """Every migration, in the order Django would apply them on an empty database."""
    ordered, seen = [], set()
    for leaf in sorted(graph.leaf_nodes()):
        for key in graph.forwards_plan(leaf):
            if key not in seen:
                seen.add(key)
                ordered.append(key)
    return ordered


def _leaves(graph, keys):
    keys = set(keys)
    return sorted(k for k in keys if not any(child.key in keys for child in graph.node_map[k].children))


def _descendants(graph, keys):
    found, stack = set(), list(keys)
    while stack:
        key = stack.pop()
        for child in graph.node_map[key].children:
            if child.key not in found:
                found.add(child.key)
                stack.append(child.key)
    return found


def _ancestors(graph, keys):
    found, stack = set(), list(keys)
    while stack:
        key = stack.pop()
        for parent in graph.node_map[key].parents:
            if parent.key not in found:
                found.add(parent.key)
                stack.append(parent.key)
    return found


def release_of(graph, applied, since_files=None, file_of=None):
    """The ``Release`` for a database where ``applied`` migration keys are applied."""
    order = forwards_order(graph)
    applied = {key for key in applied if key in graph.nodes}
    pending = [key for key in order if key not in applied]
    if since_files is None:
        chosen = set(pending)
    else:
        named = {key for key in order if file_of(graph.nodes[key]) in since_files}
        done = sorted(named & applied)
        if done:
            raise ReleaseError(
                f"--since: {', '.join(f'{a}.{n}' for a, n in done)} added since the ref "
                f"{'is' if len(done) == 1 else 'are'} already applied in the database rehearsed on. A rehearsal "
                "measures migrations on a copy where they have not run yet: point it at a database from "
                "before them (the production copy), or leave out --since to rehearse what is pending there.")
        chosen = named | (_descendants(graph, named) & set(pending))
    if not chosen:
        raise NothingToRehearse(
            "Nothing to rehearse: " + ("no migration files were added since the ref." if since_files is not None
                                       else "every migration is applied in the database rehearsed on."))
    keys = [key for key in order if key in chosen]
    catch_up = [key for key in order if key in (_ancestors(graph, chosen) - applied - chosen)]
    before = applied | set(catch_up)
    untouched = [key for key in pending if key not in chosen and key not in catch_up]
    rollback = []
    for app in sorted({app for app, _ in keys}):
        firsts = [key for key in keys if key[0] == app and not any(
            parent.key[0] == app and parent.key in chosen for parent in graph.node_map[key].parents)]
        previous = sorted({parent.key for key in firsts for parent in graph.node_map[key].parents
                           if parent.key[0] == app and parent.key in before})
        rollback += previous or [(app, None)]
    return Release(
        keys=keys, catch_up=catch_up, untouched=untouched, targets=_leaves(graph, chosen),
        rollback_targets=rollback, old_nodes=_leaves(graph, before), new_nodes=_leaves(graph, before | chosen))


def contract_keys(graph, release):
    return [key for key in release.keys if migration_stage(graph.nodes[key]) is Stage.CONTRACT]


def irreversible(migration):
    """Descriptions of the operations of ``migration`` that have no reverse."""
    return [operation.describe() for operation in migration.operations if not getattr(operation, "reversible", True)]


def rollback_point(graph, release, requested="auto"):
    """``(point, note)``: "contract", "expand" or None (no rollback rehearsed), and why."""
    if requested == "none":
        return None, "the rollback was not rehearsed (--rollback-from none)"
    blockers = {stage: [] for stage in Stage}
    for key in release.keys:
        migration = graph.nodes[key]
        for description in irreversible(migration):
            blockers[migration_stage(migration)].append(f"{key[0]}.{key[1]}: {description}")
    if requested in ("contract", "expand"):
        return requested, f"the rollback starts after {requested} (--rollback-from {requested})"
    if not blockers[Stage.CONTRACT]:
        return "contract", "the rollback starts after contract: every migration of the release can be reversed"
    if not blockers[Stage.EXPAND]:
        return "expand", ("the rollback starts after expand, before contract (the usual rollback): "
                          f"the contract cannot be reversed ({'; '.join(blockers[Stage.CONTRACT])})")
    return None, ("the rollback was not rehearsed: the release cannot be reversed "
                  f"({'; '.join(blockers[Stage.EXPAND] + blockers[Stage.CONTRACT])})")
