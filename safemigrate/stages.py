"""Expand and contract: which stage a migration belongs to, and plan trimming.

A migration is in the contract stage when it says so (``stage = "contract"``
on the Migration class) or when any of its operations does (safemigrate's
contract operations carry ``stage = Stage.CONTRACT``). Everything else,
including every third-party and pre-existing migration, is expand. Deriving
the stage from the operations means a hand-written migration that uses
``DropColumn`` cannot be applied by plain ``migrate`` by mistake.
"""

import contextvars
import enum
import functools
import os

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


# -- the test database gets every stage ---------------------------------------

#: True while Django builds a test database (``BaseDatabaseCreation.create_test_db``).
_creating_test_database = contextvars.ContextVar("safemigrate_creating_test_database", default=False)


def creating_test_database():
    """True while Django's test database creation runs ``migrate``.

    Tests run against the final models, so the test database needs every
    stage. Both Django's runner and pytest-django build it through
    ``BaseDatabaseCreation.create_test_db``, which ``watch_test_database_creation``
    (called from ``SafeMigrateConfig.ready``) wraps to set a context variable
    for the duration of the call. ``SAFEMIGRATE_ALL_STAGES=1`` in the
    environment forces every stage for other tooling.
    """
    if os.environ.get("SAFEMIGRATE_ALL_STAGES") == "1":
        return True
    return _creating_test_database.get()


def watch_test_database_creation():
    """Wrap ``BaseDatabaseCreation.create_test_db`` once so ``creating_test_database()`` sees it."""
    from django.db.backends.base.creation import BaseDatabaseCreation

    original = BaseDatabaseCreation.create_test_db
    if getattr(original, "_safemigrate_watched", False):
        return

    @functools.wraps(original)
    def create_test_db(self, *args, **kwargs):
        token = _creating_test_database.set(True)
        try:
            return original(self, *args, **kwargs)
        finally:
            _creating_test_database.reset(token)

    create_test_db._safemigrate_watched = True
    BaseDatabaseCreation.create_test_db = create_test_db
