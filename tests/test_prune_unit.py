"""prune's plan as pure code: what stays (deployed, in use, the newest unused per app, an app
whose deploy runs) and what goes; the facts script's output read back."""

from __future__ import annotations

import json

import pytest

from labdeploy.app import prune
from labdeploy.commands import prune as commands
from labdeploy.errors import ValidationError


def _image(n: int, app: str = "a") -> str:
    ident = n if app == "a" else 100 + n
    return f"sha256:{ident:064d}\t{app}\t2024-01-0{n}T00:00:00Z\t{n * 1000}\t{json.dumps([f'labdeploy/{app}:v{n}'])}"


def _container(cid: str, image: int, state: str, app: str, version: str, stack: str = "") -> str:
    return f"{cid}\tsha256:{image:064d}\t{state}\t{app}\t{version}\t{stack}\t/{cid}"


def facts(locks=()):
    deployed = {"app": "a", "version": "v5", "image": "labdeploy/a:v5", "image_id": f"sha256:{5:064d}"}
    return {"images": [_image(n) for n in range(1, 6)] + [_image(1, "gone")],
            "containers": [_container("c5", 5, "running", "a", "v5"), _container("c1", 1, "exited", "a", "v1"),
                           _container("c4", 4, "exited", "a", "v5"),  # the deployed version, stopped on purpose
                           _container("pg", 9, "running", "", "", "postgresql"),
                           _container("x", 2, "exited", "", "")],  # not ours, uses v2
            "deployed": [f"a\t{json.dumps(deployed)}"], "locks": list(locks),
            "df": ['{"Type":"Images","Size":"1.5GB","Reclaimable":"1GB (66%)"}',
                   '{"Type":"Build Cache","Size":"20MB","Reclaimable":"12.5MB"}']}


def test_plan_keeps_deployed_used_and_the_newest_unused():
    rows, gone, doomed = prune.plan(commands.sections("\n".join(
        f"@@{k}\n" + "\n".join(v) for k, v in facts().items())), keep=2)
    actions = {(r["app"], r["name"]): (r["action"], r["reason"]) for r in rows}
    assert actions[("a", "labdeploy/a:v5")] == ("keep", "in use")
    assert actions[("a", "labdeploy/a:v4")][1] == "in use"  # its stopped container stays
    assert actions[("a", "labdeploy/a:v2")][1] == "in use"  # a container that is not ours uses it
    assert actions[("a", "labdeploy/a:v3")][0] == "keep" and "rollback" in actions[("a", "labdeploy/a:v3")][1]
    assert actions[("a", "labdeploy/a:v1")][0] == "keep"  # second unused one: v3 and v1 kept with keep=2
    assert actions[("gone", "labdeploy/gone:v1")][0] == "keep"
    assert [c["id"] for c in gone] == ["c1"] and doomed == []
    rows0, gone0, doomed0 = prune.plan(commands.sections("\n".join(
        f"@@{k}\n" + "\n".join(v) for k, v in facts().items())), keep=0)
    assert sorted(i["tags"][0] for i in doomed0) == ["labdeploy/a:v1", "labdeploy/a:v3", "labdeploy/gone:v1"]


def test_a_running_deploy_keeps_its_app_whole():
    rows, gone, doomed = prune.plan({k: v for k, v in facts(locks=["a", "_stack"]).items()}, keep=0)
    assert gone == [] and [i["app"] for i in doomed] == ["gone"]


def test_reading_docker_sizes_and_removal_lines():
    assert commands.human_bytes("1.632GB") == 1_632_000_000 and commands.human_bytes("0B") == 0
    assert commands.read_df(facts()["df"])["Build Cache"] == (20_000_000, 12_500_000)
    assert commands.read_removed(["ok c:abc ", "fail t:x/y:1 Error: conflict"]) == {
        "c:abc": (True, ""), "t:x/y:1": (False, "Error: conflict")}
    argv = commands.remove(["c1"], ["labdeploy/a:v1"], ["sha256:1"], True)
    assert argv[:2] == ["sh", "-c"] and argv[4:] == ["c:c1", "t:labdeploy/a:v1", "i:sha256:1", "b:"]


@pytest.mark.parametrize("bad", [-1, 101, "2", True, None, 1.5])
def test_keep_is_checked(bad):
    with pytest.raises(ValidationError):
        prune.check_keep(bad)
