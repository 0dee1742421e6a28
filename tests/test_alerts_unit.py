"""The alert watcher as pure code: its service in the stack (no secret, only with Docker's
socket), settings refused before anything is sent, and its incident logic (one alert and one
recovery per quiet period, however often a container flaps)."""

from __future__ import annotations

import json
import struct
import types

import pytest

from labdeploy.commands import alerts as commands, doctor as doctor_commands
from labdeploy.errors import ValidationError
from labdeploy.server import alerts, caddy, maintenance, stack


def watcher_module(tmp_path):
    module = types.ModuleType("watcher")
    module.__dict__["__name__"] = "watcher"
    exec(compile(alerts.script(), "watcher.py", "exec"), module.__dict__)
    module.STATE = str(tmp_path)
    return module


def test_the_stack_gets_the_watcher_only_with_dockers_socket():
    settings = stack.StackSettings(watcher_image="x/python:3")
    assert "alerts" not in stack.stack_compose_document(settings, "1000:1000")["services"]
    doc = stack.stack_compose_document(settings, "1000:1000", ("/run/docker.sock", "998"))
    service = doc["services"]["alerts"]
    assert service["user"] == "1000:1000" and service["group_add"] == ["998"]
    assert "/run/docker.sock:/var/run/docker.sock" in service["volumes"] and service["restart"] == "unless-stopped"
    assert "secret" not in str(service["environment"]).lower()
    assert "alerts" not in stack.stack_compose_document(stack.StackSettings(watcher_image=""), "1:1", ("/s", "1"))[
        "services"]
    assert commands.parse_docker_access("/run/x.sock 998\n") == ("/run/x.sock", "998")
    assert commands.parse_docker_access("") is None


@pytest.mark.parametrize("kwargs", [{"interval_s": 1}, {"memory_max_pct": 500}, {"quiet_minutes": -1},
                                    {"disk_free_min_pct": "10"}])
def test_settings_out_of_range_are_refused(kwargs):
    with pytest.raises(ValidationError):
        alerts.AlertSettings(**kwargs).validate()


def test_bad_channels_are_refused_before_connecting():
    for kwargs in ({"webhook_url": "ftp://x"}, {"webhook_url": "https://a b"},
                   {"email_to": ["not an address"], "smtp_host": "smtp.example.org"},
                   {"email_to": ["a@example.org"], "smtp_host": "bad host"},
                   {"bogus_setting": 1}):
        with pytest.raises(ValidationError):
            alerts.configure("never-connected", **kwargs)


def test_a_flapping_incident_alerts_once_per_quiet_period(tmp_path):
    w = watcher_module(tmp_path)
    sent = []
    w.notify = lambda cfg, text, subject: sent.append(text) or {"webhook": ""}
    cfg, state = {**w.DEFAULTS, "quiet_minutes": 10}, {}
    t = 1000.0
    for _ in range(5):  # down, up, down, up... every minute
        w.step(cfg, state, {"container:a:web": "a: the web process is not running"}, t)
        w.step(cfg, state, {}, t + 60)
        t += 120
    assert len(sent) == 2 and "recovered" in sent[1]
    w.step(cfg, state, {"container:a:web": "down again"}, 1000.0 + 601)  # the quiet period is over
    assert len(sent) == 3
    lines = (tmp_path / "history.jsonl").read_text().splitlines()
    assert len(lines) == 11


def test_doctor_facts_are_read():
    facts = doctor_commands.read_facts("disk 1000 100\nmem 2000 500\nlock t-app 4000\nlock _stack 5\n")
    assert facts == {"disk": (1024000, 102400), "mem": (2048000, 512000), "locks": {"t-app": 4000, "_stack": 5}}


def _access(host: str, status: int) -> str:
    return json.dumps({"level": "info", "logger": "http.log.access.log0", "msg": "handled request",
                       "request": {"host": host, "method": "GET"}, "status": status})


def test_the_web_error_rate_is_judged_from_enough_requests_per_app(tmp_path):
    w = watcher_module(tmp_path)
    lines = [_access("exp.localhost", 502)] * 15 + [_access("exp.lab.example.org:443", 200)] * 10 \
        + [_access("few.localhost", 500)] * 3 + [_access("other.localhost", 500)] * 40 \
        + ['{"level":"error","logger":"http.log.error","msg":"dial tcp: lookup exp-web"}', "not json", '{"logger"']
    assert w.web_counts("\n".join(lines), {"exp", "few"}) == {"exp": [25, 15], "few": [3, 3]}
    # Docker's stream: 8-byte headers; stderr frames are Caddy's log
    raw = b"".join(bytes([2, 0, 0, 0]) + struct.pack(">I", len(x) + 1) + x.encode() + b"\n" for x in lines)
    w.docker = lambda method, path: raw
    cursor, cfg = {}, {**w.DEFAULTS, "interval_s": 60}
    problems = w.check_web(["exp", "few"], cfg, cursor, 5000.0)
    assert list(problems) == ["web:exp"] and "15 of 25 requests failed" in problems["web:exp"]
    assert cursor["web_since"] == 5000  # the next round reads from here on


def test_site_blocks_log_requests_without_what_identifies_a_participant():
    text = caddy.site_block("exp", stack.StackSettings(domain="localhost"))
    log = text[text.index("\tlog {"):text.index("\tencode")]
    for field in ("request>uri", "request>headers", "request>remote_ip", "request>client_ip", "resp_headers"):
        assert f"{field} delete" in log
    assert maintenance.with_block(text, "\t# block\n").count("\tlog {") == 1


def _usage(hours: list[float], free_gb: list[float], mem: list[float]) -> "pd.DataFrame":
    import pandas as pd

    t0 = pd.Timestamp("2026-11-01", tz="UTC")
    return pd.DataFrame({"time": [t0 + pd.Timedelta(hours=h) for h in hours], "disk_free_gb": free_gb,
                         "disk_total_gb": [100.0] * len(hours), "mem_used_pct": mem})


def test_the_doctor_tells_how_fast_the_disk_fills():
    from labdeploy.watch import doctor

    import pandas as pd

    assert doctor.trend_rows(pd.DataFrame(columns=alerts.USAGE_COLUMNS))[0]["ok"]
    short = doctor.trend_rows(_usage([0, 0.1, 0.2], [50, 49, 48], [30, 30, 30]))
    assert [r["subject"] for r in short] == ["memory", "disk"] and "a pace needs" in short[1]["detail"]
    # 2 GB a day for three days, 20 GB left: full in about 10 days, under the 14-day warning
    filling = doctor.trend_rows(_usage([0, 24, 48, 72], [26, 24, 22, 20], [30, 40, 95, 35]))
    disk, memory = filling[1], filling[0]
    assert not disk["ok"] and "falling 2.00 GB a day" in disk["detail"] and "full in about 10 days" in disk["detail"]
    assert disk["what_to_do"] and not memory["ok"] and "peak 95%" in memory["detail"]
    steady = doctor.trend_rows(_usage([0, 24, 48, 72], [20, 20.5, 20, 20.2], [30, 30, 30, 30]))
    assert steady[1]["ok"] and "steady" in steady[1]["detail"] and steady[0]["ok"]


def test_messages_name_the_server_not_the_container(tmp_path):
    w = watcher_module(tmp_path)
    w.docker = lambda method, path: json.dumps({"Name": "lab-server-1"}).encode() if path == "/info" else b"{}"
    assert w.host() == "lab-server-1"
    w2 = watcher_module(tmp_path)

    def down(method, path):
        raise OSError("no socket")

    w2.docker = down
    assert w2.host() == __import__("socket").gethostname()  # and it asks again next time
