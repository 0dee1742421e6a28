"""labdeploy.dallinger, pure parts: recognising folders, config merge, secret split, Dockerfile."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from labdeploy.app import appcompose
from labdeploy.experiment import dallinger
from labdeploy.errors import ValidationError

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "examples" / "dallinger-hello"


@pytest.fixture(scope="module")
def release_cache(tmp_path_factory) -> Path:
    """One cache of what Dallinger/PsyNet releases published (read from PyPI once per module)."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(autouse=True)
def shared_release_cache(release_cache, monkeypatch):
    # Every test gets a fresh HOME; the release cache (platformdirs' user cache) is shared.
    monkeypatch.setenv("XDG_CACHE_HOME", str(release_cache))


def make_experiment(root: Path, config: str = "[Experiment]\nmode = sandbox\n", **files: str) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "experiment.py").write_text(files.pop("experiment_py", "from dallinger.experiment import Experiment\n"))
    (root / "config.txt").write_text(config)
    for name, text in files.items():
        (root / name.replace("__", ".")).write_text(text)
    return root


# --------------------------------------------------------------------------- recognising

def test_recognises_our_example():
    folder = dallinger.recognise(EXAMPLE)
    assert folder.kind == "dallinger"
    assert folder.dallinger_requirement == "dallinger==12.4.0" and folder.dallinger_version == "12.4.0"
    assert not folder.has_dockerfile and not folder.has_constraints
    assert dallinger.is_experiment_folder(EXAMPLE)


@pytest.mark.parametrize("missing", ["experiment.py", "config.txt"])
def test_a_folder_without_experiment_or_config_is_refused_with_a_hint(tmp_path, missing):
    exp = make_experiment(tmp_path / "exp")
    (exp / missing).unlink()
    assert not dallinger.is_experiment_folder(exp)
    with pytest.raises(ValidationError) as err:
        dallinger.recognise(exp)
    assert missing in err.value.message and "experiment.py and config.txt" in err.value.hint


def test_a_missing_folder_is_refused(tmp_path):
    with pytest.raises(ValidationError, match="does not exist"):
        dallinger.recognise(tmp_path / "nope")


@pytest.mark.parametrize("line, requirement, version", [
    ("dallinger==12.4.0", "dallinger==12.4.0", "12.4.0"),
    ("Dallinger[data] == 12.4.0 ; python_version >= '3.10'", "dallinger==12.4.0", "12.4.0"),
    ("dallinger>=12,<13", "dallinger>=12,<13", None),
    ("dallinger", "dallinger", None),
    ("file:dallinger-12.3.1-py3-none-any.whl", "dallinger==12.3.1", "12.3.1"),
    ("dallinger-extras==1.0", None, None),
    ("git+https://github.com/Dallinger/Dallinger@main#egg=dallinger", None, None),
])
def test_dallinger_version_from_requirements(tmp_path, line, requirement, version):
    folder = dallinger.recognise(make_experiment(tmp_path / "e", requirements__txt=f"# pinned\n{line}\nnumpy\n"))
    assert folder.dallinger_requirement == requirement
    assert folder.dallinger_version == version


def test_version_pinned_in_constraints_only(tmp_path):
    folder = dallinger.recognise(make_experiment(tmp_path / "e", requirements__txt="dallinger\n",
                                                 constraints__txt="dallinger==12.4.0\nnumpy==2.0\n"))
    # requirements.txt names it unpinned; the pin lives in constraints.txt
    assert folder.dallinger_requirement == "dallinger"
    assert folder.has_constraints


@pytest.mark.parametrize("files", [
    {"requirements__txt": "psynet==13.3.0\n"},
    {"experiment_py": "import psynet.experiment\nclass Exp(psynet.experiment.Experiment): pass\n"},
])
def test_recognises_psynet(tmp_path, files):
    folder = dallinger.recognise(make_experiment(tmp_path / "e", **files))
    assert folder.kind == "psynet"


def test_a_folder_with_its_own_dockerfile_keeps_it(tmp_path, home):
    exp = make_experiment(tmp_path / "e", Dockerfile="FROM example/psynet:13\n")
    s = dallinger.spec(exp, home=home)
    assert s.folder.has_dockerfile and s.dockerfile is None
    ctx = s.write_context(tmp_path / "ctx")
    assert (ctx / "Dockerfile").read_text() == "FROM example/psynet:13\n"


# --------------------------------------------------------------------------- configuration

