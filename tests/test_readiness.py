"""Readiness against the testbed's three accounts, and prepare's refusal where Docker can't run."""

import pytest

from labdeploy.server import layout, readiness, stack
from labdeploy.remote import Remote


def _remote(testbed, known_hosts, user):
    return Remote(testbed["ssh"]["host"], testbed["ssh"]["port"], user, key_filename=testbed["ssh"]["key"],
                  known_hosts=known_hosts, use_agent=False)


def _rows(df):
    return {row.check: row for row in df.itertuples()}


def test_ready_server_after_prepare(session_remote, testbed):
    stack.prepare(session_remote, stack.StackSettings.for_images(testbed["images"], domain="localhost"))
    commands = session_remote.stats["commands"]
    df = readiness.check(session_remote)
    assert session_remote.stats["commands"] - commands <= 2  # one round trip for the facts
    assert list(df.columns) == ["id", "check", "ok", "detail", "hint", "remedy"]
    assert df["ok"].all(), df.to_string()
    rows = _rows(df)
    assert {"v1": "docker-compose (v1) 1.29", "v2": "docker compose (v2) 2.26"}[testbed["compose"]] in \
        rows["Docker Compose"].detail
    assert "held by labdeploy's proxy" in rows["Port 80"].detail
    assert readiness.experiments_that_fit(df) >= 1
    assert readiness.is_ready(df, need_stack=True)


@pytest.fixture
def nodocker(testbed, known_hosts):
    r = _remote(testbed, known_hosts, testbed["ssh"]["user_nodocker"])
    yield r
    r.close()


@pytest.fixture
def bare(testbed, known_hosts):
    r = _remote(testbed, known_hosts, testbed["ssh"]["user_bare"])
    yield r
    r.close()


def test_user_outside_docker_group(nodocker, testbed):
    df = readiness.check(nodocker)
    row = _rows(df)["Docker usable without sudo"]
    assert not row.ok and "usermod -aG docker labnodocker" in row.hint
    assert not readiness.is_ready(df)
    had_dir = nodocker.exists(layout.ROOT)
    with pytest.raises(stack.StackError) as info:
        stack.prepare(nodocker, stack.StackSettings.for_images(testbed["images"]))
    assert "docker group" in info.value.hint or "usermod" in info.value.hint
    assert nodocker.exists(layout.ROOT) == had_dir  # nothing written


def test_no_docker_on_the_server(bare, testbed):
    df = readiness.check(bare)
    rows = _rows(df)
    assert not rows["Docker installed"].ok and "Install Docker" in rows["Docker installed"].hint
    had_dir = bare.exists(layout.ROOT)
    with pytest.raises(stack.StackError) as info:
        stack.prepare(bare, stack.StackSettings.for_images(testbed["images"]))
    assert "Install Docker" in info.value.hint
    assert bare.exists(layout.ROOT) == had_dir


def test_failed_login_is_the_first_row_not_an_exception(testbed, known_hosts):
    r = Remote(testbed["ssh"]["host"], 22, testbed["ssh"]["user"], password="wrong-password",
               known_hosts=known_hosts, use_agent=False)
    df = readiness.check(r)
    assert len(df) == 1 and df.iloc[0]["check"] == "SSH login" and not df.iloc[0]["ok"]
    assert df.iloc[0]["hint"]


def test_unknown_host_key_row_shows_the_fingerprint(testbed, home):
    r = Remote(testbed["ssh"]["host"], 22, testbed["ssh"]["user"], key_filename=testbed["ssh"]["key"],
               known_hosts=home / "empty_known_hosts", use_agent=False)
    df = readiness.check(r)
    assert not df.iloc[0]["ok"] and testbed["ssh"]["host_key_fingerprint"] in df.iloc[0]["detail"]
    assert not (home / "empty_known_hosts").exists()


def test_readiness_by_registered_name(home, testbed, known_hosts):
    from labdeploy.ssh import servers
    s = testbed["ssh"]
    servers.add("t-setup-ready", s["host"], s["user"], port=s["port"], key=s["key"])
    df = readiness.check("t-setup-ready", known_hosts=known_hosts)
    assert df.iloc[0]["ok"] and df.iloc[0]["check"] == "SSH login"
