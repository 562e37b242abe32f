"""The contract gate: migrate_contract refuses while code older than the contract's release is connected."""

import json
import socket

import pytest

from safemigrate.planning import gate
from tests.test_releases import V0, V1

pytestmark = pytest.mark.project(safemigrate={"ANNOUNCE_CODE_VERSION": True})

#: An application process: connects, says who it is, and keeps the connection until told to stop.
APP_PROCESS = """
import django, sys
django.setup()
from django.db import connection
connection.ensure_connection()
with connection.cursor() as cursor:
    cursor.execute("SELECT current_setting('application_name')")
    print(cursor.fetchone()[0], flush=True)
sys.stdin.read()
"""


def plan_args():
    """``--plan``, plus ``--annotate`` where plain ``--plan`` prints Django's own plan (the drop-in work)."""
    from django.core.management import load_command_class

    parser = load_command_class("safemigrate", "migrate_contract").create_parser("manage.py", "migrate_contract")
    return ["--plan", "--annotate"] if "--annotate" in parser._option_string_actions else ["--plan"]


class AppServer:
    def __init__(self, project, root=None):
        self.process = project.popen(APP_PROCESS, root=root)
        self.application_name = self.process.stdout.readline().strip()
        assert self.application_name.startswith("sm:"), self.process.stderr.read()

    def stop(self):
        self.process.stdin.close()
        self.process.wait(30)


@pytest.fixture
def rename_released(project, tmp_path):
    """Release 0 deployed; release 1 (a rename) expanded; the returned old code root is release 0's."""
    project.models(V0)
    project.run("makemigrations", "relapp", "--noinput")
    project.run("migrate", "--noinput")
    old_root = project.snapshot(tmp_path / "old")
    project.models(V1)
    project.run("makemigrations", "relapp", "--safe", input="y\n")
    project.run("migrate", "--noinput")
    return old_root


def test_refuses_while_old_code_is_connected_naming_it_then_proceeds(project, rename_released):
    old = AppServer(project, rename_released)
    new = AppServer(project)  # release-1 code is fine: it does not use the old column
    try:
        client = old.application_name.split(":", 2)[2]
        assert client == f"{old.process.pid}@{socket.gethostname()}"[:len(client)]
        refused = project.run("migrate_contract", "--noinput", check=False)
        assert refused.returncode != 0
        assert refused.stderr.startswith("ContractGateClosed: Refusing to run contract migrations")
        assert "Traceback" not in refused.stderr
        assert f"pid {client} (backend pid" in refused.stderr
        assert "code without relapp.0002_expand_rename_item_title_headline" in refused.stderr
        assert new.application_name.split(":", 2)[2] not in refused.stderr
        assert "title" in project.columns()
        plan = project.run("migrate_contract", *plan_args(), check=False).stdout
        assert "Contract gate: closed (2 announcing connection(s) seen)." in plan
        assert f"old code: pid {client}" in plan
    finally:
        old.stop()
    try:
        project.run("migrate_contract", "--noinput")
        assert "title" not in project.columns()
    finally:
        new.stop()


def test_force_overrides_the_gate(project, rename_released):
    old = AppServer(project, rename_released)
    try:
        result = project.run("migrate_contract", "--force", "--noinput")
        assert "--force:" in result.stderr and old.application_name.split(":", 2)[2] in result.stderr
        assert "title" not in project.columns()
    finally:
        old.stop()


def test_unknown_code_version_counts_as_old(project, rename_released):
    (rename_released / "relapp" / "migrations" / "0009_local_experiment.py").write_text(
        "from django.db import migrations\n\nclass Migration(migrations.Migration):\n"
        "    dependencies = [('relapp', '0001_initial')]\n    operations = []\n")
    old = AppServer(project, rename_released)
    try:
        refused = project.run("migrate_contract", "--noinput", check=False)
        assert "unknown code (fingerprint never recorded by migrate)" in refused.stderr
    finally:
        old.stop()


