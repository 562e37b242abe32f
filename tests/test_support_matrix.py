"""The support matrix the docs claim is the one CI runs.

The README's "What is tested", the quick start's minimum PostgreSQL and the
package classifiers are promises. These tests tie them to ``.ci/run``,
``tox.ini`` and the server actually under test, so that a corner cannot
quietly stop being tested (a tox factor dropped, a ``DATABASE_URL`` that wins
over the PostgreSQL 15 binaries, a newer Django added without a CI corner).
"""

import itertools
import os
import re
from pathlib import Path

import pytest
from django.db import connection

ROOT = Path(__file__).resolve().parent.parent
CI = (ROOT / ".ci" / "run").read_text()
TOX = (ROOT / "tox.ini").read_text()
README = (ROOT / "README.md").read_text()
QUICKSTART = (ROOT / "docs" / "pages" / "quickstart.md").read_text()
PYPROJECT = (ROOT / "pyproject.toml").read_text()


def _expand(pattern):
    """``py{310,311}-django52`` -> ``['py310-django52', 'py311-django52']`` (tox's brace rule)."""
    parts = re.split(r"\{([^}]*)\}", pattern)
    choices = [[p] if i % 2 == 0 else p.split(",") for i, p in enumerate(parts)]
    return ["".join(combo) for combo in itertools.product(*choices)]


def tox_envlist():
    block = re.search(r"^envlist\s*=\s*\n((?:[ \t]+\S.*\n)+)", TOX, re.M)
    assert block, "tox.ini has no multi-line envlist"
    return [env for line in block.group(1).split() for env in _expand(line.strip())]


def ci_corners():
    corners = re.search(r"^CORNERS=\(([^)]*)\)", CI, re.M)
    assert corners, ".ci/run defines no CORNERS=(...)"
    return corners.group(1).split()


def factors(env):
    """``py310-django52-pg15`` -> ``(310, 52, 15)``; no pg factor means the embedded 18."""
    python = int(re.search(r"py(\d+)", env).group(1))
    django = int(re.search(r"django(\d+)", env).group(1))
    pg = re.search(r"pg(\d+)", env)
    return python, django, int(pg.group(1)) if pg else 18


def what_is_tested():
    section = re.search(r"^## What is tested\n(.*?)(?=^## )", README, re.M | re.S)
    assert section, "README.md has no 'What is tested' section"
    return section.group(1)


def documented_minimum_postgresql():
    minimum = re.search(r"PostgreSQL (\d+) or later", QUICKSTART)
    assert minimum, "the quick start states no minimum PostgreSQL version"
    return int(minimum.group(1))


def test_ci_corners_are_tox_environments_and_the_readme_names_them():
    envlist = tox_envlist()
    section = what_is_tested()
    for env in ci_corners():
        assert env in envlist, f".ci/run runs {env}, which tox.ini's envlist does not define"
        assert f"`{env}`" in section, f"README's 'What is tested' does not say CI runs {env}"


def test_ci_covers_the_newest_python_with_the_newest_django():
    envs = [factors(env) for env in tox_envlist()]
    newest = (max(p for p, _, _ in envs), max(d for _, d, _ in envs))
    covered = {factors(env)[:2] for env in ci_corners()}
    assert newest in covered, f"no CI corner runs Python/Django {newest}; corners: {ci_corners()}"


def test_ci_covers_the_oldest_postgresql_with_the_oldest_django_and_python():
    envs = [factors(env) for env in tox_envlist()]
    oldest = (min(p for p, _, _ in envs), min(d for _, d, _ in envs), min(pg for _, _, pg in envs))
    assert oldest in {factors(env) for env in ci_corners()}, f"no CI corner runs {oldest}"


def test_documented_minimum_postgresql_is_the_oldest_one_ci_runs():
    oldest = min(factors(env)[2] for env in ci_corners())
    assert documented_minimum_postgresql() == oldest
    # The corner really points at that server's binaries and checks it got them.
    assert f"pg{oldest}: SAFEMIGRATE_PG_BINDIR = /usr/lib/postgresql/{oldest}/bin" in TOX
    assert f"pg{oldest}: SAFEMIGRATE_EXPECT_PG_MAJOR = {oldest}" in TOX
    # A DATABASE_URL passed through from outside would silently win over the binaries.
    assert re.search(rf"^\s*pg{oldest}: DATABASE_URL =\s*$", TOX, re.M)


def test_no_doc_page_states_another_minimum_postgresql():
    minimum = documented_minimum_postgresql()
    pages = [ROOT / "README.md", *sorted((ROOT / "docs" / "pages").rglob("*.md"))]
    stale = [
        f"{page.relative_to(ROOT)}: {match.group(0)!r}"
        for page in pages
        for match in re.finditer(r"PostgreSQL (\d+) or later|minimum PostgreSQL (?:is )?(\d+)", page.read_text())
        if int(match.group(1) or match.group(2)) != minimum
    ]
    assert not stale, f"pages disagree with the minimum PostgreSQL {minimum}: {stale}"


def test_classifiers_list_exactly_the_tested_django_and_python_versions():
    envs = [factors(env) for env in tox_envlist()]
    djangos = {f"{d // 10}.{d % 10}" for _, d, _ in envs}
    pythons = {f"3.{p % 100}" for p, _, _ in envs}
    assert set(re.findall(r'"Framework :: Django :: ([\d.]+)"', PYPROJECT)) == djangos
    assert set(re.findall(r'"Programming Language :: Python :: (3\.\d+)"', PYPROJECT)) == pythons


def test_every_supported_django_accepts_the_documented_minimum_postgresql():
    """Django refuses to connect below its own minimum; ours must not be lower than it."""
    import django

    minimum = connection.features.minimum_database_version
    assert minimum <= (documented_minimum_postgresql(),)
    if django.VERSION[:2] == (6, 1):
        assert minimum == (15,), "the quick start says Django 6.1 itself requires PostgreSQL 15"


@pytest.mark.django_db
def test_server_is_the_postgresql_major_the_environment_expects():
    """In the PostgreSQL 15 corner, prove the suite really ran on 15, not the embedded 18."""
    expected = os.environ.get("SAFEMIGRATE_EXPECT_PG_MAJOR")
    if not expected:
        pytest.skip("no SAFEMIGRATE_EXPECT_PG_MAJOR: this environment pins no server version")
    with connection.cursor() as cursor:
        cursor.execute("SHOW server_version_num")
        major = int(cursor.fetchone()[0]) // 10000
    assert major == int(expected), f"tests ran on PostgreSQL {major}, the environment expects {expected}"
