"""The `labdeploy` command without a server: help, usage errors, exit codes, no tracebacks.

These run the real entry point (a subprocess) with an empty temporary HOME.
"""

from __future__ import annotations

import pytest

from test_cli_support import CLI

COMMANDS = [
    ["servers"], ["servers", "add"], ["servers", "list"], ["servers", "remove"], ["servers", "check"], ["servers", "import"],
    ["servers", "prepare"], ["registry"], ["registry", "login"], ["deploy"], ["apps"], ["status"], ["logs"],
    ["exec"], ["restart"], ["connections"], ["export"], ["destroy"],
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
