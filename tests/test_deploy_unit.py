"""Pure parts of deploy: what the readiness table means for a deploy, output parsing,
the masked secret, the apps table."""

from __future__ import annotations

import pandas as pd
import pytest

from labdeploy.app import apps, deploy
from labdeploy.server import readiness
from labdeploy.errors import ValidationError

GB_KB = 1024 * 1024


def table(mem_avail_gb: float = 20, stack_up: bool = True, disk_gb: int = 50) -> pd.DataFrame:
    facts = {
        "docker_path": ["/usr/bin/docker"], "docker_info": ["20.10.24", "rc=0"], "compose": ["v1 1.29.2"],
        "meminfo": [f"MemTotal: {int(24 * GB_KB)} kB", f"MemAvailable: {int(mem_avail_gb * GB_KB)} kB"],
        "disk": [f"/dev/sda1 100 50 {disk_gb * GB_KB} 50% /home"], "listen": [], "proxy": [], "projects": [],
        "stack": ["dallinger-postgresql", "dallinger-caddy"] if stack_up else [],
    }
    return pd.DataFrame(readiness.judge(facts), columns=readiness.COLUMNS)


def test_ready_server_gives_no_warnings():
    assert deploy.judge_readiness(table()) == []


def test_low_memory_warns_refuses_or_is_ignored_with_numbers():
    low = table(mem_avail_gb=3)
    (warning,) = deploy.judge_readiness(low, capacity="warn")
    assert "3.0 GB free of 24.0 GB" in warning.message and "5 GB" in warning.hint
    with pytest.raises(deploy.DeployError, match="Not enough memory") as info:
        deploy.judge_readiness(low, capacity="refuse")
    assert "capacity='warn'" in info.value.hint
    assert deploy.judge_readiness(low, capacity="ignore") == []
    assert deploy.judge_readiness(low, operation="update", capacity="refuse") == []  # an update needs no more


def test_unprepared_server_blocks_with_the_hint_to_prepare():
    with pytest.raises(deploy.DeployError, match="Shared services") as info:
        deploy.judge_readiness(table(stack_up=False))
    assert "Prepare the server" in info.value.hint


def test_low_disk_warns():
    (warning,) = deploy.judge_readiness(table(disk_gb=2))
    assert "Low disk space" in warning.message


def test_secret_is_masked_until_revealed():
    s = deploy.Secret("hunter2")
    assert "hunter2" not in repr(s) and "hunter2" not in str(s) and "hunter2" not in f"{s}"
    assert s.reveal() == "hunter2" and s == deploy.Secret("hunter2")


def test_facts_sections_parse():
    out = "@@stack\n{\"settings\": {\"domain\": \"lab.org\"}}\n@@state\n\n@@compose\n@@site\n@@secrets\nA=1\n@@end\n"
    s = deploy._sections(out)
    assert s["stack"].strip().startswith("{") and s["secrets"] == "A=1\n" and s["compose"] == ""


def test_apps_table_from_listing():
    listing = ("@@stack\n{\"settings\": {\"domain\": \"localhost\", \"http_port\": 80}}\n"
               "@@app good\n{\"version\": \"v1\", \"url\": \"http://good.localhost/\", "
               "\"deployed_at\": \"2026-01-01T00:00:00+00:00\", \"who\": \"ana@laptop\"}\n"
               "@@app half\n\n@@app .build\n\n@@locks\ngood\n@@end\n")
    status = pd.DataFrame([{"app": "good", "service": s, "state": "running", "restarts": 0}
                           for s in ("web", "worker", "clock", "redis")] +
                          [{"app": "half", "service": "web", "state": "exited", "restarts": 3}])
    df = apps.parse_listing(listing, status)
    assert list(df["app"]) == ["good", "half"]
    good, half = df.iloc[0], df.iloc[1]
    assert good["state"] == "running" and good["running"] == "4/4" and bool(good["locked"])
    assert str(good["deployed_at"].tz) == "UTC"
    assert half["state"].startswith("not deployed") and half["url"] == "http://half.localhost/"


@pytest.mark.parametrize("services", [("web", "worker", "redis"), ("web", "worker", "clock", "redis", "pgbouncer")])
def test_an_app_running_all_its_own_containers_is_running_whatever_their_number(services):
    listing = "@@stack\n{}\n@@app demo\n{\"version\": \"v1\"}\n@@locks\n@@end\n"
    status = pd.DataFrame([{"app": "demo", "service": s, "state": "running", "restarts": 0} for s in services])
    row = apps.parse_listing(listing, status).iloc[0]
    assert row["state"] == "running" and row["running"] == f"{len(services)}/{len(services)}"
    status.loc[0, "state"] = "exited"
    assert apps.parse_listing(listing, status).iloc[0]["state"] == "degraded"


# ---------------------------------------------------------------- configuration and secrets

def test_config_keys_that_say_secret_go_to_the_secrets_file_whatever_their_source():
    plain, secret = deploy.split_config({"smtp_password": "s1", "title": "Stroop", "HX_API_TOKEN": "t"},
                                        {"other_secret": "x"})
    assert plain == {"title": "Stroop"}
    assert secret == {"other_secret": "x", "smtp_password": "s1", "HX_API_TOKEN": "t"}


@pytest.mark.parametrize("key", ["DATABASE_URL", "REDIS_URL"])
def test_the_app_s_own_database_and_redis_urls_cannot_be_overridden(key):
    with pytest.raises(ValidationError, match=key):
        deploy.split_config({}, {key: "postgresql://elsewhere"})


def test_secrets_stay_until_unset_and_given_ones_win():
    previous = {"A_TOKEN": "old", "B_SECRET": "b"}
    assert deploy._secret_values(previous, {"A_TOKEN": "new"}, []) == {"A_TOKEN": "new", "B_SECRET": "b"}
    assert deploy._secret_values(previous, {}, ["B_SECRET"]) == {"A_TOKEN": "old"}
