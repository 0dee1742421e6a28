"""Bad input and faults: hostile names, a name in use, a crash at start, a /launch that
answers 500, the SSH connection dropped mid-deploy, two deploys at once, destroy of an
unknown app. Each against the real testbed."""

from __future__ import annotations

import shutil
import subprocess
import threading
from pathlib import Path

import pytest

from labdeploy.app import apps, deploy, history
from labdeploy.server import layout, locks
from labdeploy.errors import ConnectionLost, LabdeployError, ValidationError
from labdeploy.progress import Collector, LogLine, StepStarted, WarningEvent
from labdeploy.remote import Remote
from deploy_support import deploy_kwargs, destroy_if_deployed, prepare_local_stack

# Spread over the servers: the faults are the app's and the connection's; each engine meets half of
# them.
pytestmark = pytest.mark.spread

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "stroop"


@pytest.fixture(scope="module")
def prepared(testbed, session_remote):
    prepare_local_stack(session_remote, testbed)
    return session_remote


def fresh_app(remote, name: str):
    destroy_if_deployed(remote, name)
    return name


def running_services(remote, app: str) -> str:
    return remote.run(["docker", "ps", "-q", "--filter", f"label=labdeploy.app={app}"]).stdout.strip()


@pytest.mark.parametrize("bad", ["my app", "app;reboot", "$(touch /tmp/pwned)", "../etc", "Stroop",
                                 "a" * 41, "", "x--y", "-lead", "a\n", "dallinger", "secrets",
                                 "dallinger-postgresql", "caddy"])
def test_hostile_app_names_are_refused_before_anything_runs(bad, tmp_path):
    # "nowhere" is not a registered server: a name check that came later would fail on it.
    with pytest.raises(ValidationError) as info:
        deploy.deploy(EXAMPLE, bad, "nowhere")
    assert info.value.hint
    with pytest.raises(ValidationError):
        apps.destroy(bad, "nowhere", confirm=True)


def test_a_link_out_of_the_folder_or_an_overlong_path_is_refused_before_connecting(tmp_path):
    from labdeploy.images import LinkOutsideFolder

    exp = tmp_path / "exp"
    shutil.copytree(EXAMPLE, exp)
    (tmp_path / "secret.txt").write_text("not for the image")
    (exp / "assets" / "leak.txt").symlink_to(tmp_path / "secret.txt")
    with pytest.raises(LinkOutsideFolder, match="leak.txt"):  # "nowhere": it never got as far as a server
        deploy.deploy(exp, "t-links", "nowhere")
    (exp / "assets" / "leak.txt").unlink()
    shutil.move(str(exp / "assets"), str(tmp_path / "assets-elsewhere"))
    (exp / "assets").symlink_to(tmp_path / "assets-elsewhere")  # the whole folder through one link
    with pytest.raises(LinkOutsideFolder):
        deploy.deploy(exp, "t-links", "nowhere")
    with pytest.raises(ValidationError, match="at most"):
        deploy.deploy(tmp_path / ("x" * 300), "t-links", "nowhere")


def test_the_shared_stack_survives_destroy_of_its_names_asked_for_by_hand(prepared):
    """The stack's project, volumes and secrets are refused as app names at every entry point,
    so neither deploy's orphan removal nor destroy's deletions can reach them."""
    for name in ("dallinger", "secrets"):
        with pytest.raises(ValidationError, match="reserved"):
            apps.destroy(name, prepared, confirm=True, remove_data=True, export_check=False)
        with pytest.raises(ValidationError, match="reserved"):
            deploy.update(EXAMPLE, name, prepared)
        with pytest.raises(ValidationError, match="reserved"):
            locks.break_lock(prepared, name, confirm=True)
    assert prepared.exists(layout.postgres_password_file())
    up = prepared.run(["docker", "inspect", "-f", "{{.State.Running}}", layout.POSTGRES_CONTAINER,
                       layout.CADDY_CONTAINER]).stdout.split()
    assert up == ["true", "true"]


def test_missing_dockerfile_is_refused_with_a_hint(prepared, tmp_path):
    with pytest.raises(ValidationError, match="no Dockerfile") as info:
        deploy.deploy(tmp_path, "t-dep-nofile", prepared)
    assert "Dockerfile" in info.value.hint
    assert not prepared.exists(layout.app_dir("t-dep-nofile"))


