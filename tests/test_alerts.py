"""The alert watcher on the testbed, with a webhook receiver (http.server) and a mailbox
(aiosmtpd) run by the test on this machine, which the server's containers reach: a stopped web
container gives one alert and one recovery on both channels; a disk threshold above the free
space alerts; a flapping container alerts once per quiet period; the watcher keeps its incidents
across a restart; a webhook that is down does not stop it (the mail still goes).

The apps are containers with labdeploy's labels and a deploy.json (what the watcher reads), not
full deploys: what is watched is the container, and this keeps the tests short. Checks run
every 2 s here (interval_s) instead of every minute."""

from __future__ import annotations

import json
import secrets
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from deploy_support import prepare_local_stack
from labdeploy.server import alerts, layout

pytest.importorskip("aiosmtpd")
from aiosmtpd.controller import Controller  # noqa: E402

# One server: the watcher reads Docker's API, which answers alike on both engines: proved on the
# current one (Compose v2).
pytestmark = pytest.mark.servers("trixie")


class Inbox:
    def __init__(self) -> None:
        self.items: list[str] = []
        self.lock = threading.Lock()

    def add(self, text: str) -> None:
        with self.lock:
            self.items.append(text)

    def about(self, word: str) -> list[str]:
        with self.lock:
            return [t for t in self.items if word in t]


def _host_address(testbed) -> str:
    """This machine's address on the server's network (10.250.x.1)."""
    return testbed["ssh"]["host"].rsplit(".", 1)[0] + ".1"


