"""The real `labdeploy` command against the testbed: every subcommand, end to end.

Each test runs the installed entry point as a subprocess with HOME set to a module-wide
temporary folder. The module registers the testbed once (`servers add --trust-host-key`),
deploys the example experiment once as `t-cli-app`, and destroys it at the end.
"""

from __future__ import annotations

import json
import time
import uuid
import zipfile
from pathlib import Path

import pytest
import requests

from test_cli_support import CLI, LABDEPLOY, REPO, Terminal
from deploy_support import destroy_if_deployed

# Spread over the servers: the CLI's plumbing is the same on both engines; deploys themselves are
# proved on both in test_deploy.
pytestmark = [pytest.mark.testbed, pytest.mark.spread]

APP = "t-cli-app"
EXAMPLE = REPO / "examples" / "stroop"


@pytest.fixture(scope="module")
def cli(testbed, tmp_path_factory) -> CLI:
    home = tmp_path_factory.mktemp("cli-home")
    return CLI(home)


@pytest.fixture(scope="module")
def registered(cli, testbed) -> str:
    """The testbed registered as `tb` through the CLI, host key trusted by its fingerprint."""
    s = testbed["ssh"]
    cli.ok("servers", "add", "tb", "--host", s["host"], "--user", s["user"], "--key", s["key"],
           "--trust-host-key", s["host_key_fingerprint"])
    return "tb"


@pytest.fixture(scope="module")
def prepared(cli, registered, testbed) -> str:
    im = testbed["images"]
    cli.ok("servers", "prepare", "--postgres-image", im["postgres"], "--caddy-image", im["caddy"],
           "--domain", "localhost")
    return registered


@pytest.fixture(scope="module")
def session_api_remote(testbed, tmp_path_factory):
    """The Python API's view of the server, only to check the CLI's effects and clean up."""
    from labdeploy.remote import Remote

    from conftest import trusted_known_hosts

    s = testbed["ssh"]
    kh = trusted_known_hosts(testbed, tmp_path_factory.mktemp("cli-kh") / "known_hosts")
    r = Remote(s["host"], s["port"], s["user"], key_filename=s["key"], known_hosts=kh, use_agent=False)
    r.connect()
    yield r
    r.close()


@pytest.fixture(scope="module")
def deployed(cli, prepared, testbed, session_api_remote):
    """ONE app for the module, deployed with `labdeploy deploy`."""
    destroy_if_deployed(session_api_remote, APP)
    r = cli("deploy", "--app", APP, str(EXAMPLE), "--build-arg", f"BASE_IMAGE={testbed['images']['python']}",
            "--redis-image", testbed["images"]["redis"], "--health-path", "/health", "--start-timeout", "180",
            "--capacity", "warn", "--json", timeout=900)
    assert r.code == 0, str(r)
    yield r.json()
    destroy_if_deployed(session_api_remote, APP)


def through_caddy(testbed, app: str, path: str = "/") -> requests.Response:
    return requests.get(f"http://{testbed['http']['host']}:{testbed['http']['port']}{path}",
                        headers={"Host": f"{app}.localhost"}, timeout=15)


# ------------------------------------------------------------------ servers


def test_unknown_host_key_is_never_accepted_silently(testbed, tmp_path):
    cli = CLI(tmp_path)
    s = testbed["ssh"]
    r = cli("servers", "add", "tb", "--host", s["host"], "--user", s["user"], "--key", s["key"])
    assert r.code == 4, str(r)
    assert s["host_key_fingerprint"] in r.err and "--trust-host-key" in r.err
    assert "Traceback" not in r.err
    assert not (tmp_path / ".ssh" / "known_hosts").exists()
    assert cli("servers", "list", "--json").json() == []

    wrong = "SHA256:" + "A" * 43
    r = cli("servers", "add", "tb", "--host", s["host"], "--user", s["user"], "--key", s["key"],
            "--trust-host-key", wrong)
    assert r.code == 1, str(r)
    assert s["host_key_fingerprint"] in r.err and wrong in r.err
    assert not (tmp_path / ".ssh" / "known_hosts").exists()
    assert cli("servers", "list", "--json").json() == []


