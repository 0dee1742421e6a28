"""~/.dallingerconfig: docker_image_base_name read and set without disturbing other lines."""

from __future__ import annotations

import os

import pytest

from labdeploy.experiment import dallingerconfig
from labdeploy.errors import ValidationError

EXISTING = """[Parameters]
# keep my comment
recruiter = hotair
aws_secret_access_key = not-really-secret

[Docker]
docker_image_base_name   =   old.example.org/lab/images
docker_volumes = /data:/data
"""


def test_missing_file_is_created_private(home):
    assert dallingerconfig.get_base_name() is None
    path = dallingerconfig.set_base_name("registry.example.org/lab/images")
    assert path == home / ".dallingerconfig"
    assert path.read_text() == "[Docker]\ndocker_image_base_name = registry.example.org/lab/images\n"
    assert (path.stat().st_mode & 0o777) == 0o600
    assert dallingerconfig.get_base_name() == "registry.example.org/lab/images"
    import configparser
    parser = configparser.ConfigParser()
    parser.read(path)
    assert parser["Docker"]["docker_image_base_name"] == "registry.example.org/lab/images"


def test_existing_value_replaced_other_lines_untouched(home):
    path = home / ".dallingerconfig"
    path.write_text(EXISTING)
    path.chmod(0o640)
    assert dallingerconfig.get_base_name() == "old.example.org/lab/images"
    dallingerconfig.set_base_name("new.example.org/lab/images")
    after = path.read_text()
    assert after == EXISTING.replace("old.example.org/lab/images", "new.example.org/lab/images")
    assert (path.stat().st_mode & 0o777) == 0o640
    assert [p.name for p in home.iterdir()] == [".dallingerconfig"]  # no temp file left behind


def test_key_added_to_existing_file_without_docker_section(home):
    path = home / ".dallingerconfig"
    path.write_text("[Parameters]\nrecruiter = hotair")  # no final newline
    dallingerconfig.set_base_name("lab/images")
    assert path.read_text() == "[Parameters]\nrecruiter = hotair\n\n[Docker]\ndocker_image_base_name = lab/images\n"


def test_key_added_into_existing_docker_section(home):
    path = home / ".dallingerconfig"
    path.write_text("[Docker]\ndocker_volumes = /a:/b\n[Other]\nx = 1\n")
    dallingerconfig.set_base_name("lab/images")
    assert path.read_text() == "[Docker]\ndocker_image_base_name = lab/images\ndocker_volumes = /a:/b\n[Other]\nx = 1\n"


def test_invalid_name_leaves_file_alone(home):
    path = home / ".dallingerconfig"
    path.write_text(EXISTING)
    with pytest.raises(ValidationError):
        dallingerconfig.set_base_name("Not Valid!")
    assert path.read_text() == EXISTING


def test_failed_write_leaves_old_file(home, monkeypatch):
    path = home / ".dallingerconfig"
    path.write_text(EXISTING)

    def broken_replace(src, dst):
        raise OSError("disk full")
    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError):
        dallingerconfig.set_base_name("new/images")
    assert path.read_text() == EXISTING
    assert [p.name for p in home.iterdir()] == [".dallingerconfig"]


def test_commented_key_is_ignored(home):
    path = home / ".dallingerconfig"
    path.write_text("[Docker]\n# docker_image_base_name = commented/out\n")
    assert dallingerconfig.get_base_name() is None
    dallingerconfig.set_base_name("lab/images")
    assert "# docker_image_base_name = commented/out\n" in path.read_text()
    assert dallingerconfig.get_base_name() == "lab/images"