def test_config_txt_beats_dallingerconfig_and_overrides_beat_both(tmp_path, home):
    (home / ".dallingerconfig").write_text(
        "[AWS]\naws_region = eu-west-1\n[Experiment]\ntitle = from home\nbase_payment = 1.0\n"
        "docker_image_base_name = registry.example.org/lab\n")
    exp = make_experiment(tmp_path / "e", "[One]\ntitle = from config.txt\nduration = 0.5\n[Two]\nDuration = 0.7\n")
    merged = dallinger.merged_config(exp, overrides={"base_payment": 2.5, "auto_recruit": False})
    assert merged["title"] == "from config.txt"
    assert merged["duration"] == "0.7"  # every section merged, keys lower-cased, later wins
    assert merged["base_payment"] == "2.5" and merged["auto_recruit"] == "false"
    assert merged["aws_region"] == "eu-west-1"
    assert merged["docker_image_base_name"] == "registry.example.org/lab"


def test_without_home_argument_the_home_fixture_is_used(tmp_path, home):
    (home / ".dallingerconfig").write_text("[x]\norganization_name = Home Lab\n")
    exp = make_experiment(tmp_path / "e")
    assert dallinger.merged_config(exp)["organization_name"] == "Home Lab"


def test_synonyms_map_to_dallingers_key(tmp_path, home):
    (home / ".dallingerconfig").write_text("[Email]\ndallinger_email_password = old-style\n")
    exp = make_experiment(tmp_path / "e", "[Email]\nsmtp_password = new\n[AWS]\naws_default_region = us-east-2\n")
    merged = dallinger.merged_config(exp)
    assert merged["smtp_password"] == "new" and "dallinger_email_password" not in merged
    assert merged["aws_region"] == "us-east-2"


def test_a_broken_config_file_says_how_to_fix_it(tmp_path, home):
    exp = make_experiment(tmp_path / "e", "[Experiment]\ntitle = 100% fun\n")
    with pytest.raises(ValidationError) as err:
        dallinger.merged_config(exp)
    assert "config.txt" in err.value.message and "%%" in err.value.hint


@pytest.mark.parametrize("key, secret", [
    ("aws_access_key_id", True), ("AWS_SECRET_ACCESS_KEY", True), ("dashboard_user", True),
    ("dashboard_password", True), ("prolific_api_token", True), ("smtp_password", True),
    ("my_lab_api_secret", True), ("FLASK_SECRET_KEY", True), ("DATABASE_URL", True),
    ("title", False), ("smtp_username", False), ("recruiter", False), ("aws_region", False),
])
def test_which_keys_are_secret(key, secret):
    assert dallinger.is_sensitive(key) is secret


# --------------------------------------------------------------------------- the spec

SECRET_VALUES = ("AKIAEXAMPLEKEY", "wJalrSecretExample", "prolific-tok-123", "mail-pw-456", "dash-pw-789")


@pytest.fixture
def secret_experiment(tmp_path, home):
    (home / ".dallingerconfig").write_text(
        "[AWS Access]\naws_access_key_id = AKIAEXAMPLEKEY\naws_secret_access_key = wJalrSecretExample\n"
        "aws_region = us-east-1\n[Prolific]\nprolific_api_token = prolific-tok-123\n"
        "[Email Access]\nsmtp_username = lab@example.org\nsmtp_password = mail-pw-456\n"
        "[Bots]\nchrome-path = /Applications/Chrome\n[Heroku]\nheroku_auth_token = heroku-tok\n")
    return make_experiment(
        tmp_path / "exp",
        "[Experiment]\nmode = sandbox\nrecruiter = hotair\nclock_on = true\n"
        "[Dashboard]\ndashboard_password = dash-pw-789\n"
        "[Database]\ndatabase_url = postgresql://postgres@localhost/dallinger\n[Server]\nhost = localhost\n",
        requirements__txt="dallinger==12.4.0\n")


def test_spec_splits_secrets_from_plain_environment(secret_experiment, home):
    s = dallinger.spec(secret_experiment, home=home, flask_secret_key="flask-key-000")
    assert s.commands == {"web": "dallinger_heroku_web", "worker": "dallinger_heroku_worker",
                          "clock": "dallinger_heroku_clock"}
    assert s.secret_env == {
        "AWS_ACCESS_KEY_ID": "AKIAEXAMPLEKEY", "AWS_SECRET_ACCESS_KEY": "wJalrSecretExample",
        "prolific_api_token": "prolific-tok-123", "smtp_password": "mail-pw-456",
        "dashboard_password": "dash-pw-789", "FLASK_SECRET_KEY": "flask-key-000"}
    # The environment contract, plus the experiment's own keys under their own names.
    for key, value in {"PORT": "5000", "HOST": "0.0.0.0", "HOME": "/tmp", "host": "0.0.0.0",
                       "mode": "sandbox", "recruiter": "hotair", "smtp_username": "lab@example.org",
                       "aws_region": "us-east-1", "AWS_DEFAULT_REGION": "us-east-1"}.items():
        assert s.env[key] == value
    # The server's bind address and database are labdeploy's; a Heroku token has no business there.
    assert "database_url" not in s.env and "database_url" not in s.secret_env
    assert "heroku_auth_token" not in s.env and "heroku_auth_token" not in s.secret_env
    assert s.skipped["chrome-path"] == "not a valid environment variable name"
    assert s.clock_on and s.services == ("web", "worker", "clock")
    assert len(s.env["DALLINGER_UID"]) == 36 and s.env["id"] == s.env["DALLINGER_UID"]
    assert not any(v in repr(s) for v in SECRET_VALUES + ("flask-key-000",))


