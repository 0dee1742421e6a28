"""The apps on a server: list them, open one through an SSH tunnel, destroy one.

`apps(server)` is one DataFrame (app, state, version, url, ...). `open_tunnel(server, app)`
forwards a local port to the server's Caddy, giving `http://<app>.localhost:<port>/`
(browsers resolve *.localhost to this computer; Caddy routes by the host name), so an app
can be tried before its DNS record exists. `destroy` needs `confirm=True` and keeps the data
unless `remove_data=True`.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from typing import Optional, Union

import pandas as pd

from . import appdata, changes, finalexport
from .finalexport import FinalExport
from ..server import compose, caddy, layout, stack
from ..commands import apps as app_commands, docker, files
from ..watch import containers, participants
from .. import names
from ..ssh import pool
from ..data.archive import ExportData
from ..errors import UnknownApp
from ..errors import LabdeployError, Remedy, ValidationError
from ..server.locks import DeployLock
from ..progress import LogLine, Reporter, StepFinished, WarningEvent, null_reporter, step

COLUMNS = ["app", "state", "version", "url", "deployed_at", "who", "running", "image", "locked"]
DESTROY_STEPS = ("check", "lock", "stop", "route", "data", "files")
# The destroy steps in a researcher's words, for step lists (the names above stay the events' keys).
DESTROY_STEP_TITLES = {"check": "Check the app", "lock": "Take the app's lock", "stop": "Stop the app",
                       "route": "Remove its web address", "data": "Delete or keep its data",
                       "files": "Remove its folder"}

class ConfirmationRequired(LabdeployError):
    """A destructive action was asked for without confirm=True."""

    code = "confirmation.required"


def parse_listing(text: str, status: pd.DataFrame) -> pd.DataFrame:
    """Build the apps table from `commands.apps.listing`'s output and containers.status (pure)."""
    stack_state, states, locks = app_commands.read_listing(text)
    settings = None
    if stack_state is not None:
        with contextlib.suppress(ValueError, TypeError, AttributeError):
            settings = stack.StackSettings.from_dict(stack_state.get("settings", {}))
    running_by_app: dict[str, list] = {}
    for _, row in status.iterrows():
        running_by_app.setdefault(row["app"], []).append(row)
    rows = []
    for app in sorted(set(states) | set(running_by_app)):
        try:
            names.app_name(app)
        except LabdeployError:
            continue  # a folder labdeploy did not make (e.g. '.build')
        state = states.get(app)
        ctrs = running_by_app.get(app, [])
        n_run = sum(1 for c in ctrs if c["state"] == "running")
        if not state:
            label = "not deployed (failed or unfinished)"
        # Against the app's own containers: a Dallinger app runs no clock without clock_on, a
        # pooled one has a pgbouncer too.
        elif ctrs and n_run == len(ctrs):
            label = "running"
        elif n_run == 0:
            label = "stopped"
        else:
            label = "degraded"
        rows.append({
            "app": app, "state": label, "version": (state or {}).get("version", ""),
            "url": (state or {}).get("url") or (caddy.app_url(app, settings) if settings else ""),
            "deployed_at": (state or {}).get("deployed_at"), "who": (state or {}).get("who", ""),
            "running": f"{n_run}/{len(ctrs)}", "image": (state or {}).get("image", ""),
            "locked": app in locks,
        })
    df = pd.DataFrame(rows, columns=COLUMNS)
    df["deployed_at"] = pd.to_datetime(df["deployed_at"], utc=True, errors="coerce", format="ISO8601")
    df["locked"] = df["locked"].astype(bool)
    return df


@pool.closes_what_it_opens
def apps(server) -> pd.DataFrame:
    """The server's apps: app, state, version, url, deployed_at, who, running (n/4), image, locked."""
    remote = pool.connect(server)
    listing = remote.run(app_commands.listing(), check=False, timeout=60).stdout
    return parse_listing(listing, containers.status(remote))


# --------------------------------------------------------------------------- tunnel

class AppTunnel:
    """A local port forwarded to the server's Caddy over the SSH connection. `url` opens the
    app in a browser on this computer; `close()` ends it."""

    def __init__(self, remote, app: str, caddy_port: int = 80, local_port: int = 0, *,
                 owns_remote: bool = False) -> None:
        self.app = names.app_name(app)
        self._remote = remote
        self._owns_remote = owns_remote  # opened for this tunnel: closed with it
        self._cm = remote.forward("127.0.0.1", int(caddy_port), local_port)
        self.local_port = self._cm.__enter__()
        self.url = f"http://{self.app}.localhost:{self.local_port}/"
        self.closed = False

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._cm.__exit__(None, None, None)
            if self._owns_remote:
                self._remote.close()

    def __enter__(self) -> "AppTunnel":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"AppTunnel({self.url}{' closed' if self.closed else ''})"


