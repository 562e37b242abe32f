"""The differential oracle (issue 9): safemigrate's end state must be plain Django's.

Three parts: the catalog diff must see the differences it exists to see; one
hand-written history per known defect (each says which
issue item it reproduces); and a fast Hypothesis profile over generated
histories (the deep one is ``python -m tests.oracle``).
"""

import pytest
from django.test import override_settings
from hypothesis import HealthCheck, given, settings

from tests.oracle import catalog
from tests.oracle.fixtures import (  # noqa: F401 (fixtures)
    PROGRESS, databases, oracle, passes, scratch_databases, two_role_oracle, two_role_scratch_databases)
from tests.oracle.rows import Rows
from tests.oracle.specs import F, Ix, M, U, X
from tests.oracle.strategies import FAST_PROFILE_EXCLUDES, histories

# -- the catalog diff --------------------------------------------------------------


def execute(database, sql):
    with database.connection.cursor() as cursor:
        cursor.execute(sql)


PARENT = "CREATE TABLE parent (id bigint PRIMARY KEY)"


def differences(databases, plain_sql, safe_sql):
    for database in databases:
        database.reset()
    plain, safe = databases
    for database, statements in ((plain, plain_sql), (safe, safe_sql)):
        for statement in statements:
            execute(database, statement)
    return catalog.diff(catalog.snapshot(plain.connection), catalog.snapshot(safe.connection))


def child(on_delete="NO ACTION", default="1"):
    return (f"CREATE TABLE child (id bigint PRIMARY KEY, n int DEFAULT {default}, "
            f"p bigint REFERENCES parent ON DELETE {on_delete} DEFERRABLE INITIALLY DEFERRED)")


def test_catalog_identical_schemas_with_other_names_have_no_differences(databases):
    plain = [PARENT, child(), "CREATE INDEX a_name ON child (n) WHERE n > 0", "INSERT INTO parent VALUES (1)",
             "INSERT INTO child VALUES (1, 5, 1)"]
    safe = [PARENT, child(), "CREATE INDEX other_name ON child (n) WHERE n > 0", "INSERT INTO parent VALUES (1)",
            "INSERT INTO child VALUES (1, 5, 1)"]
    assert differences(databases, plain, safe) == []


def test_catalog_reports_an_index_predicate(databases):
    found = differences(databases, [PARENT, child(), "CREATE INDEX i ON child (n) WHERE n > 0"],
                        [PARENT, child(), "CREATE INDEX i ON child (n) WHERE n > 1"])
    assert found == ["child: index only in plain Django: btree (n) WHERE (n > 0)",
                     "child: index only in safemigrate: btree (n) WHERE (n > 1)"]


def test_catalog_reports_a_foreign_key_on_delete_action(databases):
    found = differences(databases, [PARENT, child("CASCADE")], [PARENT, child("NO ACTION")])
    assert len(found) == 2 and "ON DELETE CASCADE" in found[0] and "ON DELETE NO ACTION" in found[1]


def test_catalog_reports_a_column_default(databases):
    found = differences(databases, [PARENT, child(default="1")], [PARENT, child(default="2")])
    assert found == ["child.n: plain Django integer NULL DEFAULT 1; safemigrate integer NULL DEFAULT 2"]


def test_catalog_reports_an_invalid_index_helpers_and_row_values(databases):
    base = [PARENT, child(), "INSERT INTO parent VALUES (1)", "INSERT INTO child VALUES (1, 5, 1)"]
    found = differences(databases, base + ["CREATE UNIQUE INDEX u ON child (n)"], base + [
        "CREATE UNIQUE INDEX u ON child (n)", "UPDATE pg_index SET indisvalid = false WHERE indexrelid = 'u'::regclass",
        "UPDATE child SET n = 6", "CREATE FUNCTION helper() RETURNS int LANGUAGE sql AS 'SELECT 1'",
        "CREATE TABLE safemigrate_backfill_progress (name text, table_name text, done boolean)",
        "INSERT INTO safemigrate_backfill_progress VALUES ('child.cast.n', 'child', true)"])
    assert found == [
        "child: index only in plain Django: UNIQUE btree (n)",
        "child: index only in safemigrate: UNIQUE btree (n) INVALID",
        "child row 1: n plain=5 safemigrate=6",
        "schema: function only in safemigrate: helper()",
        "schema: backfill progress row only in safemigrate: child.cast.n on child (done=True)",
    ]


