"""Faults while building and transferring: each says what went wrong and what to do."""

from __future__ import annotations

import os
import shutil
import threading
import uuid
from pathlib import Path

import pytest

from labdeploy import errors
from labdeploy.images import build, transfer
from labdeploy.experiment import folder
from labdeploy.errors import LabdeployError, ValidationError
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
    name = f"t-img-{uuid.uuid4().hex[:8]}"
    yield name
    remote.run(["sh", "-c", f"docker image ls -q --filter label=labdeploy.app={name} | sort -u | "
                            f"xargs -r docker rmi -f"], check=False)
    remote.run(["rm", "-rf", "--", transfer.build_dir(name)], check=False)
    import docker

    client = docker.from_env()
    for image in client.images.list(filters={"label": f"labdeploy.app={name}"}):
        client.images.remove(image.id, force=True)


def args(testbed):
    return {"BASE": testbed["images"]["python"]}


def test_missing_dockerfile(remote, experiment, app, home):
    (experiment / "Dockerfile").unlink()
    with pytest.raises(folder.DockerfileMissing) as info:
        transfer.deliver(remote, experiment, app=app, base_name=BASE)
    assert "Dockerfile" in info.value.message and info.value.hint


def test_missing_folder_and_bad_names(remote, experiment, tmp_path, home):
    with pytest.raises(ValidationError):
        transfer.deliver(remote, tmp_path / "nope", app="t-img-x", base_name=BASE)
    with pytest.raises(ValidationError) as info:
        transfer.deliver(remote, experiment, app="t-img-x", base_name="Not A Name")
    assert "not a valid Docker image name" in info.value.message
    with pytest.raises(ValidationError):
        transfer.deliver(remote, experiment, app="T_img; rm -rf /", base_name=BASE)
    with pytest.raises(ValidationError):
        transfer.deliver(remote, experiment, app="t-img-x", base_name=BASE, mode="carrier-pigeon")
    # The registry mode needs a registry in the base name.
    with pytest.raises(ValidationError) as info:
        transfer.deliver(remote, experiment, app="t-img-x", base_name=BASE, mode="registry")
    assert "registry" in info.value.message


FAILING = "RUN echo preparing the failing step && ls /no-such-folder-here"


@pytest.mark.parametrize("mode", ["server-build", "ssh-copy"])
def test_failing_build_shows_step_and_output(remote, testbed, experiment, app, mode, home):
    dockerfile = experiment / "Dockerfile"
    dockerfile.write_text(dockerfile.read_text() + FAILING + "\n")
    events = Collector()
    with pytest.raises(build.BuildFailed) as info:
        transfer.deliver(remote, experiment, app=app, mode=mode, base_name=BASE, build_args=args(testbed),
                         reporter=events)
    err = info.value
    assert FAILING in err.failed_step
    assert "preparing the failing step" in err.output and "no-such-folder-here" in err.output
    assert FAILING in err.message and err.hint
    assert any("preparing the failing step" in line for line in events.lines())


def test_build_out_of_space_is_explained(remote, testbed, experiment, app, home):
    # A real 'No space left on device' from a real build step on the server: the build
    # container's /dev/shm is a 64 MB tmpfs. (The server's Docker disk itself can't be filled
    # here: it shares the machine's disk with everyone's work.)
    dockerfile = experiment / "Dockerfile"
    dockerfile.write_text(dockerfile.read_text() + "RUN dd if=/dev/zero of=/dev/shm/fill bs=1M count=100\n")
    with pytest.raises(errors.DiskFull) as info:
        transfer.deliver(remote, experiment, app=app, base_name=BASE, build_args=args(testbed))
    assert "run out of disk space" in info.value.message
    assert "docker image prune" in info.value.hint


def test_disk_full_mapping():
    text = ("write /var/lib/docker/tmp/docker-import-123/layer.tar: no space left on device")
    assert errors.is_disk_full(text) and not errors.is_disk_full("permission denied")
    err = build.BuildLog(lambda e: None).failure(text, "server")
    assert isinstance(err, errors.DiskFull) and "server" in err.message
    from labdeploy.errors import CommandFailed
    mapped = transfer._remote_failure(CommandFailed("x", stderr="Error processing tar file(exit status 1): "
                                                                 "write /a: no space left on device"), "load")
    assert isinstance(mapped, errors.DiskFull)
    from labdeploy.images import registry
    assert isinstance(registry.classify("failed to register layer: ENOSPC", "r:5000", "the server"),
                      errors.DiskFull)