def test_spec_env_makes_a_compose_file_without_any_secret(secret_experiment, home):
    """The compose file built from the spec's plain env holds none of the secret values;
    the secrets file built from secret_env holds them all."""
    s = dallinger.spec(secret_experiment, home=home)
    doc = appcompose.app_compose_document("t-dal-unit", "labdeploy/t-dal-unit:abc", version="1",
                                      commands=s.commands, environment=s.env)
    text = appcompose.app_compose_yaml(doc)
    assert "dallinger_heroku_worker" in text and "recruiter: hotair" in text
    assert not any(v in text for v in SECRET_VALUES + (s.secret_env["FLASK_SECRET_KEY"],))
    secrets_text = appcompose.secrets_env(s.secret_env)
    assert all(v in secrets_text for v in SECRET_VALUES)


def test_mode_override_and_validation(tmp_path, home):
    exp = make_experiment(tmp_path / "e")
    assert dallinger.spec(exp, home=home).mode == "sandbox"
    assert dallinger.spec(exp, home=home, mode="live").env["mode"] == "live"
    with pytest.raises(ValidationError, match="Unknown Dallinger mode"):
        dallinger.spec(exp, home=home, mode="production")
    bad = make_experiment(tmp_path / "bad", "[Experiment]\nmode = prod\n")
    with pytest.raises(ValidationError, match="mode"):
        dallinger.spec(bad, home=home)
    clock = make_experiment(tmp_path / "clock", "[Server]\nclock_on = maybe\n")
    with pytest.raises(ValidationError, match="clock_on"):
        dallinger.spec(clock, home=home)


def test_a_multiline_value_is_refused(tmp_path, home):
    exp = make_experiment(tmp_path / "e", "[Experiment]\ndescription = one\n  two\n")
    with pytest.raises(ValidationError, match="several lines"):
        dallinger.spec(exp, home=home)


def test_each_spec_gets_fresh_secrets_unless_given(tmp_path, home):
    exp = make_experiment(tmp_path / "e")
    a, b = dallinger.spec(exp, home=home), dallinger.spec(exp, home=home)
    assert a.secret_env["FLASK_SECRET_KEY"] != b.secret_env["FLASK_SECRET_KEY"]
    kept = dallinger.spec(exp, home=home, flask_secret_key="k", experiment_uid="u")
    assert kept.secret_env["FLASK_SECRET_KEY"] == "k" and kept.env["DALLINGER_UID"] == kept.env["id"] == "u"
    assert a.env["id"] != b.env["id"]
    own = make_experiment(tmp_path / "own", "[Experiment]\nid = my-exp-1\n")
    assert dallinger.spec(own, home=home).env["id"] == "my-exp-1"


# --------------------------------------------------------------------------- the image

def test_generated_dockerfile_installs_the_required_version(tmp_path, home):
    exp = make_experiment(tmp_path / "e", requirements__txt="dallinger==12.3.0\nnumpy\n",
                          constraints__txt="numpy==2.0.0\n")
    s = dallinger.spec(exp, home=home, base_image="python:3.12-slim")
    text = s.dockerfile
    lines = text.splitlines()
    assert "ARG BASE_IMAGE=python:3.12-slim" in lines and "FROM ${BASE_IMAGE}" in lines
    assert "m.version('dallinger') == '12.3.0'" in text
    assert 'pip install --no-cache-dir -c /opt/labdeploy/constraints.txt "dallinger==12.3.0"' in text
    assert "libpq-dev gcc python3-dev" in text
    assert "COPY .labdeploy/constraints.txt /opt/labdeploy/constraints.txt" in lines
    assert "RUN python3 -m pip install --no-cache-dir -c /opt/labdeploy/constraints.txt -r requirements.txt" in lines
    assert lines.index("COPY . /experiment") > lines.index("COPY requirements.txt /experiment/requirements.txt")
    assert 'CMD ["dallinger_heroku_web"]' in lines
    # The image's one constraints file: Dallinger 12.3.0's published versions; the folder's numpy pin
    # gives way to Dallinger's where Dallinger pins numpy, else it is kept.
    constraints = s.build_files[".labdeploy/constraints.txt"]
    assert "dallinger==12.3.0" in constraints.splitlines() and "rq==" in constraints
    assert s.release.dallinger == "12.3.0" and s.release.why == "named in requirements.txt"


