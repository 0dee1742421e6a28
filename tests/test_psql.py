"""SQL through `docker exec` into the shared PostgreSQL on the testbed."""

import pandas as pd
import pytest

from labdeploy.server import psql, stack
from labdeploy.errors import ValidationError

# One server: SQL through docker exec is the same on both engines: proved on the current one.
pytestmark = pytest.mark.servers("trixie")


@pytest.fixture(scope="module")
def r(session_remote, testbed):
    stack.prepare(session_remote, stack.StackSettings.for_images(testbed["images"], domain="localhost"))
    return session_remote


def test_run_sql_returns_psql_output_and_sql_goes_on_stdin(r):
    marker = "t_setup_marker_7f3a"
    out = r.stats["commands"]
    text = psql.run_sql(r, f"select '{marker}' as m;")
    assert marker in text
    assert r.stats["commands"] == out + 1
    assert marker not in " ".join(psql.psql_argv())


def test_query_df_keeps_types_nulls_and_order(r):
    df = psql.query_df(r, """
        select * from (values (1, 'a', 1.5::float8, true, null::text, timestamptz '2024-01-02 03:04:05+00'),
                              (2, '',  null,        false, 'x',        null)) v(n, s, f, b, maybe, t)
        order by n desc;""")
    assert list(df.columns) == ["n", "s", "f", "b", "maybe", "t"]
    assert df["n"].tolist() == [2, 1]
    assert str(df["n"].dtype) == "Int64"
    assert df["s"].tolist() == ["", "a"]  # empty string stays apart from NULL
    assert pd.isna(df["maybe"].iloc[1]) and df["maybe"].iloc[0] == "x"
    assert df["b"].tolist() == [False, True]
    assert df["t"].iloc[1] == pd.Timestamp("2024-01-02 03:04:05", tz="UTC")
    assert pd.isna(df["f"].iloc[0])


def test_query_df_empty_result_keeps_columns(r):
    df = psql.query_df(r, "select datname, pid from pg_stat_activity where false")
    assert list(df.columns) == ["datname", "pid"] and len(df) == 0


def test_pg_stat_activity_snapshot(r):
    df = psql.query_df(r, "select pid, usename, datname, state, backend_start from pg_stat_activity")
    assert len(df) >= 1
    assert str(df["backend_start"].dtype).startswith("datetime64")


def test_sql_error_is_a_labdeploy_error_with_hint(r):
    with pytest.raises(psql.SQLError) as info:
        psql.run_sql(r, "select * from t_setup_no_such_table;")
    assert "t_setup_no_such_table" in info.value.message and info.value.hint


def test_on_error_stop_stops_at_the_first_error(r):
    with pytest.raises(psql.SQLError):
        psql.run_sql(r, "select 1/0; select 't_setup_after';")


def test_missing_database(r):
    with pytest.raises(psql.SQLError) as info:
        psql.run_sql(r, "select 1;", database="app_t_setup_absent")
    assert "does not exist" in info.value.message


@pytest.mark.parametrize("bad", ["dallinger; rm -rf ~", "Dallinger", "", "a-b"])
def test_bad_database_name_is_refused_before_anything_runs(r, bad):
    before = r.stats["commands"]
    with pytest.raises(ValidationError):
        psql.run_sql(r, "select 1;", database=bad)
    assert r.stats["commands"] == before


def test_duplicate_column_names_are_refused_with_a_hint(r):
    with pytest.raises(ValidationError) as info:
        psql.query_df(r, "select 1 as id, 2 as id")
    assert "AS" in info.value.hint
