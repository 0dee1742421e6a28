"""Shared fixtures. Integration tests use the real testbed (scripts/testbed up)."""

from __future__ import annotations

import json
import logging
import os
import socket
from pathlib import Path

import pytest

TESTBED_FILE = Path(os.environ.get("LABDEPLOY_TESTBED", "/var/lib/labdeploy-testbed/testbed.json"))
REPO = Path(__file__).resolve().parent.parent


# The testbed's two servers: Debian 12 with Compose v1, Debian 13 with Compose v2 and OpenSSH 10.
# Every test that uses the testbed runs on each (LABDEPLOY_TEST_SERVERS=trixie picks one).
SERVERS = tuple(os.environ.get("LABDEPLOY_TEST_SERVERS", "bookworm,trixie").split(","))
# The param of tests that use both servers at once (tests/test_fleet.py): they run once, with
# the first server's tests (see server_of).
FLEET = "fleet"
# The param of the Swarm tests (tests/test_swarm.py): they run once, on the testbed's three-node
# cluster, which shares no stack with either server, so they form a scope of their own.
SWARM = "swarm"


def _load_testbed() -> dict:
    if not TESTBED_FILE.exists():
        pytest.fail(f"The testbed is not running ({TESTBED_FILE} is missing). Start it with "
                    f"`sudo scripts/testbed up` (or run the whole suite with `scripts/test`).", pytrace=False)
    return json.loads(TESTBED_FILE.read_text())


def on_server_filesystem(testbed: dict, argv: list) -> list:
    """A root command on this machine that acts on the testbed server's own filesystem (the
    trixie server's is in a mount namespace of its own)."""
    pidfile = testbed.get("mount_ns_pidfile")
    if not pidfile:
        return list(argv)
    pid = Path(pidfile).read_text().strip()
    return ["nsenter", f"--mount=/proc/{pid}/ns/mnt", *argv]


def server_view(data: dict, flavour: str) -> dict:
    """The testbed's details as seen for one server: its ssh/docker/http/netns at the top, and
    `file`, the JSON file that describes it the same way (for notebooks: LABDEPLOY_TESTBED)."""
    if "servers" not in data or flavour not in data["servers"]:
        pytest.fail(f"The testbed has no {flavour} server: run `sudo scripts/testbed up` again.", pytrace=False)
    file = TESTBED_FILE if flavour == "bookworm" else TESTBED_FILE.with_name(f"testbed-{flavour}.json")
    return {**data, **data["servers"][flavour], "file": str(file)}


