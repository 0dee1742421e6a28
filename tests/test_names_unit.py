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
    from labdeploy.server import layout

    for used in (layout.ROOT, layout.DATA_ROOT, layout.STACK_PROJECT, layout.NETWORK, layout.POSTGRES_CONTAINER,
                 layout.CADDY_CONTAINER, layout.secrets_dir().split("/")[-1]):
        with pytest.raises(ValidationError):
            names.app_name(used)


# --------------------------------------------------------------------------- hosts, domains, e-mails (issue 14)

INJECTED_SITE = '::1%x {\n\trespond "injected" 200\n}\nzzz.localhost'
LONGEST_DOMAIN = names.HOST_MAX - names.APP_MAX - 1


def long_name(length: int) -> str:
    """A DNS name of exactly `length` characters: labels of 50 (the last one up to 51)."""
    return "".join("." if i % 51 == 50 and i != length - 1 else "a" for i in range(length))


@pytest.mark.parametrize("value", ["fe80::1%2", "fe80::1%42", "2001:db8::7", "::ffff:10.0.0.1"])
def test_host_accepts_ipv6_with_a_numeric_scope_or_none(value):
    assert names.host(value) == value


# ipaddress.ip_address accepts any text after '%' as an IPv6 scope id.
@pytest.mark.parametrize("value", ["fe80::1%$(id);", INJECTED_SITE, "fe80::1%eth0", "fe80::1% 2", "fe80::1%",
                                   "::1%1%2", "::1%x}", "fe80::1%'a'", "::1%\n", "fe80::1%²"])
def test_host_refuses_ipv6_scope_text(value):
    with pytest.raises(ValidationError) as info:
        names.host(value)
    assert info.value.hint


@pytest.mark.parametrize("value", ["1234", "10.0.0.300", "1.2.3", "a.123"])
def test_host_refuses_names_that_read_as_broken_ip_addresses(value):
    with pytest.raises(ValidationError, match="IP address"):
        names.host(value)


@pytest.mark.parametrize("value", ["localhost", "exp.example.org", "lab.test", "Exp.Example.ORG", "x" * 63 + ".org",
                                   long_name(LONGEST_DOMAIN)])
def test_domain_accepts_dns_names(value):
    assert names.domain(value) == value


@pytest.mark.parametrize("value", HOSTILE + [INJECTED_SITE, "fe80::1%$(id);", "a b", "a{b}.org", 'a"b.org', "a%b.org",
                                             "exp.example.org.", "x" * 64 + ".org", "a..b", "1234", "é.org",
                                             long_name(LONGEST_DOMAIN + 1), "a.org\n", None])
def test_domain_refuses_what_cant_make_app_host_names(value):
    with pytest.raises(ValidationError) as info:
        names.domain(value)
    assert info.value.hint


@pytest.mark.parametrize("value", ["10.0.0.2", "::1", "fe80::1%2"])
def test_domain_refuses_ip_addresses_with_a_way_out(value):
    # `<app>.10.0.0.2` is no host name; the hint says what to use instead.
    with pytest.raises(ValidationError, match="IP address") as info:
        names.domain(value)
    assert "localhost" in info.value.hint


def test_every_app_name_fits_under_the_longest_domain():
    longest = names.domain(long_name(LONGEST_DOMAIN))
    assert names.host(f"{'b' * names.APP_MAX}.{longest}")


@pytest.mark.parametrize("value", ["lab@example.org", "first.last+tag@psy.ac.uk", "_x@y.org", "A-1@Lab.Example.ORG"])
def test_email_accepts_plain_addresses(value):
    assert names.email(value) == value


@pytest.mark.parametrize("value", HOSTILE + ["lab@example.org\n", "lab@example.org ", "lab@example.org\r", "nobody",
                                             "a@b", "a@b.c1", "a b@x.org", "a%b@x.org", ".a@x.org", "a..b@x.org",
                                             "a.@x.org", "a@x..org", "a@-x.org", "a@x.org.", 'a"b@x.org', "a{b}@x.org",
                                             "a@x.org}", "a@@x.org", "a@10.0.0.1", "x" * 65 + "@x.org", None])
def test_email_refuses_what_is_not_a_plain_address(value):
    with pytest.raises(ValidationError) as info:
        names.email(value)
    assert info.value.hint
