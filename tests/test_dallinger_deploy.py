"""End to end on the testbed: deploy our real Dallinger experiment with labdeploy (generated
Dockerfile on the testbed's Dallinger 12.4 base), launch it, take part through Caddy,
export every table, and read the zip with Dallinger's own `dallinger.data` loader.

dallinger is not installed in labdeploy's venv (it pins old Flask/SQLAlchemy and builds
psycopg2), so its loader runs inside the Dallinger image in the local engine.
"""

from __future__ import annotations

import subprocess
import zipfile
from pathlib import Path

import pytest
import requests

from labdeploy.app import deploy, maintenance
from labdeploy import export
from labdeploy.server import layout, psql
from labdeploy.app.appcompose import parse_env
from labdeploy.progress import Collector, LogLine
from deploy_support import destroy_if_deployed, prepare_local_stack

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "examples" / "dallinger-hello"
APP = "t-dal-e2e"
DALLINGER_TABLES = {"info", "network", "node", "notification", "participant", "question", "recruitment",
                    "transformation", "transmission", "vector"}
SMTP_SECRET = "t-dal-smtp-secret-4711"  # a secret only ~/.dallingerconfig holds


def through_caddy(testbed, path: str, method: str = "GET", **kw) -> requests.Response:
    return requests.request(method, f"http://{testbed['http']['host']}:{testbed['http']['port']}{path}",
                            headers={"Host": f"{APP}.localhost"}, timeout=30, **kw)


@pytest.fixture(scope="module")
def deployed(testbed, session_remote, tmp_path_factory):
    if "dallinger" not in testbed["images"]:
        pytest.fail("The testbed has no Dallinger image; run `sudo scripts/testbed up` (builds it once).",
                    pytrace=False)
    home = tmp_path_factory.mktemp("home")
    (home / ".dallingerconfig").write_text(f"[Email Access]\nsmtp_username = lab@example.org\n"
                                           f"smtp_password = {SMTP_SECRET}\n")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HOME", str(home))
        prepare_local_stack(session_remote, testbed)
        destroy_if_deployed(session_remote, APP)
        events = Collector()
        result = deploy.deploy(EXAMPLE, APP, session_remote, reporter=events,
                               build_args={"BASE_IMAGE": testbed["images"]["dallinger"]},
                               redis_image=testbed["images"]["redis"], start_timeout=180)
        yield {"result": result, "events": events, "home": home}
        destroy_if_deployed(session_remote, APP)


def test_deploy_launches_the_experiment(deployed, session_remote):
    events = deployed["events"]
    assert events.steps() == list(deploy.STEPS)
    launch_lines = [e.line for e in events.events if isinstance(e, LogLine) and e.line.startswith("/launch:")]
    assert launch_lines and launch_lines[0].startswith('/launch: {"status": "success"')  # (line is cut short)
    tables = set(psql.query_df(session_remote, "SELECT tablename FROM pg_tables WHERE schemaname = 'public'",
                               database="app_t_dal_e2e")["tablename"])
    assert DALLINGER_TABLES <= tables


def test_processes_run_dallingers_commands_with_the_environment_contract(deployed, session_remote):
    compose_text = session_remote.get_bytes(layout.app_compose(APP)).decode()
    for command in ("dallinger_heroku_web", "dallinger_heroku_worker"):
        assert command in compose_text
    # The example's config says clock_on = false: like Dallinger, no clock process at all.
    assert "dallinger_heroku_clock" not in compose_text
    running = session_remote.run(["docker", "ps", "--filter", f"label=labdeploy.app={APP}", "--format",
                                  '{{.Label "labdeploy.service"}}']).stdout.split()
    assert sorted(running) == ["pgbouncer", "redis", "web", "worker"]  # its own connection pooler too
    for line in ("PORT: '5000'", "HOST: 0.0.0.0", "HOME: /tmp", "recruiter: hotair", "smtp_username: lab@example.org"):
        assert line in compose_text
    secrets = parse_env(session_remote.get_bytes(layout.app_secrets(APP)).decode())
    assert secrets["smtp_password"] == SMTP_SECRET and secrets["FLASK_SECRET_KEY"]
    assert SMTP_SECRET not in compose_text and secrets["FLASK_SECRET_KEY"] not in compose_text
    assert session_remote.run(["stat", "-c", "%a", layout.app_secrets(APP)]).stdout.strip() == "600"
    # Inside the running web container: Dallinger reads the secret from the environment,
    # and the image's config.txt has no secret in it.
    probe = ("from dallinger.config import get_config; c = get_config(load=True); "
             "print(c.get('smtp_password') == open('/proc/self/environ').read().split('smtp_password=')[1]"
             ".split(chr(0))[0], c.get('mode'), c.get('recruiter'))")
    web = session_remote.run(["docker", "ps", "-q", "--filter", f"label=labdeploy.app={APP}",
                              "--filter", "label=labdeploy.service=web"]).stdout.split()[0]
    # -P: no current directory on sys.path, as in Dallinger's own entry points (else
    # /experiment/experiment.py shadows the experiment package).
    out = session_remote.run(["docker", "exec", "-w", "/experiment", web, "python3", "-P", "-c", probe])
    assert out.stdout.split()[-3:] == ["True", "sandbox", "hotair"], out.stdout + out.stderr
    cfg = session_remote.run(["docker", "exec", web, "cat", "/experiment/config.txt"])
    assert "recruiter = hotair" in cfg.stdout and SMTP_SECRET not in cfg.stdout