def open_tunnel(server, app: str, local_port: int = 0) -> AppTunnel:
    """Open `http://<app>.localhost:<port>/` here, reaching the app through the server's Caddy."""
    names.app_name(app)
    remote = pool.detached(server)  # the tunnel outlives this call: its connection is its own
    try:
        remote.connect()
        settings = stack.read_settings(remote)
        return AppTunnel(remote, app, int(settings.http_port) if settings else 80, local_port,
                         owns_remote=remote is not server)
    except BaseException:
        if remote is not server:
            remote.close()
        raise


# --------------------------------------------------------------------------- destroy

@dataclass
class DestroyResult:
    app: str
    removed: list = field(default_factory=list)
    kept: list = field(default_factory=list)
    exported: list = field(default_factory=list)  # the final export's files (destroy with final_export)
    data: Optional[ExportData] = field(default=None, repr=False)  # the final export's tables
    working: Optional[int] = None  # participants working when it was destroyed (None: unknown)
    working_note: str = ""  # how that was known, or why not

    def summary(self) -> str:
        text = f"{self.app}: removed " + (", ".join(self.removed) or "nothing")
        if self.kept:
            text += "; kept " + ", ".join(self.kept) + " (remove_data=True deletes the data; remove_backups=True the backups too)"
        return text + (f"; {self.working_note}" if self.working_note else "")


def destroy_steps(final_export: Optional[FinalExport] = None) -> list[str]:
    """The progress steps of a destroy, in order (a final export's own steps run within "stop")."""
    return [*DESTROY_STEPS[:3], *(final_export.steps() if final_export is not None else []), *DESTROY_STEPS[3:]]


def _app_traces(remote, app: str) -> dict:
    """What of the app is on the server. Only its own paths and labels are looked at."""
    traces = app_commands.read_traces(
        remote.run(app_commands.traces(app, layout.app_dir(app), layout.caddy_site(app)), check=False).stdout)
    data = appdata.kept(remote, app)
    traces.update(data=data.files, volumes=data.redis_volume, database=data.database,
                  backups=remote.exists(layout.app_backups(app)))
    return traces

def _check_participants(remote, app: str, force: bool, result: DestroyResult, reporter: Reporter) -> None:
    """Refuse while participants are working (unless `force`): a destroy ends their session.
    Unknown (no participant table, no working_query, unreadable) does not refuse; it is said."""
    found = participants.read(remote, [app])[app]
    result.working = found.working
    result.working_note = found.describe() + (" (destroyed anyway: force)" if force and found.working else "")
    if found.working is None:
        reporter(WarningEvent(found.describe()))
    else:
        reporter(LogLine(result.working_note, "destroy"))
    if not force:
        participants.refuse_if_working(found, "destroyed")


def _check_data_saved(remote, app: str, reporter: Optional[Reporter] = None) -> None:
    """Hook: destroy(remove_data=True) calls this before dropping anything. It raises
    export.ExportRequired unless a saved local export holds every row the app's database holds
    now (nothing written since); destroy's `export_check=False` is the explicit override."""
    from ..export import check_destroy  # data out sits above the app's lifecycle only in this check

    check_destroy(app, remote, reporter=reporter)


def _refuse_unconfirmed(app: str, confirm: bool, remove_data: bool, final_export) -> Optional[FinalExport]:
    """Every refusal that needs no server; returns the final export's checked options."""
    if final_export is not None and not remove_data:
        raise ValidationError("A final export is for destroying an app with its data.",
                              code="invalid.destroy.final_export", remedy=Remedy("destroy.final_export", app=app))
    if not confirm:
        what = "its containers, web address and folder" + (", and ALL ITS DATA (database, files)" if remove_data else
                                                          "; its data is kept")
        raise ConfirmationRequired(f"Destroying {app!r} removes {what}. Nothing was done.",
                                   remedy=Remedy("destroy.confirm.data" if remove_data else "destroy.confirm", app=app))
    # A folder that can't be written is refused before anything stops.
    return FinalExport.of(final_export) if final_export is not None else None


def _stop_then_save(remote, app: str, final: Optional[FinalExport], has_compose: bool, result: DestroyResult,
                    reporter: Reporter) -> None:
    """Stop the app, then take the final export (or check the saved one again): nothing is
    written between the last look at the data and the drop. A refusal or a failed export
    starts the app again, route untouched."""
    if not has_compose and final is None:
        return  # no processes to stop; the saved export was checked already
    if has_compose:
        compose.run_app(remote, app, ["stop"], reporter=reporter, timeout=300)
    try:
        if final is not None:
            saved = finalexport.take(app, remote, final, has_containers=has_compose, reporter=reporter)
            result.exported, result.data = saved.paths, saved.data
        else:
            _check_data_saved(remote, app, reporter)  # a write may have slipped in
    except BaseException:
        if has_compose:
            compose.run_app(remote, app, ["start"], reporter=reporter, timeout=300, check=False)
        raise


def _remove_containers(remote, app: str, has_compose: bool, remove_data: bool, reporter: Reporter) -> None:
    if has_compose:
        compose.run_app(remote, app, ["down", "--remove-orphans", *(["--volumes"] if remove_data else [])],
                        reporter=reporter, timeout=300)
    # Containers without a compose file (a half-finished deploy), found by their own label.
    remote.run(docker.remove_app_containers(app), check=False)


