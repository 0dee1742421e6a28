"""The connection policy (labdeploy.ssh.pool): who opens a connection for a server, and who
closes it. An API call closes what it opened, a CLI run closes its pool when the command ends,
the notebook's panels share one pool that the last `panel.close()` closes, and a Remote handed
in by the caller is never closed by labdeploy.

No server is needed: the pool's contract is about ownership and closing, not about SSH, so
the connections here are `FakeRemote`s (a stand-in that records connect/close) built where
the pool would build a real Remote (`servers.resolve`). Sockets are blocked, so nothing here
can reach a network by accident.
"""

from __future__ import annotations

import socket
import threading

import pytest

from labdeploy.ssh import pool, servers


class FakeRemote:
    """Records what the pool does to a connection; never touches the network."""

    made: list = []  # every FakeRemote built, in order

    def __init__(self, server=None) -> None:
        self.server = server
        self.label = getattr(server, "label", "fake")
        self.connects = 0
        self.closes = 0
        self.open = False
        FakeRemote.made.append(self)

    def connect(self):  # idempotent, like Remote.connect
        self.connects += 1
        self.open = True
        return self

    def close(self) -> None:
        self.closes += 1
        self.open = False

    def run(self, argv, **kw):  # what makes it "a connection" to the pool (duck typing)
        raise AssertionError("nothing in these tests runs a command")