# -- the runner on a history every version of safemigrate handles ---------------------


def test_history_adding_fields_and_models_passes(oracle):
    v1 = (M("Item", (("name", F("char")),)),)
    v2 = (M("Item", (("name", F("char")), ("qty", F("int", default=3)), ("note", F("text", null=True)))),
          M("Tag", (("label", F("char", max_length=20, unique=True)),)))
    assert oracle(v1, v2).status == "passed"


# -- the known defects (issue 9) --------------------------------------------------------


def test_defect_1_type_changed_twice_keeps_values(oracle):
    outcome = oracle((M("Item", (("n", F("int", null=True)),)),),
                     (M("Item", (("n", F("bigint", null=True)),)),),
                     (M("Item", (("n", F("decimal", null=True)),)),), ignore=[PROGRESS])
    assert passes(outcome)


def test_defect_2_max_length_null_and_unique_in_one_edit(oracle):
    outcome = oracle((M("Item", (("s", F("char", max_length=50)),)),),
                     (M("Item", (("s", F("char", max_length=100, null=True, unique=True)),)),), ignore=[PROGRESS])
    assert passes(outcome)


def delete_referenced_parent(index, plain, safe):
    """The new code deletes a parent row that only the removed column referenced."""
    if index == 0:
        return []
    # The removed column is still there on safemigrate's side (it goes at contract).
    (deleted,) = safe.execute([("SELECT min(p_id) FROM oracleapp_item", None)])
    plain.execute([(f"DELETE FROM oracleapp_parent WHERE id = {int(deleted)}", None)])
    try:
        safe.execute([(f"DELETE FROM oracleapp_parent WHERE id = {int(deleted)}", None)])
    except Exception as exc:
        return [f"new code cannot delete parent {deleted} after expand: {str(exc).splitlines()[0]}"]
    return []


def test_defect_3_removed_foreign_key_lets_new_code_delete_parents(oracle):
    parent = M("Parent", (("name", F("char")),))
    outcome = oracle((parent, M("Item", (("p", F("fk", to="Parent")), ("n", F("int"))))),
                     (parent, M("Item", (("n", F("int")),))),
                     hooks={"after_expand": delete_referenced_parent}, ignore=[PROGRESS])
    assert passes(outcome)


def test_defect_3_deleted_model_lets_new_code_delete_parents(oracle):
    """The generic rollout writes catch it too: the new code deletes a row the removed model referenced."""
    parent = M("Parent", (("name", F("char")),))
    outcome = oracle((parent, M("Item", (("p", F("fk", to="Parent")),))), (parent,), ignore=[PROGRESS])
    assert passes(outcome)


def test_defect_4_rename_keeps_foreign_key_db_default_and_together(oracle):
    parent = M("Parent")
    outcome = oracle(
        (parent, M("Item", (("p", F("fk", to="Parent")), ("d", F("int", db_default=5))),
                   unique_together=(("p", "d"),), indexes=(("item_d_idx", ("d",)),),
                   constraints=(("check", "item_d_min", "d", 0),))),
        (parent, M("Item", (("q", F("fk", to="Parent")), ("e", F("int", db_default=5))),
                   unique_together=(("q", "e"),), indexes=(("item_d_idx", ("e",)),),
                   constraints=(("check", "item_d_min", "e", 0),))),
        ignore=[PROGRESS])
    assert passes(outcome)


def test_defect_5_bigint_primary_key_keeps_m2m_and_one_to_one_uniqueness(oracle):
    def item(big):
        return (M("Parent", pk="bigauto" if big else "auto"),
                M("Item", (("tags", F("m2m", to="Parent")), ("one", F("o2o", to="Parent", on_delete="PROTECT")))))
    outcome = oracle(item(False), item(True), ignore=[PROGRESS])
    assert passes(outcome)


def test_defect_6_type_change_keeps_checks_together_and_meta_indexes(oracle):
    def item(kind):
        return (M("Item", (("n", F(kind)), ("m", F("int"))), unique_together=(("n", "m"),),
                  indexes=(("item_n_idx", ("n",)),), constraints=(("unique", "item_n_m_u", ("m", "n"), None),)),)
    outcome = oracle(item("positive"), item("bigint"), ignore=[PROGRESS])
    assert passes(outcome)


