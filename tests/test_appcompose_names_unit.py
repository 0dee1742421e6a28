"""appcompose's name checks use fullmatch: `re.match(r"...$")` lets a final newline through (issue 14)."""

from __future__ import annotations

import pytest

from labdeploy import names
from labdeploy.app import appcompose
from labdeploy.errors import ValidationError


@pytest.mark.parametrize("ref", ["redis:7\n", "reg.example.org/lab/stroop:abc\n", "redis:7\r", "redis:7 ",
                                 "redis@sha256:" + "a" * 64 + "\n"])
def test_image_ref_refuses_a_trailing_newline_or_space(ref):
    with pytest.raises(ValidationError):
        names.image(ref)


@pytest.mark.parametrize("ref", ["redis:7", "reg.example.org:5000/lab/stroop:abc123",
                                 "redis@sha256:" + "a" * 64])
def test_image_ref_accepts_references(ref):
    assert names.image(ref) == ref


@pytest.mark.parametrize("key", ["SECRET\n", "A_B\n", "X\r", "X "])
def test_env_key_refuses_a_trailing_newline(key):
    with pytest.raises(ValidationError):
        appcompose.env_key(key)


@pytest.mark.parametrize("key", ["DATABASE_URL", "_x", "a1"])
def test_env_key_accepts_names(key):
    assert appcompose.env_key(key) == key