def test_a_changed_host_key_is_refused(testbed, tmp_path):
    """known_hosts holds another key for the server (as after a rebuild, or an attack)."""
    cli = CLI(tmp_path)
    s = testbed["ssh"]
    other = Path(s["key"] + ".pub").read_text().split()[:2]  # a real ed25519 key, not the server's
    (tmp_path / ".ssh").mkdir()
    (tmp_path / ".ssh" / "known_hosts").write_text(f"{s['host']} {other[0]} {other[1]}\n")
    r = cli("servers", "add", "tb", "--host", s["host"], "--user", s["user"], "--key", s["key"],
            "--trust-host-key", s["host_key_fingerprint"])
    assert r.code == 1 and "different host key" in r.err and "ssh-keygen -R" in r.err, str(r)
    assert "Traceback" not in r.err
    assert cli("servers", "list", "--json").json() == []
    assert (tmp_path / ".ssh" / "known_hosts").read_text().count("\n") == 1  # untouched


def test_at_a_terminal_the_fingerprint_is_shown_and_asked_for(testbed, tmp_path):
    cli = CLI(tmp_path)
    s = testbed["ssh"]
    add = ("servers", "add", "tb", "--host", s["host"], "--user", s["user"], "--key", s["key"])
    t = Terminal(cli, *add)
    t.expect("Trust this server? [y/N]")
    assert s["host_key_fingerprint"] in t.buffer
    t.send("n\n")
    assert t.wait() == 4 and "not trusted" in t.buffer
    assert not (tmp_path / ".ssh" / "known_hosts").exists()

    t = Terminal(cli, *add)
    t.expect("Trust this server? [y/N]")
    t.send("y\n")
    assert t.wait() == 0, t.buffer
    assert "Registered tb" in t.buffer and "Traceback" not in t.buffer
    assert s["host_key"].split()[1] in (tmp_path / ".ssh" / "known_hosts").read_text()

    # Progress on a terminal (rich) and the readiness table.
    t = Terminal(cli, "servers", "check")
    assert t.wait() == 0, t.buffer
    assert "readiness" in t.buffer and "SSH login" in t.buffer

    # A confirmation answered "no" changes nothing.
    t = Terminal(cli, "destroy", "--app", "t-cli-never-deployed")
    t.expect("[y/N]")
    t.send("n\n")
    assert t.wait() == 4 and "Cancelled" in t.buffer


def test_at_a_terminal_the_password_is_prompted_hidden(testbed, tmp_path, session_api_remote):
    cli = CLI(tmp_path)
    s, reg = testbed["ssh"], testbed["registry"]
    cli.ok("servers", "add", "tb", "--host", s["host"], "--user", s["user"], "--key", s["key"],
           "--trust-host-key", s["host_key_fingerprint"])
    folder = f"dallinger/.build/t-cli-login-{uuid.uuid4().hex[:8]}"
    try:
        t = Terminal(cli, "registry", "login", reg["address"], "-u", reg["user"], "--server-only",
                     "--remote-docker-config", folder)
        t.expect("Password")
        t.send(reg["password"] + "\n")
        assert t.wait() == 0, t.buffer
        assert reg["password"] not in t.buffer  # not echoed
        assert "Logged in to" in t.buffer
    finally:
        session_api_remote.run(["rm", "-rf", "--", folder], check=False)


