"""Drive the setup panel by clicking its buttons, against the testbed."""

import signal
import subprocess
import time

import ipywidgets as W
import pytest

from labdeploy.ssh import servers

from labdeploy.widgets.setup import SetupPanel

# The panels and notebooks drive the same core calls that run on both servers in the API tests;
# to keep the suite's time they run on one (the trixie server runs the PsyNet tests instead).
pytestmark = pytest.mark.servers("bookworm")

TIMEOUT = 120


def click(panel, button):
    button.click()
    if panel.last_task is not None:
        panel.last_task.join(TIMEOUT)
        assert not panel.last_task.is_alive(), "step did not finish"


def all_strings(widget):
    """Every string value in the widget tree (to prove no secret lands in one)."""
    out, stack = [], [widget]
    while stack:
        w = stack.pop()
        for attr in ("value", "description", "placeholder"):
            v = getattr(w, attr, None)
            if isinstance(v, str):
                out.append(v)
        stack.extend(getattr(w, "children", ()) or ())
    return out


@pytest.fixture
def panel_for(home, testbed, monkeypatch):
    monkeypatch.setenv("LABDEPLOY_TESTBED", testbed["file"])

    def make(user):
        return SetupPanel(server_name="t-setup-panel", host=testbed["ssh"]["host"], port=testbed["ssh"]["port"],
                          user=user)
    return make


def test_full_journey_with_an_existing_key(panel_for, testbed, home):
    p = panel_for(testbed["ssh"]["user"])
    p.key_box.value = testbed["ssh"]["key"]
    click(p, p.use_key_button)
    assert p.steps.state("SSH key") == "done"

    click(p, p.agent_button)  # no agent runs for this test: a clear failure, and the journey goes on
    assert p.steps.state("ssh-agent") == "optional"  # optional: never red
    assert "ssh-agent" in p.message.value and "What to do" in p.message.value

    click(p, p.check_host_button)
    assert p.steps.state("Host key") == "pending"
    assert testbed["ssh"]["host_key_fingerprint"] in p.fingerprint_html.value
    assert p.trust_host_button.layout.display != "none"
    assert not (home / ".ssh" / "known_hosts").exists()
    click(p, p.trust_host_button)
    assert p.steps.state("Host key") == "done"
    assert testbed["ssh"]["host_key_fingerprint"].split(":")[1][:10] in p.steps.value

    p.password_box.value = testbed["ssh"]["password"]
    click(p, p.copy_button)
    assert p.steps.state("Copy key") == "done", p.message.value
    assert "already there" in p.steps.value  # the testbed key is installed: nothing appended
    assert p.password_box.value == ""

    click(p, p.verify_button)
    assert p.steps.state("Verify login") == "done", p.message.value

    click(p, p.register_button)
    assert p.steps.state("Register") == "done"
    assert servers.get("t-setup-panel").user == testbed["ssh"]["user"]

    click(p, p.readiness_button)
    assert p.steps.state("Readiness") == "done", p.message.value
    assert "held by labdeploy" in p.table_html.value or "free" in p.table_html.value
    assert p.readiness_table["ok"].all()

    click(p, p.prepare_button)
    assert p.steps.state("Prepare server") == "done", p.message.value
    assert p.prepare_result is not None and p.log.value
    assert testbed["ssh"]["password"] not in "\n".join(all_strings(p.widget))
    assert isinstance(p.widget, W.VBox) and "labdeploy-setup-prepare" in p.prepare_button._dom_classes

    # This server is no Swarm manager: "Prepare as a Swarm manager" says so, and changes nothing.
    click(p, p.swarm_button)
    assert p.steps.state("Prepare server") == "failed" and "not a Swarm manager" in p.message.value

    # Remove server…: the first click only asks; Yes, remove forgets the local entry alone.
    click(p, p.removal.remove_button)
    assert "Remove t-setup-panel?" in p.removal.html.value
    assert "t-setup-panel" in [s.name for s in servers.list_servers()]
    click(p, p.removal.confirm_button)
    assert "t-setup-panel" not in [s.name for s in servers.list_servers()], p.message.value
    assert p.steps.state("Register") == "pending" and p.removal.html.value == ""
    click(p, p.verify_button)  # the server itself is untouched: the key still logs in
    assert p.steps.state("Verify login") == "done", p.message.value


