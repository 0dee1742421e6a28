"""labdeploy: deploy and run online experiments on your own server over SSH, from Jupyter.

The code is grouped by layer (see docs/internals.md): `ssh/` (connections, keys, servers),
`server/` (the server's layout, shared stack, PostgreSQL), `experiment/` (Dallinger/PsyNet
folders), `images/` (build and delivery), `app/` (deploy, update, destroy), `watch/`
(monitoring), `data/` (exports on disk). The public modules are reachable under their short
names, as they always were: `from labdeploy import deploy, apps, monitor, export, servers`.
"""

from __future__ import annotations

import importlib

from .errors import LabdeployError

# Short public name -> the module that holds it (loaded on first use, so `import labdeploy`
# stays light and the command line starts fast).
PUBLIC_MODULES = {
    "remote": "remote", "export": "export", "backup": "backup", "errors": "errors", "progress": "progress", "names": "names",
    "keys": "ssh.keys", "servers": "ssh.servers",
    "layout": "server.layout", "stack": "server.stack", "alerts": "server.alerts", "readiness": "server.readiness", "psql": "server.psql",
    "database": "server.database", "lock": "server.locks",
    "dallinger": "experiment.dallinger", "dallingerconfig": "experiment.dallingerconfig",
    "images": "images", "transfer": "images.transfer", "registry": "images.registry",
    "localdocker": "images.localdocker",
    "deploy": "app.deploy", "apps": "app.apps", "swarm": "app.swarm", "swarmdata": "app.swarmdata", "fleet": "app.fleet", "move": "app.move", "prune": "app.prune",
    "maintenance": "app.maintenance", "history": "app.history", "appdata": "app.appdata",
    "monitor": "watch.monitor", "doctor": "watch.doctor", "containers": "watch.containers", "pgactivity": "watch.pgactivity",
    "jobs": "watch.jobs", "sampler": "watch.sampler", "participants": "watch.participants",
    "archive": "data.archive", "anonymise": "data.anonymise",
    "rehearsal": "rehearsal",
}


def __getattr__(name: str):
    if name in PUBLIC_MODULES:
        module = importlib.import_module(f"{__name__}.{PUBLIC_MODULES[name]}")
        globals()[name] = module
        return module
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list:
    return sorted([*globals(), *PUBLIC_MODULES])


__all__ = ["LabdeployError", *PUBLIC_MODULES]
__version__ = "0.1.0"