def test_defect_7_percent_in_a_default(oracle):
    outcome = oracle((M("Item", (("s", F("char", null=True)),)),),
                     (M("Item", (("s", F("char", default="100%")),)),), ignore=[PROGRESS])
    assert passes(outcome)


def test_defect_8_state_matches_models_after_bigint_primary_key(oracle):
    def version(big, *extra):
        return (M("Parent", pk="bigauto" if big else "auto"), M("Item", (("p", F("fk", to="Parent")), ("one", F("o2o", to="Parent")),
                                                   ("tags", F("m2m", to="Parent")), *extra)))
    outcome = oracle(version(False), version(True), version(True, ("m", F("int", null=True))))
    assert not [message for message in outcome.messages if "makemigrations" in message], outcome.report()
    assert outcome.status in ("passed", "failed")


def test_plain_integer_primary_key_to_bigint_is_refused_or_done(oracle):
    """Not an identity column: ChangePrimaryKeyToBigint stops in the expand step.

    makemigrations --safe should refuse with the manual steps instead (or do it).
    """
    outcome = oracle((M("Item", (("n", F("int")),), pk="int"),), (M("Item", (("n", F("int")),), pk="bigint"),),
                     ignore=[PROGRESS])
    assert outcome.status in ("passed", "refused"), outcome.report()


def test_defect_9_dual_write_trigger_on_a_json_column(oracle):
    outcome = oracle((M("Item", (("doc", F("plainjson", null=True)),)),),
                     (M("Item", (("body", F("plainjson", null=True)),)),), ignore=[PROGRESS])
    assert passes(outcome)


@pytest.mark.parametrize("before, after", [
    (F("text"), F("char", max_length=3)),
    (F("decimal"), F("decimal", digits=(10, 1))),
], ids=["varchar", "numeric"])
def test_defect_9_lossy_cast_stops_the_expand(oracle, before, after, monkeypatch):
    """Plain Django truncates or rounds here; safemigrate must refuse or stop instead.

    The generated rows fit every version's field by default (each version's code
    writes what its own model can hold); here the old code writes text longer than
    the new type holds, as code with no max_length of its own may.
    """
    fit_every_version = Rows.__init__

    def longer_text(self, history):
        fit_every_version(self, history)
        self.max_lengths.pop("v", None)

    monkeypatch.setattr(Rows, "__init__", longer_text)
    outcome = oracle((M("Item", (("v", before),)),), (M("Item", (("v", after),)),))
    assert outcome.status == "refused" or any("safemigrate expand" in m for m in outcome.messages), outcome.report()


def test_defect_10_remove_m2m_from_a_model_with_custom_db_table(oracle):
    outcome = oracle((M("Tag"), M("Item", (("tags", F("m2m", to="Tag")),), db_table="legacy_items")),
                     (M("Tag"), M("Item", db_table="legacy_items")),
                     ignore=[PROGRESS])
    assert passes(outcome)


def test_contract_leaves_no_backfill_progress_rows(oracle):
    outcome = oracle((M("Item", (("n", F("int")),)),), (M("Item", (("n", F("bigint")),)),))
    assert passes(outcome)


# -- what the generated histories found (shrunk), beyond the list ---------------

