"""The app commands (status, logs, connections, export, destroy) for an app deployed with
`--engine swarm`: the same command, answered by the Swarm functions through the manager, with
the node each part runs on. An app is a Swarm app when the server holds its Swarm deploy record
(labdeploy.app.swarm.record), so the researcher never repeats --engine after the deploy."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import click

from . import _ui
from ._app import core
from ._ui import STATE, NotReady, UsageProblem

STATUS_COLUMNS = ["app", "service", "node", "state", "desired", "error", "image"]


def record(remote, app: Optional[str]) -> Optional[dict]:
    """The app's Swarm deploy record on this server, or None (then the single-server path)."""
    return core("swarm").record(remote, app) if app else None


def status_frame(remote, app: Optional[str] = None):
    """Every Swarm app's tasks (or one app's), with the node each runs on; None when the server
    deployed no Swarm app."""
    swarm = core("swarm")
    names = [app] if app else swarm.apps(remote)
    if not names:
        return None
    import pandas as pd

    return pd.concat([swarm.status(remote, n) for n in names], ignore_index=True)


def show_status(remote, app: Optional[str], rec: Optional[dict], single=None) -> None:
    """One table of Swarm tasks (after the single-server one when the server has both); with
    --app, exit 3 when a service runs fewer tasks than the deploy asked for."""
    import pandas as pd

    df = status_frame(remote, app)
    if STATE.json:
        frames = [f.assign(engine=e) for f, e in ((single, "compose"), (df, "swarm")) if f is not None and len(f)]
        _ui.emit_json(pd.concat(frames, ignore_index=True) if frames else df)
    else:
        _ui.table(df, columns=STATUS_COLUMNS, title="Swarm apps (each task and the node it runs on)",
                  empty="No Swarm app tasks.")
    if rec is not None:
        short = core("swarm").short(df, rec)
        if short:
            raise NotReady(f"{app}: not running as deployed: {', '.join(short)}.",
                           f"Read the logs: `labdeploy logs --app {app} --service {short[0].split()[0]}`.")


def show_logs(remote, app: str, service: Optional[str], tail, follow: bool, since: Optional[str]) -> None:
    if follow or since:
        raise UsageProblem(f"{app} runs on a Docker Swarm: its logs are read from every node at once, without "
                           "--follow or --since.", "Leave out --follow and --since; --tail sets how many lines.")
    df = core("swarmdata").logs(app, remote, service, tail=100_000 if tail == "all" else tail)
    for row in df.itertuples():
        if STATE.json:
            click.echo(json.dumps({"time": None if str(row.time) == "NaT" else row.time.isoformat(),
                                   "service": row.service, "node": row.node, "line": row.line}))
        else:
            click.echo(f"{row.service:<7} {row.node:<8}| {row.line}")
    sys.stdout.flush()


def connections(remote, show_all: bool) -> Optional[list]:
    """Each Swarm app's own PostgreSQL: one summary row per app (or every connection), with the
    node it runs on. None when the server deployed no Swarm app."""
    names = core("swarm").apps(remote)
    if not names:
        return None
    swarmdata, rows, frames = core("swarmdata"), [], []
    for name in names:
        try:
            df = swarmdata.pg_activity(name, remote)
        except core("errors").LabdeployError as exc:
            rows.append({"app": name, "node": "", "connections": None, "max_connections": None, "note": exc.message})
            continue
        frames.append(df.assign(app=name))
        states = df["state"].fillna("").value_counts().to_dict() if "state" in df and len(df) else {}
        rows.append({"app": name, "node": df.attrs.get("node") or (df["node"].iloc[0] if len(df) else ""),
                     "connections": len(df), "max_connections": df.attrs.get("max_connections"),
                     "note": ", ".join(f"{n} {s or 'other'}" for s, n in sorted(states.items()))})
    if show_all:
        import pandas as pd

        return pd.concat(frames, ignore_index=True).to_dict("records") if frames else []
    return rows


def export(remote, app: str, tables: list, mode: str, target: Path, is_file: bool, parquet: bool,
           overwrite: bool, reporter):
    swarmdata = core("swarmdata")
    if is_file:
        data = swarmdata.export(app, remote, tables or None, mode=mode, reporter=reporter)
        core("export").save_archive(data, target, parquet=parquet, overwrite=overwrite, reporter=reporter)
        return data
    return swarmdata.export(app, remote, tables or None, mode=mode, save_to=target, parquet=parquet,
                            reporter=reporter)


def destroy(remote, app: str, remove_data: bool, no_export_check: bool, final_export: Optional[str],
            export_mode: str, parquet: bool, reporter) -> dict:
    """Remove the Swarm app's stack, site and folder; its data only with --remove-data, after a
    final export into DIR (or with --no-export-check: the single-server check of a saved export
    reads the shared PostgreSQL, which a Swarm app does not use)."""
    if remove_data and not (final_export or no_export_check):
        raise UsageProblem(f"{app} runs on a Docker Swarm, whose data a saved export is not checked against.",
                           "Add --final-export DIR to export every table just before the data goes, or "
                           "--no-export-check to delete it anyway.")
    exported = []
    if final_export:
        for mode in ("regular",) if export_mode == "regular" else ("regular", "anonymous"):  # the regular one is kept
            data = core("swarmdata").export(app, remote, mode=mode, save_to=Path(final_export), parquet=parquet,
                                            reporter=reporter)
            exported += list(dict.fromkeys(data.paths))
    result = core("swarm").destroy(app, remote, confirm=True, remove_data=remove_data, reporter=reporter)
    return {"app": result.app, "engine": "swarm", "removed": result.removed, "kept": result.kept,
            "exported": exported}
