"""Lock-safe, idempotent migration operations for PostgreSQL.

Import them in migration files as ``safemigrate.operations.<Name>``; every
public operation sets its ``__module__`` to this package so generated
migration files keep working when the implementation moves between modules.
"""

__all__ = []
