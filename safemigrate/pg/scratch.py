"""Scratch databases for ``manage.py rehearse``: made, owned, dropped, and cleaned up after a kill.

A rehearsal migrates a throw-away database, never the source. Three ways to
get one:

- ``CREATE DATABASE scratch TEMPLATE db``: a file-level copy of a database on
  the same server (a staging copy, last night's restore). PostgreSQL refuses
  while any other session is connected to the template, because a copy taken
  while someone writes could be torn; rehearse never disconnects anyone, it
  names the sessions and the ways around it (``TemplateBusy``);
- an empty database (``TEMPLATE template0``, same encoding and collation as
  the source, so sorts and index builds behave as there) that
  ``pg.sampling`` fills with a sample;
- a clone made by a command the team names (cloud snapshots, thin clones),
  see ``run_clone_command``.

Ownership and cleanup. A scratch database is named
``safemigrate_rehearse_<pid>_<unix time>_<random>`` and its comment records the
owning process (pid, host, start time) and the source database, for people. What decides whether it is
still in use is a session advisory lock keyed by its name, taken on the
maintenance connection *before* the database is created and held until it is
dropped: when the process dies (even by kill -9) the server ends its session
and the lock goes with it. Every rehearsal starts by dropping the scratch
databases whose lock nobody holds, so a killed run leaves nothing behind once
the next one starts, and a rehearsal running elsewhere is never disturbed.
``--keep`` renames the database to ``safemigrate_kept_...`` at the end, which
the cleanup leaves alone (drop it yourself when done).
"""

import json
import os
import secrets
import shlex
import socket
import subprocess
import time
import zlib
from dataclasses import dataclass, field

import psycopg
from psycopg import sql

from ..exceptions import SafeMigrateError
from .connect import connect, settings_from_url

PREFIX = "safemigrate_rehearse_"
#: A scratch database kept with --keep is renamed to this prefix, which the stale cleanup leaves alone.
KEPT_PREFIX = "safemigrate_kept_"
#: First key of the two-key advisory lock a live rehearsal holds per scratch database.
LOCK_CLASS = 72_617_026
#: Databases tried, in order, for CREATE/DROP DATABASE (Django's test runner does the same).
MAINTENANCE_DATABASES = ("postgres", "template1")
OBJECT_IN_USE = "55006"


class ScratchError(SafeMigrateError):
    """A scratch database could not be made; the message says why and what to do."""


class TemplateBusy(ScratchError):
    """``CREATE DATABASE ... TEMPLATE`` refused: other sessions are connected to the template."""


@dataclass
class Scratch:
    """One scratch database and how to reach and drop it."""

    name: str
    #: A Django DATABASES entry for it.
    settings: dict
    #: How it was made: "sample", "template" or "clone".
    kind: str
    #: The maintenance connection holding the ownership lock (None for clones).
    admin: "psycopg.Connection | None" = None
    drop_command: "list | None" = None
    notes: list = field(default_factory=list)


def new_name():
    """A recognisable, unique scratch database name (PostgreSQL allows 63 bytes)."""
    return f"{PREFIX}{os.getpid()}_{int(time.time())}_{secrets.token_hex(3)}"


def lock_key(name):
    """The second advisory-lock key of ``name``: a stable signed 32-bit hash."""
    value = zlib.crc32(name.encode())
    return value - (1 << 32) if value >= 1 << 31 else value


def owner_comment(source=None):
    """The scratch database's comment: who made it (pid, host, start) and from which source database,
    so a person (or a test sharing the server) can tell whose rehearsal left it."""
    return "safemigrate rehearse scratch database; owner " + json.dumps(
        {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
         "source": source})


def maintenance_connection(settings_dict):
    """An autocommit connection to the server's maintenance database, for CREATE/DROP DATABASE."""
    errors = []
    for dbname in (*MAINTENANCE_DATABASES, settings_dict.get("NAME")):
        if not dbname:
            continue
        try:
            return connect(settings_dict, dbname)
        except psycopg.OperationalError as exc:
            errors.append(f"{dbname}: {str(exc).strip()}")
    raise ScratchError(
        "Cannot connect to the server to create a scratch database (tried "
        + "; ".join(errors) + "). rehearse needs a role that may connect to the 'postgres' maintenance "
        "database (or template1) and has CREATEDB; grant it, or use a clone command "
        "(SAFEMIGRATE['REHEARSE_CLONE_COMMAND'])."
    )


def _claim(admin, name):
    got = admin.execute("SELECT pg_try_advisory_lock(%s, %s)", [LOCK_CLASS, lock_key(name)]).fetchone()[0]
    if not got:
        raise ScratchError(f"The advisory lock for scratch database {name!r} is taken; retry the command.")


def _release(admin, name):
    admin.execute("SELECT pg_advisory_unlock(%s, %s)", [LOCK_CLASS, lock_key(name)])


