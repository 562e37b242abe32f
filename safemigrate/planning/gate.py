"""The contract gate: switch traffic first, clean up after.

A contract migration drops what code older than its release still uses, so
``migrate_contract`` must not run while such code is connected. Each process
announces the migration history it was built for in its connections'
``application_name`` (``ANNOUNCE_CODE_VERSION``), which PostgreSQL shows in
``pg_stat_activity`` for free::

    sm:<fingerprint>:<os pid>@<host>

The fingerprint is the first 12 hex digits of the SHA-256 of the sorted
``app.migration`` names on disk: a directory listing, no import, computed
once per process. It is passed as a libpq connection parameter (OPTIONS),
so it costs no query and no round trip per connection.

A fingerprint says nothing by itself; ``migrate`` and ``migrate_contract``
record it with its full set of migration names in ``safemigrate_release``
each time they run (the release's own code runs them before deploying).
The gate then decides, for each pending contract migration C with work to
do: code is **old** for C when its recorded set lacks one of C's expand
migrations (``expand_frontier``: the expand migrations C builds on), or when
its fingerprint was never recorded (unknown code). Code of the same release
as C, or newer, passes. ``ContractJoin``-only migrations change nothing and
are not gated.

A migration may also ask for a minimum time between its expand part and
itself (``contract_delay`` on the Migration class, a ``timedelta`` or
seconds; default ``CONTRACT_DELAY_SECONDS``), counted from when the last of
its expand migrations was applied, as ``django_migrations`` records it.

Limits: connections from processes with the setting off are invisible;
behind a transaction-pooling PgBouncer only client sessions currently on a
server connection show up (use session pooling for the deploy's duration, or
``--force`` after checking the rollout yourself).
"""

import datetime
import hashlib
import os
import pkgutil
import socket
from dataclasses import dataclass, field
from importlib import import_module

from django.apps import apps
from django.core.management.base import CommandError
from django.db import connections
from django.db.migrations.loader import MigrationLoader

from ..conf import conf
from ..exceptions import SafeMigrateError
from ..operations.join import ContractJoin
from ..pg import release_log
from ..stages import Stage, migration_stage
from .releases import expand_frontier

PREFIX = "sm:"
#: PostgreSQL keeps the first NAMEDATALEN - 1 bytes of application_name.
MAX_NAME = 63


class ContractGateClosed(SafeMigrateError, CommandError):
    """Old code is still connected, or a contract delay has not passed.

    A ``CommandError`` too, so ``manage.py`` prints the message and exits 1
    without a traceback: the message is the whole point.
    """


# -- what this process was built for --------------------------------------------

def migration_names():
    """Every ``app.migration`` name on disk, sorted (no migration module is imported)."""
    names = []
    for app_config in apps.get_app_configs():
        module_name, _ = MigrationLoader.migrations_module(app_config.label)
        if module_name is None:
            continue
        try:
            module = import_module(module_name)
        except ImportError:
            continue
        for info in pkgutil.iter_modules(getattr(module, "__path__", [])):
            if not info.ispkg and info.name[0] not in "_~":
                names.append(f"{app_config.label}.{info.name}")
    return sorted(names)


def fingerprint(names):
    return hashlib.sha256("\n".join(names).encode()).hexdigest()[:12]


def application_name(names=None, pid=None, host=None):
    fp = fingerprint(migration_names() if names is None else names)
    text = f"{PREFIX}{fp}:{pid or os.getpid()}@{host or socket.gethostname()}"
    return text.encode()[:MAX_NAME].decode(errors="ignore")


def announce():
    """Set ``application_name`` on every configured PostgreSQL alias (called by the app config)."""
    if not conf.announce_code_version:
        return None
    name = application_name()
    for alias in connections.settings:
        settings_dict = connections.settings[alias]
        if "postgresql" in settings_dict.get("ENGINE", ""):
            settings_dict.setdefault("OPTIONS", {})["application_name"] = name
    return name


# -- what each release was built for ------------------------------------------------

def record_release(connection, options=None):
    """Remember this code's fingerprint and migration names (migrate and migrate_contract runs)."""
    options = options or {}
    if connection.vendor != "postgresql" or options.get("plan") or options.get("check_unapplied"):
        return
    names = migration_names()
    release_log.record(connection, fingerprint(names), names)


# -- the decision -----------------------------------------------------------------------

@dataclass
class OldCode:
    backend_pid: int
    application_name: str
    fingerprint: str
    client: str  # "<os pid>@<host>" as announced
    client_addr: str
    backend_start: str
    #: migration -> the expand migrations it needs that this code lacks ([] for unknown code)
    missing: dict
    known: bool

    def describe(self):
        what = ("unknown code (fingerprint never recorded by migrate)" if not self.known else
                "code without " + ", ".join(sorted({m for names in self.missing.values() for m in names})))
        # Another role's session shows no address or start time without pg_read_all_stats (issue 24).
        where = (f"{self.client_addr or 'local socket'}, connected since {self.backend_start}" if self.backend_start
                 else "address and start time hidden from the migration role: GRANT pg_read_all_stats shows them")
        return f"pid {self.client} (backend pid {self.backend_pid}, {where}): {what}"


@dataclass
class Delay:
    migration: str
    delay_seconds: float
    expand_applied_at: str
    remaining_seconds: float


