"""Links and long paths in an experiment folder (issue 14): what the build context holds, its
tag, the tar sent to the server, and the copy made of a Dallinger folder. No server needed."""

from __future__ import annotations

import io
import os
import shutil
import tarfile
from pathlib import Path

import pytest

from labdeploy.experiment import dallinger
from labdeploy.images import transfer
from labdeploy.experiment import folder
from labdeploy.errors import ValidationError

DATA = Path(__file__).parent / "data"
SECRET = b"-----BEGIN OPENSSH PRIVATE KEY----- not really\n"


@pytest.fixture
def outside(tmp_path) -> Path:
    """A secret next to the experiment folder, as ~/.ssh/id_ed25519 is next to a cloned repo."""
    d = tmp_path / "outside"
    d.mkdir()
    (d / "secret.txt").write_bytes(SECRET)
    return d


@pytest.fixture
def experiment(tmp_path) -> Path:
    dst = tmp_path / "work" / "experiment"
    shutil.copytree(DATA / "img_experiment", dst)
    return dst


def tar_members(context: folder.BuildContext) -> dict:
    with tarfile.open(fileobj=io.BytesIO(context.tar_bytes(context.files))) as tar:
        return {m.name: (m, tar.extractfile(m).read() if m.isfile() else None) for m in tar}


# --------------------------------------------------------------------------- inside links

def test_inside_links_travel_as_links(experiment):
    os.symlink("experiment.py", experiment / "config-link.txt")
    os.symlink("static", experiment / "static-link")          # a linked folder: not walked
    os.symlink("../run.sh", experiment / "static" / "run-link")  # '..' that stays inside
    os.symlink("missing.txt", experiment / "dangling")         # Docker sends these too
    context = folder.scan_context(experiment)
    assert context.files["dangling"].link == "missing.txt"
    assert context.files["config-link.txt"].link == "experiment.py"
    assert context.files["static-link"].link == "static"
    assert context.files["static/run-link"].link == "../run.sh"
    assert not any(p.startswith("static-link/") for p in context.files)
    assert context.manifest()["config-link.txt"] == ("link", "experiment.py")
    members = tar_members(context)
    for name, target in [("config-link.txt", "experiment.py"), ("static-link", "static"),
                         ("static/run-link", "../run.sh")]:
        member, _ = members[name]
        assert member.issym() and member.linkname == target
    assert members["experiment.py"][1] == (experiment / "experiment.py").read_bytes()


def test_tag_of_an_inside_link_follows_the_link_not_the_bytes_behind_it(experiment, tmp_path):
    plain = folder.content_tag(folder.scan_context(experiment))
    os.symlink("experiment.py", experiment / "config-link.txt")
    linked = folder.content_tag(folder.scan_context(experiment))
    assert linked != plain
    # A regular file with the same bytes is not the same content as a link.
    os.unlink(experiment / "config-link.txt")
    shutil.copyfile(experiment / "experiment.py", experiment / "config-link.txt")
    assert folder.content_tag(folder.scan_context(experiment)) not in (plain, linked)
    # Pointing the link elsewhere changes the tag; the same link in a copy keeps it.
    os.unlink(experiment / "config-link.txt")
    os.symlink("run.sh", experiment / "config-link.txt")
    elsewhere = folder.content_tag(folder.scan_context(experiment))
    assert elsewhere != linked
    copy = tmp_path / "copy"
    shutil.copytree(experiment, copy, symlinks=True)
    assert folder.content_tag(folder.scan_context(copy)) == elsewhere


# --------------------------------------------------------------------------- links that leave

def escaping_links(experiment: Path, outside: Path) -> list[tuple[str, str]]:
    return [
        ("config-link.txt", str(outside / "secret.txt")),                  # absolute
        ("x", os.path.relpath(outside / "secret.txt", experiment)),       # relative, up through '..'
        ("static/deep", "../../outside/secret.txt"),                      # from a subfolder
        ("secrets-dir", str(outside)),                                     # a folder
    ]


@pytest.mark.parametrize("index", range(4))
def test_a_link_that_leaves_the_folder_is_refused_by_name(experiment, outside, index):
    name, target = escaping_links(experiment, outside)[index]
    os.symlink(target, experiment / name)
    with pytest.raises(ValidationError) as info:
        folder.scan_context(experiment)
    err = info.value
    assert isinstance(err, folder.LinkOutsideFolder) and err.link == name and name in err.message and target in err.message
    assert "outside" in err.message and err.hint
    assert SECRET.decode() not in str(err)


