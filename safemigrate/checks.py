"""System checks for the SAFEMIGRATE setting and the database backend."""

from django.core.checks import Error, Tags, Warning, register
from django.db import connections

from .conf import DEFAULTS, conf

def _integer(value):
    return isinstance(value, int) and not isinstance(value, bool)


def _number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _positive_int(value):
    return _integer(value) and value > 0


_POSITIVE_INTS = (
    "LOCK_TIMEOUT_MS",
    "LOCK_RETRIES",
    "RETRY_BACKOFF_BASE_MS",
    "RETRY_BACKOFF_MAX_MS",
    "STATEMENT_TIMEOUT_MS",
    "BATCH_TARGET_MS",
    "BATCH_MIN_SIZE",
    "BATCH_MAX_SIZE",
    "BATCH_INITIAL_SIZE",
    "RUN_LOCK_WAIT_S",
    "ORPHAN_WAIT_S",
    "REPLICA_LAG_MAX_WAIT_S",
)

#: key -> (is the value valid, what it must be, hint): one row per setting, one loop checks them all.
_VALUE_RULES = {
    **{key: (_positive_int, "a positive integer", f"Use the default {DEFAULTS[key]!r} unless you measured otherwise.")
       for key in _POSITIVE_INTS},
    "BATCH_PAUSE_MS": (lambda v: _integer(v) and v >= 0, "an integer >= 0", "Use 0 for no pause between batches."),
    "MAX_REPLICA_LAG_MS": (lambda v: v is None or _positive_int(v), "a positive integer or None",
                           "None turns the replica-lag throttle off."),
    "ORPHANS": (lambda v: v in ("wait", "cancel"), "'wait' or 'cancel'",
                "'wait' lets a killed run's leftover statement finish; 'cancel' stops it "
                "(an interrupted index build is rebuilt by the next run)."),
    "CLIENT_CHECK_INTERVAL_MS": (lambda v: v is None or _positive_int(v), "a positive integer or None",
                                 "None leaves the server's client_connection_check_interval as it is."),
    "RETRY_JITTER": (lambda v: _number(v) and 0 <= v <= 1, "a number between 0 and 1",
                     "0.5 spreads retries by plus or minus half the backoff."),
    "ANNOUNCE_CODE_VERSION": (lambda v: isinstance(v, bool), "True or False",
                              "True lets migrate_contract see which code versions are connected (the contract gate)."),
    "CONTRACT_DELAY_SECONDS": (lambda v: _number(v) and v >= 0, "a number of seconds >= 0",
                               "0 lets migrate_contract run as soon as the gate sees no old code."),
    "RENAME_STRATEGY": (lambda v: v in ("view", "copy"), "'view' or 'copy'",
                        "'view' renames without copying rows wherever a view can serve (docs: renames)."),
    **{key: (lambda v: v is None or (_number(v) and v > 0), "a positive number or None",
             "None sets no budget; rehearse exits 3 when a figure predicted for production size exceeds it.")
       for key in ("REHEARSE_MAX_LOCK_HOLD_MS", "REHEARSE_MAX_EXPAND_S", "REHEARSE_MAX_BACKFILL_S")},
    **{key: (lambda v: v is None or (isinstance(v, (list, tuple)) and v and all(isinstance(p, str) for p in v)),
             "a list of strings (the command and its arguments) or None",
             "For example ['/usr/local/bin/clone-db', '--name', '{name}']; no shell is involved.")
       for key in ("REHEARSE_CLONE_COMMAND", "REHEARSE_DROP_COMMAND")},
    "REHEARSE_PG_DUMP": (lambda v: v is None or v is False or (isinstance(v, str) and v),
                         "a path, None or False",
                         "None finds pg_dump on PATH or in /usr/lib/postgresql/*/bin; False always replays "
                         "migrations for the sample's schema."),
    "ARCHIVE_SCHEMA": (lambda v: isinstance(v, str) and 0 < len(v) <= 63 and v != "public" and not v.startswith("pg_"),
                       "a schema name (1-63 characters, not public, not pg_*)",
                       "Archived tables and the manifest live there; the default is 'safemigrate_archive'."),
    "ARCHIVE_KEEP_DAYS": (lambda v: v is None or _positive_int(v), "a positive integer or None",
                          "None keeps archives until `archive purge ID` drops them."),
    "BACKGROUND_MIN_ROWS": (lambda v: v is None or (_integer(v) and v >= 0), "an integer >= 0 or None",
                            "None keeps every copy inside migrate; 0 sends every copy to the background."),
    "BACKGROUND_DUTY_CYCLE": (lambda v: _number(v) and 0 < v <= 1, "a number above 0 and at most 1",
                              "0.5 works half the time and rests the other half; 1 never rests."),
    "BACKGROUND_HOLD_S": (lambda v: _number(v) and v > 0, "a number of seconds > 0",
                          "30 checks the health signals again half a minute after one said stop."),
    "BACKGROUND_FINALIZE_INLINE_S": (lambda v: _number(v) and v >= 0, "a number of seconds >= 0",
                                     "0 makes a contract step refuse at once while its copy is unfinished."),
    "BACKGROUND_MAX_WAL_BYTES_PER_S": (lambda v: v is None or _positive_int(v), "a positive integer or None",
                                       "None turns the WAL rate signal off."),
    "BACKGROUND_MAX_TRANSACTION_AGE_S": (lambda v: v is None or (_number(v) and v > 0),
                                         "a number of seconds > 0 or None",
                                         "None turns the open-transaction signal off."),
    "BACKGROUND_MAX_LOCK_WAITERS": (lambda v: v is None or (_integer(v) and v >= 0), "an integer >= 0 or None",
                                    "0 holds the copy while anything waits for a lock on its table."),
    "BACKGROUND_MAX_CONNECTION_USE": (lambda v: v is None or (_number(v) and 0 < v <= 1),
                                      "a number above 0 and at most 1, or None",
                                      "0.9 holds the copy while 90% of the connections are in use."),
    "BACKGROUND_PAUSE_DURING_VACUUM": (lambda v: isinstance(v, bool), "True or False",
                                       "True holds the copy while VACUUM runs on its table."),
    "BACKGROUND_HEALTH_CHECK": (lambda v: v is None or (isinstance(v, str) and "." in v),
                                "a dotted path or None", "e.g. 'myproject.health.queue_is_short'."),
}