@pytest.fixture(scope="session", params=SERVERS)
def testbed(request) -> dict:
    """The details of one testbed server: ssh, registry, docker, http, images, file."""
    return server_view(_load_testbed(), request.param)


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to resolve or connect fails the test."""
    def refuse(*args, **kwargs):
        raise AssertionError("network used")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)


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


# ---------------------------------------------------------------- one naming rule for test files

def naming_problems(modules: dict) -> list[str]:
    """The rule, on {file name: (tests that use the testbed, needs the network)}: `_unit` in a
    test file's name means none of its tests uses the testbed; a file without it uses the
    testbed (or is marked `network`: it needs a real outside service such as PyPI)."""
    problems = []
    for name, (uses, network) in sorted(modules.items()):
        if name.endswith("_unit.py") and uses:
            problems.append(f"{name} is named _unit, but {', '.join(sorted(uses)[:3])} use(s) the testbed: "
                            f"move those to a file without _unit")
        elif not name.endswith("_unit.py") and not uses and not network:
            problems.append(f"{name} needs no testbed: name it {name[:-3]}_unit.py")
    return problems


def server_of(nodeid: str):
    """The testbed server a test id runs on ("...[bookworm]", "...[trixie-crash at start]"), or None."""
    if not nodeid.endswith("]") or "[" not in nodeid:
        return None
    params = nodeid[nodeid.index("[") + 1:-1].split("-")
    if FLEET in params:  # both servers at once: in order with the first one's tests, not beside them
        return SERVERS[0]
    if SWARM in params:  # the cluster: beside the servers' tests, never two Swarm tests at once
        return SWARM
    return next((server for server in SERVERS if server in params), None)


def pytest_xdist_make_scheduler(config, log):
    """Under pytest-xdist one worker runs all of a server's tests, in order: they share that
    server's stack, so they must not run at once. Other tests are spread by module."""
    from xdist.scheduler import LoadScopeScheduling

    class PerServer(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            server = server_of(nodeid)
            return f"server {server}" if server else nodeid.rsplit("::", 1)[0]

        def _assign_work_unit(self, node) -> None:
            # The long scopes first (each server's tests, then the cluster's), the many short unit
            # modules after them: xdist orders by test count, which put the Swarm's few slow tests
            # last, on one worker while the other had nothing left to do.
            for scope in reversed([f"server {s}" for s in (*SERVERS, SWARM)]):
                if scope in self.workqueue:
                    self.workqueue.move_to_end(scope, last=False)
            super()._assign_work_unit(node)

    return PerServer(config, log)


def spread_server(nodeid: str, turns: dict) -> str:
    """The server a `spread` test runs on: its file's tests take turns, in the order they are
    collected (a test's other parameters make cases of their own). `turns` keeps the order."""
    server = server_of(nodeid)
    params = nodeid[nodeid.index("[") + 1:-1].split("-") if server else []
    case = (nodeid.split("[", 1)[0], "-".join(p for p in params if p != server))
    module = turns.setdefault(nodeid.split("::", 1)[0], {})
    return SERVERS[module.setdefault(case, len(module)) % len(SERVERS)]


def _keep_marked_servers(config, items) -> None:
    """`@pytest.mark.servers("trixie")`: a test that proves nothing more on the other server (what
    it exercises is the same code on both, and both run elsewhere) runs on the named one only.
    `@pytest.mark.spread`: a file whose tests exercise the engines alike (CLI plumbing, restore
    logic) gives each test one server, taking turns, so both engines still see the file in half
    the time; the files whose steps differ between Compose v1 and v2 (deploy, compose, stack)
    keep both."""
    keep, drop, turns = [], [], {}
    for item in items:
        marker = item.get_closest_marker("servers")
        server = getattr(item, "callspec", None) and item.callspec.params.get("testbed")
        if marker is None and server in SERVERS and item.get_closest_marker("spread"):
            marker = pytest.mark.servers(spread_server(item.nodeid, turns)).mark
        (drop if marker and server and server not in marker.args else keep).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


@pytest.hookimpl(tryfirst=True)  # before -k / -m deselect: every collected test of a file is seen
def pytest_collection_modifyitems(config, items):
    """Keeps the naming rule true (a run stops with a usage error when a file breaks it), and marks
    every test of a file that uses the testbed `testbed`, every test of a `_unit` file `unit`:
    `pytest -m unit` needs nothing but this computer."""
    modules: dict = {}
    for item in items:
        uses, network = modules.setdefault(item.path.name, (set(), False))
        if "testbed" in item.fixturenames:  # requested directly or through remote, session_remote, ...
            uses.add(item.originalname)
        modules[item.path.name] = (uses, network or item.get_closest_marker("network") is not None)
    for item in items:
        uses, _ = modules[item.path.name]
        if item.path.name.endswith("_unit.py"):
            item.add_marker(pytest.mark.unit)
        elif uses:
            item.add_marker(pytest.mark.testbed)
    _keep_marked_servers(config, items)
    partial = any("::" in str(arg) for arg in config.args) or config.getoption("lf", False)
    problems = [p for p in naming_problems(modules) if not (partial and "needs no testbed" in p)]
    if problems:
        raise pytest.UsageError("Test file names break the rule (tests/conftest.py):\n  " + "\n  ".join(problems))