def _describe_creation_error(exc, name, template=None):
    state = getattr(exc, "sqlstate", None)
    if state == "42501":
        return ScratchError(
            f"Cannot create scratch database {name!r}: the role lacks CREATEDB ({exc}). Grant it "
            "(ALTER ROLE ... CREATEDB), or use a clone command (SAFEMIGRATE['REHEARSE_CLONE_COMMAND']).")
    if state == "3D000" and template:
        return ScratchError(f"--from-template {template}: no database {template!r} on this server.")
    return ScratchError(f"Cannot create scratch database {name!r}: {str(exc).strip()}")


def create_database_sql(name, *, template, encoding=None, collate=None, ctype=None, provider=None, locale=None):
    """``CREATE DATABASE`` for a scratch database. Takes no table lock; needs no other session on ``template``."""
    parts = [sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(sql.Identifier(name), sql.Identifier(template))]
    if encoding:
        parts.append(sql.SQL("ENCODING {}").format(sql.Literal(encoding)))
    if provider == "i" and locale:
        parts.append(sql.SQL("LOCALE_PROVIDER icu ICU_LOCALE {}").format(sql.Literal(locale)))
    elif provider == "b" and locale:
        parts.append(sql.SQL("LOCALE_PROVIDER builtin BUILTIN_LOCALE {}").format(sql.Literal(locale)))
    if collate:
        parts.append(sql.SQL("LC_COLLATE {} LC_CTYPE {}").format(sql.Literal(collate), sql.Literal(ctype or collate)))
    return sql.SQL(" ").join(parts)


def _comment(admin, name, source):
    admin.execute(sql.SQL("COMMENT ON DATABASE {} IS {}").format(sql.Identifier(name),
                                                                 sql.Literal(owner_comment(source))))


def _scratch_settings(base, name):
    settings = dict(base)
    settings["NAME"] = name
    settings["CONN_MAX_AGE"] = 0
    options = dict(settings.get("OPTIONS") or {})
    options.pop("pool", None)
    settings["OPTIONS"] = options
    settings["TEST"] = {}
    return settings


def sessions_on(admin, dbname):
    """``application_name (client)`` of each session connected to ``dbname`` (read from pg_stat_activity)."""
    rows = admin.execute(
        "SELECT coalesce(nullif(application_name, ''), 'unnamed'), coalesce(client_addr::text, 'local'), pid "
        "FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()", [dbname]).fetchall()
    return [f"{app} (pid {pid}, {client})" for app, client, pid in rows]


def from_template(settings_dict, template):
    """A scratch copy of ``template`` (a database on the server of ``settings_dict``)."""
    admin = maintenance_connection(settings_dict)
    name = new_name()
    try:
        _claim(admin, name)
        try:
            admin.execute(create_database_sql(name, template=template))
        except psycopg.Error as exc:
            if getattr(exc, "sqlstate", None) == OBJECT_IN_USE:
                who = sessions_on(admin, template)
                raise TemplateBusy(
                    f"--from-template {template}: PostgreSQL copies a template only while no other session "
                    f"is connected to it, and {len(who) or 'some'} session(s) are: {', '.join(who) or 'unknown'}. "
                    "A copy taken while someone writes could be torn, and rehearse never disconnects anyone. "
                    f"Use a database nobody connects to (restore last night's backup into {template}_rehearsal "
                    "and name that), wait for these sessions to end, use --sample to copy a consistent sample "
                    "of a busy database, or configure SAFEMIGRATE['REHEARSE_CLONE_COMMAND'] for your "
                    "platform's clones.") from None
            raise _describe_creation_error(exc, name, template) from None
        _comment(admin, name, template)
    except BaseException:
        _release_quietly(admin, name)
        raise
    return Scratch(name, _scratch_settings(settings_dict, name), "template", admin=admin)


def empty(settings_dict, like=None, source=None):
    """An empty scratch database (from template0) with the encoding and collation in ``like``.

    ``source``: the name of the database the sample comes from (recorded in the comment).

    ``like`` is ``source_locale()``'s answer for the source; when the scratch
    server cannot make that locale the default one is used and a note says so.
    """
    admin = maintenance_connection(settings_dict)
    name = new_name()
    notes = []
    try:
        _claim(admin, name)
        try:
            admin.execute(create_database_sql(name, template="template0", **(like or {})))
        except psycopg.Error as exc:
            if not like or getattr(exc, "sqlstate", None) == "42501":
                raise _describe_creation_error(exc, name) from None
            notes.append(f"the scratch database uses the server's default locale: the source's "
                         f"({', '.join(f'{k}={v}' for k, v in like.items() if v)}) could not be used ({exc})")
            try:
                admin.execute(create_database_sql(name, template="template0"))
            except psycopg.Error as again:
                raise _describe_creation_error(again, name) from None
        _comment(admin, name, source)
    except BaseException:
        _release_quietly(admin, name)
        raise
    return Scratch(name, _scratch_settings(settings_dict, name), "sample", admin=admin, notes=notes)


