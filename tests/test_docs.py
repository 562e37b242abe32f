"""The documentation builds strictly and covers every setting and command option."""

import re
import subprocess
import sys
from pathlib import Path

import pytest
from django.core.management import get_commands, load_command_class

from safemigrate.conf import DEFAULTS

ROOT = Path(__file__).resolve().parent.parent
PAGES = ROOT / "docs" / "pages"
SAFEMIGRATE_COMMANDS = ["migrate", "migrate_contract", "makemigrations", "lint_migrations", "rehearse", "backfills",
                        "archive"]


def test_mkdocs_builds_strictly(tmp_path):
    pytest.importorskip("mkdocs")
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-q",
         "-f", str(ROOT / "docs" / "mkdocs.yml"), "-d", str(tmp_path / "site")],
        capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert (tmp_path / "site" / "index.html").exists()


def test_every_page_in_the_nav_exists_and_every_page_is_in_the_nav():
    nav = re.findall(r":\s*([\w/-]+\.md)\s*$", (ROOT / "docs" / "mkdocs.yml").read_text(), re.M)
    on_disk = {str(p.relative_to(PAGES)) for p in PAGES.rglob("*.md")}
    assert set(nav) == on_disk


@pytest.mark.parametrize("key", sorted(DEFAULTS))
def test_every_setting_is_documented_with_its_default(key):
    text = (PAGES / "settings.md").read_text()
    row = re.search(rf"^\| `{key}` \| `([^`]*)` \|", text, re.M)
    assert row, f"{key} has no row in docs/pages/settings.md"
    assert row.group(1) == repr(DEFAULTS[key]).replace("'", '"'), f"documented default of {key} is stale"


def _options(command_name):
    app = get_commands()[command_name]
    parser = load_command_class(app, command_name).create_parser("manage.py", command_name)
    parsers = [parser]
    for action in parser._actions:  # a command with actions (backfills run/list/...): their options too
        if isinstance(getattr(action, "choices", None), dict):
            parsers += [sub for sub in action.choices.values() if hasattr(sub, "_actions")]
    for each in parsers:
        for action in each._actions:
            for option in action.option_strings:
                if option.startswith("--") and option != "--help":
                    yield option


@pytest.mark.parametrize("command_name", SAFEMIGRATE_COMMANDS)
def test_every_command_option_is_documented(command_name):
    assert get_commands()[command_name] == "safemigrate", f"{command_name} is not safemigrate's"
    text = (PAGES / "commands.md").read_text()
    section = re.search(rf"^## `{command_name}`\n(.*?)(?=^## |\Z)", text, re.M | re.S)
    assert section, f"commands.md has no section for {command_name}"
    from django.core.management.base import BaseCommand

    common = set(BaseCommand().create_parser("manage.py", "x")._option_string_actions)
    # Options every command has are documented once, at the top of the page.
    missing = [o for o in _options(command_name) if o in common and f"`{o}`" not in text]
    missing += [o for o in _options(command_name) if o not in common and f"`{o}" not in section.group(1)]
    assert not missing, f"{command_name} options missing from commands.md: {missing}"


def test_ci_runs_exactly_the_readme_test_command_before_anything_else():
    readme = (ROOT / "README.md").read_text()
    command = re.search(r"The test suite.*?```sh\n(.*?)\n```", readme, re.S).group(1)
    ci = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert command in ci, ".ci/run does not run the README's test command as written"
    earlier = ci[:ci.index(command)]
    code = [line for line in earlier if not line.startswith("#")]
    assert not [line for line in code if "pytest" in line or "bin/tox" in line], (
        ".ci/run runs tests before the README's test command"
    )


def test_every_public_operation_is_in_the_reference():
    import safemigrate.operations as ops

    text = (PAGES / "operations.md").read_text()
    missing = [name for name in ops.__all__ if f"## `{name}" not in text]
    assert not missing, f"operations.md lacks sections for {missing}"
