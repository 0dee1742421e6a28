"""The backup service's script under a real sh (no Docker): retention, the schedule files, and
what a name or a kind it must refuse does; and the Python side of schedules and the service."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from labdeploy.errors import ValidationError
from labdeploy.server import backupservice, stack

SCRIPT = Path(backupservice.__file__).with_name("backup.sh")


def run(tmp_path: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    full = {**os.environ, "BACKUP_CONF": str(tmp_path / "conf"), "BACKUP_STORE": str(tmp_path / "store"), **(env or {})}
    return subprocess.run(["sh", str(SCRIPT), *args], capture_output=True, text=True, env=full, timeout=60)


def make_backups(tmp_path: Path, app: str, stamps: list[str], kind: str = "scheduled") -> Path:
    folder = tmp_path / "store" / app
    folder.mkdir(parents=True, exist_ok=True)
    for stamp in stamps:
        (folder / f"{stamp}.{kind}.dump").write_bytes(b"x")
        (folder / f"{stamp}.{kind}.json").write_text("{}")
    return folder


def remaining(folder: Path, kind: str = "scheduled") -> list[str]:
    return sorted(p.name.split(".")[0] for p in folder.glob(f"*.{kind}.json"))


def test_retention_keeps_the_newest_of_each_hour_and_day_and_never_a_manual_backup(tmp_path):
    # Three backups an hour over three days.
    stamps = [f"2026112{d}T{h:02d}{m:02d}00Z" for d in (7, 8, 9) for h in range(24) for m in (0, 20, 40)]
    folder = make_backups(tmp_path, "study", stamps)
    make_backups(tmp_path, "study", ["20261101T000000Z"], kind="manual")
    (tmp_path / "conf" / "study").mkdir(parents=True)
    (tmp_path / "conf" / "study" / "backup.conf").write_text("keep_hourly=5\nkeep_daily=3\n")
    assert run(tmp_path, "prune", "study").returncode == 0
    kept = remaining(folder)
    hours = [f"20261129T{h:02d}4000Z" for h in range(19, 24)]  # newest of each of the last 5 hours
    days = ["20261127T234000Z", "20261128T234000Z"]  # and of each of the last 3 days (29th is among the hours)
    assert kept == sorted(days + hours)
    assert remaining(folder, "manual") == ["20261101T000000Z"]  # taken by hand: kept until removed by hand
    assert sorted(p.name for p in folder.iterdir() if p.suffix == ".dump") == sorted(
        [f"{s}.scheduled.dump" for s in kept] + ["20261101T000000Z.manual.dump"])  # no dump without its manifest


def test_the_app_schedule_wins_over_the_servers_and_broken_lines_fall_back(tmp_path):
    conf = tmp_path / "conf"
    (conf / "a").mkdir(parents=True)
    (conf / "backup.conf").write_text("every_minutes=30\nkeep_hourly=7\n")
    (conf / "a" / "backup.conf").write_text("every_minutes=off\n")
    out = run(tmp_path, "prune", "a")  # reads keep_* through the same lookup
    assert out.returncode == 0
    assert backupservice.read_schedule((conf / "a" / "backup.conf").read_text()).every_minutes is None
    assert backupservice.read_schedule("every_minutes=$(reboot)\nkeep_daily=x").every_minutes == 60


@pytest.mark.parametrize("app", ["../etc", "A", "a b", "-x", "", "a;reboot"])
def test_the_script_refuses_an_app_name_it_could_misread(tmp_path, app):
    out = run(tmp_path, "once", app, "manual")
    assert "@@failed invalid app name" in out.stdout and out.returncode == 2
    assert not (tmp_path / "store").exists() or not any((tmp_path / "store").iterdir())


def test_the_script_refuses_an_unknown_kind_and_a_restore_outside_the_store(tmp_path):
    assert "@@failed invalid kind" in run(tmp_path, "once", "study", "nightly").stdout
    out = run(tmp_path, "restore", "/etc/passwd.dump", "app_x__restoring", "app_x")
    assert out.returncode == 2 and "not a dump under" in out.stdout
    out = run(tmp_path, "restore", str(tmp_path / "store" / ".." / "x.dump"), "app_x__restoring", "app_x")
    assert out.returncode == 2
    out = run(tmp_path, "restore", str(tmp_path / "store" / "a" / "x.dump"), "app_x; drop", "app_x")
    assert out.returncode == 2 and "invalid database" in out.stdout


@pytest.mark.parametrize("every,minutes", [(60, 60), ("90min", 90), ("2h", 120), ("1d", 1440), ("off", None),
                                           (None, None), ("15", 15)])
def test_schedules_read_as_a_researcher_writes_them(every, minutes):
    assert backupservice.schedule(every).every_minutes == minutes


@pytest.mark.parametrize("every", [0, 4, "3m", "8d", "-5", "1.5h", "hourly", True, "60\nevery_minutes=1"])
def test_a_schedule_out_of_range_or_not_a_number_is_refused(every):
    with pytest.raises(ValidationError) as info:
        backupservice.schedule(every)
    assert info.value.hint


def test_the_stack_runs_the_service_as_the_login_user_from_the_postgres_image_with_only_backups_writable():
    doc = stack.stack_compose_document(stack.StackSettings(postgres_image="postgres:16"), user="1001:1002")
    svc = doc["services"]["backup"]
    assert svc["image"] == "postgres:16" and svc["user"] == "1001:1002"
    assert svc["container_name"] == "dallinger-backup" and svc["restart"] == "unless-stopped"
    writable = [v for v in svc["volumes"] if not v.endswith(":ro")]
    assert writable == ["../dallinger-data/backups:/backups"]
    assert "backup" not in stack.stack_compose_document(stack.StackSettings())["services"]
    with pytest.raises(ValidationError):
        stack.stack_compose_document(stack.StackSettings(), user="0:0; rm -rf /")
