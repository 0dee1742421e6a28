"""Disk kept bounded: `prune(server)` removes what deploys leave behind.

* images built for an app that no container uses, except the app's `keep` newest unused ones
  (what a rollback needs: the deployed image is always kept, and `keep` earlier versions);
* stopped containers labdeploy made for a version no longer deployed, or for an app no longer
  deployed (a stopped container of the deployed version may have been stopped on purpose);
* Docker's dangling build cache (what server-build mode leaves; no image uses it).

Only objects with labdeploy's app label are candidates; the shared stack's images and anything
a container uses are never removed; an app whose deploy is running (its lock is held) is left
alone. `dry_run=True` lists what would go.
"""

from __future__ import annotations

from typing import Optional

import pandas as pd

from .. import names
from ..commands import prune as commands
from ..errors import ValidationError
from ..server import layout
from ..ssh import pool

DEFAULT_KEEP = 2
COLUMNS = ["kind", "app", "name", "id", "created", "size_bytes", "action", "reason"]
_STOPPED = ("exited", "created", "dead")


def check_keep(keep) -> int:
    if isinstance(keep, bool) or not isinstance(keep, int) or not 0 <= keep <= 100:
        raise ValidationError(f"keep={keep!r} is not a number of versions from 0 to 100.",
                              f"Keep {DEFAULT_KEEP} (the default) to be able to go back two versions.",
                              code="invalid.prune.keep")
    return keep


def _row(kind, app, name, id_, created, size, action, reason) -> dict:
    return dict(zip(COLUMNS, (kind, app, name, id_[7:19] if id_.startswith("sha256:") else id_[:12], created,
                              size, action, reason)))


def _containers(found: list[dict], deployed: dict, locked: set) -> tuple[list[dict], list[dict]]:
    """(rows of containers to remove, the containers that stay)."""
    remove, stay = [], []
    for c in found:
        app = c["app"]
        leftover = (app and not c["stack"] and c["state"] in _STOPPED and app not in locked
                    and (app not in deployed or (c["version"] and c["version"] != deployed[app].get("version"))))
        (remove if leftover else stay).append(c)
    return remove, stay


def plan(facts: dict, keep: int = DEFAULT_KEEP) -> tuple[list[dict], list[dict], list[dict]]:
    """Pure: (rows for the report, the containers to remove, the images to remove)
    from the server's facts (commands.prune.sections of `facts`)."""
    images = commands.read_images(facts.get("images", []))
    deployed = commands.read_deployed(facts.get("deployed", []))
    locked = {name for name in facts.get("locks", []) if names.is_app_name(name)}
    gone, stay = _containers(commands.read_containers(facts.get("containers", [])), deployed, locked)
    used = {c["image"] for c in stay} | {s.get("image_id") for s in deployed.values()}
    used_refs = {s.get("image") for s in deployed.values()}
    rows = [_row("container", c["app"], c["name"].lstrip("/"), c["id"], "", 0, "remove",
                 "stopped, of a version no longer deployed" if c["app"] in deployed else "stopped, app not deployed")
            for c in gone]
    doomed = []
    for app in sorted({i["app"] for i in images if i["app"]}):
        unused = 0
        for image in sorted((i for i in images if i["app"] == app), key=lambda i: i["created"], reverse=True):
            name = ", ".join(image["tags"]) or "<untagged>"
            if image["id"] in used or used_refs & set(image["tags"]):
                action, reason = "keep", "in use" if image["id"] in {c["image"] for c in stay} else "deployed"
            elif app in locked:
                action, reason = "keep", "a deploy of this app is running"
            elif unused < keep:
                unused += 1
                action, reason = "keep", f"kept for rollback ({unused} of {keep})"
            else:
                action, reason = "remove", "not used, older than the versions kept for rollback"
                doomed.append(image)
            rows.append(_row("image", app, name, image["id"], image["created"][:19], image["size"], action, reason))
    return rows, gone, doomed


@pool.closes_what_it_opens
def prune(server, *, keep: int = DEFAULT_KEEP, dry_run: bool = False, build_cache: bool = True) -> pd.DataFrame:
    """Remove unused app images beyond the `keep` newest per app, leftover stopped containers and
    dangling build cache. One row per object looked at (COLUMNS; action remove/removed/keep/
    failed); attrs["reclaimed_bytes"]: the engine's disk use before less after (dry run: the
    most it could free)."""
    check_keep(keep)
    remote = pool.remote(server)
    res = remote.run(commands.facts(layout.ROOT), check=False, timeout=120)
    facts = commands.sections(res.stdout)
    rows, gone, doomed = plan(facts, keep)
    before = commands.read_df(facts.get("df", []))
    cache = before.get("Build Cache", (0, 0))[1]
    if build_cache:
        rows.append(_row("build cache", "", "dangling build cache", "", "", cache, "remove", "no image uses it"))
    if dry_run:
        reclaimed = sum(r["size_bytes"] for r in rows if r["action"] == "remove")
        return _frame(rows, reclaimed, dry_run=True)
    tags = [t for image in doomed for t in image["tags"]]
    ids = [image["id"] for image in doomed if not image["tags"]]
    out = remote.run(commands.remove([c["id"] for c in gone], tags, ids, build_cache), check=False, timeout=900)
    found = commands.sections("@@removed\n" + out.stdout)
    done = commands.read_removed(found.get("removed", []))
    after = commands.read_df(found.get("df", []))
    _mark(rows, gone, doomed, done, build_cache)
    reclaimed = sum(max(0, before.get(k, (0, 0))[0] - after.get(k, (0, 0))[0])
                    for k in ("Images", "Containers", "Build Cache")) if after else 0
    return _frame(rows, reclaimed, dry_run=False)


def _mark(rows: list[dict], gone: list[dict], doomed: list[dict], done: dict, build_cache: bool) -> None:
    """Each row to remove as removed or failed (with Docker's words), from REMOVE's report."""
    outcome = {c["id"][:12]: done.get(f"c:{c['id']}", (False, "not attempted")) for c in gone}
    for image in doomed:
        results = [done.get(f"t:{t}", (False, "not attempted")) for t in image["tags"]] or \
            [done.get(f"i:{image['id']}", (False, "not attempted"))]
        outcome[image["id"][7:19]] = (all(ok for ok, _ in results), "; ".join(d for ok, d in results if not ok))
    if build_cache:
        outcome[""] = done.get("b:", (False, "not attempted"))
    for row in rows:
        if row["action"] == "remove":
            ok, detail = outcome.get(row["id"], (False, "not attempted"))
            row["action"] = "removed" if ok else "failed"
            if not ok:
                row["reason"] = detail[:300] or "Docker refused"


def _frame(rows: list[dict], reclaimed: int, *, dry_run: bool) -> pd.DataFrame:
    df = pd.DataFrame(rows, columns=COLUMNS)
    df["size_bytes"] = pd.to_numeric(df["size_bytes"]).astype("int64")
    df.attrs.update(reclaimed_bytes=int(reclaimed), dry_run=dry_run)
    return df


def summary(df: pd.DataFrame) -> str:
    """One sentence for the researcher."""
    gb = df.attrs.get("reclaimed_bytes", 0) / 1e9
    if df.attrs.get("dry_run"):
        n = int((df["action"] == "remove").sum())
        return f"{n} object(s) would be removed, freeing up to {gb:.2f} GB."
    n, failed = int((df["action"] == "removed").sum()), int((df["action"] == "failed").sum())
    return f"{n} object(s) removed, {gb:.2f} GB freed" + (f"; {failed} could not be removed." if failed else ".")


