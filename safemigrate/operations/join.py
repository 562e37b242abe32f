"""The join that lets a new release's expand work run past an old contract.

Django wants one leaf migration per app. When release N's contract is still
pending and release N+1 adds expand migrations, ``makemigrations`` makes the
new expand migration depend on release N's *expand* migrations (so
``migrate`` can apply it now) and adds a small migration holding only
``ContractJoin``: it depends on both the old contract and the new leaf, so the
app keeps one leaf. Being contract-stage, it is held back with the contracts
and applied by ``migrate_contract``; it changes neither the schema nor the
state, so it is safe in any order.
"""

from ..stages import Stage
from .base import StandaloneOperation


class ContractJoin(StandaloneOperation):
    """No schema or state change; marks its migration contract-stage."""

    stage = Stage.CONTRACT
    reduces_to_sql = False
    reversible = True
    # squashmigrations drops it: a squashed history has no branches to join.
    elidable = True

    def state_forwards(self, app_label, state):
        pass

    def database_forwards(self, app_label, schema_editor, from_state, to_state):
        pass

    def database_backwards(self, app_label, schema_editor, from_state, to_state):
        pass

    def references_model(self, name, app_label):
        return False

    def deconstruct_kwargs(self):
        return {}

    def describe(self):
        return "Join an earlier release's contract with this release's expand migrations (no SQL)"

    @property
    def migration_name_fragment(self):
        return "join"
