"""Database profiles: how a test database is set up, beyond "superuser in public".

Production databases rarely look like a test suite's: on a managed server nobody is
superuser, a migration role owns the tables while the application connects as a role
with DML grants only, and the tables often live in a schema of their own, chosen by
``search_path``. A profile says which of that a database gets:

* ``superuser`` -- what every test had before: the ``postgres`` superuser, ``public``.
* ``two_role_app_schema`` -- the SQL of docs/pages/roles.md, read from the page and
  run as written: roles ``app_owner`` (owns everything, runs the migrations) and
  ``app_user`` (DML only, the application's traffic), schema ``app`` first on both
  roles' ``search_path``, and ``public`` after it holding *decoys*: tables of the same
  names as the application's (``add_decoy``), so that a look-up that does not follow
  ``search_path`` finds the wrong one.

``ProfileDatabase`` creates a fresh database for a profile and hands out connection
settings for each role. The zero-downtime scenarios (``testproject.scenario``), the
oracle (``tests.oracle``) and the pytest fixtures in ``tests/conftest.py`` all use it,
so a feature tested there is tested under every profile they run.
"""

import re
import uuid
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

import psycopg

from testproject.pgserver import database_settings, database_url

REPO = Path(__file__).resolve().parent.parent
GRANTS_PAGE = REPO / "docs" / "pages" / "roles.md"
OWNER = "app_owner"
APP_ROLE = "app_user"
SCHEMA = "app"
#: Any number unlikely to be used by something else: serializes role creation across
#: pytest-xdist workers sharing one server.
ROLES_LOCK = 72617124


@dataclass(frozen=True)
class Profile:
    name: str
    #: Migrations run as the owner role, traffic as the app role (else all as the admin).
    two_roles: bool
    #: The schema tables are created in (first on search_path); None: public.
    schema: "str | None"


PROFILES = {
    "superuser": Profile("superuser", two_roles=False, schema=None),
    "two_role_app_schema": Profile("two_role_app_schema", two_roles=True, schema=SCHEMA),
}
TWO_ROLE = PROFILES["two_role_app_schema"]


def grants_sql(kind, page=GRANTS_PAGE):
    """The SQL block of the grants page marked ``<!-- sql: kind -->``, exactly as written."""
    text = Path(page).read_text()
    match = re.search(rf"<!-- sql: {kind} -->\n```sql\n(.*?)\n```", text, re.S)
    if match is None:
        raise LookupError(f"{page} has no SQL block marked <!-- sql: {kind} -->")
    return match.group(1)


def page_schemas(page=GRANTS_PAGE):
    """The schemas the grants page's database block creates, in its order (the app's, the archive)."""
    return re.findall(r"CREATE SCHEMA (\w+)", grants_sql("database", page))


def passwords(page=GRANTS_PAGE):
    """{role: password} as the grants page creates them."""
    return dict(re.findall(r"CREATE ROLE (\w+) .*?PASSWORD '([^']*)'", grants_sql("server", page)))


def _url(base, *, dbname=None, user=None, password=None):
    parts = urlsplit(base)
    netloc = parts.netloc
    if user is not None:
        host = netloc.rsplit("@", 1)[-1]
        netloc = f"{quote(user)}:{quote(password or '')}@{host}" if password else f"{quote(user)}@{host}"
    path = parts.path if dbname is None else f"/{dbname}"
    return urlunsplit(parts._replace(netloc=netloc, path=path))