def test_a_participant_takes_part_through_caddy(deployed, testbed, session_remote):
    ad = through_caddy(testbed, "/ad?recruiter=hotair&assignmentId=A1&hitId=H1&workerId=W1&mode=sandbox")
    assert ad.status_code == 200 and "Begin" in ad.text, ad.text[:500]
    assert through_caddy(testbed, "/static/scripts/dallinger2.js").status_code == 200  # Dallinger's frontend
    p = through_caddy(testbed, "/participant/W1/H1/A1/sandbox?recruiter=hotair&fingerprint_hash=f1", "POST")
    assert p.status_code == 200, p.text[:500]
    pid = p.json()["participant"]["id"]
    # From here new arrivals get the maintenance page; this participant, already in, goes on.
    maintenance.maintenance(APP, session_remote, on=True, retry_after=60)
    try:
        _goes_on_while_new_arrivals_wait(testbed, pid)
    finally:
        maintenance.maintenance(APP, session_remote, on=False)
    assert through_caddy(testbed, "/ad?recruiter=hotair&assignmentId=A3&hitId=H1&workerId=W3&mode=sandbox"
                         ).status_code == 200


def _goes_on_while_new_arrivals_wait(testbed, pid: int) -> None:
    for path, method in (("/ad?recruiter=hotair&assignmentId=A2&hitId=H1&workerId=W2&mode=sandbox", "GET"),
                         ("/consent?hit_id=H1&assignment_id=A2&worker_id=W2&mode=sandbox", "GET"),
                         ("/participant/W2/H1/A2/sandbox?recruiter=hotair&fingerprint_hash=f2", "POST")):
        late = through_caddy(testbed, path, method)
        assert late.status_code == 503 and late.headers["Retry-After"] == "60", (path, late.status_code)
    assert through_caddy(testbed, f"/participant/{pid}").status_code == 200  # its own record stays open
    exp_page = through_caddy(testbed, f"/exp?participant_id={pid}&hit_id=H1&assignment_id=A1&worker_id=W1"
                                      f"&mode=sandbox")
    assert exp_page.status_code == 200 and "Pass on a greeting" in exp_page.text
    node = through_caddy(testbed, f"/node/{pid}", "POST").json()["node"]
    received = through_caddy(testbed, f"/node/{node['id']}/received_infos").json()["infos"]
    assert [i["contents"] for i in received] == ["Hello from labdeploy!"]
    sent = through_caddy(testbed, f"/info/{node['id']}", "POST", data={"contents": "Hi from the tests"})
    assert sent.status_code == 200, sent.text[:500]


def test_export_has_every_table_and_dallinger_reads_the_zip(deployed, session_remote, testbed, tmp_path):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HOME", str(deployed["home"]))
        data = export.export(APP, session_remote)
        path = export.save_archive(data, tmp_path / f"{APP}-data.zip")
    tables = set(psql.query_df(session_remote, "SELECT tablename FROM pg_tables WHERE schemaname = 'public'",
                               database="app_t_dal_e2e")["tablename"])
    assert set(data) == tables and DALLINGER_TABLES <= set(data)  # every table, not a fixed list
    assert len(data["participant"]) == 1 and data["participant"]["worker_id"].tolist() == ["W1"]
    assert "Hi from the tests" in data["info"]["contents"].tolist()
    assert len(data["transmission"]) >= 1
    with zipfile.ZipFile(path) as zf:
        assert {f"data/{t}.csv" for t in DALLINGER_TABLES} <= set(zf.namelist())
    # Dallinger's own loader, inside the Dallinger image (not importable in labdeploy's venv).
    script = ("from dallinger.data import Data; d = Data('/export/data.zip'); "
              "print(len(d.participants.df), len(d.nodes.df), 'Hi from the tests' in d.infos.df['contents'].tolist())")
    out = subprocess.run(["docker", "run", "--rm", "-v", f"{path}:/export/data.zip:ro", "-w", "/tmp",
                          testbed["images"]["dallinger"], "python3", "-c", script],
                         capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    participants, nodes, has_info = out.stdout.split()[-3:]
    assert (int(participants), int(nodes) >= 2, has_info) == (1, True, "True"), out.stdout


def test_the_worker_really_runs_jobs_and_status_counts_them(deployed, session_remote):
    lines = [e.line for e in deployed["events"].events if isinstance(e, LogLine)]
    assert "the worker ran a test job" in lines  # deploy proved it, with the app's own rq
    from labdeploy.watch import jobs, monitor

    jobs.prove_worker(session_remote, APP)  # and it still does
    status = monitor.status(session_remote, APP, jobs=True).set_index("service")
    assert status.loc["worker", "jobs_failed"] == 0 and status.loc["worker", "jobs_queued"] == 0


def test_an_update_keeps_the_experiment_id(deployed, session_remote, testbed):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HOME", str(deployed["home"]))
        update = deploy.update(EXAMPLE, APP, session_remote, start_timeout=180)  # images remembered
    assert update.experiment_id and update.experiment_id == deployed["result"].experiment_id
    # The update switched to a fresh web container (number 2 for Compose v1, which `exec` then
    # needs told; v2 takes the lowest number by itself).
    env = parse_env(session_remote.run(["sh", "-c", f"cd {layout.app_dir(APP)} && "
                                        "docker compose exec -T web env 2>/dev/null || docker-compose exec -T "
                                        "--index $(docker inspect -f '{{index .Config.Labels "
                                        "\"com.docker.compose.container-number\"}}' "
                                        "$(docker-compose ps -q web)) web env"]).stdout)
    assert env["DALLINGER_UID"] == deployed["result"].experiment_id
