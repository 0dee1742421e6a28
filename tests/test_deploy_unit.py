"""Pure parts of deploy: what the readiness table means for a deploy, output parsing,
the masked secret, the apps table."""

from __future__ import annotations

import pandas as pd
import pytest

from labdeploy.app import apps, configuration, facts
from labdeploy.commands import sections
from labdeploy.server import readiness
from labdeploy.errors import ValidationError

GB_KB = 1024 * 1024


def table(mem_avail_gb: float = 20, stack_up: bool = True, disk_gb: int = 50) -> pd.DataFrame:
    gathered = {
        "docker_path": ["/usr/bin/docker"], "docker_info": ["20.10.24", "rc=0"], "compose": ["v1 1.29.2"],
        "meminfo": [f"MemTotal: {int(24 * GB_KB)} kB", f"MemAvailable: {int(mem_avail_gb * GB_KB)} kB"],
        "disk": [f"/dev/sda1 100 50 {disk_gb * GB_KB} 50% /home"], "listen": [], "proxy": [], "projects": [],
        "stack": ["dallinger-postgresql", "dallinger-caddy"] if stack_up else [],
    }
    return pd.DataFrame(readiness.judge(gathered), columns=readiness.COLUMNS)


def test_ready_server_gives_no_warnings():
    assert readiness.judge_deploy(table()) == []


def test_low_memory_warns_refuses_or_is_ignored_with_numbers():
    low = table(mem_avail_gb=3)
    (warning,) = readiness.judge_deploy(low, capacity="warn")
    assert "3.0 GB free of 24.0 GB" in warning.message and "5 GB" in warning.hint
    with pytest.raises(readiness.ServerNotReady, match="Not enough memory") as info:
        readiness.judge_deploy(low, capacity="refuse")
    assert "capacity='warn'" in info.value.hint
    assert readiness.judge_deploy(low, capacity="ignore") == []
    assert readiness.judge_deploy(low, operation="update", capacity="refuse") == []  # an update needs no more


def test_unprepared_server_blocks_with_the_hint_to_prepare():
    with pytest.raises(readiness.ServerNotReady, match="Shared services") as info:
        readiness.judge_deploy(table(stack_up=False))
    assert "Prepare the server" in info.value.hint


def test_low_disk_warns():
    (warning,) = readiness.judge_deploy(table(disk_gb=2))
    assert "Low disk space" in warning.message


def test_secret_is_masked_until_revealed():
    s = configuration.Secret("hunter2")
    assert "hunter2" not in repr(s) and "hunter2" not in str(s) and "hunter2" not in f"{s}"
    assert s.reveal() == "hunter2" and s == configuration.Secret("hunter2")


def test_facts_sections_parse():
    out = "@@stack\n{\"settings\": {\"domain\": \"lab.org\"}}\n@@state\n\n@@compose\n@@site\n@@secrets\nA=1\n@@end\n"
    s = sections.parse(out)
    assert s["stack"].strip().startswith("{") and s["secrets"] == "A=1\n" and s["compose"] == ""


def test_what_the_server_holds_about_an_app_is_read_from_one_answer():
    out = ("@@appdir\n@@stack\n{\"settings\": {\"domain\": \"lab.org\", \"redis_image\": \"r:7\"}}\n"
           "@@state\n{\"version\": \"v1\", \"experiment_id\": \"uid-1\"}\n@@compose\nservices: {}\n"
           "@@site\nsite text\n@@@@stack in a site file is not a section\n@@secrets\nA_TOKEN=t\n"
           "@@stackup\n/dallinger-postgresql true\n/dallinger-caddy true\n@@end\n")
    got = facts.parse(out)
    assert got.app_dir and got.deployed and got.stack_running and got.settings.domain == "lab.org"
    assert got.secrets == {"A_TOKEN": "t"} and "not a section" in got.site_text
    assert facts.experiment_id(got) == "uid-1"
    assert facts.remembered("redis_image", None, got, "redis:7") == {"value": "r:7", "from": "server"}
    assert facts.remembered("redis_image", "x:1", got, "redis:7") == {"value": "x:1", "from": "given"}
    first = facts.parse("@@stack\n@@end\n")
    assert not first.app_dir and not first.deployed and first.settings is None


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
    plain, secret = configuration.split_config({"smtp_password": "s1", "title": "Stroop", "HX_API_TOKEN": "t"},
                                        {"other_secret": "x"})
    assert plain == {"title": "Stroop"}
    assert secret == {"other_secret": "x", "smtp_password": "s1", "HX_API_TOKEN": "t"}


@pytest.mark.parametrize("key", ["DATABASE_URL", "REDIS_URL"])
def test_the_app_s_own_database_and_redis_urls_cannot_be_overridden(key):
    with pytest.raises(ValidationError, match=key):
        configuration.split_config({}, {key: "postgresql://elsewhere"})


def test_secrets_stay_until_unset_and_given_ones_win():
    previous = {"A_TOKEN": "old", "B_SECRET": "b"}
    assert configuration.secret_values(previous, {"A_TOKEN": "new"}, []) == {"A_TOKEN": "new", "B_SECRET": "b"}
    assert configuration.secret_values(previous, {}, ["B_SECRET"]) == {"A_TOKEN": "old"}
