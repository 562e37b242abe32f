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
    # The background migrations admin page (tests/test_background_admin.py, in a real browser).
    "django.contrib.admin",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
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
STATIC_URL = "/static/"

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]

TEMPLATES = [{
    "BACKEND": "django.template.backends.django.DjangoTemplates",
    "APP_DIRS": True,
    "OPTIONS": {"context_processors": [
        "django.template.context_processors.request",
        "django.contrib.auth.context_processors.auth",
        "django.contrib.messages.context_processors.messages",
    ]},
}]

SAFEMIGRATE = {}
if os.environ.get("SAFEMIGRATE_LOCK_TIMEOUT_MS"):
    SAFEMIGRATE["LOCK_TIMEOUT_MS"] = int(os.environ["SAFEMIGRATE_LOCK_TIMEOUT_MS"])

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {"safemigrate": {"handlers": [], "level": "INFO"}},
}
