"""The one redaction function (labdeploy.redaction) and where it applies."""

from __future__ import annotations

import pandas as pd
import pytest

from labdeploy import errors, progress
from labdeploy.redaction import redact, redact_frame, redacting


@pytest.mark.parametrize("text, secret", [
    ("postgresql://app_x:S3cretPw@postgresql:5432/app_x", "S3cretPw"),
    ("FLASK_SECRET_KEY=abcdef123 and more", "abcdef123"),
    ("HX_API_TOKEN: tok123456", "tok123456"),
    ("export SMTP_PASSWORD='pa ss'", "pa"),
    ("aws_secret_access_key = AKIAxyz", "AKIAxyz"),
    ("https://example.org/cb?token=zz9988&mode=live", "zz9988"),
    ("ALTER ROLE app_x PASSWORD 'SCRAM-SHA-256$4096:abc';", "SCRAM-SHA-256$4096:abc"),
])
def test_secrets_are_masked_by_shape(text, secret):
    out = redact(text)
    assert secret not in out and "***" in out


@pytest.mark.parametrize("text", [
    "https://example.org/ad?generate_tokens=1&mode=live",  # a flag named after tokens is no secret
    "Wrong password for alice",
    "token_count=5",
    "the dashboard is at /dashboard",
])
def test_ordinary_text_is_left_alone(text):
    assert redact(text) == text


def test_known_values_are_masked_wherever_they_appear():
    assert redact("crashed with hunter2-long in the args", known=["hunter2-long"]) == "crashed with *** in the args"
    assert redact("a 1 b", known=["1"]) == "a 1 b"  # too short to be told from ordinary text


def test_events_and_errors_mask_secrets_when_made():
    line = progress.LogLine("DATABASE_URL=postgresql://app_x:pw123456@postgresql/app_x")
    assert "pw123456" not in line.line
    assert "pw123456" not in progress.WarningEvent("boom postgresql://u:pw123456@h/db").message
    assert "pw123456" not in progress.StepFinished("start", False, "postgresql://u:pw123456@h/db").detail
    exc = errors.CommandFailed("failed: postgresql://u:pw123456@h/db", stderr="SECRET_KEY=pw123456")
    assert "pw123456" not in str(exc) and "pw123456" not in exc.stderr


def test_a_redacting_reporter_masks_known_values_in_every_event():
    got = progress.Collector()
    report = redacting(got, ["value-seen-nowhere-else"])
    report(progress.LogLine("echo value-seen-nowhere-else"))
    report(progress.StepStarted("x", "with value-seen-nowhere-else"))
    assert got.events[0].line == "echo ***" and got.events[1].detail == "with ***"


def test_frames_are_masked_column_by_column():
    df = pd.DataFrame({"query": ["select 1", "ALTER ROLE a PASSWORD 'xyz'"], "pid": [1, 2]})
    out = redact_frame(df, ["query"])
    assert out["query"][1] == "ALTER ROLE a PASSWORD '***'" and df["query"][1].endswith("'xyz'")