def test_servers_add_copy_key_with_password_stdin(testbed, tmp_path, session_api_remote):
    """The seed's ssh-keygen + ssh-copy-id step: no key yet, the password on stdin once, then
    key-only login. Done as labnodocker; the added key line is removed afterwards."""
    from labdeploy.remote import Remote

    cli = CLI(tmp_path)
    s = testbed["ssh"]
    user = s["user_nodocker"]
    r = cli("servers", "add", "t-cli-copy", "--host", s["host"], "--user", user, "--copy-key",
            "--password-stdin", "--trust-host-key", s["host_key_fingerprint"], "--json", input=s["password"] + "\n")
    pub = tmp_path / ".ssh" / "id_ed25519.pub"
    body = pub.read_text().split()[1] if pub.exists() else None
    admin = Remote(s["host"], 22, user, key_filename=s["key"], known_hosts=session_api_remote.known_hosts,
                   use_agent=False)
    try:
        assert r.code == 0, str(r)
        assert body and "Generated a new key" in r.err and "Added your public key" in r.err
        assert s["password"] not in r.out + r.err
        assert r.json()["key"] == str(tmp_path / ".ssh" / "id_ed25519")
        assert body in admin.get_bytes(".ssh/authorized_keys").decode()
        # From now on the key alone logs in: `servers check` works without any password.
        rows = cli("servers", "check", "--json").json()
        assert rows[0]["check"] == "SSH login" and rows[0]["ok"] is True
        # A wrong password is refused with a clear message.
        r = cli("servers", "add", "t-cli-copy2", "--host", s["host"], "--user", user, "--copy-key",
                "--password-stdin", input="not-the-password\n")
        assert r.code == 1 and "refused" in r.err and "Traceback" not in r.err, str(r)
    finally:
        if body:
            lines = admin.get_bytes(".ssh/authorized_keys").decode().splitlines(keepends=True)
            admin.put_bytes(".ssh/authorized_keys", "".join(l for l in lines if body not in l), mode=0o600)
        admin.close()


def test_servers_add_list_and_default_server(cli, registered, testbed):
    kh = (cli.home / ".ssh" / "known_hosts").read_text()
    assert testbed["ssh"]["host_key"].split()[1] in kh  # the confirmed key, stored
    listed = cli.ok("servers", "list", "--json").json()
    assert [(s["name"], s["host"], s["user"]) for s in listed] == [("tb", testbed["ssh"]["host"],
                                                                    testbed["ssh"]["user"])]
    table = cli.ok("servers", "list").out
    assert "tb" in table and testbed["ssh"]["host"] in table
    # Registering the same name again is refused without --replace.
    r = cli("servers", "add", "tb", "--host", testbed["ssh"]["host"], "--user", "labdeploy")
    assert r.code == 2 and "--replace" in r.err, str(r)


def test_servers_check_reports_a_ready_server(cli, prepared):
    rows = cli.ok("servers", "check", "--json").json()
    checks = {row["check"]: row["ok"] for row in rows}
    assert checks["SSH login"] is True
    assert all(checks.values()), rows
    assert "ready to deploy" in cli.ok("servers", "check").err


def test_servers_check_fails_with_3_for_a_server_without_docker(cli, registered, testbed, tmp_path):
    s = testbed["ssh"]
    cli.ok("servers", "add", "t-cli-nodocker", "--host", s["host"], "--user", s["user_nodocker"], "--key",
           s["key"])
    try:
        # Two servers now: which one is not guessed.
        r = cli("servers", "check")
        assert r.code == 2 and "Several servers" in r.err and "LABDEPLOY_SERVER" in r.err, str(r)
        r = cli("servers", "check", "--json", env={"LABDEPLOY_SERVER": "tb"})
        assert r.code == 0 and r.json()[0]["detail"].endswith(f"{s['user']}@{s['host']}"), str(r)
        r = cli("servers", "check", "--server", "t-cli-nodocker")
        assert r.code == 3, str(r)
        assert "not ready" in r.err and "docker" in r.out.lower() and "Traceback" not in r.err
        r = cli("servers", "check", "--server", "t-cli-nodocker", "--json")
        rows = {row["check"]: row for row in r.json()}  # one JSON document, even when not ready
        assert r.code == 3 and rows["SSH login"]["ok"] and not rows["Docker usable without sudo"]["ok"]
    finally:
        cli.ok("servers", "remove", "t-cli-nodocker", "--yes")
    assert [s["name"] for s in cli.ok("servers", "list", "--json").json()] == ["tb"]


def test_servers_prepare_is_idempotent(cli, prepared, testbed):
    out = cli.ok("servers", "prepare", "--json").json()  # no options: keeps the server's settings
    assert out["settings"]["domain"] == "localhost"
    assert out["settings"]["postgres_image"] == testbed["images"]["postgres"]
    assert "dallinger/docker-compose.yml" in out["unchanged"]