FOUND = [
    pytest.param((M("Alpha"),), (M("Alpha", (("d", F("positive", default=5)),)),),
                 id="add-positive-field-keeps-check"),
    pytest.param((M("Alpha"), M("Beta", (("a", F("o2o", null=True, to="Alpha")),))), (M("Alpha"), M("Beta")),
                 id="remove-one-to-one-drops-its-column"),
    pytest.param((M("Alpha", (("b", F("char", db_index=True)),)),), (M("Alpha", (("b", F("text", db_index=True)),)),),
                 id="char-to-text-index-gets-text-pattern-ops"),
    pytest.param((M("Alpha", (("c", F("uuid", null=True)),)),), (M("Alpha", (("c", F("uuid", default="uuid4")),)),),
                 id="nullable-to-not-null-with-callable-default"),
    pytest.param((M("Alpha"), M("Beta", (("a", F("m2m", to="Alpha")),))),
                 (M("Alpha"), M("Gamma", (("a", F("m2m", to="Alpha")),))),
                 id="rename-model-with-m2m-refused-not-crashing"),
    pytest.param((M("Alpha"), M("Beta", (("a", F("m2m", to="Alpha")),))), (M("Alpha"),),
                 id="delete-model-with-m2m"),
    pytest.param((M("Alpha"), M("Beta", (("a", F("m2m", to="Alpha")),))), (M("Alpha"), M("Beta")),
                 id="remove-m2m"),
    pytest.param((M("Alpha"), M("Beta", (("a", F("m2m", to="Beta")),))),
                 (M("Alpha"), M("Beta", (("a", F("m2m", to="Alpha")),))),
                 id="retarget-m2m-keeps-old-code-working"),
    pytest.param((M("Alpha", (("a", F("bigint", null=True)),)),), (M("Alpha", (("a", F("decimal", null=True)),)),),
                 id="new-code-values-survive-int-to-decimal"),
    pytest.param((M("Alpha", (("a", F("bigint")),)),),
                 (M("Alpha", (("a", F("decimal")),), indexes=(("alpha_a_idx", ("a",)),)),),
                 id="index-added-with-a-type-change"),
    pytest.param((M("Alpha", (("a", F("fk", null=True, to="Alpha")),)),),
                 (M("Alpha", (("a", F("bigint", null=True, db_index=True)),)),),
                 id="foreign-key-to-plain-column-keeps-old-code-working"),
    pytest.param((M("Alpha", (("a", F("json")),)),),
                 (M("Alpha", (("a", F("json")), ("c", F("int", null=True, default=5, db_index=True)))),),
                 id="add-nullable-indexed-field-with-default-fills-rows"),
    pytest.param((M("Beta", (("b", F("text", null=True)),), constraints=(("unique", "beta_b_u", ("b",), False),)),),
                 (M("Alpha", (("b", F("text")),), constraints=(("unique", "beta_b_u", ("b",), False),)),),
                 id="rename-model-and-set-not-null-keeps-unique-constraint"),
    pytest.param((M("Alpha", (("a", F("text")),)),), (M("Alpha", (("a", F("text", null=True, db_default="x")),)),),
                 id="drop-not-null-and-add-db-default"),
    pytest.param((M("Alpha", (("a", F("char", null=True, max_length=200)),)),),
                 (M("Alpha", (("a", F("char", default="x", max_length=10)),)),),
                 id="set-not-null-with-default-and-max-length"),
    pytest.param((M("Alpha", (("c", F("char")),)), M("Beta", (("a", F("fk", to="Alpha")),))),
                 (M("Alpha", (("c", F("char")),), indexes=(("alpha_c_idx", ("c",)),)),),
                 id="delete-model-with-fk-next-to-an-index"),
    pytest.param((M("Alpha"),), (M("Alpha", (("e", F("json", default=dict)),)),),
                 id="python-filled-default-on-the-migrated-database"),
    pytest.param((M("Alpha", (("b", F("fk", to="Alpha")),), pk="auto"),), (M("Alpha"),),
                 id="bigint-key-and-remove-self-fk-leaves-no-shadow"),
    pytest.param((M("Alpha", (("c", F("text", db_default="x", unique=True)),)),), (M("Alpha"),),
                 id="remove-unique-field-with-db-default-lets-new-code-insert"),
    pytest.param((M("Beta", (("a", F("text", null=True)),), constraints=(("unique", "alpha_a_u", ("a",), None),)),),
                 (M("Alpha", (("a", F("text")),), constraints=(("unique", "alpha_a_u", ("a",), None),)),),
                 id="rename-model-and-set-not-null-under-a-unique-constraint"),
    pytest.param((M("Alpha", (("c", F("m2m", to="Alpha")),)),), (M("Alpha", (("b", F("m2m", to="Alpha")),)),),
                 id="rename-m2m"),
    pytest.param((M("Alpha", (("b", F("fk", to="Alpha")),), pk="auto"),),
                 (M("Alpha", (("b", F("fk", to="Alpha")),), indexes=(("alpha_b_idx", ("b",)),)),),
                 id="bigint-key-and-index-on-a-foreign-key"),
    pytest.param((M("Beta", (("a", F("decimal", null=True)),)),), (M("Beta", (("a", F("decimal", db_default="1.50")),)),),
                 id="set-not-null-with-db-default"),
    pytest.param((M("Alpha"),), (M("Alpha", (("c", F("decimal", null=True, default="1.50")),)),),
                 id="add-nullable-field-with-default-fills-old-code-rows"),
    pytest.param((M("Beta", (("a", F("positive", db_default=5)),)),), (M("Beta", (("a", F("bigint")),)),),
                 id="type-change-keeps-db-default-for-old-code"),
    pytest.param((M("Beta", (("a", F("positive", db_default=5)),)),), (M("Beta", (("a", F("positive", db_index=True)),)),),
                 id="drop-db-default-and-add-db-index"),
    pytest.param((M("Alpha", (("a", F("fk", null=True, to="Alpha")),)), M("Beta", (("a", F("int", default=5)),))),
                 (M("Alpha", (("a", F("fk", null=True, to="Beta")),)), M("Beta", (("a", F("int", default=5)),))),
                 id="retarget-foreign-key-keeps-old-code-working"),
    pytest.param((M("Alpha", ()), M("Beta", (("b", F("int")),))),
                 (M("Alpha", ()), M("Beta", (("b", F("int")),), constraints=(("unique", "beta_b_u", ("b",), False),)),
                  M("Gamma", (("a", F("o2o", to="Alpha")),))),
                 id="new-model-whose-relation-django-adds-after-its-create-model"),
    pytest.param((M("Alpha", (("c", F("char")),)), M("Beta", (("a", F("bigint", null=True, db_default=5, db_index=True)),))),
                 (M("Alpha", (("c", F("char")),)), M("Beta", (("b", F("bigint", null=True, db_default=5, db_index=True)),))),
                 id="rename-nullable-field-with-db-default-keeps-explicit-nulls"),
]


