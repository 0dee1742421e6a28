"""Pure rendering of the shared stack's files and validation of its settings."""

import pytest
import yaml

from labdeploy.server import stack
from labdeploy.errors import ValidationError


def test_compose_document_has_the_contract_names_and_no_secret():
    s = stack.StackSettings(postgres_image="reg.example.org/pg:15", caddy_image="caddy:2")
    text = stack.stack_compose_yaml(s)
    doc = yaml.safe_load(text)
    pg, caddy = doc["services"]["postgresql"], doc["services"]["caddy"]
    assert pg["container_name"] == "dallinger-postgresql"
    assert caddy["container_name"] == "dallinger-caddy"
    assert pg["image"] == "reg.example.org/pg:15"
    assert pg["environment"]["POSTGRES_USER"] == "dallinger"
    assert pg["environment"]["POSTGRES_PASSWORD_FILE"] == stack.PASSWORD_IN_CONTAINER
    assert "POSTGRES_PASSWORD" not in pg["environment"]
    assert f"./secrets/postgres_password:{stack.PASSWORD_IN_CONTAINER}:ro" in pg["volumes"]
    assert doc["networks"] == {"dallinger": {"name": "dallinger"}}
    assert caddy["ports"] == ["80:80", "443:443"]


def test_bind_address_and_ports_reach_the_published_ports():
    s = stack.StackSettings(http_port=8080, https_port=8443, bind_address="10.0.0.5")
    caddy = stack.stack_compose_document(s)["services"]["caddy"]
    assert caddy["ports"] == ["10.0.0.5:8080:80", "10.0.0.5:8443:443"]


def test_caddyfile_imports_sites_and_carries_email():
    text = stack.caddyfile(stack.StackSettings(email="lab@example.org", domain="exp.example.org"))
    assert "import caddy.d/*" in text
    assert "email lab@example.org" in text
    assert "auto_https off" not in text
    assert text.rstrip().endswith("404\n}")  # the fallback site for names without an app


def test_local_domain_turns_automatic_https_off():
    text = stack.caddyfile(stack.StackSettings(domain="localhost"))
    assert "auto_https off" in text
    assert "email" not in text


@pytest.mark.parametrize("domain,local", [("localhost", True), ("lab.test", True), ("10.0.0.2", True),
                                         ("", True), ("exp.example.org", False), ("psy.ac.uk", False)])
def test_is_local_domain(domain, local):
    assert stack.is_local_domain(domain) is local


def test_site_address():
    assert stack.site_address("my-exp", stack.StackSettings(domain="localhost")) == "http://my-exp.localhost"
    assert stack.site_address("my-exp", stack.StackSettings(domain="lab.org")) == "my-exp.lab.org"


@pytest.mark.parametrize("kwargs", [
    {"postgres_image": "postgres:15; rm -rf /"},
    {"caddy_image": "$(reboot)"},
    {"http_port": 0},
    {"http_port": 443},
    {"bind_address": "not-an-ip"},
    {"email": "nobody"},
    {"domain": "bad domain"},
])
def test_bad_settings_are_refused_with_a_hint(kwargs):
    with pytest.raises(ValidationError) as info:
        stack.StackSettings(**kwargs).validate()
    assert info.value.hint


def test_for_images_uses_the_testbed_map():
    s = stack.StackSettings.for_images({"postgres": "x/pg:15", "caddy": "x/caddy:2"})
    assert (s.postgres_image, s.caddy_image) == ("x/pg:15", "x/caddy:2")


class _NoServer:
    """A Remote stand-in that records anything prepare() tries to do."""

    def __init__(self):
        self.calls = []

    def __getattr__(self, name):
        self.calls.append(name)
        raise AssertionError(f"prepare touched the server ({name}) before refusing its settings")


@pytest.mark.parametrize("kwargs", [
    {"email": "lab@example.org\n"},
    {"domain": '::1%x {\n\trespond "injected" 200\n}\nzzz.localhost'},
    {"domain": "fe80::1%$(id);"},
    {"caddy_image": "caddy:2\n"},
    {"bind_address": "fe80::1%x"},
])
def test_prepare_refuses_bad_settings_before_touching_the_server(kwargs):
    remote = _NoServer()
    with pytest.raises(ValidationError):
        stack.prepare(remote, stack.StackSettings(**kwargs))
    assert remote.calls == []
