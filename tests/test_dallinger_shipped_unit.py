"""Experiment folders as their authors ship them (issue 15, item 5): PsyNet's stock Dockerfile
recognised and replaced by the generated one, an explicit choice of Dockerfile, the image's
constraints in the build context (the content tag stays deterministic), git requirements
checked before building, and failure hints of PsyNet's preparation that match the failure.

No testbed; PyPI is read (once per module, cached) for the releases' published files.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest

from labdeploy.experiment import dallinger, gitsources, psynetprepare, pypi
from labdeploy.app import deploy
from labdeploy.experiment import folder
from labdeploy.errors import ValidationError

# PsyNet's stock Dockerfile up to PsyNet 13.0 (the demos' copy): PsyNet's own base image.
STOCK_OLD = """\
# syntax = docker/dockerfile:1.2

FROM registry.gitlab.com/psynetdev/psynet:master

RUN mkdir /experiment
WORKDIR /experiment

COPY requirements.txt requirements.txt
COPY *constraints.txt constraints.txt

ENV SKIP_DEPENDENCY_CHECK=""
ENV DALLINGER_NO_EGG_BUILD=1

# If you see an error here, you probably need to run `bash docker/generate-constraints`.
RUN psynet check-constraints

RUN python3 -m pip uninstall -y psynet
RUN python3 -m pip uninstall -y dallinger
RUN python3 -m pip install -r constraints.txt

COPY *prepare_docker_image.sh prepare_docker_image.sh
RUN if test -f prepare_docker_image.sh ; then bash prepare_docker_image.sh ; fi

COPY . /experiment

ENV PORT=5000

