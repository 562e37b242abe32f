"""Stages chosen in settings, for migrations that cannot say it themselves.

A third-party app's migrations, or ones written before safemigrate was
installed, have no ``stage`` attribute and use Django's operations, so they
count as expand. When one of them removes something the old code still uses
(a ``RemoveField`` in someone else's app), the project holds it back for
``migrate_contract`` with::

    SAFEMIGRATE = {"STAGES": {"otherapp.0007_drop_x": "contract", "someapp": "contract"}}

A ``"app_label.migration_name"`` key decides that migration outright (it wins
over the migration's own ``stage``). An ``"app_label"`` key is the default for
that app's migrations that neither declare a stage nor contain a contract
operation, so an app-wide setting can never demote safemigrate's own
contract steps to expand.
"""

from .conf import conf


def configured_stage(migration, scope):
    """The stage ``SAFEMIGRATE["STAGES"]`` gives ``migration`` at ``scope`` ("migration" or "app"), or None."""
    table = conf.stages or {}
    if scope == "migration":
        return table.get(f"{migration.app_label}.{migration.name}")
    return table.get(migration.app_label)
