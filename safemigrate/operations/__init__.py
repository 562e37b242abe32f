"""Lock-safe, idempotent migration operations for PostgreSQL.

Import them in migration files as ``safemigrate.operations.<Name>``. The loop
at the end sets every public operation's ``__module__`` to this package, so
generated migration files keep working when the implementation moves between
modules.
"""

__all__ = []

from .columns import AddColumnNullable, DropColumnDefault, DropNotNull, SetDatabaseDefault, SetNotNull
from .constraints import (
    AddCheckConstraint,
    AddForeignKey,
    AddUniqueConstraint,
    AlterFieldIndexes,
    ReplaceForeignKey,
    ValidateConstraint,
)
from .indexes import CreateIndexConcurrently, DropIndexConcurrently

__all__ += [
    "AddColumnNullable",
    "DropColumnDefault",
    "SetNotNull",
    "DropNotNull",
    "SetDatabaseDefault",
    "CreateIndexConcurrently",
    "DropIndexConcurrently",
    "AddUniqueConstraint",
    "AddCheckConstraint",
    "ValidateConstraint",
    "AddForeignKey",
    "AlterFieldIndexes",
    "ReplaceForeignKey",
]

from .backfill import Backfill, RunPythonBatched

__all__ += ["Backfill", "RunPythonBatched"]

from .remove_field import DropColumn, RemoveFieldSafely
from .remove_model import DropForeignKeys, DropTable, ReleaseNames, RemoveModelSafely

__all__ += ["RemoveFieldSafely", "DropColumn", "RemoveModelSafely", "DropForeignKeys", "ReleaseNames", "DropTable"]

from .rename_copy import FinishRenameViaCopy, RenameViaCopy
from .type_copy import ChangeTypeViaCopy, FinishChangeTypeViaCopy

__all__ += ["RenameViaCopy", "FinishRenameViaCopy", "ChangeTypeViaCopy", "FinishChangeTypeViaCopy"]

from .rename_view import FinishRenameViaView, RenameColumnViaView, RenameFieldViaView

__all__ += ["RenameFieldViaView", "RenameColumnViaView", "FinishRenameViaView"]

from .tables import DropCompatibilityView, RenameModelWithView
from .tables import RenameModelKeepTable

__all__ += ["RenameModelWithView", "DropCompatibilityView"]
__all__ += ["RenameModelKeepTable"]

from .ordering import AlterOrderWithRespectToSafely
from .table_rename import AlterModelTableWithView
from .together import AlterUniqueTogetherConcurrently

__all__ += ["AlterModelTableWithView", "AlterUniqueTogetherConcurrently", "AlterOrderWithRespectToSafely"]

from .bigint import ChangePrimaryKeyToBigint, FinishChangePrimaryKeyToBigint

__all__ += ["ChangePrimaryKeyToBigint", "FinishChangePrimaryKeyToBigint"]

from .join import ContractJoin

__all__ += ["ContractJoin"]

for _name in __all__:
    globals()[_name].__module__ = __name__
del _name
