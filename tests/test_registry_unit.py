"""Registry input checks that need no server: user names, passwords, addresses, image
references and the server folder a login may be kept in (issue 14)."""

from __future__ import annotations

import pytest

from labdeploy import names
from labdeploy.images import build, registry
from labdeploy.experiment import folder
from labdeploy.errors import ValidationError
from labdeploy.images.registry import Credentials


@pytest.mark.parametrize("user", ["alice\0", "al\0ice", "alice\n", "al\rice", "alice\x1b[31m", "ali\u200bce",
                                  "a b", "", "x" * 256])
def test_a_user_name_with_control_characters_is_refused(user):
    with pytest.raises(ValidationError) as info:
        Credentials("registry.example.org", user, "pw")
    assert info.value.hint and "pw" not in str(info.value)


@pytest.mark.parametrize("user", ["alice", "gitlab-ci-token", "_json_key", "me@example.org", "AWS", "é-user"])
def test_ordinary_user_names_are_accepted(user):
    assert Credentials("registry.example.org", user, "pw").username == user


@pytest.mark.parametrize("password", ["pw\nmore", "pw\0", "pw\r"])
def test_a_password_with_a_line_break_or_nul_is_refused_without_echoing_it(password):
    with pytest.raises(ValidationError) as info:
        Credentials("registry.example.org", "alice", password)
    assert password not in str(info.value)


@pytest.mark.parametrize("address", ["registry.example.org:", "host: 5000", "host:+5000", "host:5_000",
                                     "host:5000\n", "host:123456", "https://host", "host/path"])
def test_bad_registry_addresses_are_refused(address):
    with pytest.raises(ValidationError):
        registry.registry_address(address)


@pytest.mark.parametrize("name", ["lab\n", "reg.example.org/lab\n", "reg.example.org\n/lab"])
def test_a_trailing_newline_does_not_slip_through_image_names(name):
    with pytest.raises(ValidationError):
        names.image_repository(name)


@pytest.mark.parametrize("tag", ["abc\n", "é", "a" * 129])
def test_bad_tags_are_refused(tag):
    with pytest.raises(ValidationError):
        names.image_tag(tag)


def test_image_references():
    assert build.image_reference("reg.example.org:5000/lab/app:abc") == "reg.example.org:5000/lab/app:abc"
    for bad in ["reg.example.org:5000/lab/app", "lab/app:bad tag", "lab/app:abc\n", "Lab/app:x"]:
        with pytest.raises(ValidationError):
            build.image_reference(bad)


@pytest.mark.parametrize("args", [{"BAD-NAME": "x"}, {"1ST": "x"}, {"É": "x"}, {"A": "one\ntwo"}, {"A": "a\0"}])
def test_bad_build_arguments_are_refused(args):
    with pytest.raises(ValidationError):
        folder.check_build_args(args)
    assert folder.check_build_args({"BASE_IMAGE": "python:3.11", "N": 3}) == {"BASE_IMAGE": "python:3.11", "N": "3"}


# --------------------------------------------------------------------------- the server's login folder

HOME = "/home/alice"


@pytest.mark.parametrize("path, expected", [
    (".docker-lab", ".docker-lab"),
    ("dallinger/.build/x/registry-login", "dallinger/.build/x/registry-login"),
    ("a//b/./c/", "a/b/c"),
    ("/home/alice/.docker-lab", ".docker-lab"),
    (None, None),
])
def test_a_login_folder_inside_the_home_is_allowed(path, expected):
    assert registry.remote_docker_config(path, HOME) == expected


@pytest.mark.parametrize("path", ["..", "../other/.docker", "a/../../b", "a/..", "/etc/docker", "/home/alicex/d",
                                  "/home/alice", "/home/alice/../bob/.docker", "/", ".", "", "  ", "~/.docker",
                                  "a\0b", "a\nb"])
def test_a_login_folder_outside_the_home_is_refused(path):
    with pytest.raises(ValidationError) as info:
        registry.remote_docker_config(path, HOME)
    assert info.value.hint


def test_an_absolute_login_folder_needs_the_home_to_check_it():
    with pytest.raises(ValidationError):
        registry.remote_docker_config("/home/alice/.docker-lab")


@pytest.mark.parametrize("path", ["../outside", "/tmp/x", "a/../.."])
def test_login_server_refuses_the_folder_before_touching_the_server(path):
    class NoServer:
        """Any use of the server but reading its home (makedirs, run) fails the test."""

        home = HOME

        def __getattr__(self, name):
            raise AssertionError(f"the server was used ({name}) before the folder was checked")

    creds = Credentials("registry.example.org", "alice", "pw")
    with pytest.raises(ValidationError):
        registry.login_server(NoServer(), creds, docker_config=path)
    with pytest.raises(ValidationError):
        registry.logout_server(NoServer(), creds.registry, docker_config=path)


def test_a_docker_config_names_a_login_by_its_auths_entry_or_helper():
    reg = "registry.example.org:5000"
    assert registry._has_login('{"auths": {"registry.example.org:5000": {"auth": "x"}}}', reg)
    assert registry._has_login('{"auths": {"https://registry.example.org:5000": {}}}', reg)
    assert registry._has_login('{"credHelpers": {"registry.example.org:5000": "pass"}}', reg)
    for text in ('{"auths": {"registry.example.org": {}}}', "", "not json", "[]", '{"auths": []}'):
        assert not registry._has_login(text, reg), text


def test_the_registry_panel_says_who_is_logged_in_in_words():
    from labdeploy.widgets.registry import state_html

    text = state_html(registry.LoginState("r.example:5000", "this session", False), "lab")
    assert "This computer: logged in (kept for this session)." in text and "Server lab: not logged in." in text
    text = state_html(registry.LoginState("r.example:5000", "", None), "lab", "Can't reach 192.0.2.1")
    assert "This computer: not logged in." in text and "Server lab: not checked (Can&#x27;t reach 192.0.2.1)" in text
