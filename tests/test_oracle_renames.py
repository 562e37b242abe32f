"""The differential oracle on renames through a view (issue 23): plain Django's end state, and the view ran.

Renames alone, renames combined with other edits of the same model in one
release, and releases in flight (release N+1's expand while release N's
window is still open). Each history also checks that the strategy the
files name is the view, so a silent fall back to the copy cannot pass.
"""

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.oracle.history import ScratchDatabase, run_history
from tests.oracle.specs import F, M
from tests.oracle.strategies import histories

PROGRESS = "backfill progress row"


@pytest.fixture
def oracle(transactional_db, tmp_path):
    with ScratchDatabase("plain") as plain, ScratchDatabase("safe") as safe:
        def run(*history, **options):
            outcome = run_history(list(history), tmp_path, plain, safe, **options)
            print(outcome.report())
            return outcome

        yield run


def through_view(outcome):
    text = "\n".join(outcome.files.values())
    return "RenameFieldViaView(" in text and "RenameViaCopy(" not in text


A = M("Alpha", (("a", F("char", db_index=True)), ("b", F("int", null=True)), ("c", F("text", null=True))))


def test_a_rename_alone(oracle):
    outcome = oracle((A,), (M("Alpha", (("b", F("int", null=True)), ("c", F("text", null=True)),
                                        ("d", F("char", db_index=True)))),))
    assert outcome.status == "passed" and through_view(outcome)


def test_a_rename_with_other_edits_of_the_same_model_in_one_release(oracle):
    v2 = M("Alpha", (("c", F("text", null=True)), ("d", F("char", db_index=True, unique=False)),
                     ("e", F("bigint", null=True)), ("x", F("int", default=4))),
           indexes=(("alpha_d_e", ("d", "e")),), constraints=(("check", "alpha_x_min", "x", 0),))
    outcome = oracle((A,), (v2,), ignore=[PROGRESS])  # b -> e: int -> bigint alongside; a -> d
    assert outcome.status == "passed", outcome.report()
    assert "RenameFieldViaView(" in "\n".join(outcome.files.values())


def test_two_renames_and_a_rename_back(oracle):
    v2 = M("Alpha", (("c", F("text", null=True)), ("d", F("char", db_index=True)), ("e", F("int", null=True))))
    v3 = M("Alpha", (("a", F("char", db_index=True)), ("c", F("text", null=True)), ("e", F("int", null=True))))
    outcome = oracle((A,), (v2,), (v3,))
    assert outcome.status == "passed" and through_view(outcome)


@pytest.mark.parametrize("history", [
    pytest.param(((A,),
                  (M("Alpha", (("b", F("int", null=True)), ("c", F("text", null=True)), ("d", F("char", db_index=True)))),),
                  (M("Alpha", (("c", F("text", null=True)), ("d", F("char", db_index=True)),
                               ("e", F("int", null=True)), ("f", F("bool", default=True)))),)),
                 id="second-rename-and-added-field-while-the-first-window-is-open"),
    pytest.param(((A,),
                  (M("Alpha", (("b", F("int", null=True)), ("c", F("text", null=True)), ("d", F("char", db_index=True)))),),
                  (M("Alpha", (("b", F("int", null=True)), ("c", F("text", null=True)), ("e", F("char", db_index=True)))),)),
                 id="rename-chain-across-releases"),
    pytest.param(((A,),
                  (M("Alpha", (("b", F("int", null=True)), ("c", F("text", null=True)), ("d", F("char", db_index=True)))),),
                  (M("Alpha", (("b", F("bigint", null=True)), ("d", F("char", db_index=True, null=True))),
                     indexes=(("alpha_b", ("b",)),)),)),
                 id="type-change-index-and-removal-during-the-window"),
])
def test_releases_in_flight(oracle, history):
    outcome = oracle(*history, in_flight=True, ignore=[PROGRESS])
    assert outcome.status == "passed", outcome.report()
    assert "RenameFieldViaView(" in "\n".join(outcome.files.values())


@settings(max_examples=12, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large])
@given(history=histories(frozenset()), in_flight=st.booleans())
def test_generated_histories_in_flight_or_not_match_plain_django(oracle, history, in_flight):
    outcome = oracle(*history, in_flight=in_flight, ignore=[PROGRESS])
    assert outcome.status in ("passed", "refused", "invalid"), outcome.report()