def test_a_chain_of_links_that_ends_outside_is_refused(experiment, outside):
    # Each link alone looks inside; together they lead out: here -> . then up -> here/..
    os.symlink(".", experiment / "here")
    os.symlink("here/..", experiment / "up")
    with pytest.raises(ValidationError) as info:
        folder.scan_context(experiment)
    assert info.value.link == "up"
    os.unlink(experiment / "up")
    # An inside-looking link through a linked folder that leaves.
    os.symlink(str(outside), experiment / "notes" / "out")  # notes/ is .dockerignore'd: never sent itself
    os.symlink("notes/out/secret.txt", experiment / "innocent.txt")
    with pytest.raises(ValidationError) as info:
        folder.scan_context(experiment)
    assert info.value.link == "innocent.txt" and "through another link" in info.value.message


def test_an_ignored_escaping_link_is_not_sent_and_not_refused(experiment, outside):
    tag = folder.content_tag(folder.scan_context(experiment))
    os.symlink(str(outside / "secret.txt"), experiment / "notes" / "key")  # notes/ is in .dockerignore
    context = folder.scan_context(experiment)
    assert "notes/key" not in context.files
    assert folder.content_tag(context) == tag


def test_the_tag_never_reads_through_a_link(experiment, outside):
    """Today's bug: the scan followed links, so the outside file's bytes decided the tag."""
    os.symlink("../../outside/secret.txt", experiment / "x")
    with pytest.raises(ValidationError):
        folder.content_tag(folder.scan_context(experiment))


@pytest.mark.parametrize("mode", transfer.MODES)
def test_deliver_refuses_an_escaping_link_before_touching_the_server(experiment, outside, mode):
    os.symlink(str(outside / "secret.txt"), experiment / "config-link.txt")
    # remote=None: any use of the server would fail with AttributeError, not this refusal.
    with pytest.raises(ValidationError) as info:
        transfer.deliver(None, experiment, app="t-links", mode=mode, base_name="reg.example.org:5000/t")
    assert info.value.link == "config-link.txt"


def test_a_file_swapped_for_a_link_after_the_scan_is_not_read_through(experiment, outside):
    context = folder.scan_context(experiment)
    target = experiment / "requirements.txt"
    target.unlink()
    os.symlink(str(outside / "secret.txt"), target)
    with pytest.raises(ValidationError) as info:
        context.tar_bytes(context.files)
    assert "requirements.txt" in info.value.message and SECRET.decode() not in str(info.value)


def test_a_dockerfile_behind_a_linked_folder_is_refused(experiment, outside):
    (outside / "docker").mkdir()
    (outside / "docker" / "Dockerfile").write_text("FROM scratch\n")
    os.symlink(str(outside / "docker"), experiment / "notes" / "docker")  # ignored folder, so not refused itself
    with pytest.raises(ValidationError):
        folder.scan_context(experiment, dockerfile="notes/docker/Dockerfile")


@pytest.mark.parametrize("dockerfile", ["../Dockerfile", "/etc/passwd", "a/../../Dockerfile", "Docker\nfile", ""])
def test_a_dockerfile_name_outside_the_folder_is_refused(experiment, dockerfile):
    with pytest.raises(ValidationError) as info:
        folder.scan_context(experiment, dockerfile=dockerfile)
    assert info.value.hint


# --------------------------------------------------------------------------- the server's copy

def test_plan_removes_links_before_a_tar_could_write_through_them(experiment):
    os.symlink("experiment.py", experiment / "l")
    context = folder.scan_context(experiment)
    server = dict(context.manifest())
    server["requirements.txt"] = ("link", "experiment.py")  # a link there, a file here
    server["l"] = ("0" * 64, False)                         # a file there, a link here
    server["gone"] = ("link", "x")
    plan = transfer.plan_sync(context, server)
    assert plan.send == ["l", "requirements.txt"]
    assert plan.replace == ["l", "requirements.txt"] and plan.delete == ["gone"]
    same = transfer.plan_sync(context, context.manifest())
    assert same.send == [] and same.replace == [] and same.delete == []


# --------------------------------------------------------------------------- long paths