def test_clock_defaults_off_for_dallinger_and_on_for_psynet(tmp_path, home):
    assert dallinger.spec(make_experiment(tmp_path / "d"), home=home).services == ("web", "worker")
    psy = make_experiment(tmp_path / "p", requirements__txt="psynet==13.3.0\n")
    assert dallinger.spec(psy, home=home).services == ("web", "worker", "clock")
    off = make_experiment(tmp_path / "q", "[Server]\nclock_on = false\n", requirements__txt="psynet==13.3.0\n")
    assert dallinger.spec(off, home=home).services == ("web", "worker")


def test_generated_dockerfile_for_psynet_and_unpinned(tmp_path, home):
    psy = make_experiment(tmp_path / "p", requirements__txt="psynet==13.3.0\n")
    text = dallinger.spec(psy, home=home).dockerfile
    assert '"dallinger==12.4.0" "psynet==13.3.0"' in text  # the newest Dallinger PsyNet 13.3.0 allows
    loose = make_experiment(tmp_path / "l")
    s = dallinger.spec(loose, home=home)
    assert "ARG BASE_IMAGE=" + dallinger.DEFAULT_PYTHON_BASE in s.dockerfile
    assert f'"dallinger=={s.release.dallinger}"' in s.dockerfile and "newest release" in s.release.why
    assert "COPY requirements.txt" not in s.dockerfile  # the folder has none
    assert "install -y --no-install-recommends git" not in s.dockerfile
    from_git = make_experiment(tmp_path / "g", requirements__txt="dallinger==12.4.0\n"
                                                                 "git+https://github.com/lab/tools@v1#egg=tools\n")
    assert "install -y --no-install-recommends git" in dallinger.spec(from_git, home=home).dockerfile


def test_a_bad_base_image_name_is_refused(tmp_path, home):
    with pytest.raises(ValidationError, match="base image"):
        dallinger.spec(make_experiment(tmp_path / "e"), home=home, base_image="python; rm -rf /")


def test_build_context_drops_secret_lines_and_caches(tmp_path, home):
    exp = tmp_path / "exp"
    shutil.copytree(EXAMPLE, exp)
    with open(exp / "config.txt", "a") as f:
        f.write("[Prolific]\nprolific_api_token = prolific-tok-123\nprolific_project = pilot\n")
    (exp / "__pycache__").mkdir()
    (exp / "__pycache__" / "experiment.cpython-311.pyc").write_bytes(b"x")
    (exp / ".git").mkdir()
    (exp / ".git" / "HEAD").write_text("ref: main\n")
    s = dallinger.spec(exp, home=home)
    ctx = s.write_context(tmp_path / "ctx")
    config = (ctx / "config.txt").read_text()
    assert "prolific-tok-123" not in config and "prolific_project = pilot" in config
    assert "recruiter = hotair" in config
    assert s.secret_env["prolific_api_token"] == "prolific-tok-123"
    assert (ctx / "Dockerfile").read_text() == s.dockerfile
    assert (ctx / "templates" / "exp.html").is_file() and (ctx / "models.py").is_file()
    assert not (ctx / "__pycache__").exists() and not (ctx / ".git").exists()
    # the researcher's folder is left alone
    assert "prolific-tok-123" in (exp / "config.txt").read_text() and not (exp / "Dockerfile").exists()
    with pytest.raises(Exception, match="not empty"):
        s.write_context(ctx)


def test_psynet_preparation_without_docker_here_says_so(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no docker on PATH
    with pytest.raises(Exception) as err:
        dallinger.prepare_psynet(tmp_path, app="t-dal-unit", server_host="lab.example.org",
                                 postgres_image="postgres:15", redis_image="redis:7")
    assert "needs Docker on this computer" in str(err.value) and "Install Docker" in err.value.hint


def test_psynet_preparation_refuses_bad_names(tmp_path):
    with pytest.raises(ValidationError):
        dallinger.prepare_psynet(tmp_path, app="Bad Name", server_host="lab.example.org",
                                 postgres_image="postgres:15", redis_image="redis:7")
    with pytest.raises(ValidationError):
        dallinger.prepare_psynet(tmp_path, app="t-dal-unit", server_host="lab; rm -rf /",
                                 postgres_image="postgres:15", redis_image="redis:7")
    with pytest.raises(ValidationError):
        dallinger.prepare_psynet(tmp_path, app="t-dal-unit", server_host="lab.example.org",
                                 postgres_image="--privileged", redis_image="redis:7")
