"""A Swarm app's logs, database connections and data, through the Swarm's manager, by the same
code paths as on one server (labdeploy.watch.containers' log lines, labdeploy.watch.pgactivity,
labdeploy.export), with a `node` column where the answer comes from several nodes.

Each Swarm app has its own PostgreSQL (database `dallinger`), pinned to the data node: its
container is found through the app's task list, and reached by `docker exec` on that node, which
must be the manager's (the one labdeploy connects to; swarm.prepare makes it the data node).
"""

from __future__ import annotations

from typing import Optional, Sequence

import pandas as pd

from .. import export as data_out, names
from ..commands import swarm as swarm_commands
from ..data import anonymise as anon
from ..data.archive import ExportData
from ..errors import LabdeployError, UnknownApp
from ..progress import Reporter, null_reporter
from ..ssh import pool
from ..watch import containers, pgactivity
from . import swarmstack

LOG_COLUMNS = ["time", "service", "node", "line"]


class SwarmDataError(LabdeployError):
    code = "swarm.data"


def database_container(remote, app: str) -> tuple[str, str]:
    """(container id, node id) of the app's running PostgreSQL, found through its task list."""
    app = names.app_name(app)
    res = remote.run(swarm_commands.service_containers(f"{app}_postgresql"), check=False, timeout=60)
    self_id, rows = swarm_commands.parse_service_containers(res.stdout)
    running = [r for r in rows if r["state"] == "running" and r["container"]]
    if not running:
        if any(w in (res.stdout + res.stderr).lower() for w in ("no such service", "not found")):
            raise UnknownApp(f"There is no app named {app!r} on the Swarm at {remote.host}.")
        raise SwarmDataError(f"The PostgreSQL of {app!r} runs on no node right now.",
                             "Wait until the Swarm has started it again (its status shows it), then ask again.",
                             code="swarm.postgres.not_running")
    task = running[0]
    if task["node_id"] != self_id:
        raise SwarmDataError(f"The PostgreSQL of {app!r} runs on another node ({task['node_id'][:12]}) than the "
                             f"manager {remote.host}, where labdeploy reaches containers.",
                             "Label the manager's node as the data node (it is unless another node was "
                             "labelled) and deploy the app again.", code="swarm.postgres.elsewhere")
    return task["container"], task["node_id"]


@pool.closes_what_it_opens
def logs(app: str, server, service: Optional[str] = None, *, tail: int = 200) -> pd.DataFrame:
    """The last `tail` lines of each service of a Swarm app (or one service) from every node:
    time, service, node, line (secrets masked, as on one server)."""
    app = names.app_name(app)
    if service is not None:
        names.service(service)
    if not isinstance(tail, int) or isinstance(tail, bool) or not 0 <= tail <= 100_000:
        raise LabdeployError(f"tail={tail!r} is not a line count.", "Use a number such as 200.",
                             code="invalid.logs.tail")
    remote = pool.connect(server)
    res = remote.run(swarm_commands.service_logs(app, service or "", tail), check=False, timeout=120)
    rows = []
    for raw in res.stdout.splitlines():
        svc, node, rest = swarm_commands.parse_service_log_line(raw, app)
        if not svc:
            continue
        entry = containers.parse_log_line(f"{svc} {rest}")  # the one redaction, the one time parser
        rows.append((entry.time, entry.service, node, entry.line))
    df = pd.DataFrame(rows, columns=LOG_COLUMNS)
    df["time"] = pd.to_datetime(df["time"], utc=True)
    return df.sort_values("time", kind="stable", ignore_index=True)


@pool.closes_what_it_opens
def pg_activity(app: str, server) -> pd.DataFrame:
    """The app's own PostgreSQL's pg_stat_activity (as labdeploy.watch.pgactivity.pg_activity),
    with the `node` it runs on."""
    remote = pool.connect(server)
    container, _node = database_container(remote, app)
    df = pgactivity.pg_activity(remote, container, persistent=False)
    node = _node_name(remote, app)
    df.insert(0, "node", node)
    df.attrs["node"] = node  # also when no client is connected (no rows)
    return df


def _node_name(remote, app: str) -> str:
    from . import swarm

    df = swarm.tasks(remote, app)
    rows = df[(df.service == "postgresql") & df.state.str.startswith("Running")]
    return rows.node.iloc[0] if len(rows) else ""


@pool.closes_what_it_opens
def export(app: str, server, tables: Optional[Sequence[str]] = None, *, mode: str = "regular",
           save_to=None, parquet: bool = False, rules: Optional[anon.Rules] = None,
           reporter: Optional[Reporter] = None, timeout: Optional[float] = None) -> ExportData:
    """A Swarm app's tables as DataFrames, exactly as labdeploy.export.export does for an app on
    one server (same checks, verification, anonymisation and archives), from its own PostgreSQL."""
    tables, save_to = data_out.check_input(app, tables, mode, rules, save_to)
    remote = pool.connect(server)
    container, _node = database_container(remote, app)
    return data_out.export_from(remote, app, tables, mode=mode, save_to=save_to, parquet=parquet, rules=rules,
                                reporter=reporter or null_reporter, timeout=timeout,
                                source=(swarmstack.POSTGRES_DB, container))
