"""The table that remembers which migrations each deployed release was built for.

The contract gate (``planning.gate``) compares the code versions still
connected with the migrations a pending contract needs; a version it has
seen before is recognised by its fingerprint here. The table is created on
first use (like the backfill progress table), so it also works for projects
whose own migrations run before safemigrate's.
"""

import json

TABLE = "safemigrate_release"


def record(connection, fingerprint, names):
    """Remember ``fingerprint`` -> migration ``names`` (once; a re-deploy changes nothing)."""
    qn = connection.ops.quote_name
    with connection.cursor() as cursor:
        cursor.execute(
            f"CREATE TABLE IF NOT EXISTS {qn(TABLE)} ("
            "fingerprint text PRIMARY KEY, migrations jsonb NOT NULL, "
            "recorded_at timestamptz NOT NULL DEFAULT now())"
        )
        cursor.execute(
            f"INSERT INTO {qn(TABLE)} (fingerprint, migrations) VALUES (%s, %s) ON CONFLICT (fingerprint) DO NOTHING",
            [fingerprint, json.dumps(names)],
        )


def releases(connection):
    """``{fingerprint: set of migration names}`` of every release recorded (empty before the first)."""
    qn = connection.ops.quote_name
    with connection.cursor() as cursor:
        cursor.execute("SELECT to_regclass(%s)", [TABLE])
        if cursor.fetchone()[0] is None:
            return {}
        cursor.execute(f"SELECT fingerprint, migrations FROM {qn(TABLE)}")
        return {fp: set(json.loads(names) if isinstance(names, str) else names) for fp, names in cursor.fetchall()}