def test_crash_at_start_then_launch_500_then_fixed_rerun(prepared, testbed, tmp_path):
    """A first deploy that fails leaves nothing running and nothing locked; a fixed rerun works."""
    app = fresh_app(prepared, "t-dep-crash")
    try:
        crash = tmp_path / "crash"
        shutil.copytree(EXAMPLE, crash)
        (crash / "Procfile").write_text("web: python -c 'import sys; print(\"boom at start\"); sys.exit(3)'\n"
                                        "worker: python -m stroop.worker\nclock: python -m stroop.clock\n")
        with pytest.raises(deploy.DeployFailed) as info:
            deploy.deploy(crash, app, prepared, start_timeout=60, **deploy_kwargs(testbed))
        assert info.value.failed_step == "start"
        assert "boom at start" in info.value.logs and "stopped right after starting" in info.value.message
        assert running_services(prepared, app) == ""
        assert locks.read_lock(prepared, app) is None
        assert not prepared.exists(layout.caddy_site(app))

        bad_launch = tmp_path / "bad-launch"
        shutil.copytree(EXAMPLE, bad_launch)
        src = bad_launch / "stroop" / "app.py"
        src.write_text(src.read_text().replace("        db.create_tables()\n",
                                               "        raise RuntimeError('launch broke on purpose')\n", 1))
        with pytest.raises(deploy.DeployFailed) as info:
            deploy.deploy(bad_launch, app, prepared, launch_attempts=2, **deploy_kwargs(testbed))
        assert info.value.failed_step == "launch"
        assert "HTTP 500" in info.value.message and "launch broke on purpose" in info.value.logs
        assert running_services(prepared, app) == ""

        result = deploy.deploy(EXAMPLE, app, prepared, **deploy_kwargs(testbed))
        assert result.url.startswith(f"http://{app}.")
        outcomes = list(history.history(prepared, app)["outcome"])
        assert outcomes == ["failed", "failed", "success"]
    finally:
        destroy_if_deployed(prepared, app)


def test_worker_that_dies_at_start_fails_the_deploy(prepared, testbed, tmp_path):
    app = fresh_app(prepared, "t-dep-worker")
    try:
        exp = tmp_path / "worker-crash"
        shutil.copytree(EXAMPLE, exp)
        (exp / "Procfile").write_text("web: gunicorn --config stroop/gunicorn_conf.py stroop.app:app\n"
                                      "worker: python -c 'raise SystemExit(\"worker cannot start\")'\n"
                                      "clock: python -m stroop.clock\n")
        with pytest.raises(deploy.DeployFailed) as info:
            deploy.deploy(exp, app, prepared, **deploy_kwargs(testbed))
        assert info.value.failed_step == "launch" and "worker" in info.value.message
        assert "worker cannot start" in info.value.logs
        assert running_services(prepared, app) == ""
    finally:
        destroy_if_deployed(prepared, app)


def test_worker_that_crashes_after_a_long_busy_start_fails_the_deploy(prepared, testbed, tmp_path):
    # Like a heavy import (Dallinger's takes seconds) that fails at its end: busy for 3 s, then
    # exits. A fixed 2 s wait would have called this deploy a success.
    app = fresh_app(prepared, "t-dep-slowcrash")
    try:
        exp = tmp_path / "slow-crash"
        shutil.copytree(EXAMPLE, exp)
        spin = ("import time; t = time.time(); [0 for _ in iter(lambda: time.time() - t < 3, False)]; "
                "raise SystemExit(\"import failed after a slow start\")")
        (exp / "Procfile").write_text("web: gunicorn --config stroop/gunicorn_conf.py stroop.app:app\n"
                                      f"worker: python -c '{spin}'\n"
                                      "clock: python -m stroop.clock\n")
        events = []
        with pytest.raises(deploy.DeployFailed) as info:
            deploy.deploy(exp, app, prepared, reporter=events.append, **deploy_kwargs(testbed))
        assert info.value.failed_step == "launch" and "worker" in info.value.message
        assert "import failed after a slow start" in info.value.logs
        # (The "still busy starting" note depends on timing: on a loaded machine the first
        # reading may already see the crash, so it is not asserted here.)
        assert running_services(prepared, app) == ""
    finally:
        destroy_if_deployed(prepared, app)


def test_name_in_use_is_refused_and_nothing_changes(prepared, testbed):
    app = fresh_app(prepared, "t-dep-inuse")
    try:
        first = deploy.deploy(EXAMPLE, app, prepared, **deploy_kwargs(testbed))
        with pytest.raises(deploy.AppExists) as info:
            deploy.deploy(EXAMPLE, app, prepared, **deploy_kwargs(testbed))
        assert "update()" in info.value.hint
        assert apps.apps(prepared).set_index("app").loc[app, "version"] == first.version
        assert locks.read_lock(prepared, app) is None
        with pytest.raises(deploy.UnknownApp):
            deploy.update(EXAMPLE, "t-dep-never-deployed", prepared, **deploy_kwargs(testbed))
    finally:
        destroy_if_deployed(prepared, app)


