"""Facts about one database session that decide what may be set on it.

A transaction-mode pooler (PgBouncer, pgcat, ...) hands each transaction to
whichever server connection is free, so anything set at *session* level
(``SET``, ``set_config(..., false)``, a session advisory lock) lands on a
server connection other clients will use next, and the matching reset may
land on another one. safemigrate therefore sets session state only when it
can tell it talks to the backend directly.

How it tells: when a connection is opened, the server announces its backend
pid (the BackendKeyData message; libpq's ``PQbackendPID``). A proxy answers
the client itself and announces a key of its own, so that pid differs from
the ``pg_backend_pid()`` of the server connection running our statements.
"""


def driver_backend_pid(connection):
    """The backend pid announced when the DB-API connection was opened, or None."""
    raw = connection.connection
    info = getattr(raw, "info", None)
    pid = getattr(info, "backend_pid", None)
    if pid is None and hasattr(raw, "get_backend_pid"):  # psycopg2 before 2.8
        pid = raw.get_backend_pid()
    return pid


def is_direct(connection):
    """True when ``connection`` (a Django connection) reaches PostgreSQL without a proxy."""
    connection.ensure_connection()
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        server_pid = cursor.fetchone()[0]
    return driver_backend_pid(connection) == server_pid
