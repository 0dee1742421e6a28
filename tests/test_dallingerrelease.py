"""labdeploy.dallingerrelease and labdeploy.pypi against the real PyPI: a Dallinger release's
published constraints fetched from its sdist (sha256 checked), cached under the user's cache
folder, used without PyPI afterwards; PsyNet's Dallinger range from its metadata; the choice of
release. "Without PyPI" is a real unreachable index (a closed local port), not a stand-in.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from labdeploy.experiment import dallinger, dallingerrelease as dr, pypi
from labdeploy.errors import ValidationError

pytestmark = pytest.mark.network  # the real PyPI, not the testbed

CLOSED = "http://127.0.0.1:9/simple/"  # the discard port: nothing listens, the connection is refused
SHIPPED_CONSTRAINTS = "dallinger[docker]==11.4.0\nrq==2.4.1\npsynet @ git+https://gitlab.com/PsyNetDev/PsyNet@master\n"


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture
def cache(shared_cache, home, monkeypatch) -> Path:
    """The user's cache folder (platformdirs) under this module's shared one; HOME is a temporary one."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(shared_cache))
    monkeypatch.setattr(dr, "_index", {})  # no file list remembered from another test
    return shared_cache / "labdeploy" / "releases"


@pytest.fixture
def offline(monkeypatch):
    monkeypatch.setattr(pypi, "INDEX_URL", CLOSED)
    monkeypatch.setattr(dr, "_index", {})


def test_simple_json_api_lists_files_with_sha256():
    proj = pypi.project("dallinger")
    assert "12.4.0" in proj.versions
    files = {f.filename: f for f in proj.files_of("12.4.0")}
    assert set(files) == {"dallinger-12.4.0.tar.gz", "dallinger-12.4.0-py3-none-any.whl"}
    assert len(files["dallinger-12.4.0.tar.gz"].sha256) == 64 and files["dallinger-12.4.0.tar.gz"].is_sdist


def test_published_constraints_are_fetched_verified_and_cached(cache, monkeypatch):
    got = dr.release_constraints("12.4.0")
    assert "rq==2.12.0" in got.text.splitlines() and got.python == "3.11"
    assert got.source.startswith("constraints.txt in dallinger-12.4.0.tar.gz, sha256 b155a17de96d")
    path = cache / "dallinger-12.4.0-constraints.txt"
    assert path.is_file() and "b155a17de96d05be27dd68776d41d7c9fd225330936db5e97c32dea12ebeb114" in path.read_text()
    # Afterwards no network is needed for that release.
    monkeypatch.setattr(pypi, "INDEX_URL", CLOSED)
    monkeypatch.setattr(dr, "_index", {})
    again = dr.release_constraints("12.4.0")
    assert again.text == got.text and again.source == got.source


def test_a_download_that_does_not_match_the_index_is_refused_and_not_kept(tmp_path):
    good = next(f for f in pypi.project("dallinger").files_of("12.4.0") if f.is_sdist)
    tampered = pypi.ReleaseFile(good.filename, good.url, "0" * 64)
    with pytest.raises(pypi.PyPIIntegrityError, match="does not match the sha256"):
        pypi.download(tampered, tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_psynet_says_which_dallinger_it_needs(cache):
    assert dr.psynet_dallinger_range("13.3.0") == "<13,>=12.2.0"
    assert (cache / "psynet-13.3.0-requires-dallinger.txt").read_text().strip() == "<13,>=12.2.0"


def test_the_choice_for_a_shipped_psynet_folder(cache):
    choice = dr.choose("psynet", ["psynet==13.3.0"], SHIPPED_CONSTRAINTS)
    assert (choice.dallinger, choice.psynet, choice.pins) == ("12.4.0", "13.3.0",
                                                              {"dallinger": "12.4.0", "psynet": "13.3.0"})
    texts = [n.text for n in choice.notes]
    assert any("constraints.txt pins dallinger==11.4.0, but PsyNet 13.3.0 needs dallinger<13,>=12.2.0" in t
               for t in texts)
    assert any(t.startswith("Dallinger 12.4.0: the newest release PsyNet 13.3.0 allows") for t in texts)


def test_the_choice_follows_pins_and_refuses_what_cannot_build(cache):
    assert dr.choose("dallinger", ["dallinger==12.3.0"], None).dallinger == "12.3.0"
    lock = dr.choose("psynet", ["psynet==13.3.0"], "dallinger==12.2.1\n")
    assert lock.dallinger == "12.2.1" and lock.why == "pinned in the experiment's constraints.txt"
    assert dr.choose("dallinger", ["dallinger>=12.1,<12.3"], None).dallinger == "12.2.1"
    from_git = dr.choose("psynet", ["psynet @ git+https://gitlab.com/PsyNetDev/PsyNet@v13.3.0"], None)
    assert from_git.psynet == "13.3.0" and from_git.pins == {"dallinger": "12.4.0"}  # psynet comes from git
    with pytest.raises(ValidationError, match="requirements.txt asks dallinger 11.4.0, but PsyNet 13.3.0 needs"):
        dr.choose("psynet", ["psynet==13.3.0", "dallinger==11.4.0"], None)


def test_without_pypi_a_cached_release_is_used_and_said(cache, monkeypatch):
    dr.release_constraints("12.4.0"), dr.psynet_dallinger_range("13.3.0")  # cached while online
    monkeypatch.setattr(pypi, "INDEX_URL", CLOSED)
    monkeypatch.setattr(dr, "_index", {})
    choice = dr.choose("psynet", ["psynet==13.3.0"], None)
    assert choice.dallinger == "12.4.0"
    assert any(n.level == "warning" and "PyPI can't be reached" in n.text for n in choice.notes)


def test_without_pypi_and_nothing_cached_spec_stops_before_anything_is_built(tmp_path, home, monkeypatch, offline):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "empty-cache"))
    exp = tmp_path / "exp"
    exp.mkdir()
    (exp / "experiment.py").write_text("from dallinger.experiment import Experiment\n")
    (exp / "config.txt").write_text("[Experiment]\nmode = sandbox\n")
    (exp / "requirements.txt").write_text("dallinger==12.4.0\n")
    with pytest.raises(dr.ReleaseUnavailable) as err:
        dallinger.spec(exp, home=home)
    assert "PyPI can't be reached" in err.value.message and "Dallinger 12.4.0" in err.value.message
    assert "pip download --no-deps --no-binary :all: dallinger==12.4.0" in err.value.hint
    assert str(tmp_path / "empty-cache") in err.value.hint
    # A folder with its own Dockerfile needs nothing from PyPI.
    (exp / "Dockerfile").write_text("FROM python:3.11-slim\nCOPY . /experiment\n")
    assert dallinger.spec(exp, home=home).dockerfile is None
