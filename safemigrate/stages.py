"""Expand and contract: which stage a migration belongs to, and plan trimming.

A migration is in the contract stage when it says so (``stage = "contract"``
on the Migration class) or when any of its operations does (safemigrate's
contract operations carry ``stage = Stage.CONTRACT``). Everything else,
including every third-party and pre-existing migration, is expand. Deriving
the stage from the operations means a hand-written migration that uses
``DropColumn`` cannot be applied by plain ``migrate`` by mistake.
"""

import enum

from .stage_settings import configured_stage


class Stage(str, enum.Enum):
    EXPAND = "expand"
    CONTRACT = "contract"

    def __str__(self):
        return self.value


def operation_stage(operation):
    stage = getattr(operation, "stage", None)
    if stage is not None:
        return Stage(stage)
    # SeparateDatabaseAndState and friends: the strictest inner operation wins.
    for inner in getattr(operation, "database_operations", ()) or ():
        if operation_stage(inner) is Stage.CONTRACT:
            return Stage.CONTRACT
    return Stage.EXPAND


def migration_stage(migration):
    configured = configured_stage(migration, "migration")  # hook: SAFEMIGRATE["STAGES"]
    if configured is not None:
        return Stage(configured)
    explicit = getattr(migration, "stage", None)
    if explicit is not None:
        return Stage(explicit)
    for operation in migration.operations:
        if operation_stage(operation) is Stage.CONTRACT:
            return Stage.CONTRACT
    return Stage(configured_stage(migration, "app") or Stage.EXPAND)


def split_plan(plan, graph):
    """Split a forwards plan into (runnable now, held back).

    ``plan`` is a list of ``(migration, backwards)`` pairs in Django's order.
    The first contract migration is held back, and so is every later
    migration that depends on a held-back one, directly or not. Independent
    expand migrations that come later in the order still run: holding them
    back would delay safe work for no reason.
    """
    runnable, held = [], []
    held_keys = set()
    for migration, backwards in plan:
        key = (migration.app_label, migration.name)
        if backwards:
            runnable.append((migration, backwards))
            continue
        # The plan is in dependency order, so checking direct parents is
        # enough: a held parent was itself held for its own parents.
        parents = {parent.key for parent in graph.node_map[key].parents}
        depends_on_held = bool(parents & held_keys)
        if migration_stage(migration) is Stage.CONTRACT or depends_on_held:
            held.append((migration, backwards))
            held_keys.add(key)
        else:
            runnable.append((migration, backwards))
    return runnable, held
