"""The `labdeploy` command without a server: help, usage errors, exit codes, no tracebacks.

These run the real entry point (a subprocess) with an empty temporary HOME.
"""

from __future__ import annotations

import pytest

from test_cli_support import CLI

COMMANDS = [
    ["servers"], ["servers", "add"], ["servers", "list"], ["servers", "remove"], ["servers", "check"], ["servers", "import"],
    ["servers", "prepare"], ["registry"], ["registry", "login"], ["deploy"], ["apps"], ["status"], ["logs"],
    ["exec"], ["restart"], ["connections"], ["export"], ["destroy"], ["unlock"],
    ["fleet"], ["fleet", "status"], ["fleet", "apps"], ["fleet", "connections"], ["fleet", "usage"],
]


@pytest.fixture
def cli(tmp_path) -> CLI:
    return CLI(tmp_path)


def test_root_help_documents_exit_codes(cli):
    import re

    out = cli.ok("--help").out
    assert "Exit codes:" in out
    codes = dict(re.findall(r"^\s+(\d+)\s+(\S.*)$", out.split("Exit codes:")[1], re.M))
    assert set(codes) >= {"0", "1", "2", "3", "4", "130"}, out
    assert "usage" in codes["2"] and "confirmation" in codes["4"] and "interrupted" in codes["130"].lower()
    for command in ("servers", "registry", "deploy", "apps", "status", "logs", "exec", "restart", "connections",
                    "export", "destroy"):
        assert f"  {command} " in out


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: "-".join(c))
def test_every_command_has_help_with_an_example(cli, command):
    out = cli.ok(*command, "--help").out
    assert "Examples:" in out
    example = out.split("Examples:")[1]
    assert f"labdeploy {' '.join(command)}" in example or (command == ["registry"] and "registry login" in example) \
        or (command == ["servers"] and "servers add" in example), example


def test_hostile_app_name_is_a_usage_error_without_traceback(cli):
    r = cli("logs", "--app", "x; rm -rf ~")
    assert r.code == 2, str(r)
    assert "can't be used" in r.err and "What to do:" in r.err and "Traceback" not in r.err
    assert r.out == ""


def test_debug_shows_the_traceback(cli):
    r = cli("logs", "--app", "x; rm -rf ~", "--debug")
    assert r.code == 2 and "Traceback (most recent call last)" in r.err, str(r)


def test_no_server_registered_is_a_usage_error(cli):
    r = cli("apps")
    assert r.code == 2 and "No server is registered" in r.err and "servers add" in r.err, str(r)
    r = cli("status", "--server", "lab")
    assert r.code == 2 and "No server named 'lab'" in r.err, str(r)
    r = cli("status", "--server", "bad name;")
    assert r.code == 2 and "not valid" in r.err and "Traceback" not in r.err, str(r)


def test_json_errors_are_data_on_stdout(cli):
    r = cli("apps", "--json")
    assert r.code == 2 and r.json()["error"]["exit_code"] == 2, str(r)
    assert "No server is registered" in r.json()["error"]["message"] and r.json()["error"]["hint"]


def test_unknown_command_and_option_are_usage_errors(cli):
    assert cli("frobnicate").code == 2
    r = cli("apps", "--no-such-option")
    assert r.code == 2 and "No such option" in r.err, str(r)


def test_bad_host_in_servers_add_is_refused_before_any_connection(cli):
    r = cli("servers", "add", "lab", "--host", "lab.example.org;reboot", "--user", "alice")
    assert r.code == 2 and "not a valid host name" in r.err and "Traceback" not in r.err, str(r)
    r = cli("servers", "add", "lab", "--host", "lab.example.org", "--user", "Alice Smith")
    assert r.code == 2 and "not a valid login name" in r.err, str(r)


def test_password_stdin_needs_input(cli):
    r = cli("servers", "add", "lab", "--host", "192.0.2.1", "--user", "alice", "--password-stdin")
    assert r.code == 2 and "--copy-key" in r.err, str(r)


def test_servers_list_json_is_empty_list(cli):
    assert cli.ok("servers", "list", "--json").json() == []
    assert "No servers registered" in cli.ok("servers", "list").err