@pytest.mark.parametrize("before, after", FOUND)
def test_found_by_generated_histories(oracle, before, after):
    assert passes(oracle(before, after, ignore=[PROGRESS]))


def test_found_rename_model_and_back_then_change_a_type(oracle):
    fields = (("b", F("char", default="100%", db_index=True, max_length=10)), ("c", F("int", null=True)))
    changed = (("b", fields[0][1]), ("c", F("decimal", null=True)))
    assert passes(oracle((M("Alpha", fields),), (M("Gamma", fields),), (M("Alpha", changed),), ignore=[PROGRESS]))


def test_found_dropping_field_unique_keeps_the_meta_unique_constraint(oracle):
    """unique=False on a field that a Meta UniqueConstraint (NULLS NOT DISTINCT) also covers."""
    def alpha(unique, constraints=()):
        return (M("Alpha", (("a", F("int", null=True, unique=unique)),), constraints=constraints),)
    meta = (("unique", "alpha_a_u", ("a",), False),)
    assert passes(oracle(alpha(True), alpha(True, meta), alpha(False, meta), ignore=[PROGRESS]))


# -- the fast Hypothesis profile -------------------------------------------------------


@settings(max_examples=25, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.data_too_large])
@given(history=histories(FAST_PROFILE_EXCLUDES))
def test_generated_histories_match_plain_django(oracle, history):
    """Refused and invalid histories are not failures; differences are.

    The grammar leaves out what fails today (FAST_PROFILE_EXCLUDES) and
    leftover progress rows are looked past (they have their own test above).
    """
    outcome = oracle(*history, ignore=[PROGRESS], keep_going=False)
    assert outcome.status != "failed", outcome.report()


@settings(max_examples=8, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.data_too_large])
@given(history=histories(FAST_PROFILE_EXCLUDES))
def test_generated_histories_match_plain_django_as_two_roles_in_an_app_schema(two_role_oracle, history):
    """The fast profile's first histories again, as the owner and app roles in the schema ``app``."""
    outcome = two_role_oracle(*history, ignore=[PROGRESS], keep_going=False)
    assert outcome.status != "failed", outcome.report()


@pytest.mark.parametrize("strategy, rename", [("view", "RenameFieldViaView("), ("copy", "RenameViaCopy(")])
def test_two_roles_rename_type_change_and_bigint_key_match_plain_django(two_role_oracle, strategy, rename):
    """Triggers, their functions, backfills and the key swap, by the owner; the app role writes throughout.

    The rename both ways: through a view (the view's grants are the table's, or the app role
    could not read it) and through a copy (the app role's writes fire the owner's trigger)."""
    v1 = (M("Alpha", (("a", F("int")), ("b", F("char", db_index=True))), pk="auto"),
          M("Beta", (("alpha", F("fk", to="Alpha")),)))
    v2 = (M("Alpha", (("a", F("bigint")), ("c", F("char", db_index=True))), pk="bigauto"),
          M("Beta", (("alpha", F("fk", to="Alpha")),)))
    with override_settings(SAFEMIGRATE={"RENAME_STRATEGY": strategy}):
        outcome = two_role_oracle(v1, v2, ignore=[PROGRESS])
    assert outcome.status == "passed", outcome.report()
    written = "".join(outcome.files.values())
    expected = {rename, "ChangeTypeViaCopy(", "ChangePrimaryKeyToBigint("}
    assert expected <= {name for name in expected if name in written}