def test_unknown_server_is_a_usage_error(cli, registered):
    r = cli("apps", "--server", "nope")
    assert r.code == 2 and "No server named 'nope'" in r.err and "Traceback" not in r.err, str(r)
    r = cli("apps", env={"LABDEPLOY_SERVER": "also-nope"})
    assert r.code == 2 and "also-nope" in r.err, str(r)


# ------------------------------------------------------------------ registry


def test_registry_login_with_password_stdin(cli, registered, testbed, session_api_remote):
    reg = testbed["registry"]
    folder = f"dallinger/.build/t-cli-login-{uuid.uuid4().hex[:8]}"
    try:
        r = cli("registry", "login", reg["address"], "-u", reg["user"], "--password-stdin",
                "--remote-docker-config", folder, "--json", input=reg["password"] + "\n")
        assert r.code == 0, str(r)
        assert r.json()["on_server"] is True and r.json()["registry"] == reg["address"]
        assert reg["password"] not in r.out + r.err
        config = json.loads(session_api_remote.get_bytes(f"{folder}/config.json"))
        assert reg["address"] in config.get("auths", {})
        # A wrong password is refused with the registry's message and a hint, exit 1.
        r = cli("registry", "login", reg["address"], "-u", reg["user"], "--password-stdin", "--server-only",
                "--remote-docker-config", folder, input="wrong-password\n")
        assert r.code == 1 and "refused" in r.err and "What to do" in r.err, str(r)
        # No password and no terminal to ask on: exit 4, not a hang.
        r = cli("registry", "login", reg["address"], "-u", reg["user"], "--remote-docker-config", folder)
        assert r.code == 4 and "--password-stdin" in r.err, str(r)
    finally:
        session_api_remote.run(["rm", "-rf", "--", folder], check=False)


# ------------------------------------------------------------------ deploy and the app's life


def test_deploy_puts_the_app_online(deployed, testbed, session_api_remote):
    from labdeploy.server import layout
    from labdeploy.app.appcompose import parse_env

    assert deployed["app"] == APP and deployed["url"] == f"http://{APP}.localhost/"
    # Output that is not a terminal (logs, CI) never carries the dashboard password.
    secrets = parse_env(session_api_remote.get_bytes(layout.app_secrets(APP)).decode())
    assert deployed["dashboard_user"] and "••" in deployed["dashboard_password"]
    assert secrets["dashboard_password"] not in json.dumps(deployed)
    page = through_caddy(testbed, APP)
    assert page.status_code == 200 and "Colour naming study" in page.text


def test_deploy_again_is_refused_and_update_works(cli, deployed, testbed, session_api_remote):
    r = cli("deploy", "--app", APP, str(EXAMPLE), "--build-arg", f"BASE_IMAGE={testbed['images']['python']}",
            "--redis-image", testbed["images"]["redis"])
    assert r.code == 1 and "already deployed" in r.err and "Traceback" not in r.err, str(r)
    assert "add --update" in r.err and "update()" not in r.err  # the hint in CLI words
    # The update goes the seed's way: build here, push to the registry, pull on the server.
    reg = testbed["registry"]
    # The server forgets its login first, so "logged out after the pull" can be seen.
    session_api_remote.run(["docker", "logout", reg["address"]])
    r = cli.ok("deploy", "--app", APP, str(EXAMPLE), "--update", "--build-arg",
               f"BASE_IMAGE={testbed['images']['python']}", "--redis-image", testbed["images"]["redis"],
               "--health-path", "/health", "--show-password", "--mode", "registry",
               "--image-base-name", f"{reg['address']}/t-cli", "--registry-user", reg["user"],
               "--registry-password-stdin", "--logout-after-pull", "--json", input=reg["password"] + "\n",
               timeout=900)
    server_config = session_api_remote.run(["sh", "-c", "cat ~/.docker/config.json 2>/dev/null"],
                                           check=False).stdout
    assert reg["address"] not in server_config  # the pull's login was private and is gone
    result = r.json()
    assert "is live at" in r.err and result["url"] == f"http://{APP}.localhost/"
    assert "✓ image" in r.err and "✓ launch" in r.err  # the steps, as plain progress lines
    assert result["image"].startswith(f"{reg['address']}/t-cli/{APP}:") and result["operation"] == "update"
    assert reg["password"] not in r.out + r.err
    assert "Secsh channel" not in r.err  # no library log noise
    password = result["dashboard_password"]
    dash = requests.get(f"http://{testbed['http']['host']}/dashboard", headers={"Host": f"{APP}.localhost"},
                        auth=("admin", password), timeout=15)
    assert dash.status_code == 200