@pytest.mark.parametrize("make", [
    lambda tmp: tmp / ("x" * 256),                                # one name over NAME_MAX
    lambda tmp: tmp.joinpath(*(["y" * 200] * 21)),                 # a whole path over PATH_MAX
    lambda tmp: str(tmp / "a\0b"),
])
def test_a_path_no_file_system_takes_is_a_validation_error(tmp_path, make):
    path = make(tmp_path)
    with pytest.raises(ValidationError) as info:
        folder.scan_context(path)
    assert "OSError" not in str(info.value) and "Errno" not in str(info.value) and info.value.hint
    with pytest.raises(ValidationError):
        transfer.deliver(None, path, app="t-links")
    with pytest.raises(ValidationError):
        transfer.server_image_status(None, path, app="t-links")


def test_a_long_name_says_which_limit(tmp_path):
    with pytest.raises(ValidationError) as info:
        folder.local_folder(tmp_path / ("x" * 300))
    assert "300 bytes" in info.value.message and "255" in info.value.message
    assert folder.local_folder(tmp_path) == tmp_path


# --------------------------------------------------------------------------- Dallinger's copy

def dallinger_folder(tmp_path) -> Path:
    dst = tmp_path / "work" / "dexp"
    dst.mkdir(parents=True)
    (dst / "experiment.py").write_text("from dallinger.experiment import Experiment\n")
    (dst / "config.txt").write_text("[Experiment]\nmode = sandbox\n[Dashboard]\ndashboard_password = hunter2\n")
    (dst / "static").mkdir()
    (dst / "static" / "a.css").write_text("body {}\n")
    return dst


def test_write_context_copies_inside_links_as_links(tmp_path):
    src = dallinger_folder(tmp_path)
    os.symlink("static/a.css", src / "config-link.txt")
    os.symlink("static", src / "assets")
    spec = dallinger.spec(src, home=tmp_path / "home")
    out = spec.write_context(tmp_path / "ctx")
    assert os.readlink(out / "config-link.txt") == "static/a.css"
    assert os.readlink(out / "assets") == "static"
    assert (out / "static" / "a.css").read_text() == "body {}\n"
    assert "hunter2" not in (out / "config.txt").read_text()
    context = folder.scan_context(out)
    assert context.files["config-link.txt"].link == "static/a.css"


@pytest.mark.parametrize("name, target", [("config-link.txt", "ABS"), ("x", "../../outside/secret.txt"),
                                          ("static/keys", "ABSDIR")])
def test_write_context_refuses_a_link_out_of_the_folder_and_writes_nothing(tmp_path, outside, name, target):
    src = dallinger_folder(tmp_path)
    target = {"ABS": str(outside / "secret.txt"), "ABSDIR": str(outside)}.get(target, target)
    os.symlink(target, src / name)
    spec = dallinger.spec(src, home=tmp_path / "home")
    dest = tmp_path / "ctx"
    with pytest.raises(ValidationError) as info:
        spec.write_context(dest)
    assert info.value.link == name
    assert list(dest.iterdir()) == []
    assert not any(SECRET in p.read_bytes() for p in tmp_path.joinpath("ctx").rglob("*") if p.is_file())


def test_write_context_never_writes_through_a_linked_config(tmp_path):
    src = dallinger_folder(tmp_path)
    (src / "conf").mkdir()
    (src / "config.txt").rename(src / "conf" / "real.txt")
    os.symlink("conf/real.txt", src / "config.txt")
    spec = dallinger.spec(src, home=tmp_path / "home")
    out = spec.write_context(tmp_path / "ctx")
    # The filtered config is a file of its own; the link's target in the copy is untouched.
    assert not (out / "config.txt").is_symlink()
    assert "hunter2" not in (out / "config.txt").read_text()
    assert (out / "conf" / "real.txt").read_text() == (src / "conf" / "real.txt").read_text()
    assert (out / "Dockerfile").is_file() and not (out / "Dockerfile").is_symlink()


def test_write_context_leaves_out_an_ignored_escaping_link(tmp_path, outside):
    src = dallinger_folder(tmp_path)
    (src / ".dockerignore").write_text("private/\n")
    (src / "private").mkdir()
    os.symlink(str(outside / "secret.txt"), src / "private" / "key")
    spec = dallinger.spec(src, home=tmp_path / "home")
    out = spec.write_context(tmp_path / "ctx")
    assert not (out / "private" / "key").exists() and not (out / "private" / "key").is_symlink()
