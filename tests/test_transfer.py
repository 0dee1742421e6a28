"""Registry-free transfer against the testbed's real sshd and Docker engine."""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path

import pytest

from labdeploy.images import transfer
from labdeploy.experiment import folder
from labdeploy.progress import Collector, LogLine, Progress

DATA = Path(__file__).parent / "data" / "img_experiment"
BASE = "t-img"


@pytest.fixture
def experiment(tmp_path) -> Path:
    dst = tmp_path / "experiment"
    shutil.copytree(DATA, dst)
    return dst


@pytest.fixture
def app(remote):
    """A unique app name; afterwards its images and build files on the server are removed."""
    name = f"t-img-{uuid.uuid4().hex[:8]}"
    yield name
    remote.run(["sh", "-c", f"docker image ls -q --filter label=labdeploy.app={name} | sort -u | "
                            f"xargs -r docker rmi -f"], check=False)
    remote.run(["rm", "-rf", "--", transfer.build_dir(name)], check=False)


def build_args(testbed):
    return {"BASE": testbed["images"]["python"]}


def server_file(remote, ref: str, path: str) -> str:
    return remote.run(["docker", "run", "--rm", "--network=none", ref, "cat", path]).stdout


def test_server_build_sends_only_changed_files(remote, testbed, experiment, app, home):
    events = Collector()
    first = transfer.deliver(remote, experiment, app=app, base_name=BASE, build_args=build_args(testbed),
                             reporter=events)
    assert first.ref == f"{BASE}/{app}:{first.tag}"
    assert transfer.server_image_id(remote, first.ref) == first.image_id
    assert "dependencies would be installed here" in "\n".join(events.lines())
    sent_first = {e.line for e in events.of(LogLine) if e.line.startswith("sent ")}
    assert sent_first == {f"sent {p}" for p in ["Dockerfile", ".dockerignore", "experiment.py",
                                                 "requirements.txt", "run.sh", "static/style.css"]}
    # .dockerignore'd files never leave this computer; the executable bit survives.
    assert not remote.exists(f"{transfer.context_dir(app)}/notes/todo.txt")
    assert remote.run(["test", "-x", f"{transfer.context_dir(app)}/run.sh"], check=False).ok
    assert any(isinstance(e, Progress) and e.unit == "steps" for e in events.events)

    # Same content: same tag, nothing sent, nothing built.
    again = Collector()
    second = transfer.deliver(remote, experiment, app=app, base_name=BASE, build_args=build_args(testbed),
                              reporter=again)
    assert second.ref == first.ref and second.reused
    assert "build image" not in again.steps()

    # A one-line change: only that file travels, and the new image has it.
    code = experiment / "experiment.py"
    code.write_text(code.read_text().replace("hello from the test experiment", "hello, changed"))
    (experiment / "static" / "style.css").unlink()
    third_events = Collector()
    before = remote.stats["bytes_sent"]
    third = transfer.deliver(remote, experiment, app=app, base_name=BASE, build_args=build_args(testbed),
                             reporter=third_events)
    sent = remote.stats["bytes_sent"] - before
    assert third.tag != first.tag and not third.reused
    assert [e.line for e in third_events.of(LogLine) if e.line.startswith("sent ")] == ["sent experiment.py"]
    assert sent < 20_000, sent
    assert "hello, changed" in server_file(remote, third.ref, "/experiment/experiment.py")
    assert not remote.exists(f"{transfer.context_dir(app)}/static")
    assert transfer.server_image_id(remote, first.ref)  # the old image is kept (no silent deletes)


@pytest.fixture
def local_cleanup(app):
    yield
    import docker

    client = docker.from_env()
    for image in client.images.list(filters={"label": f"labdeploy.app={app}"}):
        client.images.remove(image.id, force=True)


def test_ssh_copy_sends_only_missing_layers(remote, testbed, experiment, app, local_cleanup, home):
    events = Collector()
    before = remote.stats["bytes_sent"]
    first = transfer.deliver(remote, experiment, app=app, mode="ssh-copy", base_name=BASE,
                             build_args=build_args(testbed), reporter=events)
    sent = remote.stats["bytes_sent"] - before
    import docker

    local_id = docker.from_env().images.get(first.ref).id
    assert first.image_id == local_id == transfer.server_image_id(remote, first.ref)
    # The python base image (~390 MB) is on the server already: only the experiment's layers travel.
    assert sent < 1_000_000, sent
    assert any(e.line.startswith("sending ") and "layers" in e.line for e in events.of(LogLine))
    assert "hello from the test experiment" in server_file(remote, first.ref, "/experiment/experiment.py")

    code = experiment / "experiment.py"
    code.write_text(code.read_text() + "# one more line\n")
    second = transfer.deliver(remote, experiment, app=app, mode="ssh-copy", base_name=BASE,
                              build_args=build_args(testbed))
    assert second.tag != first.tag
    assert "# one more line" in server_file(remote, second.ref, "/experiment/experiment.py")


def test_same_content_same_tag_across_modes(remote, testbed, experiment, app, local_cleanup, home):
    built = transfer.deliver(remote, experiment, app=app, mode="server-build", base_name=BASE,
                             build_args=build_args(testbed))
    copied = transfer.deliver(remote, experiment, app=app, mode="ssh-copy", base_name=BASE,
                              build_args=build_args(testbed))
    assert copied.ref == built.ref and copied.reused


def test_server_image_status(remote, testbed, experiment, app, home):
    status = transfer.server_image_status(remote, experiment, app=app, base_name=BASE, build_args=build_args(testbed))
    assert not status.present and status.images.empty and status.deployed_ref is None
    got = transfer.deliver(remote, experiment, app=app, base_name=BASE, build_args=build_args(testbed))
    status = transfer.server_image_status(remote, experiment, app=app, base_name=BASE, build_args=build_args(testbed))
    assert status.current and status.expected_ref == got.ref
    assert list(status.images["ref"]) == [got.ref] and bool(status.images["current"].iloc[0])
    (experiment / "experiment.py").write_text("print('changed')\n")
    stale = transfer.server_image_status(remote, experiment, app=app, base_name=BASE, build_args=build_args(testbed))
    assert not stale.current and "does not have" in stale.summary()
    assert list(stale.images["ref"]) == [got.ref] and not stale.images["current"].any()


def test_file_becomes_folder_and_back(remote, testbed, experiment, app, home):
    (experiment / "extra").write_text("a file first\n")
    transfer.deliver(remote, experiment, app=app, base_name=BASE, build_args=build_args(testbed))
    (experiment / "extra").unlink()
    (experiment / "extra").mkdir()
    (experiment / "extra" / "inside.txt").write_text("now a folder\n")
    got = transfer.deliver(remote, experiment, app=app, base_name=BASE, build_args=build_args(testbed))
    assert server_file(remote, got.ref, "/experiment/extra/inside.txt") == "now a folder\n"
    shutil.rmtree(experiment / "extra")
    (experiment / "extra").write_text("a file again\n")
    got = transfer.deliver(remote, experiment, app=app, base_name=BASE, build_args=build_args(testbed))
    assert server_file(remote, got.ref, "/experiment/extra") == "a file again\n"
    assert transfer.remote_manifest(remote, app).keys() == set(folder.scan_context(experiment).files)