@dataclass
class GateStatus:
    gated: list = field(default_factory=list)  # contract migrations the gate looked at
    old_code: list = field(default_factory=list)
    delays: list = field(default_factory=list)
    announcing: int = 0  # connections that announce a code version (ours excluded)
    forced: bool = False

    @property
    def waiting(self):
        return [delay for delay in self.delays if delay.remaining_seconds > 0]

    @property
    def open(self):
        return not self.old_code and not self.waiting

    @property
    def state(self):
        if self.open:
            return "open"
        return "forced" if self.forced else "closed"

    def as_dict(self):
        return {
            "status": self.state,
            "gated_migrations": self.gated,
            "announcing_connections": self.announcing,
            "old_code": [vars(old) for old in self.old_code],
            "delays": [vars(delay) for delay in self.delays],
        }


def _delay_of(migration):
    value = getattr(migration, "contract_delay", None)
    if value is None:
        value = conf.contract_delay_seconds
    if isinstance(value, datetime.timedelta):
        return value.total_seconds()
    return float(value or 0)


def gated_migrations(plan):
    """Pending contract migrations that change something (joins are not gated)."""
    return [m for m, backwards in plan if not backwards and migration_stage(m) is Stage.CONTRACT
            and not all(isinstance(op, ContractJoin) for op in m.operations)]


def evaluate(connection, graph, plan):
    """The gate's status for the forwards ``plan`` ``migrate_contract`` is about to run."""
    status = GateStatus()
    pending = gated_migrations(plan)
    if not pending or connection.vendor != "postgresql":
        return status
    needs = {}
    for migration in pending:
        key = (migration.app_label, migration.name)
        label = f"{key[0]}.{key[1]}"
        status.gated.append(label)
        needs[label] = sorted(f"{app}.{name}" for app, name in expand_frontier(graph, key) if (app, name) != key)
    own = fingerprint(migration_names())
    releases = release_log.releases(connection)
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pid, application_name, coalesce(host(client_addr), ''), backend_start::text "
            "FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid() "
            "AND application_name LIKE %s ORDER BY backend_start",
            [PREFIX.replace("_", r"\_") + "%"],
        )
        sessions = cursor.fetchall()
        cursor.execute("SELECT now()")
        (now,) = cursor.fetchone()
        for label, frontier in needs.items():
            delay = _delay_of(graph.nodes[tuple(label.split(".", 1))])
            if delay <= 0 or not frontier:
                continue
            cursor.execute("SELECT max(applied) FROM django_migrations WHERE app || '.' || name = ANY(%s)",
                           [frontier])
            (applied,) = cursor.fetchone()
            if applied is None:
                continue
            remaining = max(0.0, delay - (now - applied).total_seconds())
            status.delays.append(Delay(label, delay, applied.isoformat(), round(remaining, 1)))
    status.announcing = len(sessions)
    for pid, name, addr, started in sessions:
        fp, _, client = name[len(PREFIX):].partition(":")
        if fp == own:
            continue
        known = releases.get(fp)
        missing = {label: [n for n in frontier if known is None or n not in known]
                   for label, frontier in needs.items()}
        missing = {label: names for label, names in missing.items() if names or known is None}
        if missing:
            status.old_code.append(OldCode(pid, name, fp, client, addr, started, missing, known is not None))
    return status


def refusal(status):
    """The error message for a closed gate."""
    lines = [f"Refusing to run contract migrations ({', '.join(status.gated)}):"]
    if status.old_code:
        lines.append("  code that still needs the pre-contract schema is connected:")
        lines.extend(f"    {old.describe()}" for old in status.old_code)
    for delay in status.waiting:
        lines.append(f"  {delay.migration} asks for {delay.delay_seconds:.0f}s after its expand part (applied "
                     f"{delay.expand_applied_at}); {delay.remaining_seconds:.0f}s remain.")
    lines.append(
        "Contract steps drop columns, tables and defaults that this code still reads and writes: its "
        "queries would fail. Finish the rollout (stop or restart those processes on the new code) or wait "
        "for the delay, then run migrate_contract again. `--force` runs it anyway, after you have checked "
        "that the sessions listed are not application code.")
    return "\n".join(lines)


def plan_lines(status):
    """Lines for ``migrate_contract --plan``."""
    if not status.gated:
        return ["Contract gate: nothing to gate."]
    lines = [f"Contract gate: {status.state} ({status.announcing} announcing connection(s) seen)."]
    if not status.announcing and not conf.announce_code_version:
        lines.append("  ANNOUNCE_CODE_VERSION is off here and no process announces its code version: "
                     "the gate cannot see old code, only delays.")
    lines.extend(f"  old code: {old.describe()}" for old in status.old_code)
    for delay in status.delays:
        lines.append(f"  delay: {delay.migration} {delay.delay_seconds:.0f}s after its expand part; "
                     f"{delay.remaining_seconds:.0f}s remain")
    return lines


def check_before_contract(command, connection, executor, plan, options):
    """Hook for ``migrate_contract``: evaluate the gate, refuse unless ``--force`` or ``--plan``."""
    status = evaluate(connection, executor.loader.graph, plan)
    if status.open or options.get("plan") or options.get("check_unapplied") or options.get("json"):
        return status
    if options.get("force"):
        status.forced = True
        command.stderr.write("--force: " + refusal(status).split("\n", 1)[1].rsplit("\n", 1)[0])
        return status
    raise ContractGateClosed(refusal(status))