@pytest.fixture
def fakes(home, monkeypatch):
    """Two registered servers; the pool builds FakeRemotes for them; no socket may connect."""
    def refuse(*args, **kwargs):
        raise AssertionError("a network connection was attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    FakeRemote.made = []
    monkeypatch.setattr(servers, "resolve", lambda server, **kw: FakeRemote(server))
    monkeypatch.setattr(pool, "_kernel", None)  # a fresh notebook kernel for each test
    servers.add("lab", "lab.example.org", "alice")
    servers.add("other", "other.example.org", "bob")
    return FakeRemote


# ------------------------------------------------------------------ a Pool

def test_a_name_gets_one_connection_per_pool_shared_by_threads(fakes):
    p = pool.Pool()
    got: list = []
    threads = [threading.Thread(target=lambda: got.append(p.get("lab"))) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(fakes.made) == 1 and all(r is fakes.made[0] for r in got)
    assert p.get("other") is not got[0] and len(fakes.made) == 2
    assert p.owns(got[0])


def test_close_closes_what_the_pool_opened_and_it_can_be_used_again(fakes):
    p = pool.Pool()
    lab = p.connect("lab")
    assert lab.open
    p.close()
    assert not lab.open
    assert p.connect("lab") is lab and lab.open  # the same Remote reconnects
    p.close()
    assert lab.closes == 2


def test_a_remote_handed_in_is_used_as_it_is_and_never_closed(fakes):
    mine = FakeRemote()
    p = pool.Pool()
    assert p.get(mine) is mine and not p.owns(mine)
    p.close()
    with pool.Pool() as q, pool.using(q):
        assert pool.connect(mine) is mine
    lease = pool.kernel().lease()
    assert lease.pool.get(mine) is mine
    lease.release()
    assert mine.closes == 0


def test_a_server_registered_anew_or_another_home_gets_its_own_connection(fakes, home, monkeypatch, tmp_path):
    p = pool.Pool()
    first = p.get("lab")
    servers.add("lab", "lab2.example.org", "alice", replace=True)
    second = p.get("lab")
    assert second is not first and second.server.host == "lab2.example.org"
    other_home = tmp_path / "home2"
    other_home.mkdir()
    monkeypatch.setenv("HOME", str(other_home))
    servers.add("lab", "lab2.example.org", "alice")
    assert p.get("lab") is not second  # known_hosts and the server list live in HOME


def test_an_unknown_name_is_refused_before_anything_is_opened(fakes):
    with pytest.raises(servers.ServerNotFound):
        pool.Pool().get("nope")
    assert fakes.made == []


# ------------------------------------------------------------------ an API call

@pool.closes_what_it_opens
def api_call(server, fail: bool = False):
    """A public function of the core, as they are written: it takes a server."""
    remote = pool.connect(server)
    inner = nested_call(server)
    assert inner is remote  # one connection for the whole call, nested calls included
    if fail:
        raise RuntimeError("the call failed")
    return remote


@pool.closes_what_it_opens
def nested_call(server):
    return pool.connect(server)


def test_an_api_call_given_a_name_closes_its_connection_when_it_returns(fakes):
    lab = api_call("lab")
    assert lab.connects == 2 and lab.closes == 1 and not lab.open  # connected by both calls, closed once
    with pytest.raises(RuntimeError):
        api_call("other", fail=True)
    assert not fakes.made[-1].open  # also when it fails
    assert pool.current() is None  # nothing of the call is left behind


def test_an_api_call_given_a_remote_leaves_it_open(fakes):
    mine = FakeRemote()
    mine.connect()
    assert api_call(mine) is mine and mine.open and mine.closes == 0


def test_calls_in_threads_each_close_their_own(fakes):
    results: list = []
    threads = [threading.Thread(target=lambda: results.append(api_call("lab"))) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 8 and len({id(r) for r in results}) == 8  # a pool per call
    assert not any(r.open for r in results)


def test_outside_any_pool_a_remote_is_the_callers_to_close(fakes):
    a, b = pool.remote("lab"), pool.detached("lab")
    assert a is not b and pool.current() is None
    with pool.scope() as p:
        assert not p.owns(a)


# ------------------------------------------------------------------ a CLI run

def test_a_front_ends_pool_serves_every_call_of_the_run_and_closes_at_its_end(fakes):
    with pool.Pool() as run, pool.using(run):
        first = api_call("lab")
        assert api_call("lab") is first and first.open  # the run's connection outlives each call
        assert first.closes == 0
    assert not first.open and pool.current() is None


def test_the_cli_closes_the_runs_connections_when_the_command_ends(fakes, monkeypatch):
    from labdeploy.cli._app import main

    class Interrupted(FakeRemote):
        def connect(self):  # the command is stopped (Ctrl-C) right after connecting
            super().connect()
            raise KeyboardInterrupt

    monkeypatch.setattr(servers, "resolve", lambda server, **kw: Interrupted(server))
    assert main(["apps", "--server", "lab"]) == 130
    (opened,) = fakes.made
    assert opened.connects == 1 and opened.closes == 1 and pool.current() is None


# ------------------------------------------------------------------ the notebook's panels

def test_panels_share_the_kernels_connections_until_the_last_one_closes(fakes):
    a, b = pool.kernel().lease(), pool.kernel().lease()
    assert a.pool is b.pool is pool.kernel()
    lab = a.pool.connect("lab")
    assert b.pool.get("lab") is lab
    a.release()
    a.release()  # a panel closed twice counts once
    assert lab.open
    b.release()
    assert not lab.open
    c = pool.kernel().lease()  # a new panel later: the same Remote reconnects
    assert c.pool.connect("lab") is lab and lab.open
    c.release()


def test_deploy_and_export_panels_use_one_connection_and_close_releases_it(fakes):
    from labdeploy.widgets.deploy import DeployPanel
    from labdeploy.widgets.export import ExportPanel

    deploy_panel = DeployPanel("", app="exp", server="lab")
    export_panel = ExportPanel("lab", autoload=False)
    lab = deploy_panel.remote()
    assert export_panel.server is lab and len(fakes.made) == 1
    lab.connect()
    deploy_panel.close()
    assert lab.open  # the export panel still uses it
    export_panel.close()
    assert not lab.open


def test_a_panel_given_a_remote_never_closes_it(fakes):
    from labdeploy.widgets.deploy import DeployPanel

    mine = FakeRemote()
    mine.connect()
    panel = DeployPanel("", app="exp", server=mine)
    assert panel.remote() is mine
    panel.close()
    assert mine.open and mine.closes == 0


def test_a_sampler_given_a_name_owns_its_connection_until_stop(fakes):
    from labdeploy.watch.sampler import Sampler

    sampler = Sampler("lab")
    lab = sampler.remote.connect()
    sampler.stop()
    assert not lab.open
    mine = FakeRemote().connect()
    Sampler(mine).stop()
    assert mine.open and mine.closes == 0