def test_servers_import_from_dallinger(cli, tmp_path):
    import json

    hosts = tmp_path / ".dallinger" / "docker-ssh" / "hosts"
    hosts.mkdir(parents=True)
    (hosts / "lab.example.org").write_text(json.dumps({"host": "lab.example.org", "user": "alice"}))
    (hosts / "broken").write_text("{not json")
    r = cli.ok("servers", "import", "--json")
    assert r.json() == [{"name": "lab.example.org", "host": "lab.example.org", "port": 22, "user": "alice"}]
    assert "Skipped Dallinger host file broken" in r.err
    assert [s["name"] for s in cli.ok("servers", "list", "--json").json()] == ["lab.example.org"]
    assert cli.ok("servers", "import", "--json").json() == []  # already there
    # The only registered server is the default one; removing needs --yes in scripts.
    r = cli("servers", "remove", "lab.example.org")
    assert r.code == 4 and "--yes" in r.err, str(r)
    cli.ok("servers", "remove", "lab.example.org", "--yes")
    assert cli.ok("servers", "list", "--json").json() == []


def test_deploy_checks_its_options_before_anything_else(cli, tmp_path):
    r = cli("deploy", "--app", "pilot", str(tmp_path / "missing"))
    assert r.code == 2 and "does not exist" in r.err, str(r)
    r = cli("deploy", "--app", "pilot", str(tmp_path), "--mode", "carrier-pigeon")
    assert r.code == 2 and "carrier-pigeon" in r.err, str(r)
    r = cli("deploy", "--app", "pilot", str(tmp_path), "--build-arg", "NOEQUALS")
    assert r.code == 2 and "KEY=VALUE" in r.err, str(r)
    r = cli("deploy", "--app", "pilot", str(tmp_path), "--secret-env", "T_CLI_SURELY_UNSET")
    assert r.code == 2 and "T_CLI_SURELY_UNSET" in r.err and "not set" in r.err, str(r)
    r = cli("deploy", "--app", "pilot", str(tmp_path), "--mode", "registry", "--logout-after-pull")
    assert r.code == 2 and "--logout-after-pull needs --registry-user" in r.err, str(r)


def test_tab_completion_of_commands_and_server_names(cli, tmp_path):
    import json

    hosts = tmp_path / ".dallinger" / "docker-ssh" / "hosts"
    hosts.mkdir(parents=True)
    for h in ("lab-a.example.org", "lab-b.example.org", "other.example.org"):
        (hosts / h).write_text(json.dumps({"host": h, "user": "alice"}))
    cli.ok("servers", "import")
    complete = {"_LABDEPLOY_COMPLETE": "bash_complete"}
    r = cli.ok(env={**complete, "COMP_WORDS": "labdeploy apps --server lab", "COMP_CWORD": "3"})
    assert r.out.split() == ["plain,lab-a.example.org", "plain,lab-b.example.org"], r.out
    r = cli.ok(env={**complete, "COMP_WORDS": "labdeploy con", "COMP_CWORD": "1"})
    assert r.out.split() == ["plain,connections"], r.out


def test_version(cli):
    assert "labdeploy" in cli.ok("--version").out


# ------------------------------------------------------------------ issue 14: no network before validation

UNREACHABLE = "192.0.2.1"  # TEST-NET-1: a connection would hang or be refused, never answer


def _register_unreachable(cli, tmp_path, name: str = "lab") -> None:
    """Register a server without labdeploy contacting it (Dallinger's host file, imported)."""
    import json

    hosts = tmp_path / ".dallinger" / "docker-ssh" / "hosts"
    hosts.mkdir(parents=True, exist_ok=True)
    (hosts / UNREACHABLE).write_text(json.dumps({"host": UNREACHABLE, "user": "alice"}))
    cli.ok("servers", "import")


def test_servers_add_no_verify_registers_without_any_connection(cli):
    import time

    started = time.monotonic()
    r = cli("servers", "add", "lab", "--host", UNREACHABLE, "--user", "alice", "--no-verify", "--json", timeout=60)
    took = time.monotonic() - started
    assert r.code == 0, str(r)
    assert took < 8, f"took {took:.1f} s: it tried to reach the server"
    assert r.json()["host"] == UNREACHABLE
    assert [(s["name"], s["host"], s["user"]) for s in cli.ok("servers", "list", "--json").json()] == \
        [("lab", UNREACHABLE, "alice")]


def test_servers_add_no_verify_in_process_opens_no_socket(home, monkeypatch):
    """The same in this process, with every way to the network made to fail the test."""
    import socket

    from labdeploy.ssh import servers
    from labdeploy.cli._app import main

    def refuse(*args, **kwargs):
        raise AssertionError("network used")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    key = home / "id_lab"
    key.write_text("not read: --no-verify only registers the path\n")
    assert main(["servers", "add", "lab", "--host", "lab.example.org", "--user", "alice", "--key", str(key),
                 "--no-verify"]) == 0
    assert servers.get("lab").key == str(key)


@pytest.mark.parametrize("extra,word", [(["--copy-key"], "--copy-key"),
                                        (["--trust-host-key", "SHA256:abc"], "--trust-host-key")])
