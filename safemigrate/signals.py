"""Django signals of background data migrations (docs/pages/background-migrations.md#signals).

Sent after every state change has been committed, from the process that made
it (a runner, a control command, the admin page, a contract step), so a
receiver can post to a chat channel or bump a metric without polling. A
receiver that raises is logged and does not stop the change (it is already
committed) nor the runner.

``background_migration_state_changed`` is sent with the keyword arguments:

* ``sender``: ``safemigrate.models.BackgroundMigration``
* ``name``: the background migration's name
* ``old_state`` / ``new_state``: one of ``safemigrate.models.State``
* ``reason``: why (a throttle signal's reading, an error, "paused by admin"...)
* ``snapshot``: the row as a dict (the ``status --json`` object)
* ``using``: the database alias
"""

from django.dispatch import Signal

background_migration_state_changed = Signal()