@pytest.fixture
def agent(home, tmp_path, monkeypatch):
    sock = tmp_path / "agent.sock"
    proc = subprocess.Popen(["ssh-agent", "-D", "-a", str(sock)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    for _ in range(100):
        if sock.exists():
            break
        time.sleep(0.05)
    monkeypatch.setenv("SSH_AUTH_SOCK", str(sock))
    yield sock
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=5)


@pytest.fixture
def nodocker_admin(testbed, known_hosts):
    from labdeploy.remote import Remote
    r = Remote(testbed["ssh"]["host"], 22, testbed["ssh"]["user_nodocker"], key_filename=testbed["ssh"]["key"],
               known_hosts=known_hosts, use_agent=False)
    r.connect()
    yield r
    r.close()


def test_new_key_journey_and_faults_for_a_user_outside_the_docker_group(panel_for, testbed, home, agent,
                                                                         nodocker_admin):
    p = panel_for(testbed["ssh"]["user_nodocker"])
    p.passphrase_box.value = "panel-passphrase"
    click(p, p.create_key_button)
    assert p.steps.state("SSH key") == "done", p.message.value
    assert p.passphrase_box.value == ""  # read once, box cleared
    key = home / ".ssh" / "id_ed25519"
    body = key.with_suffix(".pub").read_text().split()[1]
    original = key.read_bytes()

    click(p, p.create_key_button)  # again: refuses to overwrite
    assert p.steps.state("SSH key") == "failed"
    assert "never overwrites" in p.message.value and key.read_bytes() == original

    click(p, p.agent_button)
    assert p.steps.state("ssh-agent") == "done", p.message.value

    click(p, p.check_host_button)
    click(p, p.trust_host_button)
    assert p.steps.state("Host key") == "done"

    try:
        p.password_box.value = "wrong-password"
        click(p, p.copy_button)
        assert p.steps.state("Copy key") == "failed"
        assert "password" in p.message.value.lower() and "What to do" in p.message.value
        assert "wrong-password" not in p.message.value
        assert body not in nodocker_admin.get_bytes(".ssh/authorized_keys").decode()

        p.password_box.value = testbed["ssh"]["password"]
        click(p, p.copy_button)
        assert p.steps.state("Copy key") == "done", p.message.value
        click(p, p.verify_button)
        assert p.steps.state("Verify login") == "done", p.message.value

        click(p, p.readiness_button)
        assert p.steps.state("Readiness") == "failed"
        assert "usermod -aG docker" in p.table_html.value

        had_dir = nodocker_admin.exists("dallinger")
        click(p, p.prepare_button)
        assert p.steps.state("Prepare server") == "failed"
        assert "docker" in p.message.value.lower() and "What to do" in p.message.value
        assert nodocker_admin.exists("dallinger") == had_dir
    finally:
        lines = nodocker_admin.get_bytes(".ssh/authorized_keys").decode().splitlines(keepends=True)
        nodocker_admin.put_bytes(".ssh/authorized_keys", "".join(l for l in lines if body not in l), mode=0o600)
    for secret in ("panel-passphrase", testbed["ssh"]["password"], "wrong-password"):
        assert secret not in "\n".join(all_strings(p.widget))


def test_changed_host_key_and_bad_input_are_shown_with_hints(panel_for, testbed, home):
    kh = home / ".ssh" / "known_hosts"
    kh.parent.mkdir(mode=0o700)
    kh.write_text(f"{testbed['ssh']['host']} ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIEKG7ZfiqLS0yLYzt6nDlfCjDneJrc3Lt2oUPSPG9qLD\n")
    before = kh.read_bytes()
    p = panel_for(testbed["ssh"]["user"])
    click(p, p.check_host_button)
    assert p.steps.state("Host key") == "failed"
    assert "rebuilt" in p.message.value and p.trust_host_button.layout.display == "none"
    assert kh.read_bytes() == before

    p.host_box.value = "10.250.0.2; touch /tmp/t-setup-x"
    click(p, p.check_host_button)
    assert p.steps.state("Host key") == "failed" and "not a valid host name" in p.message.value

    p.host_box.value = testbed["ssh"]["host"]
    p.port_box.value = 2
    click(p, p.check_host_button)
    assert p.steps.state("Host key") == "failed" and "port" in p.message.value.lower()

    p.domain_box.value = "bad domain!"
    click(p, p.prepare_button)
    assert p.steps.state("Prepare server") == "failed" and "What to do" in p.message.value


def test_changing_the_server_fields_drops_the_verified_connection(panel_for, testbed, known_hosts):
    p = panel_for(testbed["ssh"]["user"])
    p.known_hosts = str(known_hosts)
    p.key_box.value = testbed["ssh"]["key"]
    click(p, p.verify_button)
    assert p.steps.state("Verify login") == "done", p.message.value
    old = p.remote
    p.user_box.value = testbed["ssh"]["user_nodocker"]
    assert p.remote is None and not old.connected
