"""Move an app from one registered server to another, with its data.

The old app is stopped first (nothing writes any more), its database backed up there and the
dump pulled to this computer (checked against its sha256), then the experiment is deployed on
the new server from that dump (deploy's archive step: loaded and its row counts checked
before launch). The old server's route then sends the app's participants to the new server,
and the old app stays stopped with its data, until the researcher destroys it there. A
failure before the route is switched starts the old app again: it is where it was.
"""

from __future__ import annotations

import re
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import pandas as pd

from .. import names
from ..data import backups
from ..errors import LabdeployError, UnknownApp, ValidationError
from ..export import table_counts
from ..progress import LogLine, Reporter, null_reporter, step
from ..server import appstate, caddy, compose, layout, maintenance as block, stack
from ..ssh import pool
from ..watch import participants
from . import deploy as deploy_app
from .options import DeployOptions

MOVED_MARK = "# labdeploy: moved to "
_PROXY = re.compile(r"^\treverse_proxy \S+$", re.M)


class MoveRefused(LabdeployError):
    """The app can't be moved as asked; nothing was changed."""

    code = "move.refused"


@dataclass
class MoveResult:
    app: str
    from_server: str
    to_server: str
    url: str  # where the app runs now
    old_url: str
    backup_id: str  # the backup on the old server the data came from (kept there)
    counts: pd.DataFrame  # table, expected (the backup's), moved (on the new server), ok
    route: str  # what the old server's address does now
    deploy: Optional[object] = field(default=None, repr=False)  # the new server's DeployResult
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return bool(self.counts["ok"].all())


def moved_site(site_text: str, to_server: str, new_url: str, old_url: str, new_host: str,
               settings: Optional[stack.StackSettings]) -> tuple[str, str]:
    """The old server's site for a moved app (pure), and what it does in words: a permanent
    redirect to the new address when it differs; else (the same name: DNS still leads some
    participants here) Caddy forwards the requests to the new server, Host kept."""
    text = block.without(site_text)
    if new_url != old_url:
        directive = f"\tredir {stack.caddy_token(new_url.rstrip('/'), 'new address')}{{uri}} 308"
        says = f"redirects to {new_url}"
    else:
        secure = new_url.startswith("https://")
        port = int((settings.https_port if secure else settings.http_port) if settings else (443 if secure else 80))
        target = stack.caddy_token(f"{'https' if secure else 'http'}://{new_host}:{port}", "new server")
        directive = f"\treverse_proxy {target}"
        if secure:  # the new server's certificate is for the app's name, not its address
            name = stack.caddy_token(new_url.split("://", 1)[1].split("/", 1)[0].rsplit(":", 1)[0], "app host")
            directive += f" {{\n\t\ttransport http {{\n\t\t\ttls_server_name {name}\n\t\t}}\n\t}}"
        says = f"forwards to {to_server} ({new_host}) until DNS leads there"
    text, n = _PROXY.subn(lambda m: directive, text, count=1)
    if n != 1:
        raise ValueError("the site file has no reverse_proxy line written by labdeploy")
    return f"{MOVED_MARK}{stack.caddy_token(to_server, 'server name')}\n{text}", says


def _check(app: str, from_server, to_server, opts: DeployOptions) -> None:
    if opts.archive is not None:
        raise ValidationError("A move brings the app's own data; it takes no archive.",
                              "Leave the archive out.", code="invalid.move.archive")
    if isinstance(from_server, str) and isinstance(to_server, str) and from_server == to_server:
        raise ValidationError(f"{app!r} would move from {from_server!r} to itself.",
                              "Name two different servers.", code="invalid.move.same_server")