CMD dallinger_heroku_web
"""


@pytest.fixture(scope="module")
def release_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(autouse=True)
def shared_release_cache(release_cache, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(release_cache))


@pytest.fixture(scope="module")
def stock_13(tmp_path_factory) -> str:
    """PsyNet 13.3.0's own template (psynet/resources/experiment_scripts/Dockerfile), read from
    its wheel on PyPI (sha256 checked)."""
    wheel = next(f for f in pypi.project("psynet").files_of("13.3.0") if f.is_wheel)
    path = pypi.download(wheel, tmp_path_factory.mktemp("wheel"))
    with zipfile.ZipFile(path) as z:
        return z.read("psynet/resources/experiment_scripts/Dockerfile").decode()


def make_experiment(root: Path, **files: str) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "experiment.py").write_text("import psynet.experiment\n")
    (root / "config.txt").write_text("[Config]\nmode = sandbox\n")
    (root / "requirements.txt").write_text(files.pop("requirements", "psynet==13.3.0\n"))
    for name, text in files.items():
        (root / name.replace("__", ".")).write_text(text)
    return root


# --------------------------------------------------------------------------- recognising the template

def test_psynet_stock_template_with_its_own_base_image_is_recognised():
    found = dallinger.stock_template(STOCK_OLD)
    assert found is not None and found.base == "registry.gitlab.com/psynetdev/psynet:master"
    assert found.own_steps == ()
    custom = dallinger.stock_template(STOCK_OLD.replace("COPY . /experiment", "RUN apt-get install -y ffmpeg\n"
                                                                            "COPY . /experiment"))
    assert custom is not None and custom.own_steps == ("RUN apt-get install -y ffmpeg",)


def test_psynet_13_template_is_recognised_only_when_unchanged(stock_13):
    assert "FROM python:3.13-bookworm" in stock_13  # what PsyNet 13.3.0's `psynet update-scripts` writes
    found = dallinger.stock_template(stock_13)
    assert found is not None and found.base == "python:3.13-bookworm"
    assert dallinger.stock_template(stock_13 + "\nRUN apt-get install -y ffmpeg\n") is None  # the author's own


@pytest.mark.parametrize("text", [
    "FROM python:3.11-slim\nRUN pip install dallinger\nCOPY . /experiment\nCMD dallinger_heroku_web\n",
    "FROM labdeploy-testbed/dallinger:12.4.0\nCOPY . /experiment\n",
    "# only a comment\n",
])
def test_other_dockerfiles_are_not_taken_for_psynets(text):
    assert dallinger.stock_template(text) is None


# --------------------------------------------------------------------------- which Dockerfile is built

def test_the_stock_template_is_replaced_and_said(tmp_path, home):
    exp = make_experiment(tmp_path / "static", Dockerfile=STOCK_OLD)
    s = dallinger.spec(exp, home=home)
    assert s.dockerfile is not None and s.dockerfile_name == "Dockerfile"
    assert "registry.gitlab.com" not in s.dockerfile and '"psynet==13.3.0"' in s.dockerfile
    info = [n.text for n in s.notes if n.level == "info"]
    assert any("PsyNet's stock template (FROM registry.gitlab.com/psynetdev/psynet:master)" in t for t in info)
    ctx = s.write_context(tmp_path / "ctx")
    assert (ctx / "Dockerfile").read_text() == s.dockerfile
    assert (exp / "Dockerfile").read_text() == STOCK_OLD  # the researcher's folder is left alone


def test_own_steps_of_a_stock_template_are_named_in_a_warning(tmp_path, home):
    exp = make_experiment(tmp_path / "e", Dockerfile=STOCK_OLD.replace("ENV PORT=5000", "RUN apt-get install -y sox"))
    warnings = [n for n in dallinger.spec(exp, home=home).notes if n.level == "warning"]
    assert any("RUN apt-get install -y sox" in n.text and "prepare_docker_image.sh" in n.hint for n in warnings)


def test_dockerfile_choice(tmp_path, home):
    own = "FROM registry.example.org/lab/psynet-base:13\nCOPY . /experiment\n"
    exp = make_experiment(tmp_path / "e", Dockerfile=own, Dockerfile__prod=own + "ENV X=1\n")
    assert dallinger.spec(exp, home=home).dockerfile is None  # another Dockerfile: used as it is
    generated = dallinger.spec(exp, home=home, dockerfile="generated")
    assert generated.dockerfile is not None and generated.dockerfile_name == "Dockerfile"
    assert (generated.write_context(tmp_path / "ctx") / "Dockerfile").read_text() == generated.dockerfile
    prod = dallinger.spec(exp, home=home, dockerfile="Dockerfile.prod")
    assert prod.dockerfile is None and prod.dockerfile_name == "Dockerfile.prod"
    with pytest.raises(folder.DockerfileMissing, match="no Dockerfile.dev"):
        dallinger.spec(exp, home=home, dockerfile="Dockerfile.dev")
    with pytest.raises(ValidationError, match="not inside the experiment folder"):
        dallinger.spec(exp, home=home, dockerfile="../Dockerfile")


def test_generated_is_refused_for_a_folder_that_is_not_dallingers(tmp_path, home):
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "Dockerfile").write_text("FROM python:3.11-slim\n")
    (plain / "Procfile").write_text("web: python app.py\n")
    # Refused in preflight, before any connection (the server name is not even registered).
    with pytest.raises(ValidationError, match="dockerfile='generated' is for Dallinger/PsyNet"):
        deploy.deploy(plain, "t-shipped-unit", "no-such-server", dockerfile="generated")


def test_prepare_docker_image_sh_runs_in_the_generated_image(tmp_path, home):
    exp = make_experiment(tmp_path / "e", Dockerfile=STOCK_OLD, prepare_docker_image__sh="apt-get install -y sox\n")
    lines = dallinger.spec(exp, home=home).dockerfile.splitlines()
    run = lines.index("RUN bash prepare_docker_image.sh")
    assert lines.index("COPY prepare_docker_image.sh /experiment/prepare_docker_image.sh") == run - 1
    assert lines.index("RUN python3 -m pip install --no-cache-dir -c /opt/labdeploy/constraints.txt "
                       "-r requirements.txt") < run < lines.index("COPY . /experiment")


# --------------------------------------------------------------------------- the constraints in the context

SHIPPED = "dallinger[docker]==11.4.0\n    # via psynet\nrq==2.4.1\npsynet @ git+https://gitlab.com/PsyNetDev/PsyNet@master\n"


def test_constraints_travel_in_the_context_and_the_tag_is_deterministic(tmp_path, home):
    exp = make_experiment(tmp_path / "e", Dockerfile=STOCK_OLD, constraints__txt=SHIPPED,
                          dockerignore=".*\n*.pyc\n")
    (exp / ".dockerignore").write_text((exp / "dockerignore").read_text())
    (exp / "dockerignore").unlink()
    first = dallinger.spec(exp, home=home)
    second = dallinger.spec(exp, home=home)
    tags = []
    for n, s in enumerate((first, second)):
        ctx = s.write_context(tmp_path / f"ctx{n}")
        scanned = folder.scan_context(ctx)
        assert ".labdeploy/constraints.txt" in scanned.files  # Docker will send it despite `.*`
        assert (ctx / ".dockerignore").read_text().endswith("!.labdeploy/constraints.txt\n")
        tags.append(folder.content_tag(scanned))
        text = (ctx / ".labdeploy" / "constraints.txt").read_text()
        assert "rq==2.12.0" in text.splitlines() and "rq==2.4.1" not in text
        assert "[docker]" not in text and "git+" not in text
        assert (ctx / "constraints.txt").read_text() == SHIPPED  # the author's file travels unchanged
    assert tags[0] == tags[1]
    warnings = " | ".join(n.text for n in first.notes if n.level == "warning")
    assert "dallinger==11.4.0" in warnings and "psynet @ git+" in warnings


# --------------------------------------------------------------------------- git requirements

def test_git_sources_are_found_and_checked_from_this_computer(tmp_path, home):
    lines = ["psynet==13.3.0", "lab_tools @ git+https://git.lab.invalid/tools@v1",
             "git+ssh://git@git.lab.invalid:2222/x.git#egg=x", "git+file:///srv/repo#egg=y"]
    found = gitsources.git_sources(lines)
    assert [s.address for s in found] == ["git.lab.invalid:443", "git.lab.invalid:2222"]
    with pytest.raises(gitsources.GitSourceUnreachable) as err:
        gitsources.check(lines, here=True)
    assert "git.lab.invalid:443 from this computer: its name does not resolve" in err.value.message
    assert "Nothing was built" in err.value.message and "psynet==13.3.0" in err.value.hint
    gitsources.check(["psynet==13.3.0"], here=True)  # nothing from git: nothing to check


def test_a_git_host_that_is_not_a_host_name_is_refused_before_any_shell():
    with pytest.raises(ValidationError):
        gitsources.git_sources(["x @ git+https://bad$(reboot)host/x"])


def test_server_check_command_and_its_answer():
    sources = gitsources.git_sources(["git+https://gitlab.com/a/b@v1#egg=b"])
    argv = gitsources.server_check_argv(sources)
    assert argv[:2] == ["sh", "-c"] and argv[3:] == ["sh", str(gitsources.CONNECT_TIMEOUT), "gitlab.com", "443"]
    assert gitsources.parse_server_check("dns gitlab.com 443\nok pypi.org 443\n") == {
        "gitlab.com:443": "its name does not resolve"}


def test_only_a_generated_dockerfile_is_checked(tmp_path, home):
    exp = make_experiment(tmp_path / "e", requirements="psynet @ git+https://gitlab.invalid/PsyNet@v13.3.0\n",
                          Dockerfile="FROM registry.example.org/lab/base:1\nCOPY . /experiment\n")
    dallinger.check_git_sources(dallinger.spec(exp, home=home), mode="ssh-copy")  # its own: not ours to judge
    generated = dallinger.spec(exp, home=home, dockerfile="generated")
    with pytest.raises(gitsources.GitSourceUnreachable, match="gitlab.invalid:443 from this computer"):
        dallinger.check_git_sources(generated, mode="ssh-copy")


# --------------------------------------------------------------------------- PsyNet's preparation

PULL_FAILED = ("Step 1/14 : FROM registry.gitlab.com/psynetdev/psynet:master\n"
               "Get \"https://registry.gitlab.com/v2/\": dial tcp: lookup registry.gitlab.com: no such host\n")
PIP_FAILED = ("Step 9/14 : RUN python3 -m pip install -r requirements.txt\n"
              "ERROR: Could not find a version that satisfies the requirement psynet==99.0\n"
              "The command '/bin/sh -c python3 -m pip install -r requirements.txt' returned a non-zero code: 1\n")


def test_a_pull_failure_is_not_sent_to_psynet_prepare():
    message, hint = psynetprepare.explain("build", PULL_FAILED)
    assert "registry.gitlab.com/psynetdev/psynet:master could not be pulled here" in message
    assert "docker pull registry.gitlab.com/psynetdev/psynet:master" in hint
    assert "would not help" in hint and "dockerfile='generated'" in hint


def test_failure_hints_match_the_failure():
    _, pip_hint = psynetprepare.explain("build", PIP_FAILED)
    assert "requirements.txt" in pip_hint and "psynet prepare" not in pip_hint
    _, svc_hint = psynetprepare.explain("services", "Unable to find image 'postgres:15' locally\n"
                                                    "pull access denied for postgres",
                                        postgres_image="postgres:15", redis_image="redis:7")
    assert "docker pull postgres:15" in svc_hint
    _, code_hint = psynetprepare.explain("prepare", "Traceback ...\nNameError: name 'x' is not defined\n")
    assert "`psynet prepare`" in code_hint
    _, daemon_hint = psynetprepare.explain("build", "Cannot connect to the Docker daemon at unix:///var/run/docker.sock")
    assert "Start Docker" in daemon_hint


def test_preparation_refuses_a_folder_name_it_could_not_record(tmp_path):
    with pytest.raises(ValidationError, match="folder name"):
        dallinger.prepare_psynet(tmp_path, app="t-shipped-unit", server_host="lab.example.org",
                                 postgres_image="postgres:15", redis_image="redis:7", folder_name="a\nb")


def test_cli_documents_dockerfile_generated(tmp_path):
    from test_cli_support import CLI

    (tmp_path / "home").mkdir()
    out = " ".join(CLI(tmp_path / "home").ok("deploy", "--help").out.split())
    assert "--dockerfile NAME|generated" in out and "'generated': labdeploy's own Dockerfile" in out