def test_servers_add_no_verify_refuses_options_that_need_the_server(cli, extra, word):
    r = cli("servers", "add", "lab", "--host", UNREACHABLE, "--user", "alice", "--no-verify", *extra)
    assert r.code == 2 and word in r.err and "--no-verify" in r.err, str(r)
    assert cli.ok("servers", "list", "--json").json() == []


@pytest.mark.parametrize("extra", [[], ["--no-verify"]])
def test_servers_add_checks_host_and_key_before_connecting(cli, tmp_path, extra):
    import time

    started = time.monotonic()
    r = cli("servers", "add", "lab", "--host", "fe80::1%$(id);", "--user", "alice", *extra)
    assert r.code == 2 and "not a valid host name" in r.err, str(r)
    r = cli("servers", "add", "lab", "--host", UNREACHABLE, "--user", "alice", "--key", str(tmp_path / "nokey"),
            *extra)
    assert r.code == 2 and "does not exist" in r.err, str(r)
    r = cli("servers", "add", "lab", "--host", UNREACHABLE, "--user", "alice", "--key", "/tmp/a\rb", *extra)
    assert r.code == 2 and "not usable" in r.err, str(r)
    assert time.monotonic() - started < 15
    assert cli.ok("servers", "list", "--json").json() == []


@pytest.mark.parametrize("domain", ["a b", "fe80::1%$(id);", '::1%x {\n\trespond "injected" 200\n}\nzzz.localhost',
                                    "10.0.0.2", "exp.example.org\n"])
def test_deploy_refuses_a_bad_domain_before_connecting(cli, tmp_path, domain):
    import time

    _register_unreachable(cli, tmp_path)
    started = time.monotonic()
    r = cli("deploy", "--app", "pilot", str(tmp_path), "--domain", domain, timeout=60)
    assert r.code == 2 and "domain" in r.err.lower() and "Traceback" not in r.err, str(r)
    assert time.monotonic() - started < 8, "it tried to reach the server first"


@pytest.mark.parametrize("option,value,word", [
    ("--domain", "a b", "domain"), ("--domain", "fe80::1%$(id);", "domain"), ("--domain", "10.0.0.2", "domain"),
    ("--email", "lab@example.org\n", "email"), ("--email", "a b@x.org", "email"),
    ("--bind-address", "fe80::1%$(id)", "bind address"), ("--caddy-image", "caddy:2\n", "image"),
    ("--max-connections", "5", "max_connections"),
    ("--acme-ca", "http://ca.example.org/dir", "HTTPS"), ("--acme-ca", "https://ca.example.org/d?x=1", "ACME"),
    ("--acme-ca-root", "/nonexistent/root_ca.crt", "can't be read"), ("--acme-ca-root", "/etc/hostname", "PEM"),
])
def test_servers_prepare_refuses_bad_options_before_connecting(cli, tmp_path, option, value, word):
    import time

    _register_unreachable(cli, tmp_path)
    started = time.monotonic()
    r = cli("servers", "prepare", option, value, timeout=60)
    assert r.code == 2 and word in r.err and "Traceback" not in r.err, str(r)
    assert time.monotonic() - started < 8, "it tried to reach the server first"


@pytest.mark.parametrize("extra", [["--files"], ["--logs"], ["--parquet"], ["--export-mode", "both"]])
def test_destroy_final_export_options_need_final_export(cli, extra):
    r = cli("destroy", "--app", "stroop", "--remove-data", *extra, "--yes")
    assert r.code == 2 and "--final-export DIR" in r.err and "Traceback" not in r.err, str(r)


def test_rehearse_refuses_a_bad_think_time_and_bad_data_before_connecting(cli):
    from pathlib import Path

    repo = Path(__file__).resolve().parent.parent
    examples, this_checkout = repo / "examples", {"PYTHONPATH": str(repo)}  # the code under test
    # No server is registered here: the refusal comes before the server is even looked up. A
    # PsyNet experiment needs no flow (its participants walk its timeline): only the think time
    # its flow uses is wrong here.
    r = cli("rehearse", "--app", "study", str(examples / "psynet-static"), "--server", "lab", "--think", "-1",
            env=this_checkout)
    assert r.code == 2 and "Think time -1.0 s is outside 0-600 s" in r.err, str(r)
    assert "No server named" not in r.err and "Traceback" not in r.err
    r = cli("rehearse", "--app", "study", str(examples / "dallinger-hello"), "--data", "all", env=this_checkout)
    assert r.code == 2 and "'all' is not one of" in r.err, str(r)