@pytest.fixture(scope="module")
def receivers(testbed):
    address = _host_address(testbed)
    hooks, mails = Inbox(), Inbox()

    class Hook(BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            hooks.add(json.loads(body).get("text", ""))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    web = ThreadingHTTPServer((address, 0), Hook)
    threading.Thread(target=web.serve_forever, daemon=True).start()

    class Mail:
        async def handle_DATA(self, server, session, envelope):
            mails.add(envelope.content.decode("utf-8", "replace"))
            return "250 OK"

    with socket.socket() as s:
        s.bind((address, 0))
        smtp_port = s.getsockname()[1]
    smtp = Controller(Mail(), hostname=address, port=smtp_port)
    smtp.start()
    yield {"address": address, "hook": f"http://{address}:{web.server_address[1]}/hook", "smtp_port": smtp_port,
           "hooks": hooks, "mails": mails}
    smtp.stop()
    web.shutdown()


@pytest.fixture(scope="module")
def watcher(testbed, session_remote, receivers):
    remote = session_remote
    prepare_local_stack(remote, testbed)
    alerts.set(remote, webhook_url=receivers["hook"], email_to=["researcher@lab.example.org"],
               email_from="watcher@lab.example.org", smtp_host=receivers["address"], smtp_port=receivers["smtp_port"],
               smtp_security="none", interval_s=2, quiet_minutes=0, disk_free_min_pct=0, memory_max_pct=100)
    yield remote
    alerts.set(remote, webhook_url="", email_to=[], interval_s=60, quiet_minutes=30, disk_free_min_pct=10,
               memory_max_pct=90)


class FakeApp:
    """web and worker containers with labdeploy's labels, and a deploy.json: what the watcher sees."""

    def __init__(self, remote, testbed, kind: str) -> None:
        self.remote, self.name = remote, f"t-al-{kind}-{secrets.token_hex(2)}"
        remote.makedirs(layout.app_dir(self.name), 0o755)
        remote.put_bytes(layout.app_state(self.name), json.dumps({"app": self.name, "version": "1"}).encode())
        for service in ("web", "worker"):
            remote.run(["docker", "run", "-d", "--name", f"{self.name}-{service}", "--restart", "unless-stopped",
                        "--label", f"labdeploy.app={self.name}", "--label", f"labdeploy.service={service}",
                        testbed["images"]["python"], "sleep", "100000"])

    def web(self, action: str) -> None:
        self.remote.run(["docker", action, f"{self.name}-web"])

    def remove(self) -> None:
        self.remote.run(["docker", "rm", "-f", f"{self.name}-web", f"{self.name}-worker"], check=False)
        self.remote.run(["rm", "-rf", "--", layout.app_dir(self.name), layout.app_backups(self.name)], check=False)

    @property
    def web_text(self) -> str:
        """What messages about its web process contain (the backup service also finds no database for it)."""
        return f"{self.name}: the web process"


@pytest.fixture
def app_factory(testbed, watcher):
    made = []

    def make(kind: str) -> FakeApp:
        made.append(FakeApp(watcher, testbed, kind))
        return made[-1]

    yield make
    for app in made:
        app.remove()


def wait_for(what, predicate, timeout: float = 90.0):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(1)


def events(remote, key: str) -> list[str]:
    df = alerts.history(remote)
    return list(df[df["key"] == key]["event"])


def test_a_stopped_web_container_gives_one_alert_and_one_recovery_by_webhook_and_mail(watcher, receivers,
                                                                                       app_factory):
    app = app_factory("stop")
    key, about = f"container:{app.name}:web", app.web_text
    hooks, mails = receivers["hooks"], receivers["mails"]
    time.sleep(6)  # a few rounds with the app up: nothing to say
    assert hooks.about(about) == []
    app.web("stop")
    wait_for("the alert", lambda: hooks.about(about) and mails.about(about))
    time.sleep(6)  # later rounds with the same incident send nothing more
    assert len(hooks.about(about)) == 1 and len(mails.about(about)) == 1
    assert "web process is not running" in hooks.about(about)[0]
    app.web("start")
    wait_for("the recovery", lambda: len(hooks.about(about)) == 2 and len(mails.about(about)) == 2)
    assert "recovered" in hooks.about(about)[1] and "Subject: [labdeploy] recovered" in mails.about(about)[1]
    assert events(watcher, key) == ["alert", "recovered"]


def test_a_disk_threshold_above_the_free_space_alerts(watcher, receivers):
    hooks = receivers["hooks"]
    before = len(hooks.about("disk space low"))
    try:
        alerts.set(watcher, disk_free_min_pct=100)
        wait_for("the disk alert", lambda: len(hooks.about("disk space low")) > before)
    finally:
        alerts.set(watcher, disk_free_min_pct=0)
    wait_for("the disk recovery", lambda: any("recovered: disk space low" in t for t in hooks.items[-5:]))


def test_a_flapping_container_alerts_once_per_quiet_period(watcher, receivers, app_factory):
    app = app_factory("flap")
    key = f"container:{app.name}:web"
    alerts.set(watcher, quiet_minutes=30)
    try:
        for n in range(3):
            app.web("stop")
            wait_for("the incident", lambda: len(events(watcher, key)) == 2 * n + 1)
            app.web("start")
            wait_for("its end", lambda: len(events(watcher, key)) == 2 * n + 2)
    finally:
        alerts.set(watcher, quiet_minutes=0)
    assert events(watcher, key) == ["alert", "recovered", "suppressed", "recovered", "suppressed", "recovered"]
    hooks = receivers["hooks"].about(app.web_text)
    assert len(hooks) == 2 and "recovered" in hooks[1]  # one alert and its recovery, not six messages


def test_the_watcher_keeps_its_incidents_across_a_restart(watcher, receivers, app_factory):
    app = app_factory("restart")
    policy = watcher.run(["docker", "inspect", "-f", "{{.HostConfig.RestartPolicy.Name}}", alerts.CONTAINER])
    assert policy.stdout.strip() == "unless-stopped"  # back after a reboot or a Docker restart
    app.web("stop")
    wait_for("the alert", lambda: receivers["hooks"].about(app.web_text))
    watcher.run(["docker", "restart", alerts.CONTAINER])
    time.sleep(6)
    assert len(receivers["hooks"].about(app.web_text)) == 1  # the open incident was remembered: no second alert
    app.web("start")
    wait_for("the recovery", lambda: len(receivers["hooks"].about(app.web_text)) == 2)


def test_a_webhook_that_is_down_does_not_stop_the_watcher(watcher, receivers, app_factory):
    with socket.socket() as s:  # a port nothing listens on
        s.bind((receivers["address"], 0))
        dead = f"http://{receivers['address']}:{s.getsockname()[1]}/hook"
    alerts.set(watcher, webhook_url=dead)
    try:
        app = app_factory("down")
        app.web("stop")
        wait_for("the mail", lambda: receivers["mails"].about(app.web_text))
        app.web("start")
        wait_for("the recovery mail", lambda: len(receivers["mails"].about(app.web_text)) == 2)
        df = alerts.history(watcher)
        sent = df[df["key"] == f"container:{app.name}:web"]["sent"].tolist()
        assert all(s["email"] == "" and s["webhook"] for s in sent)  # the webhook's error, the mail sent
    finally:
        alerts.set(watcher, webhook_url=receivers["hook"])


def test_test_message_settings_and_secrets(watcher, receivers):
    before = len(receivers["hooks"].about("test alert"))
    df = alerts.test(watcher)
    assert dict(zip(df["channel"], df["ok"])) == {"webhook": True, "email": True}
    assert len(receivers["hooks"].about("test alert")) == before + 1
    listed = dict(zip(*alerts.list(watcher).T.values))
    assert listed["webhook"] == "set" and listed["email_to"] == "researcher@lab.example.org"
    for name in (alerts.WEBHOOK_SECRET,):
        assert watcher.run(["stat", "-c", "%a", alerts.secret_path(name)]).stdout.strip() == "600"
    compose_text = watcher.get_bytes(layout.stack_compose()).decode()
    assert receivers["hook"] not in compose_text and receivers["hook"] not in json.dumps(
        json.loads(watcher.get_bytes(alerts.config_path())))


def test_doctor_reports_every_area_with_what_to_do(watcher, app_factory):
    from labdeploy.watch import doctor

    app = app_factory("doc")
    app.web("stop")
    df = doctor.doctor(watcher)
    assert {"readiness", "apps", "disk", "memory", "locks", "backups", "alerts", "connections"} <= set(df["area"])
    bad = df[(df["area"] == "apps") & (df["subject"] == f"{app.name} web")]
    assert len(bad) == 1 and not bad["ok"].iloc[0] and "Restart" in bad["what_to_do"].iloc[0]
    assert (df[df["ok"]]["what_to_do"] == "").all() and (df[~df["ok"]]["what_to_do"] != "").all()
    channels = df[(df["area"] == "alerts") & (df["subject"] == "channels")]
    assert channels["ok"].iloc[0] and "webhook" in channels["detail"].iloc[0]


def test_cli_alerts_and_doctor(testbed, watcher, receivers, tmp_path):
    from upkeep_support import registered_cli

    cli = registered_cli(testbed, tmp_path)
    listed = {r["setting"]: r["value"] for r in cli.ok("alerts", "list", "--server", "tb", "--json").json()}
    assert listed["webhook"] == "set" and listed["interval_s"] == 2
    before = len(receivers["hooks"].about("test alert"))
    cli.ok("alerts", "test", "--server", "tb")
    assert len(receivers["hooks"].about("test alert")) == before + 1
    secret = cli.ok("alerts", "set", "--server", "tb", "--webhook-url-stdin", input=receivers["hook"] + "\n")
    assert receivers["hook"] not in secret.out + secret.err  # the URL is a secret: never shown
    refused = cli("alerts", "set", "--server", "tb", "--memory-max", "500")
    assert refused.code == 2 and "memory_max_pct" in refused.err
    report = cli("doctor", "--server", "tb", "--json")
    assert report.code in (0, 1) and {r["area"] for r in report.json()} >= {"apps", "disk", "alerts"}


def test_an_app_answering_server_errors_alerts_and_recovers(testbed, watcher, receivers, app_factory):
    """Caddy's access log (written by every labdeploy site) gives each app's error rate: a site
    whose web process is unreachable answers 502 to every request."""
    import requests

    from labdeploy.server import caddy, stack

    app, started = app_factory("web5xx"), int(time.time())
    alerts.set(watcher, web_min_requests=10, web_error_max_pct=50)
    try:
        stack.route_site(watcher, app.name, caddy.site_block(app.name, stack.read_settings(watcher)))
        http = testbed["http"]
        # Only the web messages: the backup service may also report a fake app without a database.
        web = f"{app.name}: "
        about = lambda: [t for t in receivers["hooks"].about(web) if "requests failed with a server error" in t]  # noqa: E731
        statuses = set()
        wait_for_hit = time.monotonic() + 90
        while not about() and time.monotonic() < wait_for_hit:
            for _ in range(15):  # a round's worth of failing requests (the watcher reads every 2 s)
                statuses.add(requests.get(f"http://{http['host']}:{http['port']}/x?workerId=w1",
                                          headers={"Host": f"{app.name}.localhost"}, timeout=10).status_code)
            time.sleep(1)
        assert statuses == {502} and about(), (statuses, receivers["hooks"].about(web))
        wait_for("the recovery (no requests, no errors)", lambda: len(about()) == 2)
        assert "recovered" in about()[1]
        assert events(watcher, f"web:{app.name}")[:2] == ["alert", "recovered"]
        logs = watcher.run(["docker", "logs", "--since", str(started), layout.CADDY_CONTAINER]).stderr
        assert f'"host":"{app.name}.localhost"' in logs and '"status":502' in logs
        assert "workerId" not in logs and "python-requests" not in logs  # neither access nor error lines keep them
    finally:
        alerts.set(watcher, web_min_requests=20, web_error_max_pct=10)
        watcher.run(["rm", "-f", layout.caddy_site(app.name)], check=False)
        stack.reload_caddy(watcher)


def test_a_recreated_watcher_keeps_its_incidents_and_records_the_trend(testbed, watcher, receivers, app_factory):
    """The stack brought up again after its watcher was removed (a Docker reinstall, a pruned
    container): the open incident is remembered, and disk and memory samples accumulate."""
    from labdeploy.watch import doctor

    alerts.set(watcher, sample_every_s=2)
    app = app_factory("recreate")
    try:
        app.web("stop")
        wait_for("the alert", lambda: receivers["hooks"].about(app.web_text))
        watcher.run(["docker", "rm", "-f", alerts.CONTAINER])
        prepare_local_stack(watcher, testbed)
        assert watcher.run(["docker", "inspect", "-f", "{{.State.Running}}", alerts.CONTAINER]).stdout.strip() == "true"
        wait_for("samples", lambda: len(alerts.usage(watcher)) >= 3)
        time.sleep(4)
        assert len(receivers["hooks"].about(app.web_text)) == 1  # no second alert after the recreate
        app.web("start")
        wait_for("the recovery", lambda: len(receivers["hooks"].about(app.web_text)) == 2)
        usage = alerts.usage(watcher)
        assert (usage["disk_total_gb"] > 0).all() and usage["time"].is_monotonic_increasing
        trend = doctor.trend_rows(usage)
        assert [r["subject"] for r in trend] == ["memory", "disk"] and "GB free" in trend[1]["detail"]
    finally:
        alerts.set(watcher, sample_every_s=600)
