"""Pure parts of labdeploy.images: .dockerignore, content tags, image names, build log parsing."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from labdeploy.images import build
from labdeploy.experiment import folder
from labdeploy import names
from labdeploy.errors import ValidationError
from labdeploy.progress import Collector, Progress

DATA = Path(__file__).parent / "data" / "img_experiment"


@pytest.fixture
def experiment(tmp_path) -> Path:
    dst = tmp_path / "experiment"
    shutil.copytree(DATA, dst)
    return dst


@pytest.mark.parametrize("patterns, path, excluded", [
    ("notes/", "notes/todo.txt", True),
    ("*.pyc", "a.pyc", True),
    ("*.pyc", "sub/a.pyc", False),          # '*' does not cross folders, as in Docker
    ("**/*.pyc", "sub/deep/a.pyc", True),
    ("**/*.pyc", "a.pyc", True),
    ("data\n!data/keep.csv", "data/keep.csv", False),
    ("data\n!data/keep.csv", "data/drop.csv", True),
    ("/build", "build/x", True),
    ("te?t.txt", "test.txt", True),
    ("[ab].txt", "c.txt", False),
    ("# comment\n\n", "x", False),
    ("secret", "secret\n", False),          # as Docker: '$' is the end of the name, not a final newline
])
def test_dockerignore_rules(patterns, path, excluded):
    assert folder.IgnoreRules.parse(patterns).excluded(path) is excluded


def test_scan_respects_dockerignore_and_keeps_dockerfile(experiment):
    (experiment / ".dockerignore").write_text((experiment / ".dockerignore").read_text() + "Dockerfile\n")
    (experiment / "x.pyc").write_bytes(b"\0")
    ctx = folder.scan_context(experiment)
    assert "notes/todo.txt" not in ctx.files and "x.pyc" not in ctx.files
    assert {"Dockerfile", ".dockerignore", "experiment.py", "run.sh", "static/style.css"} <= set(ctx.files)
    assert ctx.files["run.sh"].executable and not ctx.files["experiment.py"].executable


def test_content_tag_follows_content_only(experiment, tmp_path):
    tag = folder.content_tag(folder.scan_context(experiment))
    # A copy elsewhere, with new mtimes and an ignored file changed: same tag.
    other = tmp_path / "copy"
    shutil.copytree(experiment, other)
    (other / "notes" / "todo.txt").write_text("changed but ignored\n")
    assert folder.content_tag(folder.scan_context(other)) == tag
    # Content, executable bit, build args: each changes it.
    (other / "experiment.py").write_text("print('x')\n")
    changed = folder.content_tag(folder.scan_context(other))
    assert changed != tag
    (other / "run.sh").chmod(0o644)
    assert folder.content_tag(folder.scan_context(other)) != changed
    assert folder.content_tag(folder.scan_context(experiment), {"BASE": "x"}) != tag
    assert len(tag) == folder.TAG_LENGTH and tag.isalnum()


def test_missing_dockerfile_and_folder(tmp_path):
    with pytest.raises(folder.DockerfileMissing) as info:
        folder.scan_context(tmp_path)
    assert info.value.hint
    with pytest.raises(ValidationError):
        folder.scan_context(tmp_path / "absent")


@pytest.mark.parametrize("name", ["labdeploy", "registry.gitlab.com/group/experiment-images",
                                  "10.0.0.5:5000/lab/images", "localhost/x", "a__b/c.d-e"])
def test_valid_image_names(name):
    assert names.image_repository(name) == name


@pytest.mark.parametrize("name", ["", "Upper/case", "has space", "x:tag", "-lead", "a/b/", "x;rm -rf /",
                                  "https://registry/x", "a//b"])
def test_invalid_image_names(name):
    with pytest.raises(ValidationError) as info:
        names.image_repository(name)
    assert info.value.hint


def test_image_ref_and_registry_of():
    assert build.image_ref("reg.example.org:5000/lab", "stroop", "abc123") == "reg.example.org:5000/lab/stroop:abc123"
    assert build.registry_of("reg.example.org:5000/lab") == "reg.example.org:5000"
    assert build.registry_of("lab/images") is None
    assert build.registry_of("labdeploy") is None
    with pytest.raises(ValidationError):
        build.image_ref("lab", "Bad App", "abc")
    with pytest.raises(ValidationError):
        names.image_tag("-bad")


def test_chain_ids():
    diffs = ["sha256:" + "a" * 64, "sha256:" + "b" * 64]
    chains = build.chain_ids(diffs)
    import hashlib
    assert chains[0] == diffs[0]
    assert chains[1] == "sha256:" + hashlib.sha256(f"{diffs[0]} {diffs[1]}".encode()).hexdigest()


def test_build_log_steps_and_failure():
    events = Collector()
    log = build.BuildLog(events)
    for line in ["Step 1/3 : FROM base", " ---> abc", "Step 2/3 : RUN make", "compiling", "error: boom"]:
        log.line(line)
    steps = [e for e in events.of(Progress)]
    assert [(e.done, e.total) for e in steps] == [(1, 3), (2, 3)]
    err = log.failure("The command '/bin/sh -c make' returned a non-zero code: 2")
    assert isinstance(err, build.BuildFailed)
    assert err.failed_step == "Step 2/3 : RUN make" and "error: boom" in err.output
    assert "returned a non-zero code" in err.message
    # BuildKit's plain output is understood too.
    bk = build.BuildLog(events)
    bk.line("#6 [2/3] RUN make")
    assert bk.current_step == "Step 2/3 : RUN make"