def _keep_or_remove_data(remote, app: str, traces: dict, remove_data: bool, result: DestroyResult,
                         reporter: Reporter, remove_backups: bool = False) -> None:
    if remove_data:
        result.removed += appdata.remove(remote, app)
    else:
        result.kept += [k for k, present in (("database", traces["database"]), ("redis volume", traces["volumes"]),
                                              ("files in ~/" + layout.app_data(app), traces["data"])) if present]
    # Looked at again now: the backup service may have written the app's first backup since the check.
    backups_here = remote.exists(layout.app_backups(app))
    if remove_backups and backups_here:
        from ..data.backups import remove_app_backups

        remove_app_backups(remote, app)
        result.removed.append("backups")
    elif backups_here:
        # Backups outlive the app unless asked: a destroyed study can still be restored.
        result.kept.append(f"backups in ~/{layout.app_backups(app)}")
    if result.kept:
        reporter(LogLine("kept: " + ", ".join(result.kept), "destroy"))


def _remove_files(remote, app: str, result: DestroyResult) -> None:
    remote.run(files.remove(layout.app_dir(app), layout.build_dir(app)))
    result.removed.append("app folder")
    # The app's images (labelled at build) only take disk space now; `docker rmi`
    # leaves any image a container still uses.
    res = remote.run(docker.remove_app_images(app), check=False, timeout=300)
    if res.stdout.strip():
        result.removed.append("images")
    # PsyNet's preparation image on this computer (kept between deploys as a build cache).
    from ..experiment.dallinger import remove_prepare_image
    if remove_prepare_image(app):
        result.removed.append("PsyNet preparation image on this computer")


@pool.closes_what_it_opens
def destroy(app: str, server, *, confirm: bool = False, remove_data: bool = False, export_check: bool = True,
            final_export: Union[FinalExport, str, os.PathLike, None] = None, remove_backups: bool = False,
            force: bool = False, reporter: Optional[Reporter] = None) -> DestroyResult:
    """Stop and remove an app's containers, its Caddy route and its folder.

    Its database, role, Redis volume and ~/dallinger-data/<app> are kept unless
    `remove_data=True`, which is refused unless a fresh export of the database was saved on this
    computer (labdeploy.export), or `export_check=False` says explicitly to lose the data.
    `final_export=FOLDER` (with remove_data) is the safe order for apps that write by
    themselves (PsyNet records its status every minute): stop the app, export every table
    into FOLDER, then delete; `final_export=FinalExport(FOLDER, mode=..., parquet=..., files=...,
    logs=...)` also saves the anonymised version, Parquet, the app's files and its logs there.
    The app's backups (~/dallinger-data/backups/<app>) are kept even with remove_data, unless
    `remove_backups=True` too; the result says where they are.
    A destroy is refused while participants are working (participants.working: the app's
    participant table or its working_query) unless `force=True`; the result says how many were.
    Nothing happens without `confirm=True`; every check that can refuse runs before anything
    is removed, and a refusal after the app was stopped for it starts the app again.
    """
    reporter = reporter or null_reporter
    app = names.app_name(app)
    if remove_backups and not remove_data:
        raise ValidationError("Backups are only removed together with the data they hold.",
                              "Remove the data as well, or keep the backups.", code="invalid.destroy.backups")
    final = _refuse_unconfirmed(app, confirm, remove_data, final_export)
    result = DestroyResult(app)
    with step(reporter, "check"):
        remote = pool.connect(server)
        traces = _app_traces(remote, app)
        if not any(traces.values()):
            known = ", ".join(apps(remote)["app"]) or "none"
            raise UnknownApp(f"There is no app named {app!r} on {remote.host}.",
                             f"Check the name. Apps on this server: {known}.", code="app.unknown")
        _check_participants(remote, app, force, result, reporter)
    with DeployLock(remote, app, operation="destroy", reporter=reporter) as lock:
        reporter(LogLine(f"lock taken by {lock.info.who}", "destroy"))
        reporter(StepFinished("lock", True, f"taken by {lock.info.who}"))  # its row is done, not left pending
        checked = remove_data and traces["database"] and (final is not None or export_check)
        if checked and final is None:
            _check_data_saved(remote, app, reporter)  # refuse while the app still runs untouched
        has_compose = traces["dir"] and remote.exists(layout.app_compose(app))
        with step(reporter, "stop"):
            if checked:
                _stop_then_save(remote, app, final, has_compose, result, reporter)
            _remove_containers(remote, app, has_compose, remove_data, reporter)
            result.removed.append("containers")
        with step(reporter, "route"):
            if traces["site"]:
                remote.remove(layout.caddy_site(app))
                stack.reload_caddy(remote)
                result.removed.append("web address")
        with step(reporter, "data"):
            _keep_or_remove_data(remote, app, traces, remove_data, result, reporter, remove_backups)
        with step(reporter, "files"):
            _remove_files(remote, app, result)
    changes.announce("destroy", app, remote.host)
    return result
