"""Settings for the test and demo project.

The database comes from ``DATABASE_URL``; without it a private PostgreSQL
server is started (see ``testproject.pgserver``).
"""

import os

from testproject.pgserver import database_settings

SECRET_KEY = "safemigrate-testproject-not-secret"
DEBUG = False
USE_TZ = True
ALLOWED_HOSTS = ["*"]

INSTALLED_APPS = [
    "django.contrib.contenttypes",
    "django.contrib.auth",
    # As in most real projects: its connection_created receiver once exposed a
    # run-lock bug that a bare test project could not show.
    "django.contrib.postgres",
    "pgtrigger",
    "safemigrate",
    "testproject.shop",
    "testproject.billing",
    "testproject.ledger",
    "testproject.oracleapp",
]

DATABASES = {"default": database_settings()}

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
ROOT_URLCONF = "testproject.urls"

SAFEMIGRATE = {}
if os.environ.get("SAFEMIGRATE_LOCK_TIMEOUT_MS"):
    SAFEMIGRATE["LOCK_TIMEOUT_MS"] = int(os.environ["SAFEMIGRATE_LOCK_TIMEOUT_MS"])

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {"safemigrate": {"handlers": [], "level": "INFO"}},
}
