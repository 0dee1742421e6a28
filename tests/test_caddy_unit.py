"""The Caddy writers (caddy.site_block, stack.caddyfile) never write what they can't represent
safely: hostile domains and e-mails are refused, and a final check on every token they emit
holds even when a value slipped past validation (issue 14)."""

from __future__ import annotations

import pytest

from labdeploy.server import caddy, stack
from labdeploy import names
from labdeploy.errors import ValidationError
from labdeploy.server.stack import StackSettings

# The report's example: as a domain it wrote a second site block into caddy.d/<app>.
INJECTED_DOMAIN = '::1%x {\n\trespond "injected" 200\n}\nzzz.localhost'
HOSTILE_DOMAINS = [INJECTED_DOMAIN, "fe80::1%$(id);", "a b", "exp.example.org\n", "exp.example.org {", "a}b.org",
                   'a"b.org', "10.0.0.2", "::1", "a.org.", "#x.org"]
HOSTILE_EMAILS = ["lab@example.org\n", "lab@example.org\n}\n:80 {", "a b@x.org", "lab@example.org {", "a%b@x.org",
                  "lab@example.org\t", "lab@exa\rmple.org"]


def _blocks(text: str) -> int:
    """Top-level blocks (site or global options); nested ones (log, format) are indented."""
    return sum(1 for line in text.splitlines() if line.rstrip().endswith("{") and not line[:1].isspace())


@pytest.mark.parametrize("domain", HOSTILE_DOMAINS)
def test_site_block_refuses_a_hostile_domain(domain):
    with pytest.raises(ValidationError) as info:
        caddy.site_block("stroop", StackSettings(domain=domain))
    assert info.value.hint


@pytest.mark.parametrize("domain", HOSTILE_DOMAINS)
def test_app_url_refuses_a_hostile_domain(domain):
    with pytest.raises(ValidationError):
        caddy.app_url("stroop", StackSettings(domain=domain))


@pytest.mark.parametrize("email", HOSTILE_EMAILS)
def test_caddy_writers_refuse_a_hostile_email(email):
    settings = StackSettings(domain="exp.example.org", email=email)
    with pytest.raises(ValidationError):
        stack.caddyfile(settings)
    with pytest.raises(ValidationError):
        caddy.site_block("stroop", settings)


def test_caddyfile_email_with_a_trailing_newline_is_refused():
    # re.match(r"...$") accepted it and a blank line landed in the global options.
    with pytest.raises(ValidationError, match="email"):
        StackSettings(email="lab@example.org\n").validate()


@pytest.fixture
def unvalidated(monkeypatch):
    """As if a value slipped past validation: the writers' final check is all that is left."""
    monkeypatch.setattr(StackSettings, "validate", lambda self: self)
    monkeypatch.setattr(names, "domain", lambda value: value)
    monkeypatch.setattr(names, "email", lambda value: value)


@pytest.mark.parametrize("domain", HOSTILE_DOMAINS[:6])
def test_site_block_final_check_holds_without_validation(unvalidated, domain):
    with pytest.raises(ValidationError, match="Refusing to write"):
        caddy.site_block("stroop", StackSettings(domain=domain))


@pytest.mark.parametrize("email", HOSTILE_EMAILS)
def test_email_final_check_holds_without_validation(unvalidated, email):
    settings = StackSettings(domain="exp.example.org", email=email)
    with pytest.raises(ValidationError, match="Refusing to write"):
        stack.caddyfile(settings)
    with pytest.raises(ValidationError, match="Refusing to write"):
        caddy.site_block("stroop", settings)


def test_upstream_and_app_name_final_check_holds_without_validation(monkeypatch):
    from labdeploy.server import layout

    monkeypatch.setattr(layout, "web_alias", lambda app: "x-web:1 {\n}\nevil")
    with pytest.raises(ValidationError, match="upstream"):
        caddy.site_block("stroop", StackSettings(domain="localhost"))


@pytest.mark.parametrize("value", ["http://stroop.localhost", "stroop.exp.example.org", "lab@example.org",
                                   "stroop-web:5000", "a+b@x.org"])
def test_caddy_token_accepts_what_the_writers_emit(value):
    assert stack.caddy_token(value, "value") == value


@pytest.mark.parametrize("value", ["", "a b", "a\nb", "a\r", "a\t", "a{", "}", '"a"', "'a'", "#a", "a\\b", "<<EOF",
                                   "a%b", "a,b", "a;b", "a`b`", None, 5])
def test_caddy_token_refuses_anything_that_could_end_a_token(value):
    with pytest.raises(ValidationError) as info:
        stack.caddy_token(value, "value")
    assert info.value.hint


def test_valid_settings_still_give_one_site_block_and_one_global_block():
    settings = StackSettings(domain="exp.example.org", email="lab@example.org")
    site = caddy.site_block("stroop", settings)
    assert _blocks(site) == 1 and site.splitlines().count("}") == 1 and site.count("{") == site.count("}")
    assert "stroop.exp.example.org, http://stroop.localhost {" in site
    assert "\ttls lab@example.org\n" in site
    text = stack.caddyfile(settings)
    assert "\temail lab@example.org\n" in text and "\n\n\n" not in text
    assert _blocks(text) == 2  # global options and the fallback site


@pytest.mark.parametrize("kwargs", [
    {"postgres_image": "postgres:15\n"},
    {"caddy_image": "caddy:2\n"},
    {"bind_address": "fe80::1%$(id)"},
    {"bind_address": "fe80::1%2"},
    {"domain": "10.0.0.2"},
    {"domain": INJECTED_DOMAIN},
    {"email": "lab@example.org\n"},
    {"postgres_max_connections": None},
    {"http_port": None},
])
def test_stack_settings_refuse_what_slipped_through_before(kwargs):
    with pytest.raises(ValidationError) as info:
        StackSettings(**kwargs).validate()
    assert info.value.hint


def test_check_fields_checks_only_what_is_given():
    stack.check_fields(domain=None, email=None, http_port=None, postgres_image=None)
    stack.check_fields(domain="exp.example.org", email="", bind_address="")
    with pytest.raises(ValidationError, match="domain"):
        stack.check_fields(domain="a b")
    with pytest.raises(ValidationError, match="email"):
        stack.check_fields(email="x")
    with pytest.raises(ValidationError, match="not a setting"):
        stack.check_fields(colour="blue")
