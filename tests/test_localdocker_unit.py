"""This computer's Docker, without a server: which modes it allows, and the refusal of the
modes that build here, worded by each front end (tests/test_no_local_docker.py runs the whole
journey on a computer whose Docker is really gone)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from labdeploy.app import deploy
from labdeploy.cli import remedies as cli_remedies
from labdeploy.images import localdocker, transfer
from labdeploy.widgets import remedies as panel_remedies

REPO = Path(__file__).resolve().parent.parent
GONE = localdocker.LocalDocker(False, None, "no engine answers at unix:///nowhere.sock")


@pytest.fixture
def no_engine(monkeypatch, tmp_path):
    """DOCKER_HOST at a socket that does not exist: the SDK finds no engine."""
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-docker.sock")


def test_without_an_engine_only_server_build_is_left(no_engine):
    found = localdocker.probe(timeout=2)
    assert not found.engine and found.modes == ("server-build",)
    assert found.summary().startswith("no local Docker: server-build mode only (no engine answers at unix://")


def test_server_build_never_asks_the_engine(monkeypatch):
    monkeypatch.setattr(localdocker, "probe", lambda *a, **k: pytest.fail("server-build probed the local engine"))
    assert localdocker.require("server-build") is None


@pytest.mark.parametrize("mode", localdocker.NEEDS_LOCAL_DOCKER)
def test_the_modes_that_build_here_are_refused_in_each_front_ends_words(mode):
    with pytest.raises(localdocker.DockerUnavailable) as info:
        localdocker.require(mode, GONE)
    exc = info.value
    assert exc.code == "docker.local.unavailable" and f"'{mode}' transfer mode" in exc.message
    assert "Nothing was sent to the server" in exc.message
    assert "mode='server-build'" in exc.hint and "Install Docker on this computer" in exc.hint
    assert "--mode server-build" in cli_remedies.hint(exc)
    assert "Transfer mode in the Deploy panel" in panel_remedies.hint(exc)
    assert cli_remedies.exit_code(exc.code) == 1


@pytest.mark.parametrize("mode", localdocker.NEEDS_LOCAL_DOCKER)
def test_deploy_refuses_before_it_connects(no_engine, mode):
    """check_inputs is what deploy's preflight runs before opening the connection (and what
    the CLI runs before it connects): a server argument of None proves nothing was reached."""
    with pytest.raises(localdocker.DockerUnavailable):
        deploy.check_inputs(REPO / "examples" / "stroop", "nod-unit", mode=mode)
    deploy.check_inputs(REPO / "examples" / "stroop", "nod-unit", mode="server-build")


def test_deliver_refuses_before_it_runs_a_command(no_engine):
    class NoServer:
        def run(self, *a, **k):
            pytest.fail("deliver ran a command on the server")

    with pytest.raises(localdocker.DockerUnavailable):
        transfer.deliver(NoServer(), REPO / "examples" / "stroop", app="nod-unit", mode="registry")


def test_a_psynet_experiment_says_its_preparation_needs_docker_here(no_engine):
    with pytest.raises(localdocker.DockerUnavailable) as info:
        deploy.check_inputs(REPO / "examples" / "psynet-static", "nod-unit", mode="server-build")
    exc = info.value
    assert exc.code == "docker.local.psynet" and "whichever transfer mode" in exc.message
    # Its advice is the same in every front end: server-build would not help here.
    assert "server-build" not in cli_remedies.hint(exc) and "server-build" not in panel_remedies.hint(exc)
    assert "Install Docker on this computer" in cli_remedies.hint(exc)


def test_the_deploy_panel_says_it_before_a_click(no_engine, home):
    from labdeploy.widgets.deploy import DeployPanel

    panel = DeployPanel(str(REPO / "examples" / "stroop"), app="nod-unit", mode="ssh-copy")
    try:
        assert "no local Docker: server-build mode only" in panel.mode_help.value
        assert "Transfer mode in the Deploy panel" in panel.mode_help.value  # the panel's words
        panel.mode_box.value = "server-build"
        assert "no local Docker" not in panel.mode_help.value
    finally:
        panel.close()


def test_the_command_runs_as_a_module():
    res = subprocess.run([sys.executable, "-m", "labdeploy.cli", "--version"], capture_output=True, text=True,
                         timeout=120, cwd=str(REPO))
    assert res.returncode == 0 and "0." in res.stdout + res.stderr, res
