"""The source's schema for a sample: ``pg_dump --schema-only``, when a fit one is installed.

Why pg_dump first: the rehearsal must run the migrations against the schema
production really has, including what no migration made (indexes added by
hand, extensions, triggers, drift). Replaying migrations gives the schema the
code *thinks* production has. So ``rehearse --sample`` restores
``pg_dump --schema-only`` output when a pg_dump at least as new as the source
server is found (pg_dump refuses older-server-only combinations: Debian's
pg_dump 15 cannot dump a PostgreSQL 18 server), and otherwise replays the
migrations applied in the source and says so in the report, with a drift
check against the source's catalog (``pg.schema_snapshot``).

Where it looks: ``SAFEMIGRATE["REHEARSE_PG_DUMP"]`` (a path, or ``False`` to
always replay), then ``pg_dump`` on ``PATH``, then the versioned install
directories of Debian/Ubuntu (``/usr/lib/postgresql/<major>/bin``) and
RHEL (``/usr/pgsql-<major>/bin``); the newest fit one wins.

The dump is taken without owners, privileges, tablespaces, publications,
subscriptions and security labels: the scratch database is owned by the
rehearsing role, may live on another server, and must never start
replicating from anywhere (a restored ``CREATE SUBSCRIPTION`` would connect).
"""

import glob
import os
import re
import shutil
import subprocess

import psycopg

from ..exceptions import SafeMigrateError
from .connect import connect, connection_params

DUMP_FLAGS = ["--schema-only", "--no-owner", "--no-privileges", "--no-tablespaces", "--no-publications",
              "--no-subscriptions", "--no-security-labels"]
_VERSION = re.compile(r"\(PostgreSQL\) (\d+)(?:\.(\d+))?")


class DumpFailed(SafeMigrateError):
    """pg_dump or the restore of its output failed; the message has its error."""


def _candidates():
    found = []
    on_path = shutil.which("pg_dump")
    if on_path:
        found.append(on_path)
    found += sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_dump"), reverse=True)
    found += sorted(glob.glob("/usr/pgsql-*/bin/pg_dump"), reverse=True)
    return list(dict.fromkeys(found))


def pg_dump_version(path):
    """The major version of the pg_dump at ``path`` (None if it does not run)."""
    try:
        output = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = _VERSION.search(output)
    return int(match.group(1)) if match else None


def find_pg_dump(configured, server_version_num):
    """``(path or None, why)``: a pg_dump able to dump a server of ``server_version_num``."""
    server_major = server_version_num // 10000
    if configured is False:
        return None, "SAFEMIGRATE['REHEARSE_PG_DUMP'] is False"
    candidates = [configured] if configured else _candidates()
    rejected = []
    best = None
    for path in candidates:
        major = pg_dump_version(path)
        if major is None:
            rejected.append(f"{path} (does not run)")
        elif major < server_major:
            rejected.append(f"{path} (version {major}, older than the server's {server_major})")
        elif best is None or major > best[1]:
            best = (path, major)
    if best:
        return best[0], f"{best[0]} (version {best[1]})"
    why = "no pg_dump found" if not candidates else "no fit pg_dump: " + ", ".join(rejected)
    return None, why


def dump_schema(pg_dump, settings_dict, dbname=None):
    """The schema of the source as SQL text (pg_dump only reads)."""
    params = connection_params(settings_dict, dbname, application_name="safemigrate:rehearse:pg_dump")
    env = dict(os.environ)
    password = params.pop("password", None)
    if password:
        env["PGPASSWORD"] = str(password)
    params.pop("prepare_threshold", None)
    conninfo = psycopg.conninfo.make_conninfo(**{k: v for k, v in params.items() if v not in (None, "")})
    result = subprocess.run([pg_dump, *DUMP_FLAGS, "--dbname", conninfo], capture_output=True, text=True, env=env,
                            timeout=3600)
    if result.returncode != 0:
        error = result.stderr.strip()[-2000:]
        hint = (" pg_dump locks every table it dumps (ACCESS SHARE, which blocks nobody) and needs SELECT on each: "
                "grant it to the rehearsing role (PostgreSQL 14+: GRANT pg_read_all_data TO <role>), or rehearse "
                "on a copy with --from-template.") if "permission denied" in error else ""
        raise DumpFailed(f"pg_dump --schema-only of the source failed: {error}.{hint}")
    return result.stdout


def restorable(text, known_settings):
    """The dump without psql meta-commands (``\\restrict``) and SETs the target server does not know."""
    lines = []
    for line in text.splitlines():
        if line.startswith("\\"):
            continue
        match = re.match(r"SET (\w+) = .*;$", line)
        if match and match.group(1).lower() not in known_settings:
            continue
        lines.append(line)
    return "\n".join(lines)


def restore_schema(settings_dict, text):
    """Run the dump in the scratch database on a connection of its own (the dump changes search_path)."""
    with connect(settings_dict, application_name="safemigrate:rehearse:restore") as connection:
        known = {name for (name,) in connection.execute("SELECT name FROM pg_settings").fetchall()}
        try:
            connection.execute(restorable(text, known))
        except psycopg.Error as exc:
            raise DumpFailed(f"Restoring the source's schema into the scratch database failed: "
                             f"{str(exc).strip()}") from None
