"""An app's memory and CPU limits and its worker count (labdeploy.app.limits): parsing,
defaults from the 5 GB rule, the compose file, validation before a server is touched, the
status columns."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from labdeploy.app import appcompose, limits
from labdeploy.app.options import DeployOptions
from labdeploy.commands import hostfacts
from labdeploy.errors import ValidationError
from labdeploy.watch import containers

GiB = 1024 ** 3


def doc(processes=("web", "worker")):
    return appcompose.app_compose_document("lim-u", "x/lim-u:1", version="1", processes=processes)


@pytest.mark.parametrize("given, expected", [("5g", 5 * GiB), ("512m", 512 * 1024 ** 2), ("2.5GB", int(2.5 * GiB)),
                                             ("1536MiB", 1536 * 1024 ** 2), (GiB, GiB), (" 4G ", 4 * GiB)])
def test_memory_sizes(given, expected):
    assert limits.memory(given) == expected


@pytest.mark.parametrize("bad", ["", "lots", "-1g", "100m", 1000, True, None, 4.5, "5 gigabytes", "1g; rm -rf /"])
def test_memory_refused(bad):
    with pytest.raises(ValidationError) as e:
        limits.memory(bad)
    assert e.value.code == "invalid.memory_limit"


@pytest.mark.parametrize("bad", ["many", 0, 0.05, -1, 1000, True, None, float("nan")])
def test_cpus_refused(bad):
    with pytest.raises(ValidationError) as e:
        limits.cpus(bad)
    assert e.value.code == "invalid.cpu_limit"


def test_workers_from_dallinger_config():
    assert limits.workers({}) == 1
    assert limits.workers({"num_dynos_worker": "3"}) == 3
    for bad in ("0", "-2", "two", "1.5", "100"):
        with pytest.raises(ValidationError) as e:
            limits.workers({"num_dynos_worker": bad})
        assert e.value.code == "invalid.config.num_dynos_worker"


def test_default_cpus_follow_the_memory_rule():
    assert limits.default_cpus(4, 16 * GiB) == 1.25  # 5/16 of 4 CPUs
    assert limits.default_cpus(16, 32 * GiB) == 2.5
    assert limits.default_cpus(2, 24 * GiB) == 1.0  # never below one CPU...
    assert limits.default_cpus(1, 2 * GiB) == 1.0   # ...nor above the server's
    assert limits.default_cpus(8, 0) == 8.0          # memory unknown: the whole server
    assert limits.default_cpus(4, 16 * GiB, budget=10 * GiB) == 2.5


def test_compose_file_gets_limits_and_worker_scale():
    d = limits.apply(doc(("web", "worker", "clock")), limits.Limits(6 * GiB, 1.5, workers=2))
    s = d["services"]
    for name in ("web", "worker", "clock"):  # four containers share 6 GB
        assert s[name]["mem_limit"] == int(1.5 * GiB) and s[name]["cpus"] == 1.5
    assert s["worker"]["scale"] == 2 and "scale" not in s["web"]
    assert "mem_limit" not in s["redis"] and "cpus" not in s["redis"]  # holds the queue: never OOM-killed
    assert "mem_limit: 1610612736" in appcompose.app_compose_yaml(d)


def test_one_worker_has_no_scale_key():
    s = limits.apply(doc(), limits.Limits(5 * GiB, 1.0))["services"]
    assert "scale" not in s["worker"] and s["web"]["mem_limit"] == int(2.5 * GiB)


def test_too_little_memory_for_the_workers_refused():
    with pytest.raises(ValidationError) as e:
        limits.apply(doc(), limits.Limits(GiB, 1.0, workers=8))
    assert "9 processes" in e.value.message and "2304m" in e.value.hint


def test_chosen_given_then_app_then_default():
    lim, where = limits.chosen("2g", 0.5, {"memory_limit": GiB, "cpu_limit": 3}, None, 1)
    assert (lim.memory, lim.cpus) == (2 * GiB, 0.5) and where["memory_limit"]["from"] == "given"
    lim, where = limits.chosen(None, None, {"memory_limit": GiB, "cpu_limit": 3}, None, 2)
    assert (lim.memory, lim.cpus, lim.workers) == (GiB, 3.0, 2) and where["cpu_limit"]["from"] == "app"
    assert limits.needs_server_size(None, {}) and not limits.needs_server_size(None, {"cpu_limit": 1})
    lim, where = limits.chosen(None, None, None, (4, 16 * GiB), 1)
    assert (lim.memory, lim.cpus) == (limits.DEFAULT_MEMORY, 1.25) and where["memory_limit"]["from"] == "default"


def test_an_app_from_before_limits_keeps_running_without_them_until_given():
    before = {"app": "old-study", "version": 4}  # its record from before labdeploy set limits
    assert not limits.needs_server_size(None, before)
    lim, where = limits.chosen(None, None, before, None, 2)
    assert (lim.memory, lim.cpus, lim.workers) == (None, None, 2) and where["memory_limit"]["from"] == "app"
    document = {"services": {"web": {}, "worker": {}, "redis": {}}}
    limits.apply(document, lim)
    assert document["services"] == {"web": {}, "worker": {"scale": 2}, "redis": {}}
    lim, _ = limits.chosen("3g", None, before, None, 1)  # given: from now on it has one
    assert (lim.memory, lim.cpus) == (3 * GiB, None)
    document = {"services": {"web": {}, "clock": {}}}
    assert limits.apply(document, lim)["services"] == {"web": {"mem_limit": 3 * GiB // 2}, "clock": {"mem_limit": 3 * GiB // 2}}
    kept = {"app": "old-study", "memory_limit": 3 * GiB, "cpu_limit": None}  # recorded by that update
    assert limits.chosen(None, None, kept, None, 1)[0] == limits.Limits(3 * GiB, None, 1)


def test_options_refuse_bad_limits_before_a_server():
    DeployOptions(memory_limit="3g", cpu_limit=2).check()
    for kw, code in (({"memory_limit": "big"}, "invalid.memory_limit"), ({"cpu_limit": "x"}, "invalid.cpu_limit"),
                     ({"config": {"num_dynos_worker": "zero"}}, "invalid.config.num_dynos_worker")):
        with pytest.raises(ValidationError) as e:
            DeployOptions(**kw).check()
        assert e.value.code == code


def test_server_size_read():
    assert hostfacts.read_size("@@cpu\ncpu 1 2 3 4 5\n@@meminfo\nMemTotal:       16384000 kB\n"
                               "MemAvailable: 1 kB\n@@cores\n4\n@@end\n") == (4, 16384000 * 1024)
    assert hostfacts.read_size("") == (1, 0)


def _line(memory, nano):
    return json.dumps({"id": "a" * 64, "name": "/lim-u-web-1", "app": "lim-u", "service": "web", "image": "x",
                       "restarts": 0, "memory": memory, "nano_cpus": nano,
                       "st": {"Status": "running", "StartedAt": "2026-01-01T00:00:00Z", "ExitCode": 0, "Health": None}})


def test_status_shows_the_limits():
    df = containers.parse_status("1767225600.0\n" + _line(536870912, 500000000) + "\n"
                                 + _line(0, 0).replace("web", "redis") + "\n")
    web, redis = df.set_index("service").loc["web"], df.set_index("service").loc["redis"]
    assert web["memory_limit"] == 536870912 and web["cpu_limit"] == 0.5
    assert str(redis["memory_limit"]) == "<NA>" and redis["cpu_limit"] != redis["cpu_limit"]
    assert list(df.columns)[-2:] == ["memory_limit", "cpu_limit"]


@pytest.mark.parametrize("option, value, word", [("--memory-limit", "lots", "memory limit"),
                                                 ("--memory-limit", "64m", "256 MB"), ("--cpu-limit", "0", "CPU limit"),
                                                 ("--config", "num_dynos_worker=many", "num_dynos_worker")])
def test_cli_refuses_bad_limits_before_connecting(tmp_path, option, value, word):
    from test_cli_support import CLI

    cli = CLI(tmp_path)
    hosts = tmp_path / ".dallinger" / "docker-ssh" / "hosts"
    hosts.mkdir(parents=True)
    (hosts / "192.0.2.1").write_text(json.dumps({"host": "192.0.2.1", "user": "alice"}))  # TEST-NET: never answers
    cli.ok("servers", "import")
    example = Path(__file__).resolve().parent.parent / "examples" / "dallinger-hello"
    r = cli("deploy", "--app", "lim-cli", str(example), option, value, timeout=60)
    assert r.code == 2 and word in r.err and "Traceback" not in r.err, str(r)