def source_locale(cursor, dbname):
    """Encoding, collation and locale provider of ``dbname`` (a read of pg_database)."""
    version = cursor.connection.info.server_version
    locale_column = "datlocale" if version >= 170000 else "daticulocale"
    row = cursor.execute(
        f"SELECT pg_encoding_to_char(encoding), datcollate, datctype, datlocprovider, {locale_column} "
        "FROM pg_database WHERE datname = %s", [dbname]).fetchone()
    if row is None:
        return None
    encoding, collate, ctype, provider, locale = row
    return {"encoding": encoding, "collate": collate, "ctype": ctype, "provider": provider, "locale": locale}


def run_clone_command(command, drop_command, base_settings, source_name, name=None):
    """Make a clone with the team's command; it prints the clone's ``postgresql://`` URL on its last line.

    ``command`` and ``drop_command`` are argument lists; ``{name}`` (the
    scratch name rehearse chose) and ``{source}`` (the source database name)
    are filled in. Without a shell, so names are never interpreted.
    """
    name = name or new_name()
    argv = [part.format(name=name, source=source_name) for part in command]
    try:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=3600)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ScratchError(f"REHEARSE_CLONE_COMMAND {shlex.join(argv)} could not run: {exc}") from None
    if result.returncode != 0:
        raise ScratchError(f"REHEARSE_CLONE_COMMAND {shlex.join(argv)} failed (exit {result.returncode}): "
                           f"{(result.stderr or result.stdout).strip()[-2000:]}")
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    try:
        settings = settings_from_url(lines[-1], base_settings)
    except (IndexError, ValueError):
        raise ScratchError(f"REHEARSE_CLONE_COMMAND {shlex.join(argv)} must print the clone's postgresql:// URL "
                           f"on its last line; it printed {result.stdout.strip()[-500:]!r}.") from None
    settings["CONN_MAX_AGE"] = 0
    settings["TEST"] = {}
    drop = [part.format(name=name, source=source_name) for part in drop_command] if drop_command else None
    return Scratch(name, settings, "clone", drop_command=drop)


def drop(scratch, keep=False):
    """Drop ``scratch``, or with ``keep`` rename it out of the cleanup's way. Returns a note or None."""
    if scratch.kind == "clone":
        if keep or not scratch.drop_command:
            return None if keep else "no REHEARSE_DROP_COMMAND is set: drop the clone yourself"
        result = subprocess.run(scratch.drop_command, capture_output=True, text=True, timeout=3600)
        if result.returncode != 0:
            return (f"REHEARSE_DROP_COMMAND {shlex.join(scratch.drop_command)} failed (exit {result.returncode}): "
                    f"{(result.stderr or result.stdout).strip()[-500:]}")
        return None
    admin = scratch.admin
    original, note = scratch.name, None
    try:
        if keep:
            kept = KEPT_PREFIX + scratch.name[len(PREFIX):]
            admin.execute(sql.SQL("ALTER DATABASE {} RENAME TO {}").format(sql.Identifier(scratch.name),
                                                                          sql.Identifier(kept)))
            scratch.name = kept
            scratch.settings["NAME"] = kept
            note = f"kept as {kept}"
        else:
            admin.execute(drop_database_sql(scratch.name))
    finally:
        _release_quietly(admin, original)
        admin.close()
    return note


def drop_database_sql(name):
    """``DROP DATABASE ... WITH (FORCE)`` (PostgreSQL 13+): ends the scratch's own leftover sessions."""
    return sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))


def _release_quietly(admin, name):
    try:
        _release(admin, name)
    except psycopg.Error:
        pass


def stale(admin):
    """Scratch databases on this server whose owner is gone: ``[(name, comment)]``.

    A name whose advisory lock can be taken has no live owner. The lock is
    kept until ``drop_stale`` drops it, so no new owner can appear meanwhile.
    """
    rows = admin.execute(
        "SELECT d.datname, shobj_description(d.oid, 'pg_database') FROM pg_database d "
        "WHERE d.datname LIKE %s ORDER BY 1", [PREFIX.replace("_", r"\_") + "%"]).fetchall()
    found = []
    for name, comment in rows:
        if admin.execute("SELECT pg_try_advisory_lock(%s, %s)", [LOCK_CLASS, lock_key(name)]).fetchone()[0]:
            found.append((name, comment))
    return found


def drop_stale(settings_dict, echo=None):
    """Drop every scratch database left by a rehearsal that no longer runs; returns their names."""
    try:
        admin = maintenance_connection(settings_dict)
    except ScratchError:
        return []
    dropped = []
    with admin:
        for name, comment in stale(admin):
            try:
                admin.execute(drop_database_sql(name))
                dropped.append(name)
                if echo:
                    owner = comment.split("owner ", 1)[-1] if comment else "unknown owner"
                    echo(f"Dropped scratch database {name} left by a rehearsal that no longer runs ({owner}).")
            except psycopg.Error as exc:
                if echo:
                    echo(f"Could not drop stale scratch database {name}: {str(exc).strip()}")
            finally:
                _release_quietly(admin, name)
    return dropped