def test_deploy_of_a_folder_without_dockerfile_fails_clearly(cli, registered, tmp_path):
    (tmp_path / "exp").mkdir()
    (tmp_path / "exp" / "experiment.py").write_text("print('hi')\n")
    r = cli("deploy", "--app", "t-cli-nodockerfile", str(tmp_path / "exp"))
    assert r.code in (1, 2) and "Dockerfile" in r.err and "What to do" in r.err, str(r)
    assert "Traceback" not in r.err
    assert "t-cli-nodockerfile" not in {row["app"] for row in cli.ok("apps", "--json").json()}


def test_apps_lists_the_app(cli, deployed):
    rows = {row["app"]: row for row in cli.ok("apps", "--json").json()}
    assert rows[APP]["state"] == "running" and rows[APP]["running"] == "4/4"
    assert rows[APP]["version"] == deployed["version"]  # the update shipped the same content
    assert APP in cli.ok("apps").out


def test_status_of_the_app(cli, deployed):
    rows = cli.ok("status", "--app", APP, "--json").json()
    assert sorted(r["service"] for r in rows) == ["clock", "redis", "web", "worker"]
    assert all(r["state"] == "running" for r in rows)
    assert all(r["app"] == APP for r in rows)
    text = cli.ok("status", "--app", APP).out
    assert "web" in text and "running" in text
    r = cli("status", "--app", "t-cli-never-deployed")
    assert r.code == 2 and "Traceback" not in r.err and "t-cli-never-deployed" in r.err, str(r)


def test_logs_of_the_web_service(cli, deployed):
    r = cli.ok("logs", "--app", APP, "--service", "web", "--tail", "all")
    lines = r.out.splitlines()
    assert lines and all(line.startswith("web") for line in lines), r.out[:2000]
    js = [json.loads(line) for line in cli.ok("logs", "--app", APP, "--tail", "all", "--json").out.splitlines()]
    assert {"web", "worker"} <= {e["service"] for e in js}


