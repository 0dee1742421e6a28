"""The shared stack on the testbed server: prepare, idempotency, Caddy sites, reload.

The stack is shared with other engineers' tests: these tests leave it running.
"""

import time
import uuid

import pytest
import requests
import yaml

from labdeploy.server import layout, stack
from labdeploy.progress import Collector


@pytest.fixture(scope="module")
def settings(testbed):
    return stack.StackSettings.for_images(testbed["images"], domain="localhost")


@pytest.fixture(scope="module")
def prepared(session_remote, settings):
    stack.prepare(session_remote, settings)
    return session_remote


def test_prepare_twice_second_run_changes_nothing(session_remote, settings):
    stack.prepare(session_remote, settings)
    r = session_remote
    ids = r.run(["docker", "inspect", "-f", "{{.Id}} {{.State.StartedAt}}",
                 layout.POSTGRES_CONTAINER, layout.CADDY_CONTAINER]).stdout
    password = r.get_bytes(layout.postgres_password_file())
    collector = Collector()
    result = stack.prepare(r, settings, collector)
    assert not result.changed, result
    assert set(result.unchanged) >= {layout.stack_compose(), layout.caddyfile(), layout.stack_state()}
    assert r.get_bytes(layout.postgres_password_file()) == password
    # Same containers, not restarted.
    assert r.run(["docker", "inspect", "-f", "{{.Id}} {{.State.StartedAt}}",
                  layout.POSTGRES_CONTAINER, layout.CADDY_CONTAINER]).stdout == ids
    assert collector.steps() == ["check docker", "write files", "start services", "wait for postgresql",
                                 "record settings"]


def test_layout_and_modes_on_the_server(prepared):
    r = prepared
    modes = r.run(["stat", "-c", "%a %n", layout.secrets_dir(), layout.postgres_password_file()]).stdout.split()
    assert modes[0] == "700" and modes[2] == "600"
    password = r.get_bytes(layout.postgres_password_file()).decode()
    assert len(password) >= 32
    compose_text = r.get_bytes(layout.stack_compose()).decode()
    assert password not in compose_text
    assert password not in r.get_bytes(layout.stack_state()).decode()
    doc = yaml.safe_load(compose_text)
    # backup: the scheduled backups (issue 17); alerts: the alert watcher (issue 21)
    assert set(doc["services"]) == {"postgresql", "caddy", "backup", "alerts"}
    assert "import caddy.d/*" in r.get_bytes(layout.caddyfile()).decode()
    # The password never shows on a process command line.
    assert password not in r.run(["ps", "-eo", "args"]).stdout
    assert stack.read_settings(r).caddy_image == doc["services"]["caddy"]["image"]


def test_a_name_with_no_app_gets_a_clear_404_not_a_refused_connection(prepared, testbed):
    r = requests.get(f"http://{testbed['http']['host']}:{testbed['http']['port']}/",
                     headers={"Host": f"t-nobody-{uuid.uuid4().hex[:6]}.localhost"}, timeout=15)
    assert r.status_code == 404 and "No experiment is deployed at this address" in r.text


def test_the_seed_debugging_command_works(prepared):
    # `cd ~/dallinger && docker compose exec postgresql psql -U dallinger` from the seed, with v1 or v2.
    from labdeploy.server import compose
    out = compose.run_compose(prepared, layout.ROOT, ["exec", "-T", "postgresql", "psql", "-U", "dallinger",
                                                      "-tAc", "select current_user"]).stdout
    assert out.strip() == "dallinger"


def test_postgres_uses_the_generated_password_over_tcp(prepared):
    # Proves the password file reached initdb: a TCP login (scram) with it succeeds, a wrong one fails.
    r = prepared
    script = ('PGPASSWORD="$(cat)" psql -h 127.0.0.1 -U dallinger -d dallinger -X -tAc "select 42"')
    ok = r.run(["docker", "exec", "-i", layout.POSTGRES_CONTAINER, "sh", "-c", script],
               stdin=r.get_bytes(layout.postgres_password_file()))
    assert ok.stdout.strip() == "42"
    bad = r.run(["docker", "exec", "-i", layout.POSTGRES_CONTAINER, "sh", "-c", script], stdin=b"wrong", check=False)
    assert bad.exit_status != 0 and "password authentication failed" in bad.stderr


def test_a_site_in_caddy_d_is_served_after_reload(prepared, testbed):
    r = prepared
    app = f"t-setup-site-{uuid.uuid4().hex[:6]}"
    hostname = f"{app}.localhost"
    path = layout.caddy_site(app)
    r.put_bytes(path, f"http://{hostname} {{\n\trespond \"hello from {app}\" 200\n}}\n")
    try:
        stack.reload_caddy(r)
        url = f"http://{testbed['http']['host']}:{testbed['http']['port']}/"
        body = None
        for _ in range(20):
            resp = requests.get(url, headers={"Host": hostname}, timeout=5)
            if resp.status_code == 200:
                body = resp.text
                break
            time.sleep(0.25)
        assert body == f"hello from {app}"
    finally:
        r.remove(path)
        stack.reload_caddy(r)


def test_a_broken_site_is_refused_and_the_old_config_stays(prepared):
    r = prepared
    app = f"t-setup-bad-{uuid.uuid4().hex[:6]}"
    path = layout.caddy_site(app)
    r.put_bytes(path, "this is { not a caddyfile\n")
    try:
        with pytest.raises(stack.StackError) as info:
            stack.reload_caddy(r)
        assert "caddy.d" in info.value.hint
    finally:
        r.remove(path)
        stack.reload_caddy(r)
    assert stack.is_running(r)


def test_a_file_not_written_by_labdeploy_is_kept_before_replacing(remote):
    # The helper prepare() uses, on a scratch folder of this test (not the shared stack's files).
    base = f"t-setup-own-{uuid.uuid4().hex[:6]}"
    path = f"{base}/docker-compose.yml"
    remote.makedirs(base)
    try:
        remote.put_bytes(path, b"services: {hand: {image: x}}\n")
        result, collector = stack.PrepareResult(), Collector()
        assert stack._write_if_changed(remote, path, "# Written by labdeploy\nnew\n", 0o644, result, collector)
        assert len(result.backups) == 1 and remote.get_bytes(result.backups[0]) == b"services: {hand: {image: x}}\n"
        assert collector.events and "not written by labdeploy" in collector.events[0].message
        # Our own file is simply replaced (no new backup), and the same content is not rewritten.
        assert stack._write_if_changed(remote, path, "# Written by labdeploy\nnewer\n", 0o644, result, collector)
        assert not stack._write_if_changed(remote, path, "# Written by labdeploy\nnewer\n", 0o644, result, collector)
        assert len(result.backups) == 1
    finally:
        remote.run(["rm", "-rf", "--", base])


def test_two_prepares_at_once_take_turns(prepared, settings, testbed, known_hosts):
    import threading
    from labdeploy.remote import Remote

    s = testbed["ssh"]
    remotes = [Remote(s["host"], s["port"], s["user"], key_filename=s["key"], known_hosts=known_hosts,
                      use_agent=False) for _ in range(2)]
    collectors = [Collector(), Collector()]
    errors = []

    def run(i):
        try:
            stack.prepare(remotes[i], settings, collectors[i])
        except Exception as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    for r in remotes:
        r.close()
    assert errors == []
    assert all(c.steps()[-1] == "record settings" for c in collectors)
    assert stack.is_running(prepared)
