"""Working participants, the pure parts: which working_query may be stored, how psql's answer
is read (a query's own output can't pass for a count), and the status column."""

from __future__ import annotations

import pandas as pd
import pytest

from labdeploy.app.options import DeployOptions
from labdeploy.errors import ValidationError
from labdeploy.watch import participants


@pytest.mark.parametrize("sql", ["delete from participants", "select 1; drop table participants",
                                 "select 1;", "select '\\x'", "", "   ", None, 7, "update participants set x = 1",
                                 "select " + "1 + " * 1000 + "1"])
def test_a_working_query_that_is_not_one_plain_select_is_refused_before_connecting(sql):
    with pytest.raises(ValidationError) as refused:
        participants.check_query(sql)
    assert refused.value.code == "invalid.working_query"


def test_deploy_options_refuse_a_bad_working_query_and_take_a_select_or_an_empty_one():
    with pytest.raises(ValidationError):
        DeployOptions.of(working_query="select 1; delete from participants").check()
    DeployOptions.of(working_query="  WITH w AS (select 1) select count(*) from w  ").check()
    DeployOptions.of(working_query="").check()  # "" clears the app's query


def test_the_stored_query_is_kept_across_deploys_unless_given_or_cleared():
    state = {participants.STATE_KEY: "select 2"}
    assert participants.remembered_query(None, state) == "select 2"
    assert participants.remembered_query("select 3", state) == "select 3"
    assert participants.remembered_query("", state) == ""
    assert participants.remembered_query(None, None) == ""


def test_the_query_travels_as_one_string_literal_whatever_quotes_it_holds():
    text = participants.psql_script({"a": "select 'it''s' -- \n , 1 /* x"}, "tok")
    assert "query_to_xml('select ''it''''s'' -- \n , 1 /* x', true, false, '')" in text
    assert "BEGIN TRANSACTION READ ONLY;" in text and "ROLLBACK;" in text


PLAN = {"a": "", "b": "select 1", "c": "", "d": ""}


def test_psql_answer_gives_a_count_none_with_reason_or_not_read():
    out = "\n".join(["@@tok app a", "count=3", "@@tok app b", "@@tok error relation \"x\" does not exist",
                     "@@tok app c", "@@tok none"])
    found = participants.parse(out, "psql: FATAL: database went away\n", PLAN, "tok")
    assert found["a"] == participants.Reading("a", 3, participants.SOURCE_TABLE)
    assert found["b"].working is None and "does not exist" in found["b"].reason
    assert found["c"].working is None and found["c"].source == "" and "no participant table" in found["c"].reason
    assert found["d"].working is None and "database went away" in found["d"].reason


def test_a_query_error_text_can_not_pass_for_a_count_or_another_apps_section():
    out = "\n".join(["@@tok app a", "@@tok error invalid input: \"x", "count=0", "@@other app b", "count=0\"",
                     "@@tok app b", "count=5"])
    found = participants.parse(out, "", {"a": "select 'x'", "b": ""}, "tok")
    assert found["a"].working is None and "invalid input" in found["a"].reason
    assert found["b"].working == 5


def test_a_stored_query_that_became_invalid_is_not_sent_and_says_why():
    plan, known = participants.plan_of({"a": {"working_query": "delete from x"}, "b": {}}, ["a", "b"])
    assert plan == {"b": ""} and known["a"].working is None and "can't be used" in known["a"].reason


def test_status_rows_get_their_apps_working_count_as_int64_with_na_when_unknown():
    df = pd.DataFrame({"app": ["a", "a", "b"], "service": ["web", "worker", "web"]})
    out = participants.attach(df, {"a": participants.Reading("a", 2, participants.SOURCE_TABLE),
                                   "b": participants.Reading("b", None, "", "no participant table")})
    assert str(out["working"].dtype) == "Int64"
    assert list(out["working"][:2]) == [2, 2] and pd.isna(out["working"][2])
    assert out.attrs["working_unknown"] == {"b": "no participant table"}


def test_a_refusal_names_the_count_and_has_words_in_every_front_end():
    from labdeploy.cli import remedies as cli_remedies

    participants.refuse_if_working(participants.Reading("a", 0, participants.SOURCE_TABLE), "destroyed")
    participants.refuse_if_working(participants.Reading("a", None, ""), "destroyed")  # unknown: no refusal
    with pytest.raises(participants.ParticipantsWorking) as refused:
        participants.refuse_if_working(participants.Reading("a", 2, participants.SOURCE_TABLE), "destroyed")
    assert "2 participants are working in a" in refused.value.message
    assert "force=True" in refused.value.hint and "--force" in cli_remedies.hint(refused.value)
    assert cli_remedies.exit_code(refused.value.code) == 3
