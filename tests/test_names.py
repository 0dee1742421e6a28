"""Validation of every name that reaches a shell, a path or SQL (labdeploy.names)."""

from __future__ import annotations

import pytest

from labdeploy import names
from labdeploy.errors import LabdeployError, ValidationError

HOSTILE = [
    "a;b", "$(x)", "`x`", "../x", "a/b", "a b", " a", "a ", "a\tb", "a|b", "a&b", "a>b", "a'b", 'a"b',
    "a\\b", "-oProxyCommand=x", "", "a\x00b", "*", "~", "a\nb",
]


@pytest.mark.parametrize("value", ["a", "stroop", "stroop-pilot-2", "x1", "a" * names.APP_MAX])
def test_app_name_accepts_plain_names(value):
    assert names.app_name(value) == value


@pytest.mark.parametrize("value", HOSTILE + ["Stroop", "STROOP", "1abc", "-abc", "abc-", "a--b", "a_b", "a.b",
                                             "a" * (names.APP_MAX + 1), None, 5])
def test_app_name_refuses_hostile_and_odd_names(value):
    with pytest.raises(ValidationError) as info:
        names.app_name(value)
    assert info.value.hint  # every refusal says what to do


def test_app_name_too_long_says_so():
    with pytest.raises(ValidationError, match="at most 40"):
        names.app_name("a" * 41)


def test_validation_error_is_a_value_error_and_labdeploy_error():
    with pytest.raises(ValueError):
        names.app_name("a;b")
    with pytest.raises(LabdeployError):
        names.app_name("a;b")


@pytest.mark.parametrize("value", ["lab.example.org", "localhost", "10.250.0.2", "::1", "fe80::1", "a-b.c",
                                   "LAB.Example.ORG", "host.", "x" * 63])
def test_host_accepts_names_and_addresses(value):
    assert names.host(value) == value


@pytest.mark.parametrize("value", HOSTILE + ["a..b", ".a", "-a.org", "a-.org", "x" * 64, "a_b.org",
                                             "a.org:22", "[::1]", "user@host", "é.org", None])
def test_host_refuses_hostile_values(value):
    with pytest.raises(ValidationError):
        names.host(value)


def test_host_too_long_refused():
    long_name = ".".join(["a" * 60] * 5)  # 304 characters, every label fine
    with pytest.raises(ValidationError):
        names.host(long_name)


@pytest.mark.parametrize("value", ["labdeploy", "_svc", "a.b-c_d", "u1", "a" * 32])
def test_user_accepts_login_names(value):
    assert names.user(value) == value


@pytest.mark.parametrize("value", HOSTILE + ["Root", "1abc", "a" * 33, ".a", None])
def test_user_refuses_hostile_values(value):
    with pytest.raises(ValidationError):
        names.user(value)


@pytest.mark.parametrize("value,expected", [(22, 22), ("2222", 2222), (1, 1), (65535, 65535)])
def test_port_accepts_numbers(value, expected):
    assert names.port(value) == expected


@pytest.mark.parametrize("value", [0, -1, 65536, "22;x", "ssh", None, "", "2 2"])
def test_port_refuses_bad_values(value):
    with pytest.raises(ValidationError):
        names.port(value)


@pytest.mark.parametrize("value", ["web", "worker", "clock", "redis", "db_2", "a.b"])
def test_service_accepts_service_names(value):
    assert names.service(value) == value


@pytest.mark.parametrize("value", HOSTILE + ["Web", "..", ".web", "a" * 64])
def test_service_refuses_hostile_values(value):
    with pytest.raises(ValidationError):
        names.service(value)


@pytest.mark.parametrize("value", ["lab-server", "Lab_1", "x.y"])
def test_server_name_accepts_nicknames(value):
    assert names.server_name(value) == value


@pytest.mark.parametrize("value", HOSTILE + ["..", ".hidden", "a" * 64])
def test_server_name_refuses_hostile_values(value):
    with pytest.raises(ValidationError):
        names.server_name(value)


def test_db_identifier():
    assert names.db_identifier("stroop-pilot-2") == "app_stroop_pilot_2"
    assert len(names.db_identifier("a" * names.APP_MAX)) <= 63
    with pytest.raises(ValidationError):
        names.db_identifier("x; DROP TABLE y")


# `re.match(r"^...$")` would let a single trailing newline through ($ matches before a final "\n").
@pytest.mark.parametrize("check,value", [(names.app_name, "abc\n"), (names.host, "example.org\n"),
                                         (names.user, "bob\n"), (names.service, "web\n"),
                                         (names.server_name, "lab\n")])
def test_trailing_newline_refused(check, value):
    with pytest.raises(ValidationError):
        check(value)


@pytest.mark.parametrize("value", ["dallinger", "secrets", "caddy", "postgresql", "backups", "dallinger-postgresql",
                                   "dallinger-caddy", "dallinger-data", "dallinger-anything"])
def test_app_name_refuses_names_the_shared_stack_and_layout_use(value):
    with pytest.raises(ValidationError, match="reserved") as info:
        names.app_name(value)
    assert "Choose another name" in info.value.hint


def test_every_stack_name_in_the_layout_is_reserved_for_apps():
    from labdeploy import layout

    for used in (layout.ROOT, layout.DATA_ROOT, layout.STACK_PROJECT, layout.NETWORK, layout.POSTGRES_CONTAINER,
                 layout.CADDY_CONTAINER, layout.secrets_dir().split("/")[-1]):
        with pytest.raises(ValidationError):
            names.app_name(used)
