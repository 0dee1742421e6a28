"""The deploy lock on the real server: atomic under contention, records who/version, refresh,
release only by its holder, deliberate break."""

from __future__ import annotations

import threading

import pytest

from labdeploy.server import locks

APP = "t-dep-lock"


@pytest.fixture
def clean(session_remote):
    locks.break_lock(session_remote, APP, confirm=True)
    yield session_remote
    locks.break_lock(session_remote, APP, confirm=True)


def test_only_one_of_many_simultaneous_takers_wins(clean):
    results: list = []
    barrier = threading.Barrier(6)

    def take() -> None:
        barrier.wait()
        try:
            results.append(locks.DeployLock(clean, APP, version="x").acquire())
        except locks.DeployInProgress as exc:
            results.append(exc)

    threads = [threading.Thread(target=take) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    winners = [r for r in results if isinstance(r, locks.DeployLock)]
    assert len(results) == 6 and len(winners) == 1
    winners[0].release()
    assert locks.read_lock(clean, APP) is None


def test_refresh_records_the_version_and_only_the_holder_releases(clean):
    held = locks.DeployLock(clean, APP, operation="update").acquire()
    held.info.version = "abc123"
    held.refresh()
    info = locks.read_lock(clean, APP)
    assert info.version == "abc123" and info.operation == "update" and info.token == held.info.token
    assert info.age is not None and info.age < 60

    stranger = locks.DeployLock(clean, APP)
    stranger.held = True  # pretend: its release must not remove a lock that isn't its own
    stranger.release()
    assert locks.read_lock(clean, APP).token == held.info.token
    held.release()
    assert locks.read_lock(clean, APP) is None


def test_an_expired_lock_from_another_machine_is_taken_over(clean):
    """(Respected while fresh: tests/test_deploy_faults.py.)"""
    import time

    old = locks.DeployLock(clean, APP, version="v1", ttl=1)
    old.info.host, old.info.who = "a-laptop-that-went-away", "ana@laptop"
    old.acquire()
    locks._held.discard(old.info.token)
    time.sleep(2.2)  # the server's clock (mtime of the lock) must pass the 1 s expiry
    warnings = []
    new = locks.DeployLock(clean, APP, reporter=warnings.append).acquire()
    assert new.broke is not None and new.broke.who == "ana@laptop"
    assert "expired" in warnings[0].message
    new.release()