def test_two_roles_find_the_extensions_types_hstore_and_btree_gist(two_role_oracle):
    """The extensions live in a schema of their own; the roles' own ``search_path`` (``app, public``)
    overrides the database's, so the scratch databases give each role the extensions' schema too.

    Without it the owner could not create an hstore column, a GIN index on it or an ``=``
    exclusion constraint (btree_gist), and the app role's writes of an hstore value would fail."""
    v1 = (M("Alpha", (("h", F("hstore", null=True)), ("n", F("int", default=5)))),)
    v2 = (M("Alpha", (("h", F("hstore", null=True)), ("n", F("int", default=5)), ("g", F("hstore", default="dict"))),
            indexes=(Ix("alpha_h_gin", ("h",), kind="gin"),)),
          M("Slot", (("room", F("int")), ("tags", F("hstore", null=True))), constraints=(X("slot_room_excl", "room", "="),)))
    outcome = two_role_oracle(v1, v2, ignore=[PROGRESS])
    assert outcome.status == "passed", outcome.report()
    written = "".join(outcome.files.values())
    assert "HStoreField" in written and "ExclusionConstraint" in written and "GinIndex" in written, written
    for database in two_role_oracle.databases:
        with database.connection.cursor() as cursor:
            cursor.execute("SELECT current_user, current_setting('search_path')")
            assert cursor.fetchone() == ("app_owner", "app, public, oracle_ext")
        with database.traffic_connection.cursor() as cursor:
            cursor.execute("SELECT current_user, count(*) FROM oracleapp_alpha WHERE h IS NOT NULL")
            user, rows = cursor.fetchone()
            assert user == "app_user" and rows > 0


def test_found_rename_a_unique_field_that_a_meta_constraint_also_covers(oracle):
    """Found by the fast profile: renaming a unique field named in a Meta UniqueConstraint."""
    def beta(name):
        return M("Beta", ((name, F("char", null=True, unique=True, db_index=True)),),
                 constraints=(("unique", "beta_a_u", (name,), None),))
    outcome = oracle((beta("a"),), (beta("b"),), ignore=[PROGRESS])
    assert passes(outcome), outcome.report() + "\n" + "\n".join(outcome.files.values())


def test_found_rename_a_one_to_one_keeps_its_foreign_key(oracle):
    """Found by the deep profile: a renamed OneToOneField lost its FOREIGN KEY on the new column."""
    beta = M("Beta", (("c", F("decimal")),))
    def alpha(name):
        return M("Alpha", ((name, F("o2o", null=True, to="Alpha")),))
    assert passes(oracle((alpha("a"), beta), (alpha("d"), beta), ignore=[PROGRESS]))


def test_found_bigint_key_and_deleted_m2m_model_leave_no_trigger_function(oracle):
    """Found by the deep profile (seed 7): the join table went with its model, its copy trigger's function stayed."""
    before = (M("Alpha", (), pk="auto"), M("Beta", (("c", F("m2m", to="Alpha")),)))
    assert passes(oracle(before, (M("Alpha", ()),)))


def test_found_new_model_takes_the_name_a_renamed_model_had(oracle):
    """Found by the deep profile (seed 7): the renamed model's removed field kept an index name a new model wants."""
    fields = (("b", F("int", default=5)), ("e", F("char", null=True, unique=True, max_length=200)))
    assert passes(oracle((M("Alpha", fields),), (M("Beta", fields),), (M("Alpha", fields), M("Beta", ())),
                         ignore=[PROGRESS]))


