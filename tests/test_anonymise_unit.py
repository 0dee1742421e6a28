"""Anonymisation rules on DataFrames (pure)."""

from __future__ import annotations

import pandas as pd
import pytest

from labdeploy.data import anonymise
from labdeploy.errors import ValidationError


def _frames():
    participants = pd.DataFrame({
        "id": pd.Series([1, 2, 3], dtype="int32"),
        "worker_id": pd.Series(["W-alice", "W-bob", "W-alice"], dtype="str"),
        "user_agent": pd.Series(["Firefox", None, "Chrome"], dtype="str"),
        "score": [0.5, None, 1.0],
        "details": pd.Series([{"a": 1}, None, {}], dtype=object),
    })
    responses = pd.DataFrame({"id": [1], "participant_id": [1], "worker_id": ["W-alice"]})
    return {"participants": participants, "responses": responses}


def test_default_rules_replace_and_blank_identifying_columns_only():
    frames = _frames()
    out, changed = anonymise.anonymise(frames)
    p = out["participants"]
    assert changed == {"participants": ["worker_id", "user_agent"]}
    assert not set(p["worker_id"]) & {"W-alice", "W-bob"}
    assert p["worker_id"][0] == p["worker_id"][2] != p["worker_id"][1]  # one worker, one pseudonym
    assert p["user_agent"].isna().all()
    pd.testing.assert_series_equal(p["score"], frames["participants"]["score"])
    assert out["responses"] is frames["responses"]  # not a participant table: untouched
    assert frames["participants"]["worker_id"][0] == "W-alice"  # the input is not modified


def test_pseudonyms_differ_between_exports_unless_the_key_is_given():
    a, _ = anonymise.anonymise(_frames())
    b, _ = anonymise.anonymise(_frames())
    assert a["participants"]["worker_id"][0] != b["participants"]["worker_id"][0]
    c, _ = anonymise.anonymise(_frames(), key=b"k" * 32)
    d, _ = anonymise.anonymise(_frames(), key=b"k" * 32)
    assert c["participants"]["worker_id"][0] == d["participants"]["worker_id"][0]


def test_configurable_columns_tables_and_strategies():
    rules = anonymise.rules(columns={"worker_id": "row_id", "details": "blank"}, tables=("*",))
    out, changed = anonymise.anonymise(_frames(), rules)
    assert out["participants"]["worker_id"].tolist() == ["1", "2", "3"]  # as Dallinger's --scrub-pii
    assert out["participants"]["details"].isna().all()
    assert out["responses"]["worker_id"].tolist() == ["1"]
    assert changed == {"participants": ["worker_id", "details"], "responses": ["worker_id"]}
    extra = anonymise.rules(extra={"score": "blank"})
    out, _ = anonymise.anonymise(_frames(), extra)
    assert out["participants"]["score"].isna().all() and out["participants"]["worker_id"][0].startswith("anon-")


def test_unknown_strategy_is_refused():
    with pytest.raises(ValidationError) as err:
        anonymise.rules(columns={"worker_id": "shred"})
    assert "pseudonym" in err.value.hint
