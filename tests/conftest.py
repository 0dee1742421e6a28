"""Shared fixtures. Integration tests use the real testbed (scripts/testbed up)."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest

TESTBED_FILE = Path(os.environ.get("LABDEPLOY_TESTBED", "/var/lib/labdeploy-testbed/testbed.json"))
REPO = Path(__file__).resolve().parent.parent


def _load_testbed() -> dict:
    if not TESTBED_FILE.exists():
        pytest.fail(f"The testbed is not running ({TESTBED_FILE} is missing). Start it with "
                    f"`sudo scripts/testbed up` (or run the whole suite with `scripts/test`).", pytrace=False)
    return json.loads(TESTBED_FILE.read_text())


@pytest.fixture(scope="session")
def testbed() -> dict:
    """The testbed's details: ssh, registry, docker, http, images."""
    return _load_testbed()


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    """A fresh HOME so tests never touch the real ~/.ssh, ~/.dallingerconfig, ~/.docker, ~/.config."""
    h = tmp_path / "home"
    h.mkdir()
    monkeypatch.setenv("HOME", str(h))
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    monkeypatch.delenv("DOCKER_CONFIG", raising=False)
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    monkeypatch.delenv("XDG_DATA_HOME", raising=False)
    return h


def trusted_known_hosts(testbed: dict, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(testbed["ssh"]["known_hosts_line"] + "\n")
    path.chmod(0o600)
    return path


@pytest.fixture
def known_hosts(testbed, tmp_path) -> Path:
    """A known_hosts file that trusts the testbed server (as after a confirmed first contact)."""
    return trusted_known_hosts(testbed, tmp_path / "known_hosts")


@pytest.fixture
def remote(testbed, known_hosts):
    """A connected Remote to the testbed server, as the docker-group user."""
    from labdeploy.remote import Remote

    s = testbed["ssh"]
    r = Remote(s["host"], s["port"], s["user"], key_filename=s["key"], known_hosts=known_hosts,
               use_agent=False)
    r.connect()
    yield r
    r.close()


@pytest.fixture(scope="session")
def session_remote(testbed, tmp_path_factory):
    """One connected Remote shared by a whole session (for slow end-to-end setups)."""
    from labdeploy.remote import Remote

    s = testbed["ssh"]
    kh = trusted_known_hosts(testbed, tmp_path_factory.mktemp("kh") / "known_hosts")
    r = Remote(s["host"], s["port"], s["user"], key_filename=s["key"], known_hosts=kh, use_agent=False)
    r.connect()
    yield r
    r.close()


class _TraitletsErrors(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture(autouse=True)
def fail_on_widget_callback_errors():
    """ipywidgets' button.click() swallows exceptions from callbacks into the traitlets logger;
    turn such a record into a test failure so a broken handler can't pass silently."""
    handler = _TraitletsErrors()
    logger = logging.getLogger("traitlets")
    logger.addHandler(handler)
    yield
    logger.removeHandler(handler)
    if handler.records:
        msgs = "\n".join(r.getMessage() + ("\n" + "".join(__import__("traceback").format_exception(*r.exc_info))
                                           if r.exc_info else "") for r in handler.records)
        pytest.fail(f"a widget callback raised:\n{msgs}")
