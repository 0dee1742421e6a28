"""Log rotation as data: sizes and counts checked, every app service and every stack service
bounded, the server's choice reaching the app's compose file."""

from __future__ import annotations

import pytest

from labdeploy.app import appcompose
from labdeploy.errors import ValidationError
from labdeploy.server import logrotation, stack


def test_options_and_their_checks():
    assert logrotation.options() == {"driver": "json-file", "options": {"max-size": "10m", "max-file": "3"}}
    assert logrotation.options("200k", "5")["options"] == {"max-size": "200k", "max-file": "5"}
    assert logrotation.size_bytes("1g") == 1024 ** 3
    for bad in ("10", "1k", "10mb", "0m", "-1m", "10 m", "20g", None, 10):
        with pytest.raises(ValidationError):
            logrotation.size_bytes(bad)
    for bad in (0, 101, "x", None, True, "1.5"):
        with pytest.raises(ValidationError):
            logrotation.file_count(bad)


def test_every_service_of_the_stack_and_of_an_app_is_bounded():
    settings = stack.StackSettings(log_max_size="50m", log_max_files=4)
    doc = stack.stack_compose_document(settings, "1000:1000")
    want = {"driver": "json-file", "options": {"max-size": "50m", "max-file": "4"}}
    assert doc["services"] and all(s["logging"] == want for s in doc["services"].values())
    app = appcompose.app_compose_document("stroop", "x/stroop:1", version="1", pooler_image="x/pgb:1",
                                          logging=logrotation.of(settings))
    assert set(app["services"]) == {"web", "worker", "clock", "pgbouncer", "redis"}
    assert all(s["logging"] == want for s in app["services"].values())
    default = appcompose.app_compose_document("stroop", "x/stroop:1", version="1")
    assert all(s["logging"] == logrotation.options() for s in default["services"].values())


def test_bad_log_settings_are_refused_before_anything_is_written():
    with pytest.raises(ValidationError):
        stack.StackSettings(log_max_size="huge").validate()
    with pytest.raises(ValidationError):
        stack.StackSettings(log_max_files=0).validate()
    # Settings recorded before these fields existed read back with the defaults.
    assert logrotation.of(stack.StackSettings.from_dict({"domain": "x.test"}))["options"]["max-file"] == "3"