def test_logs_follow_streams_until_interrupted(cli, deployed, testbed):
    import signal
    import subprocess

    proc = subprocess.Popen([str(LABDEPLOY), "logs", "--app", APP, "--service", "web", "-f", "--tail", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cli.env,
                            cwd=str(cli.home))
    try:
        time.sleep(3)
        marker = f"/t-cli-follow-{uuid.uuid4().hex[:8]}"
        through_caddy(testbed, APP, marker)  # a request the web log shows
        time.sleep(3)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert marker in out, (out, err)
    assert proc.returncode == 0 and "Traceback" not in err, err


def test_exec_runs_in_the_container_and_passes_the_exit_status(cli, deployed):
    r = cli("exec", "--app", APP, "--", "sh", "-c", "echo from-$(hostname)-web; echo oops >&2; exit 3")
    assert r.code == 3, str(r)
    assert r.out.startswith("from-") and "oops" in r.err
    r = cli.ok("exec", "--app", APP, "--service", "worker", "--json", "--", "python", "-c", "print(6*7)")
    assert r.json()["stdout"].strip() == "42" and r.json()["service"] == "worker"
    r = cli("exec", "--app", APP, "--", "no-such-program-here")
    assert r.code == 1 and "not installed" in r.err and "Traceback" not in r.err, str(r)


def test_ctrl_c_exits_130_without_a_traceback(cli, deployed):
    import signal
    import subprocess

    proc = subprocess.Popen([str(LABDEPLOY), "exec", "--app", APP, "--", "sleep", "20"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=cli.env, cwd=str(cli.home))
    try:
        time.sleep(4)
        assert proc.poll() is None
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, (out, err)
    assert "Interrupted" in err and "Traceback" not in err


def test_restart_web_waits_until_it_is_up(cli, deployed):
    before = {r["service"]: r["started_at"] for r in cli.ok("status", "--app", APP, "--json").json()}
    rows = cli.ok("restart", "--app", APP, "web", "--json").json()
    after = {r["service"]: r for r in rows}
    assert after["web"]["state"] == "running" and after["web"]["started_at"] > before["web"]
    assert after["worker"]["started_at"] == before["worker"]  # only web was restarted
    r = cli("restart", "--app", APP, "no;such")
    assert r.code == 2 and "Traceback" not in r.err, str(r)


def test_a_stopped_service_makes_status_exit_3_until_restarted(cli, deployed, session_api_remote):
    # The clock process dies (stopped behind labdeploy's back, as a crash would leave it).
    ids = session_api_remote.run(["docker", "ps", "-q", "--filter", f"label=labdeploy.app={APP}",
                                  "--filter", "label=labdeploy.service=clock"]).stdout.split()
    assert len(ids) == 1
    session_api_remote.run(["docker", "stop", "-t", "2", ids[0]], timeout=60)
    r = cli("status", "--app", APP)
    assert r.code == 3 and "clock" in r.err and f"labdeploy logs --app {APP} --service clock" in r.err, str(r)
    r = cli("exec", "--app", APP, "--service", "clock", "--", "true")
    assert r.code == 3 and f"labdeploy restart --app {APP} clock" in r.err, str(r)
    cli.ok("restart", "--app", APP, "clock")
    rows = cli.ok("status", "--app", APP, "--json").json()
    assert all(row["state"] == "running" for row in rows)


def test_connections_summary_shows_the_app_database(cli, deployed):
    import subprocess

    # The example opens a connection per request; hold one open for the snapshot, from inside
    # the app's worker container (with the app's own DATABASE_URL).
    hold = ("import os, time, psycopg; c = psycopg.connect(os.environ['DATABASE_URL'], "
            "application_name='t-cli-hold'); c.execute('select 1'); time.sleep(15)")
    holder = subprocess.Popen([str(LABDEPLOY), "exec", "--app", APP, "--service", "worker", "--", "python", "-c",
                               hold], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=cli.env,
                              cwd=str(cli.home))
    try:
        deadline = time.monotonic() + 20
        while True:
            every = cli.ok("connections", "--all", "--json").json()
            if any(c.get("application_name") == "t-cli-hold" for c in every) or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        held = [c for c in every if c.get("application_name") == "t-cli-hold"]
        assert held and held[0]["database"] == "app_t_cli_app", every
        result = cli.ok("connections", "--json").json()
    finally:
        holder.terminate()
        holder.wait(timeout=30)
    assert result["max_connections"] >= 10 and result["total"] >= 1
    rows = {row["database"]: row for row in result["databases"]}
    assert rows["app_t_cli_app"]["app"] == APP and rows["app_t_cli_app"]["connections"] >= 1
    assert result["total"] == sum(r["connections"] for r in rows.values())
    text = cli.ok("connections").out
    assert "app_t_cli_app" in text and f"of {result['max_connections']} connections in use" in text
    # --check: exit 3 when the threshold is passed (a tiny threshold makes the app's use count).
    r = cli("connections", "--check", "--threshold", "0.01")
    assert r.code == 3 and "connection" in r.err, str(r)


def test_export_writes_a_zip_with_every_table(cli, deployed, tmp_path):
    out = tmp_path / "pilot.zip"
    r = cli.ok("export", "--app", APP, "--out", str(out), "--json")
    result = r.json()
    assert result["paths"] == [str(out)] and out.exists()
    tables = {t["table"] for t in result["tables"]}
    assert {"participants", "responses"} <= tables, tables
    with zipfile.ZipFile(out) as z:
        assert any("participants" in n for n in z.namelist())
    r = cli("export", "--app", APP, "--out", str(out))
    assert r.code == 2 and "--overwrite" in r.err, str(r)
    anon = cli.ok("export", "--app", APP, "--anonymous", "--out", str(tmp_path / "shared"), "--json").json()
    assert len(anon["paths"]) == 1 and "anonymous" in anon["paths"][0]


def test_destroy_needs_confirmation_then_removes_the_app(cli, deployed, testbed, tmp_path):
    r = cli("destroy", "--app", APP)  # stdin is not a terminal: no prompt, refuse
    assert r.code == 4 and "--yes" in r.err and "Traceback" not in r.err, str(r)
    assert through_caddy(testbed, APP).status_code == 200  # nothing happened
    # From a computer that never exported this app, deleting its data is refused.
    other = CLI(tmp_path)
    s = testbed["ssh"]
    other.ok("servers", "add", "tb", "--host", s["host"], "--user", s["user"], "--key", s["key"],
             "--trust-host-key", s["host_key_fingerprint"])
    r = other("destroy", "--app", APP, "--remove-data", "--yes")
    assert r.code == 1 and "no saved export" in r.err, str(r)
    assert f"Export first (`labdeploy export --app {APP}`)" in r.err and "--no-export-check" in r.err  # CLI words
    assert through_caddy(testbed, APP).status_code == 200  # still serving
    r = cli.ok("destroy", "--app", APP, "--yes", "--json")
    assert "containers" in r.json()["removed"] and "database" in r.json()["kept"]
    assert APP not in {row["app"] for row in cli.ok("apps", "--json").json()}
    try:
        page = through_caddy(testbed, APP).text
    except requests.ConnectionError:  # no site left at all: Caddy listens nowhere
        page = ""
    assert "Colour naming study" not in page
    # A new deploy under the same name stops and asks what to do with the data that was kept.
    r = cli("deploy", "--app", APP, str(EXAMPLE), "--build-arg", f"BASE_IMAGE={testbed['images']['python']}",
            "--redis-image", testbed["images"]["redis"])
    assert r.code == 1 and "--reuse-data" in r.err and "--replace-data" in r.err, str(r)
    # The data that was kept goes too, after a final export of both versions and the app's files
    # (its containers are gone already, so there are no logs to save).
    final = tmp_path / "final"
    r = cli.ok("destroy", "--app", APP, "--remove-data", "--final-export", final, "--export-mode", "both",
               "--files", "--logs", "--yes", "--json", timeout=600)
    done = r.json()
    assert "database and role" in done["removed"], done
    assert sorted(Path(p).name.endswith("-anonymous-data.zip") for p in done["exported"][:2]) == [False, True]
    assert (final / f"{APP}-files").is_dir() and not (final / f"{APP}-logs.txt").exists()


def test_unlock_breaks_a_left_lock_only_after_confirmation(cli, registered, session_api_remote):
    from labdeploy.server import locks

    locks.DeployLock(session_api_remote, "t-cli-locked").acquire()  # as a deploy cut off mid-way leaves it
    r = cli("unlock", "--app", "t-cli-locked")
    assert r.code == 4 and "--yes" in r.err, str(r)
    assert locks.read_lock(session_api_remote, "t-cli-locked") is not None
    cli.ok("unlock", "--app", "t-cli-locked", "--yes")
    assert locks.read_lock(session_api_remote, "t-cli-locked") is None
    assert "nothing to do" in cli.ok("unlock", "--app", "t-cli-locked").err


# ------------------------------------------------------------------ bad input, errors


def test_hostile_app_name_is_refused_before_anything_runs(cli, registered):
    for bad in ("x;rm -rf ~", "../etc", "App", "-x", "a" * 60):
        r = cli("logs", "--app", bad)
        assert r.code == 2, str(r)
        assert "Traceback" not in r.err and "What to do" in r.err
    r = cli("destroy", "--app", "$(reboot)", "--yes")
    assert r.code == 2 and "can't be used" in r.err, str(r)


def test_debug_shows_the_traceback(cli, registered):
    r = cli("status", "--app", "Bad Name", "--debug")
    assert r.code == 2 and "Traceback (most recent call last)" in r.err and "can't be used" in r.err, str(r)
    r = cli("--debug", "apps", "--server", "nope")
    assert r.code == 2 and "Traceback" in r.err, str(r)
