"""What the Swarm test modules share: the cluster's part of testbed.json, and a connection to
its manager (the only node labdeploy talks to)."""

from __future__ import annotations

import pytest

from conftest import _load_testbed, trusted_known_hosts
from labdeploy.remote import Remote


def swarm_testbed() -> dict:
    data = _load_testbed()
    if "swarm" not in data:
        pytest.fail("The testbed has no Swarm: run `sudo scripts/testbed up` again.", pytrace=False)
    return {**data, **data["swarm"]}


def connect_manager(testbed: dict, folder) -> Remote:
    known = trusted_known_hosts(testbed, folder / "known_hosts")
    s = testbed["ssh"]
    r = Remote(s["host"], s["port"], s["user"], key_filename=s["key"], known_hosts=known, use_agent=False)
    r.connect()
    return r
