"""``--plan --json`` / ``--check --json``: one test per documented field (docs/pages/plan-json.md)."""

import json

import pytest
from django.core.management.base import CommandError

from safemigrate.planning.plan_json import SCHEMA_VERSION
from tests.test_commands import applied, chain, tables  # noqa: F401 (fixture)
from tests.utils import run_command, temporary_migration_modules

B1, B2, B3 = "billing.0001_initial", "billing.0002_contract_drop_legacy", "billing.0003_after"
L1, L2 = "ledger.0001_initial", "ledger.0002_needs_contract"


def plan(*args):
    out, _ = run_command(*args, "--json")
    return json.loads(out)


@pytest.fixture
def blocked_chain(tmp_path, tables):  # noqa: F811
    """billing/ledger where two expand migrations wait behind billing's contract."""
    with temporary_migration_modules(tmp_path, chain(*tables, dependents_stage="expand")):
        yield


@pytest.fixture
def held_chain(tmp_path, tables):  # noqa: F811
    apps = chain(*tables)
    apps["billing"]["0002_contract_drop_legacy.py"] = apps["billing"]["0002_contract_drop_legacy.py"].replace(
        "class Migration(migrations.Migration):\n",
        "class Migration(migrations.Migration):\n    contract_delay = 600\n")
    with temporary_migration_modules(tmp_path, apps):
        yield


def test_header_fields(blocked_chain):
    document = plan("migrate", "--plan")
    assert document["schema_version"] == SCHEMA_VERSION == 1
    assert document["command"] == "migrate" and document["database"] == "default"
    assert plan("migrate_contract", "--plan")["command"] == "migrate_contract"


def test_expand_and_contract_lists_with_operations_and_locks(blocked_chain):
    document = plan("migrate", "--plan")
    assert [f"{m['app']}.{m['name']}" for m in document["expand"]] == [B1, B3, L1, L2]
    assert [f"{m['app']}.{m['name']}" for m in document["contract"]] == [B2]
    contract = document["contract"][0]
    assert contract["stage"] == "contract" and contract["atomic"] is False
    assert contract["dependencies"] == [B1]
    assert contract["contract_delay_seconds"] == 0.0
    drop = contract["operations"][1]
    assert drop == {"type": "DropColumn", "description": "Drop column legacy of invoice (archived unless ARCHIVE is off)",
                    "stage": "contract", "lock": "ACCESS EXCLUSIVE (instant; reads and writes queue while it waits)"}
    create = document["expand"][0]["operations"][0]
    assert create["type"] == "CreateModel" and create["stage"] == "expand"
    assert create["lock"] == "none on existing tables"
    assert "contract_delay_seconds" not in document["expand"][0]


def test_will_apply_held_back_blocked_and_ok_for_migrate(blocked_chain):
    document = plan("migrate", "--plan")
    assert document["will_apply"] == [B1, L1]
    assert document["held_back"] == [B2, B3, L2]
    assert document["blocked"] == [{"migration": B3, "waits_for": [B2]}, {"migration": L2, "waits_for": [B2]}]
    assert document["ok"] is False
    # The same situation without --json is an error, and nothing is applied.
    with pytest.raises(CommandError, match="billing.0003_after \\(expand\\) waits for"):
        run_command("migrate", "--noinput")
    assert applied("billing") == set()


def test_expand_first_and_ok_for_migrate_contract(held_chain):
    document = plan("migrate_contract", "--plan")
    assert document["expand_first"] == [B1, L1] and document["ok"] is False
    assert document["will_apply"] == [B1, B2, B3, L1, L2]
    assert document["held_back"] == [] and document["blocked"] == []
    run_command("migrate", "--noinput")
    document = plan("migrate_contract", "--plan")
    assert document["expand_first"] == []


def test_gate_fields_and_delay(held_chain):
    run_command("migrate", "--noinput")
    gate = plan("migrate_contract", "--plan")["gate"]
    assert gate["status"] == "closed"  # the 600 s delay has just started
    assert gate["gated_migrations"] == [B2, B3, L2]  # every contract migration with operations
    assert gate["announcing_connections"] == 0 and gate["old_code"] == []
    (delay,) = gate["delays"]
    assert delay["migration"] == B2 and delay["delay_seconds"] == 600.0
    assert 590 < delay["remaining_seconds"] <= 600 and delay["expand_applied_at"]


def test_unapply_lists_backwards_steps(held_chain):
    run_command("migrate", "--noinput")
    document = plan("migrate", "ledger", "zero", "--plan")
    assert document["unapply"] == [L1] and document["will_apply"] == []


def test_check_json_exit_codes(held_chain):
    with pytest.raises(SystemExit) as exit_info:
        run_command("migrate_contract", "--check", "--json")
    assert exit_info.value.code == 1
    run_command("migrate", "--noinput")
    run_command("migrate", "--check", "--json")  # no expand work left: exits 0
    run_command("migrate_contract", "--noinput", "--force")
    out, _ = run_command("migrate_contract", "--check", "--json")
    assert json.loads(out)["contract"] == []


def test_json_needs_plan_or_check(held_chain):
    with pytest.raises(CommandError, match="--json goes with --plan or --check"):
        run_command("migrate", "--json")
