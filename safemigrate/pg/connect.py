"""Plain psycopg connections built from a Django ``DATABASES`` entry.

``manage.py rehearse`` talks to several databases at once: the source it
reads, the scratch copy it migrates, the server's maintenance database where
it creates and drops scratch databases, and side connections that watch the
migrating session (``pg_locks``) from another thread. Django connections are
bound to the thread that made them and to an alias in ``DATABASES``; these
helpers give raw psycopg connections with exactly the parameters Django would
use (host, port, user, password, ``OPTIONS`` such as ``sslmode`` or
``service``), so a rehearsal reaches the same servers the same way ``migrate``
does.
"""

from urllib.parse import parse_qsl, unquote, urlsplit

import psycopg

#: Keys of a DATABASES entry's OPTIONS that only Django understands.
_DJANGO_ONLY = ("pool", "server_side_binding", "assume_role", "isolation_level")


def connection_params(settings_dict, dbname=None, application_name=None):
    """psycopg keyword arguments for ``settings_dict`` (a Django DATABASES entry), optionally another database."""
    from django.db.backends.postgresql.base import DatabaseWrapper

    settings = dict(settings_dict)
    options = {key: value for key, value in (settings.get("OPTIONS") or {}).items() if key not in _DJANGO_ONLY}
    if application_name:
        options["application_name"] = application_name
    settings["OPTIONS"] = options
    if dbname is not None:
        settings["NAME"] = dbname
    settings.setdefault("TIME_ZONE", None)
    params = DatabaseWrapper(settings).get_connection_params()
    for key in ("cursor_factory", "context"):
        params.pop(key, None)
    return params


def connect(settings_dict, dbname=None, *, autocommit=True, application_name="safemigrate:rehearse"):
    """A new psycopg connection to ``dbname`` (default: the entry's own NAME) on the entry's server."""
    return psycopg.connect(**connection_params(settings_dict, dbname, application_name), autocommit=autocommit)


def settings_from_url(url, base):
    """A DATABASES entry for ``postgresql://user:password@host:port/name?option=value``, other keys from ``base``.

    Clone commands print such a URL for the clone they made.
    """
    parts = urlsplit(url.strip())
    if parts.scheme not in ("postgres", "postgresql"):
        raise ValueError(f"not a postgresql:// URL: {url!r}")
    query = dict(parse_qsl(parts.query))
    settings = dict(base)
    options = {key: value for key, value in (base.get("OPTIONS") or {}).items() if key in _DJANGO_ONLY}
    host = unquote(parts.hostname or "") if parts.hostname else query.pop("host", "")
    query.pop("host", None)
    settings.update(
        NAME=unquote(parts.path.lstrip("/")) or "postgres",
        USER=unquote(parts.username or ""),
        PASSWORD=unquote(parts.password or ""),
        HOST=host,
        PORT=str(parts.port or ""),
        OPTIONS={**options, **query},
    )
    return settings