def test_contract_delay_is_honoured_and_shown_in_the_plan(project, rename_released):
    contract = next(project.migrations.glob("0003_*.py"))
    contract.write_text(contract.read_text().replace(
        "class Migration(migrations.Migration):\n",
        "import datetime\n\nclass Migration(migrations.Migration):\n    contract_delay = datetime.timedelta(hours=1)\n"))
    refused = project.run("migrate_contract", "--noinput", check=False)
    assert refused.returncode != 0
    assert "asks for 3600s after its expand part" in refused.stderr
    remain = int(refused.stderr.split("s remain")[0].rsplit(" ", 1)[1])
    assert 3500 < remain <= 3600
    plan = project.run("migrate_contract", *plan_args(), check=False).stdout
    assert "delay: relapp.0003_contract_finish_rename_item_title_headline 3600s after its expand part" in plan
    # Two hours later (as the database sees it): the delay is over.
    project.query("UPDATE django_migrations SET applied = applied - interval '2 hours' WHERE app = 'relapp'")
    project.run("migrate_contract", "--noinput")
    assert "title" not in project.columns()


def test_announced_name_fits_postgres_and_is_stable():
    names = ["a.0001_initial", "a.0002_x"]
    name = gate.application_name(names, pid=123456, host="h" * 80)
    assert len(name.encode()) <= 63 and name.startswith(f"sm:{gate.fingerprint(names)}:123456@h")
    assert gate.fingerprint(names) == gate.fingerprint(list(names)) != gate.fingerprint(names[:1])


def test_json_check_reports_the_gate(project, rename_released):
    old = AppServer(project, rename_released)
    try:
        result = project.run("migrate_contract", "--check", "--json", check=False)
    finally:
        old.stop()
    assert result.returncode == 1
    document = json.loads(result.stdout)
    assert document["gate"]["status"] == "closed"
    (entry,) = document["gate"]["old_code"]
    assert entry["client"] == old.application_name.split(":", 2)[2]
    assert entry["missing"] == {"relapp.0003_contract_finish_rename_item_title_headline":
                                ["relapp.0002_expand_rename_item_title_headline"]}
    assert entry["known"] is True and entry["fingerprint"] == old.application_name.split(":")[1]
    assert entry["application_name"] == old.application_name
    assert isinstance(entry["backend_pid"], int) and entry["backend_pid"] != old.process.pid
    assert entry["client_addr"] in ("", "127.0.0.1", "::1") and entry["backend_start"][:2] == "20"
    assert document["gate"]["announcing_connections"] == 1
    assert document["gate"]["gated_migrations"] == ["relapp.0003_contract_finish_rename_item_title_headline"]
    assert document["ok"] is False


@pytest.mark.parametrize("key, value", [("ANNOUNCE_CODE_VERSION", "yes"), ("CONTRACT_DELAY_SECONDS", -1),
                                        ("CONTRACT_DELAY_SECONDS", True)])
def test_gate_settings_are_checked(key, value, settings):
    from safemigrate.checks import check_settings

    settings.SAFEMIGRATE = {key: value}
    (error,) = check_settings()
    assert error.id == "safemigrate.E003" and key in error.msg
    settings.SAFEMIGRATE = {"ANNOUNCE_CODE_VERSION": True, "CONTRACT_DELAY_SECONDS": 1800}
    assert check_settings() == []


def test_with_two_releases_in_flight_only_code_older_than_the_contract_is_old(project, rename_released, tmp_path):
    """Release 2 ships while release 1's contract waits; release 1 code may stay, release 0 code may not."""
    release1_root = project.snapshot(tmp_path / "release1")
    project.models(V1 + "    note = models.TextField(null=True)\n")
    project.run("makemigrations", "relapp")
    project.run("migrate", "--noinput")
    release0 = AppServer(project, rename_released)
    release1 = AppServer(project, release1_root)
    try:
        refused = project.run("migrate_contract", "--noinput", check=False)
        assert refused.returncode != 0
        assert release0.application_name.split(":", 2)[2] in refused.stderr
        assert release1.application_name.split(":", 2)[2] not in refused.stderr
    finally:
        release0.stop()
    try:
        result = project.run("migrate_contract", "--noinput")
        assert "Applying relapp.0005_join... OK" in result.stdout and "title" not in project.columns()
    finally:
        release1.stop()