def _big_experiment(experiment: Path) -> None:
    # Random bytes do not compress, so the transfer takes long enough to be cut.
    (experiment / "a-small.bin").write_bytes(os.urandom(1 << 20))
    (experiment / "b-large.bin").write_bytes(os.urandom(8 << 20))


def _cut_after(remote, step_name: str, nbytes: int):
    """A reporter that drops the SSH connection once `nbytes` of `step_name` were sent."""
    events = Collector()
    fired = threading.Event()

    def reporter(event):
        events(event)
        if isinstance(event, Progress) and event.step == step_name and event.done >= nbytes and not fired.is_set():
            fired.set()
            remote.close()
    return reporter, events, fired


def test_interrupted_server_build_resumes(remote, testbed, experiment, app, home):
    _big_experiment(experiment)
    reporter, _, fired = _cut_after(remote, "send changed files", 6 << 20)
    with pytest.raises(LabdeployError):
        transfer.deliver(remote, experiment, app=app, base_name=BASE, build_args=args(testbed), reporter=reporter)
    assert fired.is_set()
    retry = Collector()
    got = transfer.deliver(remote, experiment, app=app, base_name=BASE, build_args=args(testbed), reporter=retry)
    sent = [e.line for e in retry.of(LogLine) if e.line.startswith("sent ")]
    # Files go in name order: those that arrived completely before the cut are not sent again;
    # the cut one and those after it are.
    assert "sent b-large.bin" in sent and "sent experiment.py" in sent
    assert "sent a-small.bin" not in sent and "sent Dockerfile" not in sent
    digest = remote.run(["docker", "run", "--rm", "--network=none", got.ref, "sha256sum",
                         "/experiment/b-large.bin"]).stdout.split()[0]
    assert digest == folder.scan_context(experiment).files["b-large.bin"].sha256


def test_interrupted_ssh_copy_restarts_cleanly(remote, testbed, experiment, app, home):
    _big_experiment(experiment)
    reporter, events, fired = _cut_after(remote, "copy image", 4 << 20)
    with pytest.raises(LabdeployError):
        transfer.deliver(remote, experiment, app=app, mode="ssh-copy", base_name=BASE, build_args=args(testbed),
                         reporter=reporter)
    assert fired.is_set()
    ref = build.image_ref(BASE, app, folder.content_tag(folder.scan_context(experiment), args(testbed)))
    assert transfer.server_image_id(remote, ref) is None  # nothing half-loaded under the name
    got = transfer.deliver(remote, experiment, app=app, mode="ssh-copy", base_name=BASE, build_args=args(testbed))
    assert got.ref == ref and transfer.server_image_id(remote, ref) == got.image_id


@pytest.mark.parametrize("which, expected", [("user_nodocker", "docker group"), ("user_bare", "not installed")])
def test_server_without_usable_docker(testbed, known_hosts, experiment, which, expected, home):
    from labdeploy.remote import Remote

    s = testbed["ssh"]
    other = Remote(s["host"], s["port"], s[which], key_filename=s["key"], known_hosts=known_hosts, use_agent=False)
    with other:
        with pytest.raises(build.ServerDockerUnavailable) as info:
            transfer.deliver(other, experiment, app="t-img-nodocker", base_name=BASE)
    assert expected in (info.value.message + info.value.hint)


def test_ssh_copy_rechecks_when_partial_image_refused(remote, testbed, tmp_path, app, monkeypatch, home):
    # Simulates the server pruning a layer between our check and the load: the first answer
    # claims it has every layer (the one stand-in here; the engines and the loads are real).
    # The real `docker load` refuses the partial archive; labdeploy looks again and sends
    # only what is really missing, not the whole image.
    exp = tmp_path / "tiny"
    exp.mkdir()
    (exp / "Dockerfile").write_text(f"FROM {testbed['images']['base']}\nCOPY . /x\n")
    (exp / "data.txt").write_text("tiny\n")
    import docker

    real = transfer.server_chain_ids
    calls = []

    def lying_once(r):
        calls.append(1)
        if len(calls) > 1:
            return real(r)
        ref = build.image_ref(BASE, app, folder.content_tag(folder.scan_context(exp)))
        return set(build.chain_ids(build.local_layers(docker.from_env(), ref)))
    monkeypatch.setattr(transfer, "server_chain_ids", lying_once)
    events = Collector()
    before = remote.stats["bytes_sent"]
    got = transfer.deliver(remote, exp, app=app, mode="ssh-copy", base_name=BASE, reporter=events)
    assert any("checking its layers again" in line for line in events.lines())
    assert not any("whole image" in line for line in events.lines())
    assert remote.stats["bytes_sent"] - before < 1_000_000
    assert transfer.server_image_id(remote, got.ref) == got.image_id
