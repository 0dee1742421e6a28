"""Links in the experiment folder against the testbed's real sshd and Docker engines (issue 14):
a link that leaves the folder is refused before anything is sent, in every mode; a link inside
it arrives on the server as a link, in the server's copy and in the image."""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

import pytest

from labdeploy.images import transfer
from labdeploy.experiment import folder
from labdeploy.errors import ValidationError
from labdeploy.progress import Collector, LogLine

DATA = Path(__file__).parent / "data" / "img_experiment"
BASE = "t-img"
SECRET = "LINKED-SECRET-" + uuid.uuid4().hex


@pytest.fixture
def experiment(tmp_path) -> Path:
    dst = tmp_path / "work" / "experiment"
    shutil.copytree(DATA, dst)
    return dst


@pytest.fixture
def outside(tmp_path) -> Path:
    d = tmp_path / "outside"
    d.mkdir()
    (d / "secret.txt").write_text(SECRET + "\n")
    return d


@pytest.fixture
def app(remote):
    name = f"t-img-{uuid.uuid4().hex[:8]}"
    yield name
    remote.run(["sh", "-c", f"docker image ls -q --filter label=labdeploy.app={name} | sort -u | "
                            f"xargs -r docker rmi -f"], check=False)
    remote.run(["rm", "-rf", "--", transfer.build_dir(name)], check=False)


@pytest.fixture
def local_cleanup(app):
    yield
    import docker

    client = docker.from_env()
    for image in client.images.list(filters={"label": f"labdeploy.app={app}"}):
        client.images.remove(image.id, force=True)


def build_args(testbed):
    return {"BASE": testbed["images"]["python"]}


def in_image(remote, ref: str, script: str) -> str:
    return remote.run(["docker", "run", "--rm", "--network=none", ref, "sh", "-c", script]).stdout


@pytest.mark.parametrize("mode", transfer.MODES)
def test_an_escaping_link_is_refused_and_nothing_is_sent(remote, testbed, experiment, outside, app, local_cleanup,
                                                         home, mode):
    os.symlink(str(outside / "secret.txt"), experiment / "config-link.txt")
    before = dict(remote.stats)
    with pytest.raises(ValidationError) as info:
        transfer.deliver(remote, experiment, app=app, mode=mode, base_name=f"{testbed['registry']['address']}/t-img",
                         build_args=build_args(testbed))
    assert isinstance(info.value, folder.LinkOutsideFolder)
    assert "config-link.txt" in info.value.message and info.value.hint
    # Not one command and not one byte went to the server; no build folder was made there.
    assert remote.stats["commands"] == before["commands"]
    assert remote.stats["bytes_sent"] == before["bytes_sent"]
    assert not remote.exists(transfer.build_dir(app))
    found = remote.run(["sh", "-c", f"grep -rl {SECRET} dallinger 2>/dev/null; true"]).stdout
    assert found.strip() == ""


def test_inside_links_arrive_as_links(remote, testbed, experiment, app, home):
    os.symlink("experiment.py", experiment / "config-link.txt")
    os.symlink("static", experiment / "static-link")
    events = Collector()
    got = transfer.deliver(remote, experiment, app=app, base_name=BASE, build_args=build_args(testbed),
                           reporter=events)
    ctx = transfer.context_dir(app)
    assert remote.run(["readlink", f"{ctx}/config-link.txt"]).stdout.strip() == "experiment.py"
    assert remote.run(["readlink", f"{ctx}/static-link"]).stdout.strip() == "static"
    assert {"sent config-link.txt", "sent static-link"} <= {e.line for e in events.of(LogLine)}
    # `COPY . /experiment` keeps them as links in the image too.
    out = in_image(remote, got.ref, "readlink /experiment/config-link.txt; readlink /experiment/static-link; "
                                    "cat /experiment/static-link/style.css")
    assert out.splitlines()[:2] == ["experiment.py", "static"] and "body" in out
    assert transfer.remote_manifest(remote, app) == folder.scan_context(experiment).manifest()

    # Same links: nothing to send. A link pointed elsewhere: only it travels.
    assert transfer.deliver(remote, experiment, app=app, base_name=BASE, build_args=build_args(testbed)).reused
    os.unlink(experiment / "config-link.txt")
    os.symlink("run.sh", experiment / "config-link.txt")
    events = Collector()
    moved = transfer.deliver(remote, experiment, app=app, base_name=BASE, build_args=build_args(testbed),
                             reporter=events)
    assert [e.line for e in events.of(LogLine) if e.line.startswith("sent ")] == ["sent config-link.txt"]
    assert in_image(remote, moved.ref, "readlink /experiment/config-link.txt").strip() == "run.sh"

    # A link that becomes a file (and a file that becomes a link): the server's copy follows,
    # and the file's bytes land in the file, not in what the old link pointed to.
    run_sh = remote.get_bytes(f"{ctx}/run.sh")
    os.unlink(experiment / "config-link.txt")
    (experiment / "config-link.txt").write_text("now a file\n")
    (experiment / "requirements.txt").unlink()
    os.symlink("experiment.py", experiment / "requirements.txt")
    transfer.deliver(remote, experiment, app=app, base_name=BASE, build_args=build_args(testbed))
    assert remote.run(["test", "-L", f"{ctx}/config-link.txt"], check=False).exit_status != 0
    assert remote.get_bytes(f"{ctx}/config-link.txt") == b"now a file\n"
    assert remote.get_bytes(f"{ctx}/run.sh") == run_sh
    assert remote.run(["readlink", f"{ctx}/requirements.txt"]).stdout.strip() == "experiment.py"
    assert transfer.remote_manifest(remote, app) == folder.scan_context(experiment).manifest()


def test_a_local_build_keeps_inside_links_as_links(remote, testbed, experiment, app, local_cleanup, home):
    """ssh-copy and registry build with the local engine from Docker's own tar of the folder:
    it stores links as links too, and the tag is the one server-build would give."""
    os.symlink("experiment.py", experiment / "config-link.txt")
    got = transfer.deliver(remote, experiment, app=app, mode="ssh-copy", base_name=BASE,
                           build_args=build_args(testbed))
    assert got.tag == folder.content_tag(folder.scan_context(experiment), build_args(testbed))
    assert in_image(remote, got.ref, "readlink /experiment/config-link.txt").strip() == "experiment.py"