@register(Tags.compatibility)
def check_settings(app_configs=None, **kwargs):
    errors = []
    raw = conf.raw()
    if not isinstance(raw, dict):
        return [
            Error(
                "SAFEMIGRATE must be a dict.",
                hint="Set SAFEMIGRATE = {'LOCK_TIMEOUT_MS': 200, ...} or remove it.",
                id="safemigrate.E001",
            )
        ]
    for key in sorted(set(raw) - set(DEFAULTS)):
        errors.append(
            Error(
                f"SAFEMIGRATE has an unknown key {key!r}.",
                hint="Known keys: " + ", ".join(sorted(DEFAULTS)) + ". Check the spelling.",
                id="safemigrate.E002",
            )
        )
    errors.extend(_check_per_app_tables(raw))  # STAGES, REWRITE_PLAIN_OPERATIONS, ATOMIC_INDEX_BUILDS
    for key, (valid, requirement, hint) in _VALUE_RULES.items():
        value = raw.get(key, DEFAULTS[key])
        if not valid(value):
            errors.append(Error(f"SAFEMIGRATE[{key!r}] must be {requirement}, got {value!r}.", hint=hint,
                                id="safemigrate.E003"))
    if not errors:
        if conf.batch_min_size > conf.batch_max_size:
            errors.append(
                Error(
                    "SAFEMIGRATE['BATCH_MIN_SIZE'] is larger than BATCH_MAX_SIZE.",
                    hint="Make BATCH_MIN_SIZE <= BATCH_INITIAL_SIZE <= BATCH_MAX_SIZE.",
                    id="safemigrate.E004",
                )
            )
        if conf.lock_timeout_ms > 2000:
            errors.append(
                Warning(
                    f"SAFEMIGRATE['LOCK_TIMEOUT_MS'] is {conf.lock_timeout_ms} ms: every query on a "
                    "table being altered can queue that long behind the migration's lock request.",
                    hint="Keep it in the low hundreds of milliseconds and raise LOCK_RETRIES instead.",
                    id="safemigrate.W001",
                )
            )
    return errors