def test_ssh_dropped_mid_deploy_then_rerun_succeeds(prepared, testbed, known_hosts):
    app = fresh_app(prepared, "t-dep-drop")
    s = testbed["ssh"]
    r = Remote(s["host"], s["port"], s["user"], key_filename=s["key"], known_hosts=known_hosts, use_agent=False)
    r.connect()
    dropped = threading.Event()

    def cut_when_compose_runs(event) -> None:
        # Drop the TCP connection under a running `compose up`, like a laptop losing Wi-Fi.
        if isinstance(event, LogLine) and event.source == "compose" and not dropped.is_set():
            dropped.set()
            r._client.get_transport().sock.close()

    try:
        with pytest.raises(deploy.DeployFailed) as info:
            deploy.deploy(EXAMPLE, app, r, reporter=cut_when_compose_runs, **deploy_kwargs(testbed))
        assert dropped.is_set()
        assert info.value.failed_step == "start"
        assert isinstance(info.value.__cause__, ConnectionLost)
        assert "connection dropped" in info.value.hint.lower()
        assert locks.read_lock(prepared, app) is None  # released after reconnecting
        result = deploy.deploy(EXAMPLE, app, r, **deploy_kwargs(testbed))
        assert result.version
        assert locks.read_lock(prepared, app) is None
    finally:
        r.close()
        destroy_if_deployed(prepared, app)


def test_lock_left_by_a_dead_process_is_taken_over_and_others_are_respected(prepared, testbed):
    app = fresh_app(prepared, "t-dep-stale")
    try:
        dead = subprocess.Popen(["true"])
        dead.wait()
        left = locks.DeployLock(prepared, app, version="old")
        left.info.pid = dead.pid  # as if that process had crashed holding the lock
        left.acquire()
        locks._held.discard(left.info.token)
        events = Collector()
        deploy.deploy(EXAMPLE, app, prepared, reporter=events, **deploy_kwargs(testbed))
        assert any("stale deploy lock" in w.message for w in events.of(WarningEvent))

        # A lock from another machine is respected until it expires or is broken on purpose.
        other = locks.DeployLock(prepared, app, operation="update", version="v9")
        other.info.host, other.info.who = "someone-elses-laptop", "ana@laptop"
        other.acquire()
        locks._held.discard(other.info.token)
        with pytest.raises(locks.DeployInProgress) as info:
            deploy.update(EXAMPLE, app, prepared, **deploy_kwargs(testbed))
        assert "ana@laptop" in info.value.message and "break_lock" in info.value.hint
        with pytest.raises(LabdeployError, match="confirmation"):
            locks.break_lock(prepared, app)
        assert locks.break_lock(prepared, app, confirm=True).who == "ana@laptop"
        assert locks.read_lock(prepared, app) is None
    finally:
        destroy_if_deployed(prepared, app)


def test_two_deploys_of_one_app_at_once_the_second_is_refused(prepared, testbed, known_hosts):
    app = fresh_app(prepared, "t-dep-twice")
    s = testbed["ssh"]
    second_remote = Remote(s["host"], s["port"], s["user"], key_filename=s["key"], known_hosts=known_hosts,
                           use_agent=False)
    outcome: dict = {}

    def start_second_while_first_builds(event) -> None:
        if isinstance(event, StepStarted) and event.step == "image" and "second" not in outcome:
            outcome["second"] = None
            try:
                deploy.deploy(EXAMPLE, app, second_remote, **deploy_kwargs(testbed))
            except Exception as exc:  # noqa: BLE001 - inspected below
                outcome["second"] = exc

    try:
        first = deploy.deploy(EXAMPLE, app, prepared, reporter=start_second_while_first_builds, **deploy_kwargs(testbed))
        assert first.version
        err = outcome["second"]
        assert isinstance(err, locks.DeployInProgress), err
        assert "in progress" in err.message and err.info.operation == "deploy"
        assert locks.read_lock(prepared, app) is None
    finally:
        second_remote.close()
        destroy_if_deployed(prepared, app)


def test_destroy_unknown_app_says_which_apps_exist(prepared):
    with pytest.raises(deploy.UnknownApp) as info:
        apps.destroy("t-dep-nosuchapp", prepared, confirm=True)
    assert "t-dep-nosuchapp" in info.value.message and "Apps on this server" in info.value.hint