def test_found_new_model_takes_the_name_while_a_meta_constraint_goes(oracle):
    """Found by the deep profile (seed 7): Django creates the new model before it removes the old fields."""
    fields = (("b", F("int", default=5)), ("e", F("char", null=True, unique=True, max_length=200)))
    meta = (("unique", "alpha_b_u", ("b",), None),)
    assert passes(oracle((M("Alpha", fields, constraints=meta),), (M("Beta", fields, constraints=meta),),
                         (M("Alpha", fields, constraints=meta), M("Beta", ())), ignore=[PROGRESS]))


# Found by the deep profile (seeds 41 and 43), shrunk; each a whole history of releases.
FOUND_HISTORIES = [
    pytest.param((M("Alpha", ()),),
                 (M("Alpha", (("e", F("json", null=True, default=dict)),)),),
                 id="add-nullable-field-with-callable-default-fills-old-code-rows"),
    pytest.param((M("Alpha", (("b", F("bigint")),)),),
                 (M("Alpha", (("b", F("positive", null=True)),)),),
                 id="type-change-and-drop-not-null-in-one-edit"),
    pytest.param((M("Beta", (("c", F("text")),)),),
                 (M("Beta", (("c", F("char", null=True)),)),),
                 id="text-to-char-and-drop-not-null-in-one-edit"),
    pytest.param((M("Alpha", (), pk="auto"),),
                 (M("Alpha", ()), M("Beta", (("a", F("fk", to="Alpha")),))),
                 id="bigint-key-and-new-model-referencing-it"),
    pytest.param((M("Beta", (("b", F("char", default="100%", db_index=True, max_length=10)),)),),
                 (M("Gamma", (("b", F("char", default="100%", db_index=True, max_length=10)),)),),
                 (M("Gamma", (("b", F("char", default="100%", max_length=10)),)),),
                 id="rename-model-then-drop-index-finds-indexes-by-column"),
    pytest.param((M("Alpha", (("a", F("positive", null=True, db_index=True)),), pk="auto"),),
                 (M("Beta", (("a", F("positive", null=True, db_index=True)),), pk="auto"),),
                 (M("Beta", (("a", F("positive", null=True)),), pk="auto"),),
                 id="rename-model-then-drop-plain-index"),
]


@pytest.mark.parametrize("history", [pytest.param(p.values, id=p.id) for p in FOUND_HISTORIES])
def test_found_by_deep_runs(oracle, history):
    assert passes(oracle(*history, ignore=[PROGRESS]))

FOUND_HISTORIES += [
    pytest.param((M("Alpha", (), pk="auto"),),
                 (M("Alpha", (("d", F("o2o", null=True, to="Alpha")),), pk="auto"),),
                 (M("Alpha", (("e", F("o2o", null=True, to="Alpha")),)),),
                 id="rename-foreign-key-while-its-target-key-becomes-bigint"),
    pytest.param((M("Alpha", (("a", F("int", null=True)),)),),
                 (M("Alpha", (("c", F("int", null=True)),), constraints=(("unique", "alpha_a_u", ("c",), None),)),),
                 id="rename-field-and-add-unique-constraint-on-it"),
    pytest.param((M("Alpha", (), pk="auto"), M("Beta", (("c", F("fk", to="Alpha")),))),
                 (M("Alpha", ()), M("Beta", (("c", F("fk", null=True, to="Alpha")),))),
                 id="bigint-key-and-nullable-foreign-key-to-it"),
    pytest.param((M("Alpha", (), pk="auto"), M("Beta", (("c", F("fk", to="Alpha")),))),
                 (M("Alpha", ()), M("Beta", (("c", F("fk", to="Alpha", db_index=False)),))),
                 id="bigint-key-and-foreign-key-index-dropped"),
    pytest.param((M("Alpha", (("a", F("char", null=True)),)),),
                 (M("Alpha", (("a", F("text", null=True, db_default="x")),)),),
                 id="in-place-type-change-and-db-default-in-one-edit"),
]


@pytest.mark.parametrize("history", [pytest.param(p.values, id=p.id) for p in FOUND_HISTORIES[-5:]])
def test_found_by_deeper_runs(oracle, history):
    assert passes(oracle(*history, ignore=[PROGRESS]))