def _check_per_app_tables(raw):
    """E005: STAGES maps labels to "expand"/"contract"; REWRITE_PLAIN_OPERATIONS maps labels to booleans;
    ATOMIC_INDEX_BUILDS maps labels to "before"/"inside"; ARCHIVE to modes."""
    errors = []
    stages = raw.get("STAGES", DEFAULTS["STAGES"])
    if not isinstance(stages, dict) or any(value not in ("expand", "contract") for value in stages.values()):
        errors.append(Error(
            f"SAFEMIGRATE['STAGES'] must map app labels or 'app_label.migration_name' to 'expand' or "
            f"'contract', got {stages!r}.",
            hint="For example {'otherapp.0007_drop_x': 'contract'}. A wrong stage would run a removal "
                 "while old code still uses what it removes.",
            id="safemigrate.E005",
        ))
    rewrites = raw.get("REWRITE_PLAIN_OPERATIONS", DEFAULTS["REWRITE_PLAIN_OPERATIONS"])
    if not isinstance(rewrites, dict) or any(not isinstance(value, bool) for value in rewrites.values()):
        errors.append(Error(
            f"SAFEMIGRATE['REWRITE_PLAIN_OPERATIONS'] must map app labels (or 'default') to True or False, "
            f"got {rewrites!r}.",
            hint="For example {'default': True, 'someapp': False}.",
            id="safemigrate.E005",
        ))
    builds = raw.get("ATOMIC_INDEX_BUILDS", DEFAULTS["ATOMIC_INDEX_BUILDS"])
    if not isinstance(builds, dict) or any(value not in ("before", "inside") for value in builds.values()):
        errors.append(Error(
            f"SAFEMIGRATE['ATOMIC_INDEX_BUILDS'] must map app labels (or 'default') to 'before' or 'inside', "
            f"got {builds!r}.",
            hint="For example {'default': 'before', 'someapp': 'inside'}: 'before' builds an atomic migration's "
                 "indexes concurrently before its transaction; 'inside' leaves them in it, where every write "
                 "to the table waits for the build.",
            id="safemigrate.E005",
        ))
    archive = raw.get("ARCHIVE", DEFAULTS["ARCHIVE"])
    if not isinstance(archive, dict) or any(value not in ("soft", "copy", False) for value in archive.values()):
        errors.append(Error(
            f"SAFEMIGRATE['ARCHIVE'] must map app labels (or 'default') to 'soft', 'copy' or False, got {archive!r}.",
            hint="For example {'default': 'soft', 'bigapp': 'copy', 'scratch': False}. False drops removed "
                 "columns and tables for real: their data is then only in your backups.",
            id="safemigrate.E005",
        ))
    return errors


@register(Tags.database)
def check_database_vendor(app_configs=None, databases=None, **kwargs):
    """Warn for each non-PostgreSQL database that migrations may target."""
    warnings = []
    for alias in databases or ():
        connection = connections[alias]
        if connection.vendor != "postgresql":
            warnings.append(
                Warning(
                    f"Database {alias!r} uses the {connection.vendor} backend; safemigrate "
                    "supports PostgreSQL only and its operations will refuse to run there.",
                    hint="Point this alias at PostgreSQL, or keep safemigrate operations "
                    "out of migrations routed to it.",
                    id="safemigrate.W002",
                )
            )
    return warnings
