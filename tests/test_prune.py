"""prune on the testbed: five versions of an app's image (built on the server with its label),
the fifth deployed and running, a stopped container of the first: prune keeps the deployed one
and exactly the two newest earlier ones, removes the rest and the leftover container, and never
touches an image without labdeploy's label, its container or the stack's images."""

from __future__ import annotations

import json

import pytest

from labdeploy.app import prune
from labdeploy.server import layout

from upkeep_support import registered_cli

APP = "t-pr-app"
FOREIGN = "t-pr-foreign:1"
DOCKERFILE = "FROM {base}\nLABEL labdeploy.app={app}\nRUN head -c 2000000 /dev/urandom > /blob-{n}\n"


def _build(remote, base: str, ref: str, n: int, label_app: str = APP) -> str:
    text = DOCKERFILE.format(base=base, app=label_app, n=n)
    if not label_app:
        text = text.replace(f"LABEL labdeploy.app={label_app}\n", "")
    remote.run(["docker", "build", "-q", "-t", ref, "-"], stdin=text.encode(), timeout=300)
    return remote.run(["docker", "image", "inspect", "-f", "{{.Id}}", ref]).stdout.strip()


def _clean(remote) -> None:
    for flt in (f"label=labdeploy.app={APP}", f"label=t-pr-test"):
        ids = remote.run(["docker", "ps", "-aq", "--filter", flt]).stdout.split()
        if ids:
            remote.run(["docker", "rm", "-f", *ids], check=False)
    refs = [f"labdeploy/{APP}:v{n}" for n in range(1, 6)] + [FOREIGN]
    remote.run(["docker", "rmi", *refs], check=False)
    remote.run(["rm", "-rf", "--", layout.app_dir(APP), layout.app_lock(APP)], check=False)


def _images(remote) -> set:
    out = remote.run(["docker", "image", "ls", "--format", "{{.Repository}}:{{.Tag}}"]).stdout.split()
    return set(out)


@pytest.fixture
def versions(testbed, remote):
    _clean(remote)
    base = testbed["images"]["base"]
    ids = {n: _build(remote, base, f"labdeploy/{APP}:v{n}", n) for n in range(1, 6)}
    _build(remote, base, FOREIGN, 9, label_app="")
    state = {"app": APP, "version": "v5", "image": f"labdeploy/{APP}:v5", "image_id": ids[5]}
    remote.makedirs(layout.app_dir(APP), 0o755)
    remote.put_bytes(layout.app_state(APP), json.dumps(state).encode(), mode=0o644)
    remote.run(["docker", "run", "-d", "--label", "labdeploy.version=v5", f"labdeploy/{APP}:v5", "sleep", "100000"])
    remote.run(["docker", "create", "--label", "labdeploy.version=v1", f"labdeploy/{APP}:v1", "true"])
    remote.run(["docker", "create", "--label", "t-pr-test=1", FOREIGN, "true"])  # stopped, not ours
    yield remote
    _clean(remote)


def test_prune_keeps_the_rollback_versions_and_reclaims_the_rest(testbed, versions):
    remote = versions
    stack_images = set(remote.run(["docker", "inspect", "-f", "{{.Config.Image}}", layout.POSTGRES_CONTAINER,
                                   layout.CADDY_CONTAINER]).stdout.split())
    before = _images(remote)
    dry = prune.prune(remote, dry_run=True, build_cache=False)
    assert _images(remote) == before  # a dry run removes nothing
    mine = dry[dry["app"] == APP]
    planned = dict(zip(mine["name"], mine["action"]))
    assert planned == {f"labdeploy/{APP}:v{n}": a for n, a in
                       ((5, "keep"), (4, "keep"), (3, "keep"), (2, "remove"), (1, "remove"))} | {
        next(n for n in mine["name"] if not n.startswith("labdeploy/")): "remove"}  # the v1 container
    assert dry.attrs["reclaimed_bytes"] >= 4_000_000

    df = prune.prune(remote, build_cache=False)
    after = _images(remote)
    assert {f"labdeploy/{APP}:v{n}" for n in (3, 4, 5)} <= after
    assert not {f"labdeploy/{APP}:v1", f"labdeploy/{APP}:v2"} & after
    assert FOREIGN in after and stack_images <= after
    assert set(df[df["app"] == APP]["action"]) == {"keep", "removed"}
    left = remote.run(["docker", "ps", "-a", "--filter", f"label=labdeploy.app={APP}", "--format",
                       "{{.Label \"labdeploy.version\"}} {{.State}}"]).stdout.split("\n")
    assert [x for x in left if x] == ["v5 running"]
    assert remote.run(["docker", "ps", "-aq", "--filter", "label=t-pr-test"]).stdout.strip()  # not ours: stays
    assert df.attrs["reclaimed_bytes"] > 0


def test_prune_leaves_an_app_alone_while_its_deploy_runs(testbed, versions):
    remote = versions
    remote.makedirs(layout.app_lock(APP), 0o755)
    df = prune.prune(remote, build_cache=False)
    assert set(df[df["app"] == APP]["action"]) == {"keep"}
    assert {f"labdeploy/{APP}:v{n}" for n in range(1, 6)} <= _images(remote)


def test_cli_prune_dry_run_lists_and_removes_nothing(testbed, versions, tmp_path):
    cli = registered_cli(testbed, tmp_path)
    before = _images(versions)
    run = cli.ok("prune", "--dry-run", "--server", "tb", "--json")
    rows = [r for r in run.json() if r["app"] == APP]
    assert sorted(r["action"] for r in rows) == ["keep"] * 3 + ["remove"] * 3
    assert _images(versions) == before
    bad = cli("prune", "--keep", "-1", "--server", "tb")
    assert bad.code == 2 and "keep" in bad.err
