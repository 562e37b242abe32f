"""System checks for the SAFEMIGRATE setting and the database backend."""

from django.core.checks import Error, Tags, Warning, register
from django.db import connections

from .conf import DEFAULTS, conf

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
    errors.extend(_check_per_app_tables(raw))  # issue 10: STAGES, REWRITE_PLAIN_OPERATIONS
    for key in _POSITIVE_INTS:
        value = raw.get(key, DEFAULTS[key])
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            errors.append(
                Error(
                    f"SAFEMIGRATE[{key!r}] must be a positive integer, got {value!r}.",
                    hint=f"Use the default {DEFAULTS[key]!r} unless you measured otherwise.",
                    id="safemigrate.E003",
                )
            )
    for key in ("BATCH_PAUSE_MS",):
        value = raw.get(key, DEFAULTS[key])
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            errors.append(
                Error(
                    f"SAFEMIGRATE[{key!r}] must be an integer >= 0, got {value!r}.",
                    hint="Use 0 for no pause between batches.",
                    id="safemigrate.E003",
                )
            )
    lag = raw.get("MAX_REPLICA_LAG_MS", DEFAULTS["MAX_REPLICA_LAG_MS"])
    if lag is not None and (isinstance(lag, bool) or not isinstance(lag, int) or lag <= 0):
        errors.append(
            Error(
                f"SAFEMIGRATE['MAX_REPLICA_LAG_MS'] must be a positive integer or None, got {lag!r}.",
                hint="None turns the replica-lag throttle off.",
                id="safemigrate.E003",
            )
        )
    orphans = raw.get("ORPHANS", DEFAULTS["ORPHANS"])
    if orphans not in ("wait", "cancel"):
        errors.append(
            Error(
                f"SAFEMIGRATE['ORPHANS'] must be 'wait' or 'cancel', got {orphans!r}.",
                hint="'wait' lets a killed run's leftover statement finish; 'cancel' stops it "
                "(an interrupted index build is rebuilt by the next run).",
                id="safemigrate.E003",
            )
        )
    interval = raw.get("CLIENT_CHECK_INTERVAL_MS", DEFAULTS["CLIENT_CHECK_INTERVAL_MS"])
    if interval is not None and (isinstance(interval, bool) or not isinstance(interval, int) or interval <= 0):
        errors.append(
            Error(
                f"SAFEMIGRATE['CLIENT_CHECK_INTERVAL_MS'] must be a positive integer or None, got {interval!r}.",
                hint="None leaves the server's client_connection_check_interval as it is.",
                id="safemigrate.E003",
            )
        )
    jitter = raw.get("RETRY_JITTER", DEFAULTS["RETRY_JITTER"])
    if isinstance(jitter, bool) or not isinstance(jitter, (int, float)) or not 0 <= jitter <= 1:
        errors.append(
            Error(
                f"SAFEMIGRATE['RETRY_JITTER'] must be a number between 0 and 1, got {jitter!r}.",
                hint="0.5 spreads retries by plus or minus half the backoff.",
                id="safemigrate.E003",
            )
        )
    announce = raw.get("ANNOUNCE_CODE_VERSION", DEFAULTS["ANNOUNCE_CODE_VERSION"])
    if not isinstance(announce, bool):
        errors.append(Error(
            f"SAFEMIGRATE['ANNOUNCE_CODE_VERSION'] must be True or False, got {announce!r}.",
            hint="True lets migrate_contract see which code versions are connected (the contract gate).",
            id="safemigrate.E003",
        ))
    delay = raw.get("CONTRACT_DELAY_SECONDS", DEFAULTS["CONTRACT_DELAY_SECONDS"])
    if isinstance(delay, bool) or not isinstance(delay, (int, float)) or delay < 0:
        errors.append(Error(
            f"SAFEMIGRATE['CONTRACT_DELAY_SECONDS'] must be a number of seconds >= 0, got {delay!r}.",
            hint="0 lets migrate_contract run as soon as the gate sees no old code.",
            id="safemigrate.E003",
        ))
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
    """E005: STAGES maps labels to "expand"/"contract"; REWRITE_PLAIN_OPERATIONS maps labels to booleans."""
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
