"""`labdeploy registry login` refuses bad input before any login (issue 14), against the testbed."""

from __future__ import annotations

import uuid

import pytest

from test_cli_support import CLI


@pytest.fixture(scope="module")
def cli(testbed, tmp_path_factory) -> CLI:
    cli = CLI(tmp_path_factory.mktemp("registry-cli-home"))
    s = testbed["ssh"]
    cli.ok("servers", "add", "tb", "--host", s["host"], "--user", s["user"], "--key", s["key"],
           "--trust-host-key", s["host_key_fingerprint"])
    return cli


def test_a_login_folder_out_of_the_home_is_a_usage_error(cli, testbed, remote):
    reg = testbed["registry"]
    outside = f"/tmp/t-cli-login-{uuid.uuid4().hex[:8]}"
    escape = f"../t-cli-login-{uuid.uuid4().hex[:8]}"
    try:
        # Relative with '..': refused before the password is even asked for (no terminal, no
        # --password-stdin would otherwise end with exit 4).
        r = cli("registry", "login", reg["address"], "-u", reg["user"], "--server-only",
                "--remote-docker-config", escape)
        assert r.code == 2 and "'..'" in r.err and "What to do" in r.err and "Traceback" not in r.err, str(r)
        # Absolute outside the home: refused once the server's home is known, before any login.
        r = cli("registry", "login", reg["address"], "-u", reg["user"], "--password-stdin",
                "--remote-docker-config", outside, input=reg["password"] + "\n")
        assert r.code == 2 and "outside your home" in r.err and "Traceback" not in r.err, str(r)
        assert not (cli.home / ".docker").exists()
        assert not remote.run(["test", "-e", outside], check=False).ok
        assert not remote.exists(escape)
    finally:  # should a login get through, it leaves nothing behind
        remote.run(["rm", "-rf", "--", outside, escape], check=False)


def test_an_absolute_login_folder_inside_the_home_works(cli, testbed, remote):
    reg = testbed["registry"]
    folder = f"dallinger/.build/t-cli-login-{uuid.uuid4().hex[:8]}"
    try:
        r = cli("registry", "login", reg["address"], "-u", reg["user"], "--password-stdin", "--server-only",
                "--remote-docker-config", f"{remote.home}/{folder}", input=reg["password"] + "\n")
        assert r.code == 0, str(r)
        assert reg["address"] in remote.get_bytes(f"{folder}/config.json").decode()
    finally:
        remote.run(["rm", "-rf", "--", folder], check=False)


def test_a_user_name_with_a_line_break_is_a_usage_error(cli, testbed):
    reg = testbed["registry"]
    r = cli("registry", "login", reg["address"], "-u", "labreg\nx", "--password-stdin", "--server-only",
            input=reg["password"] + "\n")
    assert r.code == 2 and "user name" in r.err and reg["password"] not in r.out + r.err, str(r)
