"""Defaults for the notebooks: a real server's placeholders, or the local testbed's details.

The notebooks run unchanged for a researcher (who types their own server) and in CI / the
demo (where `LABDEPLOY_TESTBED` points at the testbed's JSON file and fills the fields in).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional


def testbed() -> Optional[dict]:
    """The testbed's details when `LABDEPLOY_TESTBED` names its file, else None."""
    path = os.environ.get("LABDEPLOY_TESTBED")
    if not path or not Path(path).exists():
        return None
    return json.loads(Path(path).read_text())


def defaults() -> dict:
    """Field defaults for the panels: host, port, user, password, registry, images, domain."""
    tb = testbed()
    if tb is None:
        return {
            "server_name": "my-server", "host": "", "port": 22, "user": "", "password": None,
            "registry": "", "registry_user": "", "registry_password": None,
            "images": {}, "domain": "", "testbed": False, "host_key_fingerprint": None,
        }
    return {
        "server_name": "testbed", "host": tb["ssh"]["host"], "port": tb["ssh"]["port"],
        "user": tb["ssh"]["user"], "password": tb["ssh"]["password"],
        "registry": tb["registry"]["address"], "registry_user": tb["registry"]["user"],
        "registry_password": tb["registry"]["password"],
        "images": tb["images"], "domain": "localhost", "testbed": True,
        # Known out of band (the testbed wrote it), like a fingerprint an administrator gives you.
        "host_key_fingerprint": tb["ssh"].get("host_key_fingerprint"),
    }