def _refuse_unless_movable(old, new, app: str, force: bool) -> str:
    """The old URL; refused (nothing changed) when the app isn't on the old server, is there
    already moved, or the new server holds an app or data of that name."""
    site = appstate.read_text(old, layout.caddy_site(app))
    if site is None or not old.exists(layout.app_compose(app)):
        raise UnknownApp(f"There is no app {app!r} on {old.host} to move.", "Check the app's name and its server.",
                         code="app.unknown")
    if site.startswith(MOVED_MARK):
        raise MoveRefused(f"{app!r} was moved from {old.host} already ({site.splitlines()[0][len(MOVED_MARK):]}).",
                          "Destroy the stopped copy on the old server when you no longer need it.")
    if new.exists(layout.app_compose(app)) or new.exists(layout.app_state(app)):
        raise MoveRefused(f"{new.host} has an app named {app!r} already; nothing was moved.",
                          "Destroy it there first, or move the app under its name to another server.")
    if not force:
        participants.refuse_if_working(participants.read(old, [app])[app], "moved")
    state = appstate.read_state(old, app) or {}
    return state.get("url") or caddy.app_url(app, stack.read_settings(old))


def _counts(expected: dict, now: pd.DataFrame) -> pd.DataFrame:
    moved = {r.table: int(r.rows) for r in now.itertuples()}
    rows = [{"table": t, "expected": int(n), "moved": moved.get(t), "ok": moved.get(t) is not None and moved[t] >= n}
            for t, n in sorted(expected.items())]
    return pd.DataFrame(rows, columns=["table", "expected", "moved", "ok"])


def _switch_route(old, app: str, to_name: str, new, result_url: str, old_url: str, report: Reporter) -> str:
    site = appstate.read_text(old, layout.caddy_site(app))
    text, says = moved_site(site, to_name, result_url, old_url, new.host, stack.read_settings(new))
    with step(report, "Switch the route", f"{old.host}: {app} {says}"):
        stack.route_site(old, app, text)
    return says


@pool.closes_what_it_opens
def move(app: str, from_server, to_server, experiment_dir, *, force: bool = False, options: Optional[DeployOptions] = None,
         reporter: Optional[Reporter] = None, **settings) -> MoveResult:
    """Move `app` with its data from `from_server` to `to_server` (registered names, Servers or
    Remotes), deploying `experiment_dir` there (deploy's keyword arguments apply, as for a new
    app). The old app is stopped, backed up, its dump pulled here and loaded on the new server
    before launch; row counts are checked; the old server's address then leads to the new one;
    the old app stays stopped (its data kept) until destroyed. Refused while participants are
    working, unless force=True."""
    app = names.app_name(app)
    opts = DeployOptions.of(options, **settings)
    _check(app, from_server, to_server, opts)
    deploy_app.check_inputs(experiment_dir, app, opts)  # bad input: refused before any server is touched
    report = reporter or null_reporter
    started = time.monotonic()
    old, new = pool.connect(from_server), pool.connect(to_server)
    old_url = _refuse_unless_movable(old, new, app, force)
    from_name, to_name = (s if isinstance(s, str) else getattr(s, "name", None) or s.host
                          for s in (from_server, to_server))
    folder = Path(tempfile.mkdtemp(prefix="labdeploy-move-"))  # 0700: the dump holds participants' data
    try:
        with step(report, "Stop the old app", f"{app} on {old.host}: nothing writes while its data moves"):
            compose.run_app(old, app, ["stop"], reporter=report, timeout=300)
        try:
            manifest = backups.now(app, old, reporter=report, kind="manual")
            pulled = backups.pull(old, folder, app, reporter=report)
            dump = Path(pulled.loc[pulled["id"] == manifest["id"], "file"].iloc[0])
            result = deploy_app.deploy(experiment_dir, app, new, options=DeployOptions.of(opts, archive=dump),
                                       reporter=report)
        except BaseException:
            compose.run_app(old, app, ["start"], reporter=report, timeout=300, check=False)
            raise
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    counts = _counts(manifest.get("rows") or {}, table_counts(app, new))
    says = _switch_route(old, app, to_name, new, result.url, old_url, report)
    report(LogLine(f"moved {app} from {from_name} to {to_name}: {int(counts['expected'].sum())} rows", "move"))
    return MoveResult(app, from_name, to_name, result.url, old_url, manifest["id"], counts, says, result,
                      time.monotonic() - started)