def test_plain_django_keeps_a_stale_like_index_after_rename_and_type_change(oracle):
    """Both rename strategies end as plain Django: no kept difference (docs/pages/oracle.md).

    A rename through a view keeps the index names, as plain Django's rename does, and a
    rename through a copy gives the new column's ``_like`` index the old one's name at
    contract, so the type change that follows leaves the same stale index on both sides.
    (Before, the copy's index kept the new column's name and the type change replaced it.)
    """
    history = ((M("Alpha", (("a", F("char", null=True, db_index=True)),)),),
               (M("Alpha", (("d", F("char", null=True, db_index=True)),)),),
               (M("Alpha", (("d", F("text", null=True, db_index=True)),)),))
    outcome = oracle(*history, ignore=[PROGRESS])
    assert (outcome.status, outcome.kept) == ("passed", []), outcome.report()
    with override_settings(SAFEMIGRATE={"RENAME_STRATEGY": "copy"}):
        outcome = oracle(*history, ignore=[PROGRESS])
    assert (outcome.status, outcome.kept) == ("passed", []), outcome.report()


def test_plain_django_keeps_a_stale_like_index_after_a_model_rename_and_type_change(oracle):
    """Found by the deep profile (widened grammar): the same kept difference after a model rename."""
    field = F("text", null=True, db_index=True)
    outcome = oracle((M("Alpha", (("c", field),)),), (M("Beta", (("c", field),)),),
                     (M("Beta", (("c", F("url", null=True, db_index=True, max_length=200)),)),), ignore=[PROGRESS])
    assert outcome.status == "passed"
    assert outcome.kept == ["v3: kept difference: oracleapp_beta: index only in plain Django: "
                            "btree (c text_pattern_ops)"]


# -- background mode (issue 22) ------------------------------------------------------


def test_background_mode_histories_end_as_plain_djangos(oracle):
    """Every copy a background migration: the runner copies between expand and contract, except in the
    second release, whose contract finalizes its copies inline. Rename, type changes (a widening, whose
    swap then moves to contract), a bigint key, fills of new NOT NULL fields, constant and callable."""
    v1 = (M("Alpha", (("a", F("char", max_length=20)), ("n", F("int")), ("m", F("int", null=True))), pk="auto"),)
    v2 = (M("Alpha", (("b", F("char", max_length=20)), ("n", F("bigint")), ("m", F("int", null=True)),
                      ("c", F("int", default=7)))),)
    v3 = (M("Alpha", (("b", F("char", max_length=20)), ("n", F("bigint")), ("m", F("int", default=3)),
                      ("c", F("int", default=7)), ("u", F("uuid", default="uuid4")))),)
    outcome = oracle(v1, v2, v3, background=True, keep_going=False)
    assert outcome.status == "passed", outcome.report() + "\n" + "\n".join(outcome.files.values())
    text = "\n".join(outcome.files.values())
    assert text.count("background=True") >= 4, text


@settings(max_examples=8, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.data_too_large])
@given(history=histories(FAST_PROFILE_EXCLUDES))
def test_generated_histories_in_background_mode_match_plain_django(oracle, history):
    outcome = oracle(*history, ignore=[PROGRESS], keep_going=False, background=True)
    assert outcome.status != "failed", outcome.report()


def test_rows_never_write_a_second_null_into_a_relation_under_nulls_not_distinct(oracle):
    """A nullable foreign key (or one-to-one) that gains UNIQUE NULLS NOT DISTINCT: the rows wrote NULL for it
    on every other row, so plain Django's migration itself failed and the history counted as invalid."""
    before = M("Alpha", (("b", F("fk", to="Alpha", null=True)),))
    after = M("Alpha", (("b", F("fk", to="Alpha", null=True)),),
              constraints=(U("alpha_b_u", ("b",), nulls_distinct=False),))
    outcome = oracle((before,), (after,), ignore=[PROGRESS])
    assert outcome.status == "passed", outcome.report()


def test_the_old_codes_update_leaves_a_nullable_file_fields_null_alone(oracle):
    """5.2 seed 3301 class: a nullable FileField became a CharField; the old code's update of a row the new
    code created saved the whole row, and its FieldFile turned the NULL into '' (as it would in any rolling
    deploy), a write plain Django's side, updating through the new models, never makes."""
    before = M("Alpha", (("a", F("file", null=True)), ("b", F("uuid")), ("c", F("o2o", null=True, to="Alpha"))))
    after = M("Alpha", (("a", F("char", null=True)), ("b", F("uuid"))))
    outcome = oracle((before,), (after,), ignore=[PROGRESS])
    assert outcome.status == "passed", outcome.report()