def ensure_roles(admin_url=None):
    """Run the grants page's server block once per server (roles are cluster-wide)."""
    with psycopg.connect(_url(admin_url or database_url(), dbname="postgres"), autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", [ROLES_LOCK])
        try:
            exists = conn.execute("SELECT count(*) FROM pg_roles WHERE rolname = ANY(%s)",
                                  [[OWNER, APP_ROLE]]).fetchone()[0]
            if exists == 0:
                conn.execute(grants_sql("server"))
            elif exists != 2:
                raise RuntimeError(f"Only one of {OWNER}, {APP_ROLE} exists on this server; drop it and rerun.")
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", [ROLES_LOCK])


class ProfileDatabase:
    """A fresh database on the test server, set up as ``profile`` says."""

    def __init__(self, profile=TWO_ROLE, name=None, admin_url=None):
        self.profile = PROFILES[profile] if isinstance(profile, str) else profile
        self.name = name or f"prof_{uuid.uuid4().hex[:10]}"
        self.admin_base = admin_url or database_url()

    # -- URLs and settings ---------------------------------------------------

    def url(self, role="owner"):
        """``postgresql://`` URL of this database as ``role``: "admin", "owner" or "app"."""
        if role == "admin" or not self.profile.two_roles:
            return _url(self.admin_base, dbname=self.name)
        user = {"owner": OWNER, "app": APP_ROLE}[role]
        return _url(self.admin_base, dbname=self.name, user=user, password=passwords()[user])

    def dsn(self, role="owner"):
        return self.url(role)

    def settings(self, role="owner"):
        """A Django ``DATABASES`` entry for ``role``."""
        return database_settings(self.url(role))

    def connect(self, role="owner", **kwargs):
        kwargs.setdefault("autocommit", True)
        return psycopg.connect(self.url(role), **kwargs)

    # -- life cycle ----------------------------------------------------------

    def create(self):
        with psycopg.connect(_url(self.admin_base, dbname="postgres"), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{self.name}"')
        self.setup()
        return self

    def setup(self):
        """The grants page's database block, as the administrator (again after ``reset``)."""
        if not self.profile.two_roles:
            return
        ensure_roles(self.admin_base)
        with self.connect("admin") as conn:
            conn.execute(grants_sql("database"))

    def reset(self):
        """Drop everything the application created (faster than a new database).

        That includes the schemas the grants page's database block creates (the
        archive schema, whose archived tables and manifest belong to the old run).
        """
        schema = self.profile.schema or "public"
        with self.connect("admin") as conn:
            conn.execute(f'DROP SCHEMA "{schema}" CASCADE')
            if self.profile.two_roles:
                for other in page_schemas():
                    if other != schema:
                        conn.execute(f'DROP SCHEMA IF EXISTS "{other}" CASCADE')
            if schema == "public":
                conn.execute("CREATE SCHEMA public")
        if schema != "public":
            self.setup()

    def drop(self):
        with psycopg.connect(_url(self.admin_base, dbname="postgres"), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')

    def __enter__(self):
        return self.create()

    def __exit__(self, *exc_info):
        self.drop()

    # -- decoys ----------------------------------------------------------------

    def add_decoy(self, table, rows=3):
        """A table named like ``table`` in ``public``, later on the path, with its indexes.

        Built from the real table (``LIKE ... INCLUDING ALL``: the same columns,
        defaults, constraints and indexes, under the names PostgreSQL gives them),
        holding a few rows of its own, readable by everyone, so that any look-up
        that does not resolve names through ``search_path`` (``information_schema``
        by ``table_name``, ``pg_class`` by ``relname``) sees two tables.
        """
        if self.profile.schema is None:
            return
        with self.connect("admin") as conn:
            conn.execute(f'DROP TABLE IF EXISTS public."{table}" CASCADE')
            conn.execute(f'CREATE TABLE public."{table}" (LIKE "{self.profile.schema}"."{table}" INCLUDING ALL)')
            conn.execute(f'GRANT SELECT ON public."{table}" TO PUBLIC')
            if rows:  # a few of the real table's rows (its columns, its order)
                conn.execute(f'INSERT INTO public."{table}" OVERRIDING SYSTEM VALUE '
                             f'SELECT * FROM "{self.profile.schema}"."{table}" LIMIT %s', [rows])

    def add_decoy_table(self, table):
        """A stand-in decoy for a table that does not exist yet: ``public.<table>``, a few rows."""
        if self.profile.schema is None:
            return
        with self.connect("admin") as conn:
            conn.execute(f'CREATE TABLE IF NOT EXISTS public."{table}" (id bigint PRIMARY KEY, note text)')
            conn.execute(f'INSERT INTO public."{table}" SELECT i, \'decoy\' FROM generate_series(1, 3) i '
                         "ON CONFLICT DO NOTHING")
            conn.execute(f'GRANT SELECT ON public."{table}" TO PUBLIC')

    def add_decoy_index(self, table, index, columns):
        """An index called ``index`` on the decoy of ``table``: the name a real one will get."""
        if self.profile.schema is None:
            return
        cols = ", ".join(f'"{c}"' for c in columns)
        with self.connect("admin") as conn:
            conn.execute(f'CREATE INDEX IF NOT EXISTS "{index}" ON public."{table}" ({cols})')
